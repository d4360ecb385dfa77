"""Leases: a fleet-wide background job runs on one node process at a time.

Every node sharing a database starts the same loops. A job that should run once per
fleet (the invoice watcher, Lightning payout expiry, automatic revenue payouts) is wrapped
in `run_leased`: the node renews a row of the `leases` table every third of the TTL and
runs the job's passes only while that row names it. A node that dies stops renewing; once
the row has expired another node's next renewal takes it over, so the job moves to a
survivor within one TTL plus one renewal period. Where a holder is known dead sooner (its
lock file is free: a node restarted on the same machine), its leases are taken at once.

Clock: `expires_at` is the writer's `time.time()`, compared with the next writer's. The
rest of the node (instance heartbeats, reservations) keeps time the same way, and the one
SQL text must run unchanged on SQLite and Postgres, which name their clocks differently.
Clock skew between machines shifts a takeover by the skew, so the TTL (`LEASE_TTL_SECONDS`,
default 30 s) must stay well above it; NTP keeps skew to milliseconds.

A lease is an efficiency measure, not the guard of money: a holder stalled past its TTL (a
long pause) may still be finishing a pass when the next holder starts one. Every job that
moves money keeps its own compare-and-set steps in the database, which make two concurrent
passes safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

# One statement takes a free or expired lease, or renews one's own: the row lock of the
# conflict (Postgres) or the single writer (SQLite) makes it atomic. The update applies
# only where the row is this holder's or has expired; RETURNING then gives a row, which is
# exactly when this instance holds the lease now.
_ACQUIRE = (
    "INSERT INTO leases (name, holder, expires_at, acquired_at) "
    "VALUES (:name, :me, :expires, :now) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "expires_at = excluded.expires_at, "
    "acquired_at = CASE WHEN leases.holder = excluded.holder "
    "THEN leases.acquired_at ELSE excluded.acquired_at END "
    "WHERE leases.holder = excluded.holder OR leases.expires_at < excluded.acquired_at "
    "RETURNING holder"
)
# Taking over from a holder known to be dead, before its lease expires: only while the row
# still names that holder (whoever else took it meanwhile keeps it).
_TAKE_FROM = (
    "UPDATE leases SET holder = :me, expires_at = :expires, acquired_at = :now "
    "WHERE name = :name AND holder = :dead"
)
_HOLDER = "SELECT holder FROM leases WHERE name = :name"
_RELEASE = "DELETE FROM leases WHERE name = :name AND holder = :me"
_RELEASE_ALL = "DELETE FROM leases WHERE holder = :me"
_ALL = "SELECT name, holder, expires_at, acquired_at FROM leases ORDER BY name"


class Leases:
    """This instance's side of the `leases` table."""

    def __init__(
        self, tx: TxRunner, instance_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._tx = tx
        self.instance_id = instance_id
        self._clock = clock

    async def acquire_or_renew(self, name: str, ttl: float) -> bool:
        """Hold `name` for `ttl` more seconds if it is free, expired or already ours."""
        now = self._clock()
        params = {"name": name, "me": self.instance_id, "expires": now + ttl, "now": now}

        def op(tx: Tx) -> bool:
            rows, _ = tx.execute(_ACQUIRE, params)
            return bool(rows)

        return await self._tx.run(op)

    async def holder(self, name: str) -> str | None:
        """The instance the row names (its lease may have expired), or None."""
        rows, _ = await self._tx.read(lambda tx: tx.execute(_HOLDER, {"name": name}))
        return str(rows[0][0]) if rows else None

    async def take_from(self, name: str, dead: str, ttl: float) -> bool:
        """Take `name` from `dead`, an instance known to be gone, without waiting for expiry."""
        now = self._clock()
        params: dict[str, Any] = {"name": name, "me": self.instance_id, "dead": dead}
        params |= {"expires": now + ttl, "now": now}
        _, moved = await self._tx.run(lambda tx: tx.execute(_TAKE_FROM, params))
        return moved == 1

    async def release(self, name: str) -> None:
        """Give `name` up at once (a clean stop), if this instance holds it."""
        params = {"name": name, "me": self.instance_id}
        await self._tx.run(lambda tx: tx.execute(_RELEASE, params))

    async def release_all(self) -> None:
        """Give up every lease this instance holds (a clean stop)."""
        params = {"me": self.instance_id}
        await self._tx.run(lambda tx: tx.execute(_RELEASE_ALL, params))

    async def all(self) -> list[dict[str, Any]]:
        """Every lease row (held or expired), for the admin's node view."""
        rows, _ = await self._tx.read(lambda tx: tx.execute(_ALL, {}))
        now = self._clock()
        return [
            {
                "name": name,
                "holder": holder,
                "mine": holder == self.instance_id,
                "expires_at": float(expires_at),
                "acquired_at": float(acquired_at),
                "live": float(expires_at) >= now,
            }
            for name, holder, expires_at, acquired_at in rows
        ]


class LeasedJob:
    """A job's passes, run every `interval()` seconds while this instance holds its lease.

    Two loops: one renews the lease every third of the TTL, the other runs a pass whenever
    the lease is held. A pass longer than the TTL is covered by the renewals meanwhile. The
    lease counts as held only until `ttl` after the renewal was *sent* (monotonic clock),
    so a node that was paused does not start a pass on a lease it may have lost.
    """

    def __init__(
        self,
        leases: Leases,
        name: str,
        ttl: Callable[[], float],
        interval: Callable[[], float],
        body: Callable[[], Awaitable[Any]],
        *,
        delay_first: bool = False,
        is_dead: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.leases = leases
        self.name = name
        self.ttl = ttl
        self.interval = interval
        self.body = body
        self.delay_first = delay_first
        # Where an instance's death is known early (its lock file is free, on one machine),
        # its leases are taken at once instead of after their TTL.
        self.is_dead = is_dead
        self.passes = 0  # passes run on this instance (tests, admin)
        self._held_until = 0.0
        self._held = asyncio.Event()

    @property
    def held(self) -> bool:
        """Whether this instance holds the lease now, as far as it can know."""
        return time.monotonic() < self._held_until

    async def run(self) -> None:
        """Renew and work, forever (cancel to stop; the node releases its leases itself)."""
        await asyncio.gather(self._keep(), self._work())

    async def _keep(self) -> None:
        while True:
            ttl = self.ttl()
            sent = time.monotonic()
            try:
                mine = await self.leases.acquire_or_renew(self.name, ttl)
                if not mine and self.is_dead is not None:
                    mine = await self._take_from_dead(ttl)
            except Exception as exc:
                log.warning("lease %s not renewed: %s", self.name, type(exc).__name__)
                mine = False
            if mine:
                if not self._held.is_set():
                    log.info("lease %s taken: its job runs on this node", self.name)
                self._held_until = sent + ttl
                self._held.set()
            else:
                if self._held.is_set():
                    log.info("lease %s lost: its job runs elsewhere", self.name)
                self._held_until = 0.0
                self._held.clear()
            await asyncio.sleep(ttl / 3)

    async def _take_from_dead(self, ttl: float) -> bool:
        assert self.is_dead is not None
        holder = await self.leases.holder(self.name)
        if holder is None or holder == self.leases.instance_id or not await self.is_dead(holder):
            return False
        return await self.leases.take_from(self.name, holder, ttl)

    async def _work(self) -> None:
        if self.delay_first:
            await asyncio.sleep(self.interval())
        while True:
            await self._held.wait()
            if self.held:
                self.passes += 1
                try:
                    await self.body()
                except Exception:
                    log.exception("%s pass failed", self.name)
                await asyncio.sleep(self.interval())
            else:
                # Held once, but the renewal is overdue: wait for the next answer.
                await asyncio.sleep(min(self.interval(), self.ttl() / 3))


async def run_leased(
    leases: Leases,
    name: str,
    ttl: Callable[[], float],
    interval: Callable[[], float],
    body: Callable[[], Awaitable[Any]],
    is_dead: Callable[[str], Awaitable[bool]] | None = None,
) -> None:
    """Run `body` every `interval()` seconds, on one instance of the fleet at a time."""
    await LeasedJob(leases, name, ttl, interval, body, is_dead=is_dead).run()
