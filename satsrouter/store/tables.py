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
    Index("ix_reservations_state", "state"),
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
)

# Live node processes; a reservation whose instance stopped heartbeating is provably orphaned.
instances = Table(
    "instances",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)
