"""The operator's revenue: what the node earned, and taking it out without the users' money.

Revenue is the part of the node's ecash that nobody's balance stands for: charges, the
sub-unit remainders kept at payouts, and what the wallet's own operations gained or paid
(audit.py). It is taken out through an *operator account* per (mint, unit) (kind
`operator`, a key hash no API key or token can hash to), in one transaction that:

1. serialises against every other withdrawal (a row lock on one `node_config` row);
2. checks the amount against the revenue not yet moved plus what the operator account
   already holds, and against the mint's surplus (its ecash less the users' balances and
   the payouts in flight there), so no withdrawal can cut into a liability;
3. moves what the operator account lacks onto it (journal kind `revenue`: the audit's
   revenue drops exactly as its liabilities rise);
4. debits it as an ordinary payout (`payouts.begin_tx`).

From there the payout is the usual debit-first, idempotent, crash-safe one: a Cashu token
(`Payouts.issue`) or a Lightning payment (`LightningSender.send`). What an undone payout or
an unused Lightning fee reserve leaves on the operator account stays revenue available.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from satsrouter.billing.audit import Audit, audit
from satsrouter.billing.balances import credit_tx, open_account_tx
from satsrouter.billing.payouts import Payout, Payouts, PendingPayout, begin_tx, existing_tx
from satsrouter.ecash.tokens import normalize_mint_url
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

log = logging.getLogger(__name__)

OPERATOR_KIND = "operator"
# The journal kind of revenue moved onto an operator account.
REVENUE_KIND = "revenue"
WITHDRAWABLE_UNITS = ("sat",)

# Taking the row lock on this row is what serialises withdrawals (Postgres; SQLite's
# runner is serial anyway): each one's checks see every earlier one's move.
_LOCK = (
    "INSERT INTO node_config (name, value, updated_at) VALUES ('revenue_withdrawals', '', :now) "
    "ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at"
)
_EARNED = "SELECT coalesce(-sum(amount_msat), 0) FROM journal WHERE kind IN ('charge', 'rounding')"
_WALLET_DELTA = "SELECT coalesce(sum(node_delta_msat), 0) FROM wallet_ops"
_MOVED = f"SELECT coalesce(sum(amount_msat), 0) FROM journal WHERE kind = '{REVENUE_KIND}'"
_ECASH = (
    "SELECT mint_url, unit, sum(amount) FROM wallet_proofs "
    "WHERE state IN ('unspent', 'reserved') GROUP BY mint_url, unit"
)
_BALANCES = (
    "SELECT mint_url, unit, kind, sum(balance_msat), sum(balance_msat - reserved_msat) "
    "FROM accounts GROUP BY mint_url, unit, kind"
)
_IN_FLIGHT = (
    "SELECT mint_url, unit, sum(amount_msat) FROM payouts WHERE state = 'pending' "
    "GROUP BY mint_url, unit"
)
_WITHDRAWALS = (
    "SELECT p.id, p.method, p.amount_msat, p.unit, p.mint_url, p.destination, p.state, "
    "p.fee_msat, p.created_at FROM payouts p JOIN accounts a ON a.id = p.account_id "
    "WHERE a.kind = :operator ORDER BY p.created_at DESC, p.id DESC LIMIT :limit"
)

MintUnit = tuple[str, str]


class LightningSender(Protocol):
    """Pays a debited payout over Lightning (lightning/refunds.py), handed in from above."""

    async def send(self, step: PendingPayout, destination: str) -> Payout: ...

    def check_payee(self, destination: str) -> None: ...


class InsufficientRevenue(ApiError):
    """More was asked for than revenue (at that mint) can cover; nothing was changed."""

    def __init__(self, available_msat: int, unit: str) -> None:
        per_unit = UNIT_MSAT[unit]
        whole = max(available_msat, 0) // per_unit
        super().__init__(
            400,
            "insufficient_revenue",
            f"Only {whole} {unit} available to withdraw ({available_msat} msat of revenue "
            "not owed to users at this mint).",
        )
        self.available_msat = available_msat

    def envelope(self) -> dict[str, object]:
        body = super().envelope()
        error = body["error"]
        assert isinstance(error, dict)
        error["available_msat"] = self.available_msat
        return body


def operator_key_hash(mint_url: str, unit: str) -> str:
    """The operator account's key hash: never a sha256 hex digest, so never a key's."""
    digest = hashlib.sha256(mint_url.encode()).hexdigest()[:40]
    return f"operator:{unit}:{digest}"


@dataclass
class Books:
    """The ledger's side of the node's money, in msat, read in one transaction."""

    earned: int = 0
    moved: int = 0
    ecash: dict[MintUnit, int] = field(default_factory=dict)
    liabilities: dict[MintUnit, int] = field(default_factory=dict)  # users' balances
    operator: dict[MintUnit, int] = field(default_factory=dict)  # operator balances
    operator_free: dict[MintUnit, int] = field(default_factory=dict)  # ... unreserved
    in_flight: dict[MintUnit, int] = field(default_factory=dict)

    @property
    def withdrawn(self) -> int:
        """Revenue moved out and no longer on an operator account: paid or in flight."""
        return self.moved - sum(self.operator.values())

    @property
    def available(self) -> int:
        """Revenue not yet withdrawn, over all mints."""
        return self.earned - self.withdrawn

    def surplus(self, key: MintUnit) -> int:
        """Ecash at (mint, unit) that no user's balance or payout in flight stands for."""
        return self.ecash.get(key, 0) - self.liabilities.get(key, 0) - self.in_flight.get(key, 0)

    def available_at(self, key: MintUnit) -> int:
        """What a withdrawal at (mint, unit) may take: revenue, within the mint's surplus."""
        unmoved = max(self.earned - self.moved, 0)
        return max(min(self.operator_free.get(key, 0) + unmoved, self.surplus(key)), 0)

    def keys(self) -> list[MintUnit]:
        every = set(self.ecash) | set(self.liabilities) | set(self.operator) | set(self.in_flight)
        return sorted(every)


def books_tx(tx: Tx) -> Books:
    """Read revenue, ecash and liabilities per (mint, unit) in the caller's transaction."""
    books = Books()
    books.earned = int(tx.execute(_EARNED, {})[0][0][0])
    books.earned += int(tx.execute(_WALLET_DELTA, {})[0][0][0])
    books.moved = int(tx.execute(_MOVED, {})[0][0][0])
    for mint, unit, amount in tx.execute(_ECASH, {})[0]:
        books.ecash[(mint, unit)] = int(amount) * UNIT_MSAT[unit]
    for mint, unit, kind, balance, free in tx.execute(_BALANCES, {})[0]:
        key = (mint, unit)
        if kind == OPERATOR_KIND:
            books.operator[key] = books.operator.get(key, 0) + int(balance)
            books.operator_free[key] = books.operator_free.get(key, 0) + int(free)
        else:
            books.liabilities[key] = books.liabilities.get(key, 0) + int(balance)
    for mint, unit, amount in tx.execute(_IN_FLIGHT, {})[0]:
        books.in_flight[(mint, unit)] = int(amount)
    return books


@dataclass(frozen=True)
class Withdrawal:
    """A finished (or Lightning-pending) withdrawal and what is left to withdraw after it."""

    payout: Payout
    amount: int
    unit: str
    mint_url: str
    available_msat: int


class Revenue:
    """Figures for the operator's wallet view; withdrawals of revenue, by hand or on a timer."""

    def __init__(
        self,
        tx: TxRunner,
        payouts: Payouts,
        wallet: NodeWallet,
        lightning: LightningSender | None = None,
    ) -> None:
        self._tx = tx
        self.payouts = payouts
        self.wallet = wallet
        self.lightning = lightning

    async def books(self) -> Books:
        """The current books (one consistent read)."""
        return await self._tx.read(books_tx)

    async def view(self) -> dict[str, Any]:
        """The wallet view of `GET /admin/api/wallet`: each mint asked about the proofs held."""
        checked: Audit = await audit(self._tx, self.wallet)
        books = await self.books()
        at_mint = {(h.mint, h.unit): h for h in checked.holdings}
        keys = set(books.keys()) | {(m, "sat") for m in self.wallet.mints}
        unreachable = set(checked.unreachable)
        for mint, unit in keys - set(at_mint):
            if mint not in unreachable and not await self._answers(mint, unit):
                unreachable.add(mint)
        mints = []
        for mint, unit in sorted(keys):
            per_unit = UNIT_MSAT[unit]
            holding = at_mint.get((mint, unit))
            mints.append(
                {
                    "mint_url": mint,
                    "unit": unit,
                    "held_msat": books.ecash.get((mint, unit), 0),
                    "at_mint_msat": holding.at_mint * per_unit if holding else 0,
                    "spent_at_mint_msat": holding.spent_at_mint * per_unit if holding else 0,
                    "liabilities_msat": books.liabilities.get((mint, unit), 0),
                    "payouts_in_flight_msat": books.in_flight.get((mint, unit), 0),
                    "surplus_msat": books.surplus((mint, unit)),
                    "reachable": mint not in unreachable,
                }
            )
        return {
            "mints": mints,
            "liabilities_msat": sum(books.liabilities.values()),
            "revenue": {
                "earned_msat": books.earned,
                "withdrawn_msat": books.withdrawn,
                "available_msat": books.available,
            },
            "audit": {
                "ok": checked.ok,
                "difference_msat": checked.difference_msat,
                "unreachable": checked.unreachable,
            },
        }

    async def _answers(self, mint: str, unit: str) -> bool:
        """Whether a mint the node holds nothing at answers a (NUT-07) state check."""
        try:
            await self.wallet.proof_states(await self.wallet.loaded_slot(mint, unit), [])
        except Exception:
            return False
        return True

    def check_request(
        self, amount: object, unit: object, mint_url: object, destination: object
    ) -> tuple[int, str, str, str | None]:
        """Validate a withdrawal request (ApiError 400 naming the field); normalised values."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ApiError(400, "invalid_amount", "`amount` must be a whole number of sat > 0.")
        if unit not in WITHDRAWABLE_UNITS:
            raise ApiError(
                400, "unsupported_unit", f"`unit` must be 'sat' (not {str(unit)[:16]!r})."
            )
        if mint_url is None:
            mint = self.wallet.primary_mint
        elif isinstance(mint_url, str) and normalize_mint_url(mint_url) in self.wallet.mints:
            mint = normalize_mint_url(mint_url)
        else:
            raise ApiError(
                400,
                "unknown_mint",
                "`mint_url` must be one of this node's mints: " + ", ".join(self.wallet.mints),
            )
        if destination is not None:
            if not isinstance(destination, str) or not destination.strip():
                raise ApiError(
                    400,
                    "invalid_destination",
                    "`destination` must be a bolt11 invoice or a Lightning address.",
                )
            if self.lightning is None:
                raise ApiError(503, "lightning_unavailable", "Lightning payouts are not enabled.")
            destination = destination.strip()
            self.lightning.check_payee(destination)
        return amount, str(unit), mint, destination

    async def withdraw(
        self,
        amount: int,
        unit: str,
        mint_url: str,
        destination: str | None = None,
        idempotency_key: str | None = None,
    ) -> Withdrawal:
        """Take `amount` (in `unit`) of revenue out as a Cashu token, or pay `destination`.

        Raises InsufficientRevenue (400, nothing changed) when revenue or the mint's surplus
        does not cover it. Over Lightning, `amount` is what leaves revenue: the recipient
        gets it less the mint's fees (address), or the invoice's amount (invoice), and the
        fee reserve the mint did not use stays available. The same `idempotency_key` again
        returns the withdrawal made under it (PayoutConflict while it is being sent).
        """
        per_unit = UNIT_MSAT[unit]
        amount_msat = amount * per_unit
        if idempotency_key:
            payout_id = "revenue:" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        else:
            payout_id = "revenue:" + os.urandom(16).hex()
        method = "cashu" if destination is None else "lightning"
        key = (mint_url, unit)
        now = time.time()
        instance = self.payouts.ledger.instance_id

        def take(tx: Tx) -> Payout | PendingPayout:
            tx.execute(_LOCK, {"now": now})
            done = existing_tx(tx, payout_id)
            if done is not None:
                return done
            account = open_account_tx(
                tx, operator_key_hash(mint_url, unit), OPERATOR_KIND, mint_url, unit, now
            )
            books = books_tx(tx)
            available = books.available_at(key)
            if amount_msat > available:
                raise InsufficientRevenue(available, unit)
            lacking = amount_msat - books.operator_free.get(key, 0)
            if lacking > 0:
                credit_tx(tx, account, lacking, REVENUE_KIND, payout_id, now)
            return begin_tx(tx, account, payout_id, amount_msat, method, destination, instance, now)

        # Marked as being sent before the debit exists, so recovery never undoes it meanwhile.
        with self.payouts.sending(payout_id):
            step = await self._tx.run(take, durable=True)
            if isinstance(step, Payout):
                payout = step  # a replay: the withdrawal made under this key
            else:
                payout = await self._send(step, destination)
        books = await self.books()
        return Withdrawal(payout, amount, unit, mint_url, books.available_at(key))

    async def _send(self, step: PendingPayout, destination: str | None) -> Payout:
        log.info("withdrawal %s: %d msat from %s", step.id, step.amount_msat, step.mint_url)
        if destination is None:
            return await self.payouts.issue(step)
        assert self.lightning is not None
        return await self.lightning.send(step, destination)

    async def withdrawals(self, limit: int = 200) -> list[dict[str, Any]]:
        """Withdrawals newest first (failed ones were undone and are not listed)."""
        params = {"operator": OPERATOR_KIND, "limit": limit}
        rows, _ = await self._tx.read(lambda tx: tx.execute(_WITHDRAWALS, params))
        return [
            {
                "id": row[0],
                "method": row[1],
                "amount_msat": int(row[2]),
                "unit": row[3],
                "mint_url": row[4],
                "destination": row[5],
                "state": row[6],
                "fee_msat": int(row[7]),
                "created_at": float(row[8]),
            }
            for row in rows
        ]

    async def pay_out_above(self, address: str, threshold_sat: int) -> Withdrawal | None:
        """Send all whole sat of revenue at the primary mint to `address` once it reaches
        `threshold_sat`; None when below it."""
        mint = self.wallet.primary_mint
        books = await self.books()
        amount = books.available_at((mint, "sat")) // UNIT_MSAT["sat"]
        if amount < threshold_sat or amount <= 0:
            return None
        return await self.withdraw(amount, "sat", mint, address)

    async def run_auto_payout(
        self, settings: Callable[[], tuple[str, int]], interval: Callable[[], float]
    ) -> None:
        """Every `interval()` seconds: pay revenue over the threshold to the configured address.

        `settings()` gives the current (address, threshold in sat); empty or 0 is off. Both
        are read on every pass: the admin may change them.
        """
        while True:
            await asyncio.sleep(interval())
            await self.auto_payout_once(settings)

    async def auto_payout_once(self, settings: Callable[[], tuple[str, int]]) -> None:
        """One pass of `run_auto_payout`; a payout not made is logged, not raised.

        Two passes at once (two nodes) cannot pay revenue twice: `withdraw` takes the
        withdrawals' row lock and checks the amount against what is left in that same
        transaction, so the later one finds it taken (InsufficientRevenue, nothing changed).
        """
        address, threshold = settings()
        if not address or threshold <= 0:
            return
        try:
            done = await self.pay_out_above(address, threshold)
            if done is not None:
                log.info(
                    "automatic payout %s: %d sat sent",
                    done.payout.id,
                    done.payout.amount_msat // 1000,
                )
        except Exception as exc:
            code = getattr(exc, "code", type(exc).__name__)
            log.warning("automatic payout not made: %s", code)
