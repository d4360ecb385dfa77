"""Short transactions for the hot path, each run in a single hop to the database.

SQLAlchemy over aiosqlite hops to a worker thread for every statement (27 hops for a
reserve + settle pair, ~3 ms); here a whole transaction is one function run on one
dedicated thread with the stdlib driver (~0.1 ms). Other databases run the same function
through SQLAlchemy's `run_sync`. The SQL is plain, portable text with `:name` parameters.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from satsrouter.store.engine import is_sqlite

T = TypeVar("T")


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement; returns (rows, rowcount)."""
        ...


class TxRunner(Protocol):
    """Runs a synchronous transaction function without blocking the event loop."""

    async def run(self, fn: Callable[[Tx], T]) -> T: ...

    async def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        self.cursor.execute(sql, params)
        rows = self.cursor.fetchall()
        return rows, self.cursor.rowcount


class SqliteTxRunner:
    """One thread, one connection: transactions queue instead of fighting over SQLite's lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-tx")
        self._local = threading.local()

    def _cursor(self) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor | None = getattr(self._local, "cursor", None)
        if cursor is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            cursor = self._local.cursor = conn.cursor()
        return cursor

    def _run(self, fn: Callable[[Tx], T]) -> T:
        cursor = self._cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = fn(_SqliteTx(cursor))
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return result

    async def run(self, fn: Callable[[Tx], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    def _close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.cursor = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


class _SqlAlchemyTx:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        result = self.conn.execute(text(sql), dict(params))
        rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else []
        return rows, result.rowcount


class EngineTxRunner:
    """The same transaction functions over any SQLAlchemy async engine (e.g. Postgres)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def run(self, fn: Callable[[Tx], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(lambda sync_conn: fn(_SqlAlchemyTx(sync_conn)))

    async def close(self) -> None:
        return None


def make_tx_runner(url: str, engine: AsyncEngine) -> TxRunner:
    """A file-backed SQLite database gets the single-thread runner; others use the engine."""
    prefix = "sqlite+aiosqlite:///"
    if is_sqlite(url) and url.startswith(prefix) and ":memory:" not in url:
        return SqliteTxRunner(url.removeprefix(prefix))
    return EngineTxRunner(engine)
