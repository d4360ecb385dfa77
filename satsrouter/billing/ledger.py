"""The ledger: balances, the journal and reservations. Every money movement is here (I1, I2)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from satsrouter.store.tables import accounts, instances, journal, reservations


@dataclass(frozen=True)
class Account:
    """A balance as read from the database."""

    id: int
    key_hash: str
    kind: str
    mint_url: str
    unit: str
    balance_msat: int
    reserved_msat: int
    total_spent_msat: int
    total_requests: int

    @property
    def available_msat(self) -> int:
        return self.balance_msat - self.reserved_msat


@dataclass(frozen=True)
class Reservation:
    """An active hold on part of a balance for one request."""

    id: str
    account_id: int
    amount_msat: int


@dataclass(frozen=True)
class Settlement:
    """The outcome of charging a reservation."""

    charged_msat: int
    balance_msat: int


class InsufficientBalance(Exception):
    """The account cannot cover the reservation."""

    def __init__(self, available_msat: int, required_msat: int) -> None:
        super().__init__(f"available {available_msat} msat, required {required_msat} msat")
        self.available_msat = available_msat
        self.required_msat = required_msat


class UnknownAccount(Exception):
    """No account has this key hash."""


_ACCOUNT_COLUMNS = (
    accounts.c.id,
    accounts.c.key_hash,
    accounts.c.kind,
    accounts.c.mint_url,
    accounts.c.unit,
    accounts.c.balance_msat,
    accounts.c.reserved_msat,
    accounts.c.total_spent_msat,
    accounts.c.total_requests,
)


async def _journal(
    conn: AsyncConnection, account_id: int, amount_msat: int, kind: str, ref: str
) -> None:
    await conn.execute(
        insert(journal).values(
            account_id=account_id,
            amount_msat=amount_msat,
            kind=kind,
            ref=ref[:80],
            created_at=time.time(),
        )
    )


class Ledger:
    """All reads and writes of balances. Amounts are integer millisatoshis."""

    def __init__(self, engine: AsyncEngine, instance_id: str) -> None:
        self.engine = engine
        self.instance_id = instance_id

    # -- accounts -------------------------------------------------------------------------

    async def get_account(self, key_hash: str) -> Account | None:
        """The account for a key hash, or None."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(*_ACCOUNT_COLUMNS).where(accounts.c.key_hash == key_hash))
            ).first()
        return Account(*row) if row else None

    async def get_account_by_id(self, account_id: int) -> Account:
        """The account with this id (it must exist)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(*_ACCOUNT_COLUMNS).where(accounts.c.id == account_id))
            ).one()
        return Account(*row)

    async def open_account(
        self,
        conn: AsyncConnection,
        key_hash: str,
        kind: str,
        mint_url: str,
        unit: str,
    ) -> int:
        """Create an empty account inside the caller's transaction; returns its id.

        If the key hash already exists the existing id is returned (a token used as a key
        may race with itself across requests).
        """
        existing = (
            await conn.execute(select(accounts.c.id).where(accounts.c.key_hash == key_hash))
        ).scalar()
        if existing is not None:
            return int(existing)
        result = await conn.execute(
            insert(accounts)
            .values(
                key_hash=key_hash,
                kind=kind,
                mint_url=mint_url,
                unit=unit,
                balance_msat=0,
                reserved_msat=0,
                total_spent_msat=0,
                total_requests=0,
                created_at=time.time(),
            )
            .returning(accounts.c.id)
        )
        return int(result.scalar_one())

    async def credit(
        self, conn: AsyncConnection, account_id: int, amount_msat: int, kind: str, ref: str
    ) -> int:
        """Add to a balance inside the caller's transaction; returns the new balance."""
        if amount_msat < 0:
            raise ValueError("credit amount must be >= 0")
        balance = (
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(balance_msat=accounts.c.balance_msat + amount_msat)
                .returning(accounts.c.balance_msat)
            )
        ).scalar_one()
        if amount_msat:
            await _journal(conn, account_id, amount_msat, kind, ref)
        return int(balance)

    async def debit_available(
        self, conn: AsyncConnection, account_id: int, amount_msat: int, kind: str, ref: str
    ) -> int | None:
        """Take `amount_msat` from the unreserved balance; None if it is not there."""
        balance = (
            await conn.execute(
                update(accounts)
                .where(
                    and_(
                        accounts.c.id == account_id,
                        accounts.c.balance_msat - accounts.c.reserved_msat >= amount_msat,
                    )
                )
                .values(balance_msat=accounts.c.balance_msat - amount_msat)
                .returning(accounts.c.balance_msat)
            )
        ).scalar()
        if balance is None:
            return None
        if amount_msat:
            await _journal(conn, account_id, -amount_msat, kind, ref)
        return int(balance)

    # -- reservations (I2) ----------------------------------------------------------------

    async def reserve(
        self, key_hash: str, request_id: str, amount_msat: int, model: str
    ) -> Reservation:
        """Hold `amount_msat` of the key's balance with one conditional UPDATE."""
        async with self.engine.begin() as conn:
            account_id = (
                await conn.execute(
                    update(accounts)
                    .where(
                        and_(
                            accounts.c.key_hash == key_hash,
                            accounts.c.balance_msat - accounts.c.reserved_msat >= amount_msat,
                        )
                    )
                    .values(reserved_msat=accounts.c.reserved_msat + amount_msat)
                    .returning(accounts.c.id)
                )
            ).scalar()
            if account_id is None:
                row = (
                    await conn.execute(
                        select(accounts.c.balance_msat, accounts.c.reserved_msat).where(
                            accounts.c.key_hash == key_hash
                        )
                    )
                ).first()
                if row is None:
                    raise UnknownAccount(key_hash[:12])
                raise InsufficientBalance(int(row[0] - row[1]), amount_msat)
            await conn.execute(
                insert(reservations).values(
                    id=request_id,
                    account_id=account_id,
                    amount_msat=amount_msat,
                    state="active",
                    instance_id=self.instance_id,
                    model=model[:200],
                    created_at=time.time(),
                )
            )
        return Reservation(request_id, int(account_id), amount_msat)

    async def settle(self, reservation: Reservation, cost_msat: int) -> Settlement | None:
        """Charge a reservation exactly once (CAS active → charged); None if already settled.

        The charge never exceeds the reservation: the reservation is the most the user agreed
        to risk on this request.
        """
        charged = max(0, min(cost_msat, reservation.amount_msat))
        async with self.engine.begin() as conn:
            moved = await conn.execute(
                update(reservations)
                .where(and_(reservations.c.id == reservation.id, reservations.c.state == "active"))
                .values(state="charged", charged_msat=charged, settled_at=time.time())
            )
            if moved.rowcount != 1:
                return None
            balance = (
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == reservation.account_id)
                    .values(
                        balance_msat=accounts.c.balance_msat - charged,
                        reserved_msat=accounts.c.reserved_msat - reservation.amount_msat,
                        total_spent_msat=accounts.c.total_spent_msat + charged,
                        total_requests=accounts.c.total_requests + 1,
                    )
                    .returning(accounts.c.balance_msat)
                )
            ).scalar_one()
            if charged:
                await _journal(conn, reservation.account_id, -charged, "charge", reservation.id)
        return Settlement(charged, int(balance))

    async def release(self, reservation: Reservation) -> bool:
        """Give a reservation back untouched (CAS active → released); False if already settled."""
        async with self.engine.begin() as conn:
            return await self._release(
                conn, reservation.id, reservation.account_id, reservation.amount_msat
            )

    async def _release(
        self, conn: AsyncConnection, request_id: str, account_id: int, amount_msat: int
    ) -> bool:
        moved = await conn.execute(
            update(reservations)
            .where(and_(reservations.c.id == request_id, reservations.c.state == "active"))
            .values(state="released", charged_msat=0, settled_at=time.time())
        )
        if moved.rowcount != 1:
            return False
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(reserved_msat=accounts.c.reserved_msat - amount_msat)
        )
        return True

    # -- liveness and the sweeper ---------------------------------------------------------

    async def heartbeat(self) -> None:
        """Record that this instance is alive (its reservations belong to live requests)."""
        now = time.time()
        async with self.engine.begin() as conn:
            moved = await conn.execute(
                update(instances).where(instances.c.id == self.instance_id).values(heartbeat_at=now)
            )
            if moved.rowcount == 0:
                await conn.execute(
                    insert(instances).values(id=self.instance_id, started_at=now, heartbeat_at=now)
                )

    async def sweep(self, dead_after: float, live_ids: set[str], min_age: float) -> int:
        """Release reservations whose request is provably gone; returns how many.

        Gone means: its instance stopped heartbeating `dead_after` seconds ago, or it belongs
        to this instance but no live request holds it (and it is older than `min_age`).
        """
        now = time.time()
        released = 0
        async with self.engine.begin() as conn:
            alive = {
                row[0]
                for row in await conn.execute(
                    select(instances.c.id).where(instances.c.heartbeat_at >= now - dead_after)
                )
            }
            alive.add(self.instance_id)
            rows = (
                await conn.execute(
                    select(
                        reservations.c.id,
                        reservations.c.account_id,
                        reservations.c.amount_msat,
                        reservations.c.instance_id,
                        reservations.c.created_at,
                    ).where(reservations.c.state == "active")
                )
            ).all()
            for rid, account_id, amount, instance_id, created_at in rows:
                orphan = instance_id not in alive or (
                    instance_id == self.instance_id
                    and rid not in live_ids
                    and created_at < now - min_age
                )
                if orphan and await self._release(conn, rid, account_id, amount):
                    released += 1
            await conn.execute(
                instances.delete().where(instances.c.heartbeat_at < now - 10 * dead_after)
            )
        return released

    # -- invariant checks (used by tests and the admin view) ------------------------------

    async def journal_sum(self, account_id: int) -> int:
        """Sum of the account's journal rows; equals its balance when I1 holds."""
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(
                    select(func.coalesce(func.sum(journal.c.amount_msat), 0)).where(
                        journal.c.account_id == account_id
                    )
                )
            ).scalar_one()
        return int(total)

    async def total_liabilities(self) -> int:
        """Sum of all user balances, in msat."""
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(select(func.coalesce(func.sum(accounts.c.balance_msat), 0)))
            ).scalar_one()
        return int(total)


__all__ = [
    "Account",
    "InsufficientBalance",
    "Ledger",
    "Reservation",
    "Settlement",
    "UnknownAccount",
]
