"""Funding a key by paying a Lightning invoice: a mint quote at the primary mint.

Each invoice is a row that moves `pending → minting → credited` (or `pending → expired`),
every step a compare-and-set, so the key is credited exactly once however many status polls,
watcher passes and node restarts race to finish it:

- `pending → minting` once the mint reports the quote paid;
- in `minting`, a fresh range of deterministic outputs is reserved in the wallet and recorded
  on the row *before* minting, so a crash at any later point is finished by minting or
  restoring exactly those outputs (see `ecash.minting`);
- `minting → credited` in the same transaction as the credit and its journal row (I1).

The client's invoice id is a bearer secret (for `create` it yields the key): the row stores
only its sha256, and the new key is derived from it (HMAC), so only its hash is stored (I8).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from satsrouter import faults
from satsrouter.billing.balances import credit_tx, open_account_tx
from satsrouter.billing.ledger import Ledger
from satsrouter.billing.payments import key_disabled, sha256_hex
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.minting import MintOutputs, QuoteMinter
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

log = logging.getLogger(__name__)

PURPOSES = ("create", "topup")
UNIT = "sat"
MAX_INVOICE_SATS = 1_000_000  # Routstr's limit
# Anyone may ask for a `create` invoice, and the watcher polls the mint for each one.
MAX_PENDING_INVOICES = 1000
# Clock skew between node and mint: an unpaid quote is expired this long after its expiry.
EXPIRY_GRACE_SECONDS = 5.0
WATCH_CONCURRENCY = 8
MAX_RETRY_DELAY = 300.0
# The watcher asks the mint about an invoice more rarely as it ages (a payer usually pays
# within seconds); a status poll always asks at once.
RECHECK_AGE_FACTOR = 0.05
MAX_RECHECK_DELAY = 60.0
ACTIVE = ("pending", "minting")
_KEY_LABEL = b"satsrouter lightning api key"
_LOCK_STRIPES = 64

_INSERT = (
    "INSERT INTO lightning_invoices (id, quote_id, mint_url, unit, amount, bolt11, quote_key, "
    "purpose, account_id, key_hash, state, expires_at, created_at, updated_at) VALUES (:id, "
    ":quote, :mint, :unit, :amount, :bolt11, :quote_key, :purpose, :account, :key_hash, "
    "'pending', :expires, :now, :now)"
)
_ROW = (
    "SELECT id, quote_id, mint_url, unit, amount, purpose, account_id, key_hash, state, "
    "expires_at, created_at, quote_key, mint_keyset, mint_counter, mint_amounts "
    "FROM lightning_invoices WHERE id = :id"
)
_ACTIVE = "SELECT id, created_at FROM lightning_invoices WHERE state IN ('pending', 'minting')"
_PENDING_COUNT = "SELECT count(*) FROM lightning_invoices WHERE state = 'pending'"
_ACCOUNT_OF = "SELECT account_id FROM lightning_invoices WHERE id = :id"
_PARENT_OF = "SELECT parent_id, disabled_at FROM accounts WHERE id = :id"
_MOVE = (
    "UPDATE lightning_invoices SET state = :new, updated_at = :now WHERE id = :id AND state = :old"
)
_RECORD_OUTPUTS = (
    "UPDATE lightning_invoices SET mint_keyset = :keyset, mint_counter = :counter, "
    "mint_amounts = :amounts, updated_at = :now "
    "WHERE id = :id AND state = 'minting' AND mint_counter IS NULL"
)
_CREDITED = (
    "UPDATE lightning_invoices SET state = 'credited', credited_msat = :msat, updated_at = :now "
    "WHERE id = :id AND state = 'minting'"
)
_SET_ACCOUNT = "UPDATE lightning_invoices SET account_id = :account WHERE id = :id"


def api_key_for(invoice_id: str) -> str:
    """The `sk-` key a paid `create` invoice funds, derived from its (secret) id."""
    return "sk-" + hmac.new(invoice_id.encode(), _KEY_LABEL, hashlib.sha256).hexdigest()[:48]


def row_id_for(invoice_id: str) -> str:
    return sha256_hex(invoice_id)


@dataclass(frozen=True)
class Invoice:
    """A new invoice, as shown to the client once."""

    invoice_id: str
    bolt11: str
    amount_sats: int
    expires_at: float
    purpose: str


@dataclass(frozen=True)
class InvoiceStatus:
    """Where an invoice stands: `pending`, `paid` (credited) or `expired`."""

    status: str
    purpose: str
    amount_sats: int
    created_at: float
    expires_at: float
    api_key: str | None = None
    balance_msat: int | None = None


@dataclass(frozen=True)
class _Row:
    id: str
    quote_id: str
    mint_url: str
    unit: str
    amount: int
    purpose: str
    account_id: int | None
    key_hash: str | None
    state: str
    expires_at: float
    created_at: float
    outputs: MintOutputs | None
    quote_key: str | None = None

    @classmethod
    def of(cls, r: tuple[Any, ...]) -> _Row:
        """From the columns of `_ROW`, in order."""
        id_, quote_id, mint_url, unit, amount, purpose, account_id, key_hash, state = r[:9]
        expires_at, created_at, quote_key, keyset, counter, amounts = r[9:]
        outputs = None
        if counter is not None:
            outputs = MintOutputs(keyset, int(counter), MintOutputs.decode_amounts(amounts))
        return cls(
            id=id_,
            quote_id=quote_id,
            mint_url=mint_url,
            unit=unit,
            amount=int(amount),
            purpose=purpose,
            account_id=account_id,
            key_hash=key_hash,
            state=state,
            expires_at=float(expires_at or 0.0),
            created_at=float(created_at),
            outputs=outputs,
            quote_key=quote_key,
        )


class LightningFunding:
    """Invoices that fund keys, and the watcher that credits them when paid.

    Every write is durable: an invoice row holds the only key that can mint its paid quote,
    and the outputs recorded on it are what a crash is finished from.
    """

    def __init__(self, tx: TxRunner, ledger: Ledger, wallet: NodeWallet) -> None:
        self._tx = tx
        self.ledger = ledger
        self.wallet = wallet
        self.minter = QuoteMinter(wallet, tx)
        # In-process only: saves duplicate mint calls; exactly-once comes from the row's CAS.
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        self._next_check: dict[str, float] = {}  # row id -> when the watcher asks again
        self._failures: dict[str, int] = {}
        self.expiry_grace = EXPIRY_GRACE_SECONDS
        # Test hook: raise here to simulate a crash between minting and crediting.
        self.fail_before_credit: Exception | None = None

    # ---- the API ----

    async def create_invoice(
        self, amount_sats: int, purpose: str, account_id: int | None = None
    ) -> Invoice:
        """A bolt11 invoice (a mint quote at the primary mint) that funds a new key or a top-up."""
        if purpose not in PURPOSES:
            raise ApiError(400, "invalid_purpose", 'Set `purpose` to "create" or "topup".')
        if not 0 < amount_sats <= MAX_INVOICE_SATS:
            raise ApiError(
                400,
                "invalid_amount",
                f"`amount_sats` must be a whole number from 1 to {MAX_INVOICE_SATS}.",
            )
        if (purpose == "topup") != (account_id is not None):
            raise ValueError("a topup needs an account, a create must not have one")
        if account_id is not None:
            await self._check_topup_target(account_id)
        if await self._pending_count() >= MAX_PENDING_INVOICES:
            raise ApiError(
                503, "too_many_invoices", "Too many unpaid invoices right now; try again later."
            )
        mint = self.wallet.primary_mint
        try:
            quote = await self.minter.request_quote(amount_sats, UNIT, mint)
        except EcashError as exc:
            raise _invoice_error(exc) from None
        invoice_id = secrets.token_urlsafe(24)
        row_id = row_id_for(invoice_id)
        key_hash = sha256_hex(api_key_for(invoice_id)) if purpose == "create" else None
        params = {
            "id": row_id,
            "quote": quote.quote_id,
            "mint": mint,
            "unit": UNIT,
            "amount": amount_sats,
            "bolt11": quote.bolt11,
            "quote_key": quote.quote_key,
            "purpose": purpose,
            "account": account_id,
            "key_hash": key_hash,
            "expires": quote.expires_at,
            "now": time.time(),
        }
        await self._tx.run(lambda tx: tx.execute(_INSERT, params), durable=True)
        log.info("lightning invoice %s: %d sat to %s", row_id[:12], amount_sats, purpose)
        return Invoice(invoice_id, quote.bolt11, amount_sats, quote.expires_at, purpose)

    async def status(self, invoice_id: str) -> InvoiceStatus:
        """Where the invoice stands; a paid one is credited now if the watcher has not yet."""
        row_id = row_id_for(invoice_id)
        row = await self._get(row_id)
        if row is None:
            raise ApiError(
                404, "invoice_not_found", "No invoice has this id. Use the id you were given."
            )
        if row.state in ACTIVE:
            try:
                await self._advance(row_id)
            except Exception as exc:
                # the watcher keeps trying; the client sees "pending" meanwhile
                _log_failure(row_id, exc, retry_in=None)
            row = await self._get(row_id)
            assert row is not None
        status = InvoiceStatus(
            status={"credited": "paid", "expired": "expired"}.get(row.state, "pending"),
            purpose=row.purpose,
            amount_sats=row.amount,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )
        if row.state != "credited":
            return status
        account_id = await self._account_of(row_id)
        balance = (await self.ledger.get_account_by_id(account_id)).balance_msat
        api_key = api_key_for(invoice_id) if row.purpose == "create" else None
        return replace(status, api_key=api_key, balance_msat=balance)

    async def run_watcher(self, interval: float | Callable[[], float]) -> None:
        """Credit paid invoices and expire stale ones, forever (no client poll needed).

        `interval`: seconds, or a function read every round (the admin may change it).
        """
        while True:
            await self.watch_once()
            await asyncio.sleep(interval() if callable(interval) else interval)

    async def watch_once(self) -> None:
        """One watcher pass (`poll_once`), its outcome logged rather than raised."""
        try:
            credited = await self.poll_once()
            if credited:
                log.info("lightning watcher credited %d invoices", credited)
        except Exception:
            log.exception("lightning watcher pass failed")

    async def poll_once(self) -> int:
        """One pass over every unfinished invoice; returns how many this pass credited."""
        rows = dict(await self._tx.read(lambda tx: tx.execute(_ACTIVE, {})[0]))
        for gone in set(self._next_check) - set(rows):
            self._next_check.pop(gone, None)
            self._failures.pop(gone, None)
        now = time.monotonic()
        due = [i for i in rows if self._next_check.get(i, 0.0) <= now]
        gate = asyncio.Semaphore(WATCH_CONCURRENCY)

        async def one(row_id: str) -> bool:
            async with gate:
                try:
                    credited = await self._advance(row_id)
                except Exception as exc:
                    failures = self._failures.get(row_id, 0) + 1
                    self._failures[row_id] = failures
                    delay = min(MAX_RETRY_DELAY, 2.0**failures)
                    self._next_check[row_id] = time.monotonic() + delay
                    _log_failure(row_id, exc, retry_in=delay)
                    return False
            self._failures.pop(row_id, None)
            age = time.time() - float(rows[row_id])
            delay = min(MAX_RECHECK_DELAY, age * RECHECK_AGE_FACTOR)
            self._next_check[row_id] = time.monotonic() + delay
            return credited

        return sum(await asyncio.gather(*(one(i) for i in due)))

    # ---- the state machine ----

    async def _advance(self, row_id: str) -> bool:
        """Move one invoice as far as the mint allows; True if this call credited it."""
        async with self._locks[int(row_id[:8], 16) % _LOCK_STRIPES]:
            row = await self._get(row_id)
            if row is None or row.state not in ACTIVE:
                return False
            if row.quote_key is None:
                return False  # written before quote keys were kept here: not mintable by us
            quote = await self.minter.quote_state(row.quote_id, row.unit, row.mint_url)
            if quote.state not in ("paid", "issued"):
                expired = time.time() >= row.expires_at + self.expiry_grace
                if row.state == "pending" and quote.state == "unpaid" and expired:
                    await self._move(row_id, "pending", "expired")
                    log.info("lightning invoice %s expired unpaid", row_id[:12])
                return False
            if row.state == "pending" and not await self._move(row_id, "pending", "minting"):
                return False
            outputs = row.outputs or await self._reserve_outputs(row)
            if outputs is None:
                return False
            faults.reach("mint.after_outputs")
            minted = await self.minter.mint(
                row.quote_id, row.quote_key, outputs, row.unit, row.mint_url
            )
            if self.fail_before_credit is not None:
                raise self.fail_before_credit
            return await self._credit(row, minted)

    async def _reserve_outputs(self, row: _Row) -> MintOutputs | None:
        outputs = await self.minter.reserve_outputs(row.amount, row.unit, row.mint_url)
        params = {
            "id": row.id,
            "keyset": outputs.keyset_id,
            "counter": outputs.counter,
            "amounts": outputs.encode_amounts(),
            "now": time.time(),
        }
        _, recorded = await self._tx.run(
            lambda tx: tx.execute(_RECORD_OUTPUTS, params), durable=True
        )
        # Not recorded means someone else recorded theirs first: the unused range is just
        # skipped (counters are never reused), and the next pass mints with the recorded one.
        return outputs if recorded == 1 else None

    async def _credit(self, row: _Row, minted: int) -> bool:
        """`minting → credited` and the credit, in one transaction; False if already done."""
        amount_msat = minted * UNIT_MSAT[row.unit]
        if minted != row.amount:
            log.warning(
                "lightning invoice %s: minted %d %s for a %d invoice",
                row.id[:12],
                minted,
                row.unit,
                row.amount,
            )
        now = time.time()

        def credit(tx: Tx) -> bool:
            params = {"id": row.id, "msat": amount_msat, "now": now}
            if tx.execute(_CREDITED, params)[1] != 1:
                return False
            account_id = row.account_id
            if account_id is None:
                assert row.key_hash is not None
                account_id = open_account_tx(tx, row.key_hash, "key", row.mint_url, row.unit, now)
                tx.execute(_SET_ACCOUNT, {"id": row.id, "account": account_id})
            credit_tx(tx, account_id, amount_msat, "credit", f"ln:{row.quote_id}", now)
            return True

        if not await self._tx.run(credit, durable=True):
            return False
        log.info("lightning invoice %s credited %d msat", row.id[:12], amount_msat)
        return True

    async def _move(self, row_id: str, from_state: str, to_state: str) -> bool:
        params = {"id": row_id, "old": from_state, "new": to_state, "now": time.time()}
        _, moved = await self._tx.run(lambda tx: tx.execute(_MOVE, params), durable=True)
        return moved == 1

    # ---- reads ----

    async def _get(self, row_id: str) -> _Row | None:
        rows, _ = await self._tx.read(lambda tx: tx.execute(_ROW, {"id": row_id}))
        return _Row.of(rows[0]) if rows else None

    async def _account_of(self, row_id: str) -> int:
        rows, _ = await self._tx.read(lambda tx: tx.execute(_ACCOUNT_OF, {"id": row_id}))
        return int(rows[0][0])

    async def _pending_count(self) -> int:
        rows, _ = await self._tx.read(lambda tx: tx.execute(_PENDING_COUNT, {}))
        return int(rows[0][0])

    async def _check_topup_target(self, account_id: int) -> None:
        rows, _ = await self._tx.read(lambda tx: tx.execute(_PARENT_OF, {"id": account_id}))
        parent, disabled = rows[0] if rows else (None, None)
        if parent is not None:
            raise ApiError(
                400, "child_key", "A child key spends its parent's balance: top up the parent key."
            )
        if disabled is not None:
            raise key_disabled()


def _invoice_error(exc: EcashError) -> ApiError:
    if exc.code == "mint_unreachable":
        return ApiError(
            503, exc.code, "The mint could not be reached to create the invoice. Try again shortly."
        )
    if exc.code == "token_too_small":  # NUT error 11006: amount outside the mint's limits
        return ApiError(400, "invalid_amount", "The mint does not issue invoices of that amount.")
    return ApiError(502, "mint_error", "The mint could not create the invoice. Try again later.")


def _log_failure(row_id: str, exc: Exception, retry_in: float | None) -> None:
    retry = f"; retry in {retry_in:.0f}s" if retry_in is not None else ""
    if isinstance(exc, EcashError):
        log.warning("lightning invoice %s not finished: %s%s", row_id[:12], exc.code, retry)
    else:
        log.error("lightning invoice %s not finished%s", row_id[:12], retry, exc_info=exc)
