"""Wake-ups between the processes that share the node's database.

A process that finishes work another process waits for (a swap that carried another
node's receives) says so with `send_tx` inside the transaction that records it. On Postgres
that is `NOTIFY`, delivered when the transaction commits, to every process that `watch`es
the name on a connection kept for it. Elsewhere nothing is sent, and waiters look at the
database every `poll_seconds`; they do so on Postgres too, slowly, in case the listening
connection was lost (a notification sent while it was down is gone).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from satsrouter.store.engine import discard, is_sqlite
from satsrouter.store.tx import Tx

log = logging.getLogger(__name__)


def _channel(name: str) -> str:
    return "satsrouter_" + hashlib.sha256(name.encode()).hexdigest()[:24]


class Signals:
    """Named wake-ups: Postgres LISTEN/NOTIFY, or nothing (callers poll)."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self._engine = None if is_sqlite(url) else engine
        self._conn: AsyncConnection | None = None
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._driver: Any = None  # asyncpg's connection under `_conn`
        self._heard: set[str] = set()  # names listened for on it
        # Waiters look anyway this often: on Postgres in case a notification was lost, on
        # SQLite because nothing is sent (processes sharing one file are few and local).
        self.poll_seconds = 1.0 if self._engine is not None else 0.01

    def send_tx(self, tx: Tx, name: str) -> None:
        """Wake the watchers of `name` in every process when `tx` commits (Postgres only)."""
        if self._engine is not None:
            tx.execute("SELECT pg_notify(:channel, '')", {"channel": _channel(name)})

    async def watch(self, name: str, wake: Callable[[], None]) -> None:
        """Call `wake` (on the event loop) whenever `name` is sent. Cheap to call again: it
        listens anew if the connection was lost (no-op where nothing is sent)."""
        if self._engine is None:
            return
        watchers = self._watchers.setdefault(name, [])
        if wake not in watchers:
            watchers.append(wake)
        driver = await self._listening()
        if driver is not None and name not in self._heard:
            await driver.add_listener(_channel(name), self._dispatch(name))
            self._heard.add(name)

    def _dispatch(self, name: str) -> Callable[..., None]:
        def dispatch(*_: Any) -> None:
            for wake in self._watchers.get(name, []):
                wake()

        return dispatch

    async def _listening(self) -> Any:
        """asyncpg's connection kept for LISTEN, (re)opened when needed; None if it fails."""
        assert self._engine is not None
        if self._driver is not None and not self._driver.is_closed():
            return self._driver
        await self._drop()
        try:
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            driver: Any = (await self._conn.get_raw_connection()).driver_connection
            for name in self._watchers:
                await driver.add_listener(_channel(name), self._dispatch(name))
            self._driver, self._heard = driver, set(self._watchers)
            # A notification sent while nobody listened is lost: everyone looks now.
            for name in self._watchers:
                self._dispatch(name)()
            return driver
        except Exception as exc:  # waiters poll meanwhile
            log.warning("cannot listen for wake-ups: %s", type(exc).__name__)
            await self._drop()
            return None

    async def _drop(self) -> None:
        self._driver = None
        conn, self._conn = self._conn, None
        await discard(conn)

    async def close(self) -> None:
        """Stop listening."""
        self._watchers.clear()
        await self._drop()
