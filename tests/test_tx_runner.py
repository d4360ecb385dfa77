"""The SQLite transaction runner: queued transactions commit together, each on its own."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import eventually

from satsrouter.store import tx as tx_module
from satsrouter.store.tx import SqliteTxRunner, Tx

# The SQLite transaction runner itself (its thread, batching, file locks).
pytestmark = pytest.mark.sqlite_only("tests the SQLite transaction runner itself")


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[SqliteTxRunner]:
    path = tmp_path / "tx.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE item (id INTEGER PRIMARY KEY, parent INTEGER"
            " REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    tx_runner = SqliteTxRunner(str(path))
    yield tx_runner
    await tx_runner.close()


def _ids(runner: SqliteTxRunner) -> list[int]:
    with sqlite3.connect(runner.path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM item ORDER BY id")]


def _insert(item: int, parent: int | None = None) -> Callable[[Tx], int]:
    def op(tx: Tx) -> int:
        _, count = tx.execute(
            "INSERT INTO item (id, parent) VALUES (:id, :parent)", {"id": item, "parent": parent}
        )
        return count

    return op


class _Boom(Exception):
    pass


def _insert_then_fail(item: int) -> Callable[[Tx], int]:
    def op(tx: Tx) -> int:
        _insert(item)(tx)
        raise _Boom(item)

    return op


def _count(tx: Tx) -> int:
    rows, _ = tx.execute("SELECT count(*) FROM item", {})
    return int(rows[0][0])


async def _hold_thread(
    runner: SqliteTxRunner, reader: bool = False
) -> tuple[threading.Event, asyncio.Future[None]]:
    """Occupy the runner's (writing or reading) thread so that what is submitted next queues
    into one batch."""
    started, release = threading.Event(), threading.Event()

    def wait(tx: Tx) -> None:
        started.set()
        release.wait(10)

    holder = asyncio.ensure_future(runner.read(wait) if reader else runner.run(wait))
    await asyncio.to_thread(started.wait, 10)
    return release, holder


async def test_queued_transactions_commit_together_and_a_failure_undoes_only_its_own(
    runner: SqliteTxRunner,
) -> None:
    release, holder = await _hold_thread(runner)
    jobs = [asyncio.ensure_future(runner.run(_insert(i))) for i in range(1, 11)]
    jobs.insert(5, asyncio.ensure_future(runner.run(_insert_then_fail(99))))
    await asyncio.sleep(0.01)
    release.set()
    await holder
    results = await asyncio.gather(*jobs, return_exceptions=True)

    assert results[:5] + results[6:] == [1] * 10
    assert isinstance(results[5], _Boom)
    # The failed job's insert is undone; everyone else's stands.
    assert _ids(runner) == list(range(1, 11))


async def test_a_failed_commit_fails_every_job_of_its_batch(runner: SqliteTxRunner) -> None:
    release, holder = await _hold_thread(runner)
    good = [asyncio.ensure_future(runner.run(_insert(i))) for i in (1, 2)]
    # A deferred foreign key is only checked at COMMIT, so this one sinks the whole batch.
    orphan = asyncio.ensure_future(runner.run(_insert(3, parent=42)))
    await asyncio.sleep(0.01)
    release.set()
    await holder
    results = await asyncio.gather(*good, orphan, return_exceptions=True)

    assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
    assert _ids(runner) == []
    # The runner is usable afterwards.
    assert await runner.run(_insert(4)) == 1
    assert _ids(runner) == [4]


async def test_a_caller_that_gave_up_before_its_batch_started_is_skipped(
    runner: SqliteTxRunner,
) -> None:
    release, holder = await _hold_thread(runner)
    gave_up = asyncio.ensure_future(runner.run(_insert(1)))
    kept = asyncio.ensure_future(runner.run(_insert(2)))
    await asyncio.sleep(0.01)
    gave_up.cancel()
    release.set()
    await holder
    assert await kept == 1
    assert _ids(runner) == [2]


async def test_close_runs_what_is_queued_first(tmp_path: Path, runner: SqliteTxRunner) -> None:
    jobs = [asyncio.ensure_future(runner.run(_insert(i))) for i in range(1, 4)]
    await asyncio.sleep(0)
    await runner.close()
    assert await asyncio.gather(*jobs) == [1, 1, 1]
    assert _ids(runner) == [1, 2, 3]
    await runner.close()  # a second close returns at once


async def test_a_read_sees_every_earlier_commit_without_waiting_for_the_writer(
    runner: SqliteTxRunner,
) -> None:
    assert await runner.run(_insert(1)) == 1
    release, holder = await _hold_thread(runner)
    queued = asyncio.ensure_future(runner.run(_insert(2)))
    # The writer is busy (a batch and its fsync, say): the read does not queue behind it.
    assert await asyncio.wait_for(runner.read(_count), 5) == 1
    release.set()
    await holder
    assert await queued == 1
    assert await runner.read(_count) == 2


async def test_a_read_may_not_write(runner: SqliteTxRunner) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await runner.read(_insert(1))
    assert _ids(runner) == []


async def test_reads_queued_together_fail_one_by_one(runner: SqliteTxRunner) -> None:
    await runner.run(_insert(1))
    release, holder = await _hold_thread(runner, reader=True)
    reads = [asyncio.ensure_future(runner.read(_count)) for _ in range(3)]
    reads.insert(1, asyncio.ensure_future(runner.read(_insert_then_fail(2))))
    await asyncio.sleep(0.01)
    release.set()
    await holder
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(results[1], sqlite3.OperationalError)
    assert results[:1] + results[2:] == [1, 1, 1]


def _checkpointed_ids(path: str) -> list[int]:
    """The rows in the database file itself, not counting the WAL (what checkpoints copied)."""
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM item ORDER BY id")]


async def test_the_wal_is_checkpointed_by_its_own_thread_not_by_a_commit(
    runner: SqliteTxRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tx_module, "CHECKPOINT_EVERY", 3)
    await runner.run(_insert(1))
    await runner.run(_insert(2))
    assert _checkpointed_ids(runner.path) == []  # in the WAL only: the commits copied nothing
    await runner.run(_insert(3))  # the third job asks the checkpoint thread

    async def copied() -> bool:
        return _checkpointed_ids(runner.path) == [1, 2, 3]

    await eventually(copied, within=10, every=0.02)
    assert any(t.name.endswith("-checkpoint") for t in threading.enumerate())
    await runner.close()
    assert not any(t.name.endswith("-checkpoint") for t in threading.enumerate())


def _insert_noting_thread(item: int, seen: list[str]) -> Callable[[Tx], int]:
    def op(tx: Tx) -> int:
        seen.append(threading.current_thread().name)
        return _insert(item)(tx)

    return op


async def test_a_lone_brief_transaction_runs_in_place_and_anything_else_on_the_thread(
    runner: SqliteTxRunner,
) -> None:
    here = threading.current_thread().name
    seen: list[str] = []
    assert await runner.run(_insert_noting_thread(1, seen), brief=True) == 1
    assert seen == [here]
    # Not brief, durable, or the process is busy: the writer's thread.
    await runner.run(_insert_noting_thread(2, seen))
    await runner.run(_insert_noting_thread(3, seen), brief=True, durable=True)
    runner.quiet = lambda: False
    await runner.run(_insert_noting_thread(4, seen), brief=True)
    assert seen[1:] == ["sqlite-tx"] * 3
    assert _ids(runner) == [1, 2, 3, 4]


async def test_a_brief_transaction_that_raises_in_place_leaves_nothing(
    runner: SqliteTxRunner,
) -> None:
    with pytest.raises(_Boom):
        await runner.run(_insert_then_fail(1), brief=True)
    assert _ids(runner) == []
    assert await runner.run(_insert(2), brief=True) == 1
    assert _ids(runner) == [2]


async def test_a_brief_transaction_queues_behind_a_running_batch(runner: SqliteTxRunner) -> None:
    release, holder = await _hold_thread(runner)
    seen: list[str] = []
    job = asyncio.ensure_future(runner.run(_insert_noting_thread(1, seen), brief=True))
    await asyncio.sleep(0)
    assert not job.done()  # it did not take the connection from under the batch
    release.set()
    await holder
    assert await job == 1
    assert seen == ["sqlite-tx"]


async def test_a_brief_transaction_never_makes_the_event_loop_wait_for_another_writer(
    runner: SqliteTxRunner,
) -> None:
    """Another process's flock, or a writer that ignores it (the sqlite3 shell): the
    transaction waits on the writer's thread while the event loop goes on."""
    await runner.run(_insert(1))  # the runner's connection and lock file exist
    seen: list[str] = []

    # Another process of the node: it holds the flock (a second open file is another owner).
    lock_fd = os.open(f"{runner.path}.txlock", os.O_RDWR)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        job = asyncio.ensure_future(runner.run(_insert_noting_thread(2, seen), brief=True))
        await asyncio.sleep(0)
        assert time.monotonic() - started < 2  # a wait would be the busy timeout, 10 s
        assert not job.done()
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    assert await job == 1

    # A writer that ignores the flock: SQLite's own lock is busy.
    shell = sqlite3.connect(runner.path, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        job = asyncio.ensure_future(runner.run(_insert_noting_thread(3, seen), brief=True))
        await asyncio.sleep(0)
        assert time.monotonic() - started < 2
        assert not job.done()
    finally:
        shell.execute("COMMIT")
        shell.close()
    assert await job == 1
    assert seen == ["sqlite-tx", "sqlite-tx"]
    assert _ids(runner) == [1, 2, 3]
    # Nobody else writes now: in place again.
    await runner.run(_insert_noting_thread(4, seen), brief=True)
    assert seen[-1] == threading.current_thread().name
