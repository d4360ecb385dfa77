"""Short transactions for the hot path, each run in a single hop to the database.

SQLAlchemy over aiosqlite hops to a worker thread for every statement (27 hops for a
reserve + settle pair, ~3 ms); here a whole transaction is one function run on one
dedicated thread with the stdlib driver (~0.1 ms). Other databases run the same function
through SQLAlchemy's `run_sync`. The SQL is plain, portable text with `:name` parameters.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _OneThread:
    """One worker thread that resolves asyncio futures itself.

    Cheaper per call than `run_in_executor` on a ThreadPoolExecutor, which wraps a
    concurrent.futures.Future (with its Condition) in an asyncio one: on the hot path that
    bookkeeping cost as much as the transaction's own SQL.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = False

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if not self._started:
            self._started = True
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, loop, fut))
        return fut

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, loop, fut = job
            if fut.cancelled():
                continue  # the caller gave up before the job started, as with an executor
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(_resolve, fut, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def shutdown(self) -> None:
        if self._started:
            self._jobs.put(None)
            self._thread.join()


_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class SqliteTxRunner:
    """One thread, one connection: transactions queue instead of fighting over SQLite's lock.

    Between processes (`serve --workers N`) they queue on an flock of `<db>.txlock` first:
    SQLite's busy handler polls with sleeps of up to 100 ms, the kernel wakes the next
    waiter as soon as the lock is free.
    """

    def __init__(self, path: str, synchronous: str = "NORMAL", name: str = "sqlite-tx") -> None:
        self.path = path
        self.synchronous = synchronous
        self._thread = _OneThread(name)
        self._local = threading.local()
        self._lock_fd: int | None = None
        self._closed = False

    def _cursor(self) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor | None = getattr(self._local, "cursor", None)
        if cursor is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            cursor = self._local.cursor = conn.cursor()
        return cursor

    def _run(self, fn: Callable[[Tx], T]) -> T:
        cursor = self._cursor()
        if self._lock_fd is None:
            self._lock_fd = os.open(f"{self.path}.txlock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                result = fn(_SqliteTx(cursor))
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
            return result
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def run(self, fn: Callable[[Tx], T]) -> T:
        return await self._thread.submit(lambda: self._run(fn))

    def _close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.cursor = None

    async def close(self) -> None:
        if self._closed:
            return  # a second close must not wait on a thread that has stopped
        self._closed = True
        await self._thread.submit(self._close)
        self._thread.shutdown()


class _SqlAlchemyTx:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        result = self.conn.execute(text(sql), dict(params))
        rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else []
        return rows, result.rowcount


async def run_on(conn: AsyncConnection, fn: Callable[[Tx], T]) -> T:
    """Run a transaction function inside a caller's open SQLAlchemy transaction."""
    return await conn.run_sync(lambda sync_conn: fn(_SqlAlchemyTx(sync_conn)))


class EngineTxRunner:
    """The same transaction functions over any SQLAlchemy async engine (e.g. Postgres)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def run(self, fn: Callable[[Tx], T]) -> T:
        async with self.engine.begin() as conn:
            return await run_on(conn, fn)

    async def close(self) -> None:
        return None


def make_tx_runner(url: str, engine: AsyncEngine) -> TxRunner:
    """A file-backed SQLite database gets the single-thread runner; others use the engine."""
    prefix = "sqlite+aiosqlite:///"
    if is_sqlite(url) and url.startswith(prefix) and ":memory:" not in url:
        return SqliteTxRunner(url.removeprefix(prefix))
    return EngineTxRunner(engine)
