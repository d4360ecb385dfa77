"""Paying balance out as Cashu tokens: debit first, idempotent by id (I7)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from satsrouter.billing.ledger import Ledger
from satsrouter.billing.redeem import UNIT_MSAT
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.tokens import parse_token
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tables import accounts, payouts

log = logging.getLogger(__name__)


class PayoutConflict(Exception):
    """Another payout with this id is in progress, or the balance is reserved."""


class PayoutCancelled(PayoutConflict):
    """A payout was undone (by recovery) before its result could be recorded."""


class PayoutInvalid(ValueError):
    """The requested amount cannot be paid out (not a whole unit, or not positive)."""


@dataclass(frozen=True)
class Payout:
    """Value paid out of an account: a Cashu token, or a Lightning payment (`detail`)."""

    id: str
    amount_msat: int
    token: str | None  # None when the amount was below one unit, or paid over Lightning
    method: str = "cashu"
    detail: str | None = None
    fee_msat: int = 0


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

    def __init__(self, ledger: Ledger, wallet: NodeWallet) -> None:
        self.ledger = ledger
        self.wallet = wallet

    async def get(self, payout_id: str) -> Payout | None:
        """A payout already made under this id, if any; 409-style conflict if in flight."""
        async with self.ledger.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        payouts.c.amount_msat,
                        payouts.c.token,
                        payouts.c.state,
                        payouts.c.method,
                        payouts.c.detail,
                        payouts.c.fee_msat,
                    ).where(payouts.c.id == payout_id)
                )
            ).first()
        if row is None:
            return None
        amount, token, state, method, detail, fee = row
        if state != "issued":
            raise PayoutConflict("this payout is still being sent; retry shortly")
        return Payout(payout_id, int(amount), token, method, detail, int(fee))

    async def pay_out_all(self, account_id: int, payout_id: str) -> Payout:
        """Pay out the whole unreserved balance as Cashu; a sub-unit remainder is kept as fee."""
        return await self.pay_out(account_id, payout_id, None)

    async def pay_out(self, account_id: int, payout_id: str, amount_msat: int | None) -> Payout:
        """Pay `amount_msat` (None: everything available) out as a Cashu token."""
        step = await self.begin(account_id, payout_id, amount_msat)
        if isinstance(step, Payout):
            return step
        try:
            token = await self.wallet.issue(step.amount, step.unit, step.mint_url)
        except Exception as exc:
            # Nothing left the node: undo the debit so the balance is whole again.
            await self.undo(step)
            if isinstance(exc, EcashError):
                raise
            raise EcashError("mint_error", "Could not issue the token; try again.") from exc
        try:
            return await self.complete(step, token=token)
        except PayoutCancelled:
            # Recovery already credited the balance back: take the token back into the wallet
            # so the value is neither lost nor paid twice.
            await self.wallet.receive(parse_token(token))
            raise

    async def begin(
        self,
        account_id: int,
        payout_id: str,
        amount_msat: int | None,
        method: str = "cashu",
        destination: str | None = None,
    ) -> Payout | PendingPayout:
        """Debit and record a payout in one transaction; an existing payout is returned as is.

        `amount_msat=None` takes the whole unreserved balance, rounded down to the account's
        unit (the remainder is journaled as `rounding`).
        """
        done = await self.get(payout_id)
        if done is not None:
            return done
        now = time.time()
        try:
            async with self.ledger.engine.begin() as conn:
                acct = (
                    await conn.execute(
                        select(
                            accounts.c.balance_msat,
                            accounts.c.reserved_msat,
                            accounts.c.unit,
                            accounts.c.mint_url,
                        ).where(accounts.c.id == account_id)
                    )
                ).one()
                balance, reserved, unit, mint_url = acct
                per_unit = UNIT_MSAT[unit]
                available = int(balance - reserved)
                if amount_msat is None:
                    payout_msat = available - available % per_unit
                    residue = available - payout_msat
                else:
                    if amount_msat % per_unit or amount_msat <= 0:
                        raise PayoutInvalid(
                            f"amount must be a positive multiple of {per_unit} msat"
                        )
                    payout_msat, residue = amount_msat, 0
                if payout_msat > available:
                    raise PayoutConflict(
                        f"only {available} msat available, {payout_msat} msat requested"
                    )
                if residue:
                    await self.ledger.debit_available(
                        conn, account_id, residue, "rounding", payout_id
                    )
                if payout_msat:
                    debited = await self.ledger.debit_available(
                        conn, account_id, payout_msat, "payout", payout_id
                    )
                    if debited is None:
                        raise PayoutConflict("balance changed during payout; retry")
                await conn.execute(
                    insert(payouts).values(
                        id=payout_id,
                        account_id=account_id,
                        amount_msat=payout_msat,
                        unit=unit,
                        mint_url=mint_url,
                        token=None,
                        state="pending" if payout_msat else "issued",
                        method=method,
                        destination=destination,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            done = await self.get(payout_id)
            if done is None:
                raise PayoutConflict("payout raced with itself; retry") from None
            return done
        if not payout_msat:
            return Payout(payout_id, 0, None, method)
        return PendingPayout(payout_id, account_id, payout_msat, unit, mint_url)

    async def complete(
        self,
        step: PendingPayout,
        token: str | None = None,
        detail: str | None = None,
        fee_msat: int = 0,
    ) -> Payout:
        """Record what was sent; from now on the same id returns this payout."""
        async with self.ledger.engine.begin() as conn:
            moved = await conn.execute(
                update(payouts)
                .where(payouts.c.id == step.id, payouts.c.state == "pending")
                .values(
                    state="issued",
                    token=token,
                    detail=detail,
                    fee_msat=fee_msat,
                    updated_at=time.time(),
                )
            )
            if moved.rowcount != 1:
                raise PayoutCancelled(f"payout {step.id} was undone before it completed")
            method = (
                await conn.execute(select(payouts.c.method).where(payouts.c.id == step.id))
            ).scalar_one()
        return Payout(step.id, step.amount_msat, token, method, detail, fee_msat)

    async def undo(self, step: PendingPayout) -> bool:
        """Nothing was sent: credit the debit back and forget the attempt (retry allowed).

        Compare-and-set on the pending row, so a payout is undone at most once and never
        after it completed. Returns whether this call undid it.
        """
        async with self.ledger.engine.begin() as conn:
            gone = await conn.execute(
                payouts.delete().where(payouts.c.id == step.id, payouts.c.state == "pending")
            )
            if gone.rowcount != 1:
                return False
            await self.ledger.credit(
                conn, step.account_id, step.amount_msat, "payout_undo", step.id
            )
        return True

    async def recover_cashu(self, older_than: float) -> int:
        """Undo Cashu payouts a crash left `pending`; returns how many.

        Such a payout's token was never stored, so it never reached anyone: the response
        that would have carried it comes only after `complete`. Crediting the debit back is
        therefore safe; the proofs the wallet set aside stay in the node's ecash.
        """
        async with self.ledger.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        payouts.c.id,
                        payouts.c.account_id,
                        payouts.c.amount_msat,
                        payouts.c.unit,
                        payouts.c.mint_url,
                    ).where(
                        payouts.c.state == "pending",
                        payouts.c.method == "cashu",
                        payouts.c.updated_at < time.time() - older_than,
                    )
                )
            ).all()
        undone = 0
        for payout_id, account_id, amount, unit, mint_url in rows:
            step = PendingPayout(payout_id, account_id, int(amount), unit, mint_url)
            undone += await self.undo(step)
        return undone
