"""Paying balance out as Cashu tokens: debit first, idempotent by id (I7)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from satsrouter import faults
from satsrouter.billing.balances import credit_tx, debit_available_tx
from satsrouter.billing.ledger import Ledger
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

log = logging.getLogger(__name__)

_ISSUED = "SELECT amount_msat, token, state, method, detail, fee_msat FROM payouts WHERE id = :id"
_ACCOUNT = "SELECT balance_msat, reserved_msat, unit, mint_url FROM accounts WHERE id = :id"
_INSERT_PAYOUT = (
    "INSERT INTO payouts (id, account_id, amount_msat, unit, mint_url, token, state, method, "
    "destination, fee_msat, instance_id, created_at, updated_at) VALUES (:id, :account, "
    ":amount, :unit, :mint, NULL, :state, :method, :destination, 0, :instance, :now, :now) "
    "ON CONFLICT (id) DO NOTHING"
)
_COMPLETE = (
    "UPDATE payouts SET state = 'issued', token = :token, detail = :detail, fee_msat = :fee, "
    "updated_at = :now WHERE id = :id AND state = 'pending' RETURNING method"
)
_FORGET_PENDING = "DELETE FROM payouts WHERE id = :id AND state = 'pending'"
_PENDING_CASHU = (
    "SELECT id, account_id, amount_msat, unit, mint_url, instance_id, updated_at FROM payouts "
    "WHERE state = 'pending' AND method = 'cashu'"
)


class PayoutConflict(Exception):
    """Another payout with this id is in progress, or the balance is reserved."""


class PayoutCancelled(PayoutConflict):
    """A payout was undone (by recovery) before its result could be recorded."""


class PayoutRaced(Exception):
    """Another transaction recorded a payout with the same id first (this one rolls back)."""


class PayoutInvalid(ValueError):
    """The requested amount cannot be paid out (not a whole unit, or not positive)."""


class NothingToPayOut(Exception):
    """The whole balance was asked for, but it is less than one unit of the account's token.

    No token can carry less than one unit, so nothing is debited: the msat stay on the
    account, where they still pay for requests.
    """

    def __init__(self, available_msat: int, unit: str) -> None:
        super().__init__(f"{available_msat} msat available, less than 1 {unit}")
        self.available_msat = available_msat
        self.unit = unit


@dataclass(frozen=True)
class Payout:
    """Value paid out of an account: a Cashu token, or a Lightning payment (`detail`)."""

    id: str
    amount_msat: int
    token: str | None  # None when paid over Lightning (or an empty payout of an older node)
    method: str = "cashu"
    detail: str | None = None
    fee_msat: int = 0


def _issued(tx: Tx, payout_id: str) -> Payout | None:
    """The payout made under this id, if any; PayoutConflict while it is still pending."""
    rows, _ = tx.execute(_ISSUED, {"id": payout_id})
    if not rows:
        return None
    amount, token, state, method, detail, fee = rows[0]
    if state != "issued":
        raise PayoutConflict("this payout is still being sent; retry shortly")
    return Payout(payout_id, int(amount), token, method, detail, int(fee))


@dataclass(frozen=True)
class PendingPayout:
    """A payout whose amount is already debited (I7) and whose value is not yet sent."""

    id: str
    account_id: int
    amount_msat: int
    unit: str
    mint_url: str

    @property
    def amount(self) -> int:
        """The amount in the account's unit (sat or msat)."""
        return self.amount_msat // UNIT_MSAT[self.unit]


class Payouts:
    """Debit-first, idempotent payouts; `pay_out` issues Cashu, other methods reuse the steps."""

    def __init__(self, tx: TxRunner, ledger: Ledger, wallet: NodeWallet) -> None:
        self._tx = tx
        self.ledger = ledger
        self.wallet = wallet
        # Payout ids being sent by calls in this process (recovery leaves them alone).
        self._sending: Counter[str] = Counter()

    async def get(self, payout_id: str) -> Payout | None:
        """A payout already made under this id, if any; 409-style conflict if in flight."""
        return await self._tx.read(lambda tx: _issued(tx, payout_id))

    async def pay_out_all(self, account_id: int, payout_id: str) -> Payout:
        """Pay out the unreserved balance in whole units as Cashu; a sub-unit rest stays."""
        return await self.pay_out(account_id, payout_id, None)

    async def pay_out(self, account_id: int, payout_id: str, amount_msat: int | None) -> Payout:
        """Pay `amount_msat` (None: everything available) out as a Cashu token."""
        with self.sending(payout_id):
            return await self._pay_out(account_id, payout_id, amount_msat)

    @contextlib.contextmanager
    def sending(self, payout_id: str) -> Iterator[None]:
        """Mark `payout_id` as being sent by this process, so recovery leaves it alone."""
        self._sending[payout_id] += 1
        try:
            yield
        finally:
            self._sending[payout_id] -= 1
            if not self._sending[payout_id]:
                del self._sending[payout_id]

    async def _pay_out(self, account_id: int, payout_id: str, amount_msat: int | None) -> Payout:
        step = await self.begin(account_id, payout_id, amount_msat)
        if isinstance(step, Payout):
            return step
        return await self.issue(step)

    async def issue(self, step: PendingPayout) -> Payout:
        """Hand a debited Cashu payout over as a token; undo the debit if none was issued.

        The caller holds `sending(step.id)` from before the debit, so recovery cannot undo
        the payout while it is being issued.
        """
        faults.reach("payout.after_begin")
        try:
            # The token's proofs leave the wallet in the transaction that completes the
            # payout: a token is never out without its payout recorded, nor the reverse.
            return await self.wallet.issue(
                step.amount,
                step.unit,
                step.mint_url,
                step.id,
                lambda tx, token: _complete_tx(tx, step, token, None, 0, time.time()),
            )
        except PayoutCancelled:
            raise  # recovery undid it first; nothing was handed over
        except Exception as exc:
            # Nothing left the node: undo the debit so the balance is whole again.
            await self.undo(step)
            if isinstance(exc, EcashError):
                raise
            raise EcashError("mint_error", "Could not issue the token; try again.") from exc

    async def begin(
        self,
        account_id: int,
        payout_id: str,
        amount_msat: int | None,
        method: str = "cashu",
        destination: str | None = None,
    ) -> Payout | PendingPayout:
        """Debit and record a payout in one transaction; an existing payout is returned as is.

        `amount_msat=None` takes the unreserved balance rounded down to whole units of the
        account's token; the sub-unit rest stays on the account (nothing vanishes), and
        NothingToPayOut is raised when not even one unit is there.
        """
        now = time.time()
        instance = self.ledger.instance_id

        def op(tx: Tx) -> Payout | PendingPayout:
            return begin_tx(
                tx, account_id, payout_id, amount_msat, method, destination, instance, now
            )

        try:
            return await self._tx.run(op)
        except PayoutRaced:
            done = await self.get(payout_id)
            if done is None:
                raise PayoutConflict("payout raced with itself; retry") from None
            return done

    async def complete(
        self,
        step: PendingPayout,
        token: str | None = None,
        detail: str | None = None,
        fee_msat: int = 0,
    ) -> Payout:
        """Record what was sent; from now on the same id returns this payout."""
        now = time.time()
        return await self._tx.run(
            lambda tx: _complete_tx(tx, step, token, detail, fee_msat, now), durable=True
        )

    async def undo(self, step: PendingPayout) -> bool:
        """Nothing was sent: credit the debit back and forget the attempt (retry allowed).

        Compare-and-set on the pending row, so a payout is undone at most once and never
        after it completed. Returns whether this call undid it.
        """
        now = time.time()

        def op(tx: Tx) -> bool:
            _, gone = tx.execute(_FORGET_PENDING, {"id": step.id})
            if gone != 1:
                return False
            credit_tx(tx, step.account_id, step.amount_msat, "payout_undo", step.id, now)
            return True

        return await self._tx.run(op, durable=True)

    async def recover_cashu(self) -> int:
        """Undo Cashu payouts left `pending` by nobody sending them; returns how many.

        Nobody: their process died, or it is this one and no call is sending them any more
        (it was cancelled between the debit and the hand-over).

        A pending payout's token never left: its proofs are handed over only in the
        transaction that completes it. Crediting the debit back is therefore safe, and the
        proofs are still the node's.
        """
        rows, _ = await self._tx.read(lambda tx: tx.execute(_PENDING_CASHU, {}))
        undone = 0
        for payout_id, account_id, amount, unit, mint_url, instance_id, _ in rows:
            if instance_id == self.ledger.instance_id:
                if payout_id in self._sending:
                    continue
            elif instance_id is not None and not await self.ledger.is_dead(instance_id):
                continue
            step = PendingPayout(payout_id, account_id, int(amount), unit, mint_url)
            undone += await self.undo(step)
        return undone


def existing_tx(tx: Tx, payout_id: str) -> Payout | None:
    """`Payouts.get` as a step of a caller's transaction."""
    return _issued(tx, payout_id)


def _raced_tx(tx: Tx, payout_id: str) -> None:
    """Raise if this very payout appeared since `_issued` looked (its debit is what we saw).

    On Postgres (READ COMMITTED) each statement sees the latest commits: a concurrent begin
    of the same payout id may commit between our two reads, and its debit must not be
    answered with "nothing to pay out" while it is being sent (SQLite runs them in turn).
    """
    done = _issued(tx, payout_id)  # PayoutConflict while it is still pending
    if done is not None:
        raise PayoutRaced(payout_id)


def begin_tx(
    tx: Tx,
    account_id: int,
    payout_id: str,
    amount_msat: int | None,
    method: str,
    destination: str | None,
    instance_id: str,
    now: float,
) -> Payout | PendingPayout:
    """`Payouts.begin` as a step of a caller's transaction; raises PayoutRaced on a race."""
    done = _issued(tx, payout_id)
    if done is not None:
        return done
    rows, _ = tx.execute(_ACCOUNT, {"id": account_id})
    balance, reserved, unit, mint_url = rows[0]
    per_unit = UNIT_MSAT[unit]
    available = int(balance - reserved)
    if amount_msat is None:
        # Whole units only: a token cannot carry the rest, so it stays on the account.
        payout_msat = available - available % per_unit
        if not payout_msat:
            _raced_tx(tx, payout_id)
            raise NothingToPayOut(available, unit)
    else:
        if amount_msat % per_unit or amount_msat <= 0:
            raise PayoutInvalid(f"amount must be a positive multiple of {per_unit} msat")
        payout_msat = amount_msat
    if payout_msat > available:
        _raced_tx(tx, payout_id)
        raise PayoutConflict(f"only {available} msat available, {payout_msat} msat requested")
    if debit_available_tx(tx, account_id, payout_msat, "payout", payout_id, now) is None:
        raise PayoutConflict("balance changed during payout; retry")
    _, inserted = tx.execute(
        _INSERT_PAYOUT,
        {
            "id": payout_id,
            "account": account_id,
            "amount": payout_msat,
            "unit": unit,
            "mint": mint_url,
            "state": "pending",
            "method": method,
            "destination": destination,
            "instance": instance_id,
            "now": now,
        },
    )
    if inserted != 1:
        # The same id was recorded concurrently (Postgres): undo this debit.
        raise PayoutRaced
    return PendingPayout(payout_id, account_id, payout_msat, unit, mint_url)


def _complete_tx(
    tx: Tx, step: PendingPayout, token: str | None, detail: str | None, fee_msat: int, now: float
) -> Payout:
    params = {"id": step.id, "token": token, "detail": detail, "fee": fee_msat, "now": now}
    rows, _ = tx.execute(_COMPLETE, params)
    if not rows:
        raise PayoutCancelled(f"payout {step.id} was undone before it completed")
    return Payout(step.id, step.amount_msat, token, str(rows[0][0]), detail, fee_msat)
