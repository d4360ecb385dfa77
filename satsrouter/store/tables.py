"""Table definitions (SQLAlchemy Core). Migrations in `migrations/` create exactly these."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# A balance holder. `key_hash` is sha256 of the API key or of the Cashu token string used as
# a key; the key itself is never stored (I8).
accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # key | token | xcashu
    Column("mint_url", Text, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("balance_msat", BigInteger, nullable=False, default=0),
    Column("reserved_msat", BigInteger, nullable=False, default=0),
    Column("total_spent_msat", BigInteger, nullable=False, default=0),
    Column("total_requests", BigInteger, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    # Child keys spend their parent's balance, optionally within a per-period limit.
    Column("parent_id", Integer, nullable=True),
    Column("spend_limit_msat", BigInteger, nullable=True),
    Column("limit_period", String(8), nullable=True),  # daily | weekly | monthly
    Column("period_start", Float, nullable=True),
    Column("period_spent_msat", BigInteger, nullable=False, default=0),
    Column("period_reserved_msat", BigInteger, nullable=False, default=0),
    # Where the remainder goes at expiry or on refund (a Lightning address or LNURL).
    Column("refund_lnurl", Text, nullable=True),
    Column("expires_at", Float, nullable=True),
    # Set by the operator: a disabled key is refused (403 key_disabled), keeps its balance.
    Column("disabled_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    # Set by the operator: this key's rate limit instead of RATE_LIMIT (`limits` syntax).
    Column("rate_limit", String(200), nullable=True),
    CheckConstraint("balance_msat >= 0", name="ck_balance_nonneg"),
    CheckConstraint("reserved_msat >= 0", name="ck_reserved_nonneg"),
    CheckConstraint("balance_msat - reserved_msat >= 0", name="ck_available_nonneg"),
)

# Append-only: every balance change is one row, written in the same transaction (I1).
journal = Table(
    "journal",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("amount_msat", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # credit | charge | payout | refund_back
    Column("ref", String(80), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_journal_account", "account_id"),
)

# One row per paid request: active -> charged | released, moved by compare-and-set (I2).
reservations = Table(
    "reservations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("amount_msat", BigInteger, nullable=False),
    Column("charged_msat", BigInteger, nullable=True),
    Column("state", String(12), nullable=False),
    Column("instance_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("settled_at", Float, nullable=True),
    Column("child_id", Integer, nullable=True),
    # What the request was, for the operator's usage figures (filled when it settles).
    Column("provider", String(64), nullable=True),
    Column("endpoint", String(40), nullable=True),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("error", String(40), nullable=True),  # why it was released, when it was
    # Partial: the sweeper and metrics look for active rows, usage figures for settled ones
    # by time; the rows in between are written to no index (migration 0010).
    Index(
        "ix_reservations_active",
        "instance_id",
        sqlite_where=text("state = 'active'"),
        postgresql_where=text("state = 'active'"),
    ),
    Index(
        "ix_reservations_settled",
        "settled_at",
        sqlite_where=text("settled_at IS NOT NULL"),
        postgresql_where=text("settled_at IS NOT NULL"),
    ),
)

# Redemption intents (I6): written before the swap, finished after the credit.
redemptions = Table(
    "redemptions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("mint_url", Text, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("amount", BigInteger, nullable=False),
    # Kept only while the outcome is unknown, so a restart can ask the mint (NUT-07).
    Column("token", Text, nullable=True),
    Column("state", String(12), nullable=False),  # pending | credited | failed
    Column("account_id", Integer, nullable=True),
    Column("credited_msat", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The node process that wrote the intent (recovery waits until it is provably dead) and
    # the wallet operation (swap) that carries the token's proofs to the mint.
    Column("instance_id", String(40), nullable=True),
    Column("op_id", String(80), nullable=True),
    # The token's proofs while it waits for a swap that any node may send (migration 0009).
    Column("proofs", Text, nullable=True),
    Index("ix_redemptions_state", "state"),
)

# Tokens paid out (change, refunds), debit-first and idempotent by id (I7).
payouts = Table(
    "payouts",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("amount_msat", BigInteger, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("mint_url", Text, nullable=False),
    Column("token", Text, nullable=True),
    Column("state", String(12), nullable=False),  # pending | issued | unknown
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("method", String(12), nullable=False, default="cashu"),  # cashu | lightning
    Column("destination", Text, nullable=True),  # Lightning address / LNURL
    Column("detail", Text, nullable=True),  # melt quote id, preimage
    Column("fee_msat", BigInteger, nullable=False, default=0),
    Column("instance_id", String(40), nullable=True),  # who is sending it
)

# Lightning invoices that fund a key: each is a mint quote at the primary mint.
lightning_invoices = Table(
    "lightning_invoices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("quote_id", Text, nullable=False),
    Column("mint_url", Text, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("bolt11", Text, nullable=False),
    Column("purpose", String(8), nullable=False),  # create | topup
    Column("account_id", Integer, nullable=True),
    Column("key_hash", String(64), nullable=True),
    Column("state", String(12), nullable=False),  # pending | minting | credited | expired
    Column("expires_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The deterministic outputs reserved for minting the quote, recorded before minting.
    Column("mint_keyset", String(66), nullable=True),
    Column("mint_counter", BigInteger, nullable=True),
    Column("mint_amounts", Text, nullable=True),
    Column("credited_msat", BigInteger, nullable=True),
    # The NUT-20 key the mint quote is locked to: only this node can mint the paid quote.
    Column("quote_key", Text, nullable=True),
)

# The node's ecash (I6). It lives here, beside the ledger, so that the proofs a swap brings
# in and the balance they pay for are written in one transaction. nutshell is used for the
# cryptography and the mint's protocol only, never for storage.

# The wallet's BIP39 mnemonic: every secret and blinding factor derives from it (NUT-13).
wallet_seed = Table(
    "wallet_seed",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("mnemonic", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Derivation counters per keyset: a counter is taken once, in the transaction that records
# what it is for, and never handed out again.
wallet_keysets = Table(
    "wallet_keysets",
    metadata,
    Column("id", String(66), primary_key=True),
    Column("mint_url", Text, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("counter", BigInteger, nullable=False, default=0),
)

# Every proof the node ever held: unspent -> reserved (inputs of a pending operation) ->
# spent (given to a user in a payout, or sent to the mint). Rows are never deleted.
wallet_proofs = Table(
    "wallet_proofs",
    metadata,
    Column("secret", Text, primary_key=True),
    Column("keyset_id", String(66), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("signature", Text, nullable=False),  # the proof's C
    Column("dleq", Text, nullable=True),
    Column("mint_url", Text, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("state", String(10), nullable=False),
    Column("op_id", String(100), nullable=True),  # what reserved or spent it
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_wallet_proofs_holding", "mint_url", "unit", "state"),
    Index("ix_wallet_proofs_op", "op_id"),
)

# One row per request to a mint that moves value (swap in, swap out, mint, melt), written
# before the request leaves: the outputs it asked for (keyset, first counter, amounts) are
# enough to finish it from either outcome (NUT-09 restore) or to undo it.
wallet_ops = Table(
    "wallet_ops",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("kind", String(12), nullable=False),  # receive | split | melt
    Column("mint_url", Text, nullable=False),
    Column("unit", String(8), nullable=False),
    Column("state", String(10), nullable=False),  # pending | done | undone
    Column("instance_id", String(40), nullable=False),
    Column("keyset_id", String(66), nullable=True),
    Column("outputs", Text, nullable=True),  # JSON [[amount, counter], ...] in output order
    Column("inputs", Text, nullable=True),  # users' proofs (receive), JSON, until done
    Column("detail", Text, nullable=True),  # melt: the quote and what was sent
    # What the operation did to the operator's share of the ecash: the fee it paid (< 0),
    # or what batching left over (> 0). The audit adds these to the revenue.
    Column("node_delta_msat", BigInteger, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_wallet_ops_state", "state"),
)

# Live node processes; a reservation whose instance stopped heartbeating is provably orphaned.
instances = Table(
    "instances",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

# Which instance runs each fleet-wide background job, until when (migration 0008).
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(40), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("acquired_at", Float, nullable=False),
)

# The operator's side (migration 0005).

# Values the node keeps about itself: the admin password's hash (`admin_password_hash`).
node_config = Table(
    "node_config",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Dashboard logins: the sha256 of the session cookie, never the cookie itself.
admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Settings changed through the admin API: they win over the environment until reset.
setting_overrides = Table(
    "setting_overrides",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
    Column("updated_at", Float, nullable=False),
)
