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
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tables import accounts, payouts

log = logging.getLogger(__name__)


class PayoutConflict(Exception):
    """Another payout with this id is in progress, or the balance is reserved."""


@dataclass(frozen=True)
class Payout:
    """A token paid out of an account."""

    id: str
    amount_msat: int
    token: str | None  # None when the amount was below one unit of the mint


class Payouts:
    """Issues change and refund tokens."""

    def __init__(self, ledger: Ledger, wallet: NodeWallet) -> None:
        self.ledger = ledger
        self.wallet = wallet

    async def get(self, payout_id: str) -> Payout | None:
        """A payout already made under this id, if any."""
        async with self.ledger.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(payouts.c.amount_msat, payouts.c.token, payouts.c.state).where(
                        payouts.c.id == payout_id
                    )
                )
            ).first()
        if row is None:
            return None
        if row[2] == "pending":
            raise PayoutConflict("this payout is still being issued; retry shortly")
        return Payout(payout_id, int(row[0]), row[1])

    async def pay_out_all(self, account_id: int, payout_id: str) -> Payout:
        """Pay out the whole unreserved balance; a remainder below one unit is kept as fee."""
        return await self._pay_out(account_id, payout_id, None)

    async def pay_out(self, account_id: int, payout_id: str, amount_msat: int) -> Payout:
        """Pay out exactly `amount_msat` (a whole number of the account's units)."""
        return await self._pay_out(account_id, payout_id, amount_msat)

    async def _pay_out(self, account_id: int, payout_id: str, amount: int | None) -> Payout:
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
                if amount is None:
                    payout_msat = available - available % per_unit
                    residue = available - payout_msat
                else:
                    if amount % per_unit or amount <= 0:
                        raise ValueError(f"amount must be a positive multiple of {per_unit} msat")
                    payout_msat, residue = amount, 0
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
            return Payout(payout_id, 0, None)

        try:
            token = await self.wallet.issue(payout_msat // per_unit, unit, mint_url)
        except Exception as exc:
            # Issuing failed: nothing left the node, so the debit is undone (credit back).
            async with self.ledger.engine.begin() as conn:
                await self.ledger.credit(conn, account_id, payout_msat, "payout_undo", payout_id)
                # Forget the attempt so the same id can be retried; the journal keeps the trail.
                await conn.execute(payouts.delete().where(payouts.c.id == payout_id))
            if isinstance(exc, EcashError):
                raise
            raise EcashError("mint_error", "Could not issue the token; try again.") from exc
        async with self.ledger.engine.begin() as conn:
            await conn.execute(
                update(payouts)
                .where(payouts.c.id == payout_id)
                .values(state="issued", token=token, updated_at=time.time())
            )
        return Payout(payout_id, payout_msat, token)
