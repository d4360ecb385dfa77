"""The ledger: balances, the journal and reservations. Every money movement is here (I1, I2)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from satsrouter.billing.balances import journal_tx
from satsrouter.store.liveness import InstanceLocks
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.usage import Usage

# The error code of a reservation the sweeper released: its request was gone.
RECOVERED = "recovered"

# The hot-path statements, as plain SQL that SQLite and Postgres both run.
_RESERVE = (
    "UPDATE accounts SET reserved_msat = reserved_msat + :amount "
    "WHERE key_hash = :kh AND parent_id IS NULL AND disabled_at IS NULL "
    "AND balance_msat - reserved_msat >= :amount RETURNING id"
)
_KEY_STATE = (
    "SELECT id, parent_id, balance_msat - reserved_msat, spend_limit_msat, limit_period, "
    "period_start, period_spent_msat, period_reserved_msat, expires_at, disabled_at "
    "FROM accounts WHERE key_hash = :kh"
)
_RESERVE_PARENT = (
    "UPDATE accounts SET reserved_msat = reserved_msat + :amount "
    "WHERE id = :id AND disabled_at IS NULL AND balance_msat - reserved_msat >= :amount "
    "RETURNING id"
)
_AVAILABLE_BY_ID = "SELECT balance_msat - reserved_msat, disabled_at FROM accounts WHERE id = :id"
_RESERVE_CHILD = (
    "UPDATE accounts SET period_reserved_msat = period_reserved_msat + :amount, "
    "period_spent_msat = :spent, period_start = :start WHERE id = :id"
)
_SETTLE_CHILD = (
    "UPDATE accounts SET period_reserved_msat = period_reserved_msat - :reserved, "
    "period_spent_msat = period_spent_msat + :charged, "
    "total_spent_msat = total_spent_msat + :charged, total_requests = total_requests + 1, "
    "last_used_at = :now WHERE id = :id"
)
_RELEASE_CHILD = (
    "UPDATE accounts SET period_reserved_msat = period_reserved_msat - :amount WHERE id = :id"
)
# The request's provider and endpoint go in with the reservation, its tokens with the
# charge and a failure's code with the release: the operator's usage figures (admin/usage.py)
# cost the hot path no statement of its own.
# Postgres: the fast paths of reserve and settle as one statement each, run as a transaction
# of its own (`TxRunner.statement`): one round trip, and the key's row lock is held only
# inside the server, not while the node's event loop gets round to sending COMMIT. Every
# request on one key queues for that lock, so its hold time is the key's throughput limit.
# The same steps as the transactions below (which SQLite runs, and Postgres off the fast
# path): reserve = _RESERVE then _INSERT_RESERVATION; settle = _CHARGE_RESERVATION, the
# journal entry, _CHARGE_ACCOUNT.
_RESERVE_AT_ONCE = (
    "WITH hold AS (UPDATE accounts SET reserved_msat = reserved_msat + :amount "
    "WHERE key_hash = :kh AND parent_id IS NULL AND disabled_at IS NULL "
    "AND balance_msat - reserved_msat >= :amount RETURNING id) "
    "INSERT INTO reservations (id, account_id, child_id, amount_msat, state, instance_id, "
    "model, provider, endpoint, created_at) SELECT :id, id, NULL, :amount, 'active', "
    ":instance, :model, :provider, :endpoint, :now FROM hold RETURNING account_id"
)
_SETTLE_AT_ONCE = (
    "WITH done AS (UPDATE reservations SET state = 'charged', charged_msat = :charged, "
    "settled_at = :now, input_tokens = :input, output_tokens = :output, "
    "provider = COALESCE(:provider, provider) "
    "WHERE id = :id AND state = 'active' AND child_id IS NULL RETURNING account_id), "
    "entry AS (INSERT INTO journal (account_id, amount_msat, kind, ref, created_at) "
    "SELECT account_id, CAST(:debit AS BIGINT), 'charge', :ref, :now FROM done "
    "WHERE CAST(:debit AS BIGINT) < 0) "
    "UPDATE accounts SET balance_msat = balance_msat - :charged, "
    "reserved_msat = reserved_msat - :reserved, "
    "total_spent_msat = total_spent_msat + :charged, total_requests = total_requests + 1, "
    "last_used_at = :now FROM done WHERE accounts.id = done.account_id "
    "RETURNING accounts.balance_msat"
)
_INSERT_RESERVATION = (
    "INSERT INTO reservations (id, account_id, child_id, amount_msat, state, instance_id, "
    "model, provider, endpoint, created_at) VALUES (:id, :account, :child, :amount, 'active', "
    ":instance, :model, :provider, :endpoint, :now)"
)
_CHARGE_RESERVATION = (
    "UPDATE reservations SET state = 'charged', charged_msat = :charged, settled_at = :now, "
    "input_tokens = :input, output_tokens = :output, provider = COALESCE(:provider, provider) "
    "WHERE id = :id AND state = 'active'"
)
_CHARGE_ACCOUNT = (
    "UPDATE accounts SET balance_msat = balance_msat - :charged, "
    "reserved_msat = reserved_msat - :reserved, "
    "total_spent_msat = total_spent_msat + :charged, total_requests = total_requests + 1, "
    "last_used_at = :now WHERE id = :account RETURNING balance_msat"
)
_RELEASE_RESERVATION = (
    "UPDATE reservations SET state = 'released', charged_msat = 0, settled_at = :now, "
    "error = :error WHERE id = :id AND state = 'active'"
)
_UNRESERVE = "UPDATE accounts SET reserved_msat = reserved_msat - :amount WHERE id = :account"
_HEARTBEAT = "UPDATE instances SET heartbeat_at = :now WHERE id = :id"
_INSERT_INSTANCE = "INSERT INTO instances (id, started_at, heartbeat_at) VALUES (:id, :now, :now)"
_ALIVE_INSTANCES = "SELECT id FROM instances WHERE heartbeat_at >= :since"
_ACTIVE_RESERVATIONS = (
    "SELECT id, account_id, child_id, amount_msat, instance_id, created_at FROM reservations "
    "WHERE state = 'active'"
)
_RETIRE_INSTANCE = "DELETE FROM instances WHERE id = :id"
_HEARTBEAT_OF = "SELECT heartbeat_at FROM instances WHERE id = :id"
_ACTIVE_INSTANCES = "SELECT DISTINCT instance_id FROM reservations WHERE state = 'active'"
_FORGET_INSTANCES = "DELETE FROM instances WHERE heartbeat_at < :before"
# The columns of `Account`, in its order.
_ACCOUNT = (
    "SELECT id, key_hash, kind, mint_url, unit, balance_msat, reserved_msat, total_spent_msat, "
    "total_requests, created_at, parent_id, spend_limit_msat, limit_period, period_start, "
    "period_spent_msat, refund_lnurl, expires_at, disabled_at, last_used_at FROM accounts"
)
_ACCOUNT_BY_HASH = _ACCOUNT + " WHERE key_hash = :kh"
_ACCOUNT_BY_ID = _ACCOUNT + " WHERE id = :id"
_JOURNAL_SUM = "SELECT coalesce(sum(amount_msat), 0) FROM journal WHERE account_id = :id"
_LIABILITIES = "SELECT coalesce(sum(balance_msat), 0) FROM accounts"


def _release_tx(
    tx: Tx,
    request_id: str,
    account_id: int,
    child_id: int | None,
    amount: int,
    now: float,
    error: str | None,
) -> bool:
    params = {"id": request_id, "now": now, "error": error[:40] if error else None}
    _, moved = tx.execute(_RELEASE_RESERVATION, params)
    if moved != 1:
        return False
    tx.execute(_UNRESERVE, {"account": account_id, "amount": amount})
    if child_id is not None:
        tx.execute(_RELEASE_CHILD, {"id": child_id, "amount": amount})
    return True


def _reserve_child(tx: Tx, key_state: tuple[Any, ...], amount: int, now: float) -> tuple[int, int]:
    """Reserve on a child key: within its period limit, from its parent's balance."""
    child_id, parent_id, _, limit, period, start, spent, reserved, expires_at, _ = key_state
    if expires_at is not None and now >= expires_at:
        raise UnknownAccount("expired child key")
    resets_at = None
    if period:
        period_start, resets_at = period_bounds(period, now)
        if start is None or start < period_start:
            start, spent = period_start, 0  # a new period: the limit is fresh again
    if limit is not None and spent + reserved + amount > limit:
        raise SpendLimitReached(max(0, limit - spent - reserved), amount, resets_at)
    rows, _ = tx.execute(_RESERVE_PARENT, {"id": parent_id, "amount": amount})
    if not rows:
        found, _ = tx.execute(_AVAILABLE_BY_ID, {"id": parent_id})
        if found and found[0][1] is not None:
            raise KeyDisabled("parent key")
        raise InsufficientBalance(int(found[0][0]) if found else 0, amount)
    tx.execute(_RESERVE_CHILD, {"id": child_id, "amount": amount, "spent": spent, "start": start})
    return int(parent_id), int(child_id)


@dataclass(frozen=True)
class Account:
    """A balance as read from the database (fields in the order of `_ACCOUNT`'s columns)."""

    id: int
    key_hash: str
    kind: str
    mint_url: str
    unit: str
    balance_msat: int
    reserved_msat: int
    total_spent_msat: int
    total_requests: int
    created_at: float = 0.0
    parent_id: int | None = None
    spend_limit_msat: int | None = None
    limit_period: str | None = None
    period_start: float | None = None
    period_spent_msat: int = 0
    refund_lnurl: str | None = None
    expires_at: float | None = None
    disabled_at: float | None = None  # set by the operator: requests are refused
    last_used_at: float | None = None  # when it last paid for a request

    @property
    def available_msat(self) -> int:
        return self.balance_msat - self.reserved_msat

    def period_spent_now(self, now: float) -> int:
        """A child key's spending in the current period (zero once a new period began)."""
        if self.limit_period and self.period_start is not None:
            if self.period_start < period_bounds(self.limit_period, now)[0]:
                return 0
        return self.period_spent_msat


@dataclass(frozen=True)
class Reservation:
    """An active hold on part of a balance for one request."""

    id: str
    account_id: int  # whose balance pays (a child key's parent)
    amount_msat: int
    child_id: int | None = None  # the child key that made the request, if any


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


class KeyDisabled(Exception):
    """The operator disabled this key (or a child key's parent): it pays for nothing.

    Its balance stays as it was, withdrawable by its owner.
    """


class SpendLimitReached(Exception):
    """A child key's spend limit for the current period does not cover the reservation."""

    def __init__(self, remaining_msat: int, required_msat: int, resets_at: float | None) -> None:
        super().__init__(f"remaining {remaining_msat} msat, required {required_msat} msat")
        self.remaining_msat = remaining_msat
        self.required_msat = required_msat
        self.resets_at = resets_at


PERIODS = ("daily", "weekly", "monthly")


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """Start and end (UTC) of the daily/weekly/monthly period containing `now`."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return start.timestamp(), end.timestamp()


class Ledger:
    """All reads and writes of balances. Amounts are integer millisatoshis.

    Balance changes made as steps of other modules' transactions (a redemption's credit, a
    payout's debit) are the functions of `billing.balances`, run in those transactions.
    """

    def __init__(
        self,
        tx: TxRunner,
        instance_id: str,
        locks: InstanceLocks | None = None,
        dead_after: float = 30.0,
    ) -> None:
        self._tx = tx
        self.instance_id = instance_id
        self.locks = locks or InstanceLocks(None)
        self.dead_after = dead_after

    # -- accounts -------------------------------------------------------------------------

    async def get_account(self, key_hash: str) -> Account | None:
        """The account for a key hash, or None."""
        rows, _ = await self._tx.read(lambda tx: tx.execute(_ACCOUNT_BY_HASH, {"kh": key_hash}))
        return Account(*rows[0]) if rows else None

    async def get_account_by_id(self, account_id: int) -> Account:
        """The account with this id (it must exist)."""
        rows, _ = await self._tx.read(lambda tx: tx.execute(_ACCOUNT_BY_ID, {"id": account_id}))
        (row,) = rows
        return Account(*row)

    # -- reservations (I2): one transaction each, in one hop to the database ---------------

    async def reserve(
        self,
        key_hash: str,
        request_id: str,
        amount_msat: int,
        model: str,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
    ) -> Reservation:
        """Hold `amount_msat` of the key's balance with one conditional UPDATE.

        `provider` and `endpoint` are recorded with it for the operator's usage figures.
        """
        now = time.time()

        row = {
            "id": request_id,
            "kh": key_hash,
            "amount": amount_msat,
            "instance": self.instance_id,
            "model": model[:200],
            "provider": provider[:64] if provider else None,
            "endpoint": endpoint[:40] if endpoint else None,
            "now": now,
        }

        def op(tx: Tx) -> tuple[int, int | None]:
            rows, _ = tx.execute(_RESERVE, {"kh": key_hash, "amount": amount_msat})
            child_id: int | None = None
            if rows:
                account_id = int(rows[0][0])
            else:
                # Off the fast path: an unknown key, too little money, or a child key.
                found, _ = tx.execute(_KEY_STATE, {"kh": key_hash})
                if not found:
                    raise UnknownAccount(key_hash[:12])
                if found[0][9] is not None:  # disabled_at: this key (a child's parent: below)
                    raise KeyDisabled(key_hash[:12])
                if found[0][1] is None:
                    raise InsufficientBalance(int(found[0][2]), amount_msat)
                account_id, child_id = _reserve_child(tx, found[0], amount_msat, now)
            tx.execute(_INSERT_RESERVATION, {**row, "account": account_id, "child": child_id})
            return account_id, child_id

        if self._tx.dialect == "postgresql":
            reserved = await self._tx.statement(_RESERVE_AT_ONCE, row)
            if reserved:
                return Reservation(request_id, int(reserved[0][0]), amount_msat, None)
        account_id, child_id = await self._tx.run(op, brief=True)
        return Reservation(request_id, account_id, amount_msat, child_id)

    async def settle(
        self,
        reservation: Reservation,
        cost_msat: int,
        usage: Usage | None = None,
        provider: str | None = None,
    ) -> Settlement | None:
        """Charge a reservation exactly once (CAS active → charged); None if already settled.

        The charge never exceeds the reservation: the reservation is the most the user agreed
        to risk on this request. `usage`'s token counts, and the `provider` that served (when
        failover moved it off the one named at reservation), are recorded with the charge.
        """
        charged = max(0, min(cost_msat, reservation.amount_msat))
        now = time.time()
        if reservation.child_id is None and self._tx.dialect == "postgresql":
            rows = await self._tx.statement(
                _SETTLE_AT_ONCE,
                {
                    "id": reservation.id,
                    "charged": charged,
                    "debit": -charged,
                    "reserved": reservation.amount_msat,
                    "ref": reservation.id[:80],
                    "now": now,
                    "input": usage.prompt_tokens if usage is not None else None,
                    "output": usage.completion_tokens if usage is not None else None,
                    "provider": provider,
                },
            )
            return Settlement(charged, int(rows[0][0])) if rows else None

        def op(tx: Tx) -> Settlement | None:
            _, moved = tx.execute(
                _CHARGE_RESERVATION,
                {
                    "id": reservation.id,
                    "charged": charged,
                    "now": now,
                    "input": usage.prompt_tokens if usage is not None else None,
                    "output": usage.completion_tokens if usage is not None else None,
                    "provider": provider,
                },
            )
            if moved != 1:
                return None
            rows, _ = tx.execute(
                _CHARGE_ACCOUNT,
                {
                    "account": reservation.account_id,
                    "charged": charged,
                    "reserved": reservation.amount_msat,
                    "now": now,
                },
            )
            if charged:
                journal_tx(tx, reservation.account_id, -charged, "charge", reservation.id, now)
            if reservation.child_id is not None:
                tx.execute(
                    _SETTLE_CHILD,
                    {
                        "id": reservation.child_id,
                        "charged": charged,
                        "reserved": reservation.amount_msat,
                        "now": now,
                    },
                )
            return Settlement(charged, int(rows[0][0]))

        return await self._tx.run(op, brief=True)

    async def release(self, reservation: Reservation, error: str | None = None) -> bool:
        """Give a reservation back untouched (CAS active → released); False if already settled.

        `error` is the short code of why (`upstream_error`, `client_gone`, …), kept with it.
        """
        now = time.time()
        return await self._tx.run(
            lambda tx: _release_tx(
                tx,
                reservation.id,
                reservation.account_id,
                reservation.child_id,
                reservation.amount_msat,
                now,
                error,
            ),
            brief=True,
        )

    # -- liveness and the sweeper ---------------------------------------------------------

    async def is_dead(self, instance_id: str) -> bool:
        """Whether an instance's process is provably gone (its lock is free), or, where that
        cannot be known, has not beaten its heart for `dead_after` seconds."""
        if instance_id == self.instance_id:
            return False
        verdict = self.locks.is_dead(instance_id)
        if verdict is not None:
            return verdict
        rows, _ = await self._tx.read(lambda tx: tx.execute(_HEARTBEAT_OF, {"id": instance_id}))
        return not rows or float(rows[0][0]) < time.time() - self.dead_after

    async def retire(self) -> None:
        """Forget this instance at a clean stop (its requests are over)."""
        self_id = self.instance_id
        await self._tx.run(lambda tx: tx.execute(_RETIRE_INSTANCE, {"id": self_id}))

    async def heartbeat(self) -> None:
        """Record that this instance is alive (its reservations belong to live requests)."""
        now = time.time()

        def op(tx: Tx) -> None:
            _, moved = tx.execute(_HEARTBEAT, {"id": self.instance_id, "now": now})
            if moved == 0:
                tx.execute(_INSERT_INSTANCE, {"id": self.instance_id, "now": now})

        await self._tx.run(op)

    async def sweep(self, dead_after: float, live_ids: set[str], min_age: float) -> int:
        """Release reservations whose request is provably gone; returns how many.

        Gone means: its instance's process is provably dead (its lock is free), or, where
        that cannot be known, it stopped heartbeating `dead_after` seconds ago; or it belongs
        to this instance but no live request holds it (and it is older than `min_age`).
        """
        now = time.time()
        holders = await self._tx.read(lambda tx: tx.execute(_ACTIVE_INSTANCES, {})[0])
        verdicts = {
            row[0]: self.locks.is_dead(row[0]) for row in holders if row[0] != self.instance_id
        }

        def op(tx: Tx) -> int:
            alive_rows, _ = tx.execute(_ALIVE_INSTANCES, {"since": now - dead_after})
            alive = {row[0] for row in alive_rows} | {self.instance_id}
            active, _ = tx.execute(_ACTIVE_RESERVATIONS, {})
            released = 0
            for rid, account_id, child_id, amount, instance_id, created_at in active:
                verdict = verdicts.get(instance_id)
                gone = verdict if verdict is not None else instance_id not in alive
                orphan = gone or (
                    instance_id == self.instance_id
                    and rid not in live_ids
                    and created_at < now - min_age
                )
                if orphan and _release_tx(tx, rid, account_id, child_id, amount, now, RECOVERED):
                    released += 1
            tx.execute(_FORGET_INSTANCES, {"before": now - 10 * dead_after})
            return released

        return await self._tx.run(op)

    # -- invariant checks (used by tests and the admin view) ------------------------------

    async def journal_sum(self, account_id: int) -> int:
        """Sum of the account's journal rows; equals its balance when I1 holds."""
        rows, _ = await self._tx.read(lambda tx: tx.execute(_JOURNAL_SUM, {"id": account_id}))
        return int(rows[0][0])

    async def total_liabilities(self) -> int:
        """Sum of all user balances, in msat."""
        rows, _ = await self._tx.read(lambda tx: tx.execute(_LIABILITIES, {}))
        return int(rows[0][0])


__all__ = [
    "Account",
    "InsufficientBalance",
    "KeyDisabled",
    "Ledger",
    "Reservation",
    "Settlement",
    "UnknownAccount",
]
