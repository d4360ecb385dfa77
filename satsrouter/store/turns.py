"""Turns: one holder at a time across every process that shares the node's database.

A mint runs swaps one at a time and retries a colliding one after 100 ms or more, so the
processes of one node (`serve --workers N`, or nodes on one Postgres) must not send theirs
at once: each takes the mint's turn first. Nodes on Postgres take an advisory lock on a
connection of their own (granted in the order asked; the server drops it if the process
dies). Processes sharing a SQLite file take an exclusive `flock` on a file beside it (the
kernel drops it if the process dies). While a process waits for its turn its own receives
gather into its next batch, so the fleet sends the mint the batches one process would.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from satsrouter.store.engine import discard, instance_lock_dir, is_sqlite


class Turn(Protocol):
    """A mutex shared by every process of the node; `acquire` then `release`."""

    async def acquire(self, wait: float | None) -> bool:
        """Take the turn; False if `wait` seconds pass first (None: wait as long as it takes)."""
        ...

    async def release(self) -> None:
        """Give the turn back."""
        ...


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _within(lock: asyncio.Lock, wait: float | None) -> bool:
    try:
        async with asyncio.timeout(wait):
            await lock.acquire()
    except TimeoutError:
        return False
    return True


class LocalTurn:
    """The turn of a process alone (an in-memory database: nothing else can share it)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def acquire(self, wait: float | None) -> bool:
        return await _within(self._lock, wait)

    async def release(self) -> None:
        self._lock.release()


class FileTurn:
    """An exclusive `flock` on one file, waited for in a thread of its own."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._local = asyncio.Lock()  # one waiter per process at the file
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="turn")

    def _file(self) -> int:
        if self._fd is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    async def acquire(self, wait: float | None) -> bool:
        deadline = None if wait is None else time.monotonic() + wait
        if not await _within(self._local, wait):
            return False
        fd = self._file()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except BaseException:
            self._local.release()
            raise
        taken = asyncio.get_running_loop().run_in_executor(
            self._thread, fcntl.flock, fd, fcntl.LOCK_EX
        )
        try:
            async with asyncio.timeout(_left(deadline)):
                await asyncio.shield(taken)
            return True
        except BaseException as exc:
            # The thread cannot be stopped: whenever it gets the lock, give it straight back.
            taken.add_done_callback(lambda done: self._abandon(done, fd))
            if isinstance(exc, TimeoutError):
                return False
            raise

    def _abandon(self, done: asyncio.Future[None], fd: int) -> None:
        if not done.cancelled() and done.exception() is None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._local.release()

    async def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._local.release()

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PgTurn:
    """A Postgres session advisory lock, on a connection kept for it."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self._engine = engine
        digest = hashlib.sha256(f"satsrouter turn {name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: AsyncConnection | None = None
        self._local = asyncio.Lock()

    async def acquire(self, wait: float | None) -> bool:
        deadline = None if wait is None else time.monotonic() + wait
        if not await _within(self._local, wait):
            return False
        try:
            if self._conn is None:
                conn = await self._engine.connect()
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with asyncio.timeout(_left(deadline)):
                await self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            return True
        except BaseException as exc:
            # The lock may have been granted as the wait ended: only closing the connection
            # is sure to drop it.
            await self._drop()
            self._local.release()
            if isinstance(exc, TimeoutError):
                return False
            raise

    async def release(self) -> None:
        try:
            assert self._conn is not None
            await self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        except Exception:
            await self._drop()  # the lock goes with the connection
        finally:
            self._local.release()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        await discard(conn)

    async def close(self) -> None:
        await self._drop()


class Turns:
    """The node's turns by name, of the kind its database allows."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self._engine = None if is_sqlite(url) else engine
        lock_dir = instance_lock_dir(url)  # beside the SQLite file, as the instance locks
        self._dir = None if lock_dir is None else Path(f"{lock_dir}".removesuffix(".instances"))
        if self._dir is not None:
            self._dir = self._dir.with_name(self._dir.name + ".turns")
        self._turns: dict[str, Turn] = {}

    def turn(self, name: str) -> Turn:
        """The turn called `name` (the same object each time)."""
        found = self._turns.get(name)
        if found is None:
            if self._engine is not None:
                found = PgTurn(self._engine, name)
            elif self._dir is not None:
                digest = hashlib.sha256(name.encode()).hexdigest()[:32]
                found = FileTurn(self._dir / digest)
            else:
                found = LocalTurn()
            self._turns[name] = found
        return found

    async def close(self) -> None:
        """Close the connections and files the turns hold."""
        for turn in self._turns.values():
            if isinstance(turn, PgTurn):
                await turn.close()
            elif isinstance(turn, FileTurn):
                turn.close()
        self._turns.clear()
