"""The one way the node uses its database: transaction functions, each run in one hop.

A transaction is a plain function of a `Tx` (the SQL is portable text with `:name`
parameters); a module is handed the `TxRunner` it needs and never opens connections itself.
`run(fn, durable=...)` runs a function that may write; `read(fn)` one that only reads.

SQLAlchemy over aiosqlite hops to a worker thread for every statement (27 hops for a
reserve + settle pair, ~3 ms); here a whole transaction is one function run on one
dedicated thread with the stdlib driver (~0.1 ms). Other databases run the same function
through SQLAlchemy's `run_sync`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from satsrouter.store.engine import DURABLE, SQLITE_SYNCHRONOUS, is_sqlite

log = logging.getLogger(__name__)

T = TypeVar("T")
J = TypeVar("J")


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement; returns (rows, rowcount)."""
        ...


class TxRunner(Protocol):
    """Runs synchronous transaction functions without blocking the event loop.

    `run`: a transaction that may write. `durable=True`: the commit is on disk before the
    caller hears back, whatever else the database does for speed. Every transaction after
    which value leaves the node (a token paid out, a request sent to a mint) or that records
    ecash is durable. `brief=True`: a few statements on rows found by key (a request's
    reserve and settle), which a runner may run on the caller's thread when nothing else
    waits for the database (SQLite's, `SqliteTxRunner.quiet`).

    `read`: a transaction that only reads, off the writers' path: it sees everything
    committed before it was asked for, never takes the write lock, and may not write.

    `statement`: one statement as a transaction of its own, not durable. On Postgres it is
    one round trip (autocommit), so the rows it locks are held only inside the server;
    `dialect` says which SQL the database speaks (data-modifying CTEs: Postgres only).
    """

    dialect: str

    async def run(self, fn: Callable[[Tx], T], durable: bool = False, brief: bool = False) -> T: ...

    async def read(self, fn: Callable[[Tx], T]) -> T: ...

    async def statement(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

    async def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        self.cursor.execute(sql, params)
        rows = self.cursor.fetchall()
        return rows, self.cursor.rowcount


Outcome = tuple[Any, BaseException | None]
"""A job's result, or the exception it raised."""

# Jobs waiting when the thread looks for work run as one batch (one transaction for the
# SQLite runner); the cap bounds how long the first of them waits for the last.
MAX_BATCH = 64


def _resolve_all(futures: list[asyncio.Future[Any]], outcomes: list[Outcome]) -> None:
    for fut, (result, exc) in zip(futures, outcomes, strict=True):
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _OneThread(Generic[J]):
    """One worker thread that resolves asyncio futures itself, a batch at a time.

    Cheaper per call than `run_in_executor` on a ThreadPoolExecutor, which wraps a
    concurrent.futures.Future (with its Condition) in an asyncio one: on the hot path that
    bookkeeping cost as much as the transaction's own SQL. Whatever queued while a batch
    ran goes in the next one, resolved with one wake-up of the event loop.
    """

    def __init__(self, name: str, run_batch: Callable[[list[J]], list[Outcome]]) -> None:
        self._jobs: queue.SimpleQueue[_Job[J] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._run_batch = run_batch
        self._started = False

    def submit(self, job: J) -> asyncio.Future[Any]:
        if not self._started:
            self._started = True
            self._thread.start()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((job, fut))
        return fut

    def _take(self) -> tuple[list[_Job[J]], bool]:
        """The next batch (waiting for its first job), and whether shutdown was asked."""
        first = self._jobs.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            # A caller that gave up before its job started is skipped, as with an executor.
            live = [(job, fut) for job, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                outcomes = self._run_batch([job for job, _ in live])
            except BaseException as exc:  # the batch runner itself failed: everyone hears it
                outcomes = [(None, exc)] * len(live)
            # Each event loop with callers in the batch gets one wake-up.
            by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Any], list[Outcome]]] = {}
            for (_, fut), outcome in zip(live, outcomes, strict=True):
                futures, results = by_loop.setdefault(fut.get_loop(), ([], []))
                futures.append(fut)
                results.append(outcome)
            for loop, (futures, results) in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve_all, futures, results)
                except RuntimeError:
                    pass  # the loop is closed: nobody is waiting any more

    def shutdown(self) -> None:
        if self._started:
            self._jobs.put(None)
            self._thread.join()


_Job = tuple[J, "asyncio.Future[Any]"]


def _in_savepoint(tx: _SqliteTx, fn: Callable[[Tx], Any]) -> Outcome:
    """Run one transaction function of a batch; if it raises, only its writes are undone."""
    tx.cursor.execute("SAVEPOINT job")
    try:
        result = fn(tx)
    except Exception as exc:
        tx.cursor.execute("ROLLBACK TO job")
        tx.cursor.execute("RELEASE job")
        return None, exc
    tx.cursor.execute("RELEASE job")
    return result, None


def _read_all(tx: _SqliteTx, fns: list[Callable[[Tx], Any]]) -> list[Outcome]:
    """Run a batch of reads in one snapshot; a read that raises fails only itself."""
    tx.cursor.execute("BEGIN")
    try:
        outcomes: list[Outcome] = []
        for fn in fns:
            try:
                outcomes.append((fn(tx), None))
            except Exception as exc:
                outcomes.append((None, exc))
        return outcomes
    finally:
        tx.cursor.execute("COMMIT")  # ends the snapshot (nothing was written)


# Commits (batches) between two checkpoints. A commit writes the pages its batch dirtied:
# at c=1 SQLite's automatic checkpoint (1,000 pages) came every ~150 commits, so about 7
# each, and a batch of many transactions writes not many more (they share the account's
# pages). So 100 commits keep the WAL near what SQLite let grow, whatever the batch size;
# counting transactions instead checkpointed far more often at c=32 and cost ~10 % more
# CPU per request there.
CHECKPOINT_EVERY = 100
# How long a writer waits for another process's write lock (SQLite's busy handler).
BUSY_TIMEOUT_MS = 10_000
# SQLite's own automatic checkpoint (in a COMMIT, on the writer's thread) only if the
# checkpoint thread falls far behind: 10,000 pages, 40 MB of WAL.
BACKSTOP_CHECKPOINT_PAGES = 10_000


class _Checkpointer:
    """Passive WAL checkpoints on a thread and connection of their own, when kicked.

    Kicks that arrive while a checkpoint runs make one more; none are queued beyond that.
    The connection syncs as a durable commit would (the WAL before the copy, the database
    file after it): a checkpoint is where NORMAL commits become durable.
    """

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self._wanted = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def kick(self) -> None:
        """Ask for a checkpoint soon (called on the writer's thread after a commit)."""
        with self._lock:
            if self._stop:
                return
            if not self._started:
                self._started = True
                self._thread.start()
        self._wanted.set()

    def _work(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stop:
                    return
                # PASSIVE: copies what no reader still needs, never waits for a lock a
                # writer holds; another process's checkpoint in progress answers "busy".
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    # the next kick tries again; the writer's backstop checkpoint remains
                    log.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    def shutdown(self) -> None:
        with self._lock:
            self._stop = True
            started = self._started
        if started:
            self._wanted.set()
            self._thread.join()


class SqliteTxRunner:
    """One thread, one connection: transactions queue instead of fighting over SQLite's lock.

    Transactions that queued while the previous ones ran are committed together (group
    commit): one BEGIN/COMMIT, one WAL write and one wake-up of the event loop for the lot,
    each in its own savepoint so a function that raises undoes only its own writes. Every
    caller hears back only after the COMMIT; if the COMMIT fails, they all get its error
    and none of their writes stand.

    Between processes (`serve --workers N`) they queue on an flock of `<db>.txlock` first:
    SQLite's busy handler polls with sleeps of up to 100 ms, the kernel wakes the next
    waiter as soon as the lock is free.

    A batch holding a durable transaction commits with `synchronous=FULL` (the WAL is
    synced at COMMIT, and with it every commit before); others with `synchronous` (NORMAL:
    synced at checkpoints). So a reserve or a bearer settle costs no fsync, and what a power
    loss can take back is at most the last charges before it, never ecash or a payout.

    Checkpoints (copying the WAL into the database file, with an fsync of each) run on a
    thread and connection of their own, `_Checkpointer`, not inside a COMMIT: SQLite's
    automatic checkpoint ran in whichever commit crossed 1,000 WAL pages and made that
    request ~13 ms slower, one in 70 paid requests (the c=1 p99). A passive checkpoint takes
    no lock a writer needs, so commits go on while it runs; what each commit syncs is
    unchanged.

    A brief transaction that is not durable runs on the caller's thread instead, when
    `quiet()` says the process serves at most one request, the writer's thread is idle and
    no other process holds the lock: the hop to the thread and back wakes two sleeping
    threads, which on a virtual machine cost more (~75 us) than the transaction itself, and
    a lone request waits for them. Under load the thread stays, for its group commits and
    for the second core. That transaction is alone in its COMMIT, so it needs no savepoint.

    Reads have a thread and a connection of their own (`query_only`): in WAL mode they run
    beside the writer instead of queueing behind a batch's fsync, and they take neither the
    flock nor SQLite's write lock, so a balance lookup never holds up another process's
    charges. Reads queued together share one snapshot, taken after the last of them was
    asked for: each sees every commit its caller could have heard of.
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        synchronous: str = "NORMAL",
        name: str = "sqlite-tx",
        quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.quiet = quiet
        self._level = ""  # the connection's current PRAGMA synchronous
        self._patience = -1  # the connection's current PRAGMA busy_timeout
        # Held by whoever uses the writer's connection: its thread, or a caller running a
        # brief transaction in place.
        self._writing = threading.Lock()
        self._thread: _OneThread[tuple[Callable[[Tx], Any], bool]] = _OneThread(
            name, self._run_queued
        )
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._lock_fd: int | None = None
        self._reader: _OneThread[Callable[[Tx], Any]] = _OneThread(f"{name}-read", self._read_batch)
        self._checkpointer = _Checkpointer(path, f"{name}-checkpoint")
        self._commits_since_checkpoint = 0
        self._read_conn: sqlite3.Connection | None = None
        self._read_tx: _SqliteTx | None = None
        self._closed = False

    def _open(self) -> sqlite3.Cursor:
        if self._cursor is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Only a backstop: _Checkpointer checkpoints long before (CHECKPOINT_EVERY commits).
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            self._conn = conn
            self._cursor = conn.cursor()
        if self._lock_fd is None:
            self._lock_fd = os.open(f"{self.path}.txlock", os.O_RDWR | os.O_CREAT, 0o600)
        return self._cursor

    def _run_queued(self, jobs: list[tuple[Callable[[Tx], Any], bool]]) -> list[Outcome]:
        with self._writing:
            outcomes = self._run_batch(jobs, wait=True)
        assert outcomes is not None  # a batch that may wait always runs
        return outcomes

    def _run_batch(
        self, jobs: list[tuple[Callable[[Tx], Any], bool]], wait: bool
    ) -> list[Outcome] | None:
        """Run jobs in one transaction (the caller holds `_writing`).

        None, with nothing done, when `wait` is false and another writer holds the lock.
        """
        cursor = self._open()
        assert self._lock_fd is not None
        tx = _SqliteTx(cursor)
        fns = [fn for fn, _ in jobs]
        level = SQLITE_SYNCHRONOUS if any(durable for _, durable in jobs) else self.synchronous
        if level != self._level:  # outside a transaction, where SQLite takes the change
            cursor.execute(f"PRAGMA synchronous={level}")
            self._level = level
        # In place, a writer that ignores the flock (the sqlite3 shell) must not make the
        # event loop wait: busy at once, and the transaction goes to the thread.
        patience = BUSY_TIMEOUT_MS if wait else 0
        if patience != self._patience:
            cursor.execute(f"PRAGMA busy_timeout={patience}")
            self._patience = patience
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        outcomes: list[Outcome] = []
        try:
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                if not wait:
                    return None
                raise
            try:
                if len(fns) == 1:
                    # Alone in the transaction: if it raises, the ROLLBACK below undoes it.
                    outcomes.append((fns[0](tx), None))
                else:
                    for fn in fns:
                        outcomes.append(_in_savepoint(tx, fn))
                cursor.execute("COMMIT")
            except BaseException as exc:
                if cursor.connection.in_transaction:  # a failed COMMIT can leave it open
                    cursor.execute("ROLLBACK")
                # Nothing of the batch stands: a job that raised keeps its own error.
                failed: list[Outcome] = [(None, own or exc) for _, own in outcomes]
                return failed + [(None, exc)] * (len(fns) - len(outcomes))
        except sqlite3.Error as exc:  # BEGIN failed: nothing was done
            return [(None, exc)] * len(fns)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY:
            self._commits_since_checkpoint = 0
            self._checkpointer.kick()
        return outcomes

    def _run_in_place(self, fn: Callable[[Tx], Any]) -> list[Outcome] | None:
        """Run a brief transaction on the caller's thread if nobody else writes; else None."""
        if self._closed or not self._writing.acquire(blocking=False):
            return None
        try:
            return self._run_batch([(fn, False)], wait=False)
        finally:
            self._writing.release()

    def _read_batch(self, fns: list[Callable[[Tx], Any]]) -> list[Outcome]:
        if self._read_tx is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # A read that writes is a bug: it would bypass the writer's lock and durability.
            conn.execute("PRAGMA query_only=ON")
            self._read_conn = conn
            self._read_tx = _SqliteTx(conn.cursor())
        return _read_all(self._read_tx, fns)

    async def run(self, fn: Callable[[Tx], T], durable: bool = False, brief: bool = False) -> T:
        if brief and not durable and self.quiet():
            done = self._run_in_place(fn)
            if done is not None:
                ((value, exc),) = done
                if exc is not None:
                    raise exc
                result: T = value
                return result
        result = await self._thread.submit((fn, durable))
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        result: T = await self._reader.submit(fn)
        return result

    async def statement(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return await self.run(lambda tx: tx.execute(sql, params)[0])

    def _shutdown(self) -> None:
        # Each runs what is queued first; after it nothing uses its connection.
        self._thread.shutdown()
        self._reader.shutdown()
        self._checkpointer.shutdown()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = self._cursor = None
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = self._read_tx = None

    async def close(self) -> None:
        if self._closed:
            return  # a second close must not wait on a thread that has stopped
        self._closed = True
        await asyncio.to_thread(self._shutdown)


class _SqlAlchemyTx:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        result = self.conn.execute(text(sql), dict(params))
        rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else []
        return rows, result.rowcount


async def _run_on(conn: AsyncConnection, fn: Callable[[Tx], T]) -> T:
    """Run a transaction function inside a caller's open SQLAlchemy transaction."""
    return await conn.run_sync(lambda sync_conn: fn(_SqlAlchemyTx(sync_conn)))


# Postgres's counterpart of SQLite's NORMAL: the node's sessions start with
# `synchronous_commit` off (store/engine.py), so a commit returns before the WAL is flushed
# (the WAL writer flushes within a few hundred ms, in groups). A durable transaction — one
# that records ecash or lets value leave — turns it on for itself and waits for the flush,
# as the server's own setting demands (`check_durable`). A crash of the database server can
# take back at most the last charges before it, as on SQLite; it can never undo a payout.


class EngineTxRunner:
    """The same transaction functions over any SQLAlchemy async engine (e.g. Postgres)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._postgres = self.dialect == "postgresql"

    async def run(self, fn: Callable[[Tx], T], durable: bool = False, brief: bool = False) -> T:
        async with self.engine.begin() as conn:
            if self._postgres and durable:
                await conn.execute(text(DURABLE))
            return await _run_on(conn, fn)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        # Rolled back when the block ends: there is nothing to commit.
        async with self.engine.connect() as conn:
            return await _run_on(conn, fn)

    async def statement(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            # No BEGIN and no COMMIT of ours: the server commits the statement as it ends.
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            result = await auto.execute(text(sql), dict(params))
            return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

    async def close(self) -> None:
        return None


class DurableRunner:
    """A runner whose every transaction is durable (the wallet's: all of them record ecash)."""

    def __init__(self, runner: TxRunner) -> None:
        self.runner = runner
        self.dialect = runner.dialect

    async def run(self, fn: Callable[[Tx], T], durable: bool = True, brief: bool = False) -> T:
        return await self.runner.run(fn, durable=True)

    async def statement(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return await self.runner.run(lambda tx: tx.execute(sql, params)[0], durable=True)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self.runner.read(fn)

    async def close(self) -> None:
        await self.runner.close()


def make_tx_runner(
    url: str, engine: AsyncEngine, quiet: Callable[[], bool] = lambda: True
) -> TxRunner:
    """A file-backed SQLite database gets the single-thread runner; others use the engine.

    `quiet`: whether the process is serving at most one request (`SqliteTxRunner`).
    """
    prefix = "sqlite+aiosqlite:///"
    if is_sqlite(url) and url.startswith(prefix) and ":memory:" not in url:
        return SqliteTxRunner(url.removeprefix(prefix), quiet=quiet)
    return EngineTxRunner(engine)
