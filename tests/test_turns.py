"""A mint's turn is one holder at a time across processes, on SQLite (flock) and Postgres.

Two `Turns` on one database stand for two node processes (a flock and an advisory lock are
per open file / per connection, so they exclude each other within one process too). A
holder killed with SIGKILL must not keep the turn, a wait that times out must not leave it
taken, and on Postgres the turn goes to who asked first.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from satsrouter.store.engine import make_engine
from satsrouter.store.turns import Turns

NAME = "mint http://127.0.0.1:1"
HOLDER = """
import asyncio, sys
from satsrouter.store.engine import make_engine
from satsrouter.store.turns import Turns

async def main() -> None:
    turns = Turns(sys.argv[1], make_engine(sys.argv[1]))
    assert await turns.turn(sys.argv[2]).acquire(None)
    print("held", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'satsrouter.sqlite'}"
    found: str = request.getfixturevalue("postgres_url")
    return found


@pytest_asyncio.fixture
async def two(url: str) -> AsyncIterator[tuple[Turns, Turns]]:
    """Two processes' turns on one database."""
    engines = [make_engine(url), make_engine(url)]
    turns = (Turns(url, engines[0]), Turns(url, engines[1]))
    try:
        yield turns
    finally:
        for t in turns:
            await t.close()
        for engine in engines:
            await engine.dispose()


async def test_one_holder_at_a_time_and_a_timed_out_wait_leaves_nothing_taken(
    two: tuple[Turns, Turns],
) -> None:
    first, second = two[0].turn(NAME), two[1].turn(NAME)
    assert await first.acquire(None)
    assert not await second.acquire(0.3)  # held elsewhere: the wait runs out
    assert await two[1].turn("mint http://127.0.0.1:2").acquire(1.0)  # another mint is free
    await first.release()
    assert await second.acquire(10.0)
    assert not await first.acquire(0.3)
    await second.release()
    # The timed-out waits gave back whatever they would have been granted late.
    assert await first.acquire(10.0)
    await first.release()
    assert await second.acquire(10.0)
    await second.release()


async def test_a_waiter_gets_the_turn_when_it_is_released(two: tuple[Turns, Turns]) -> None:
    first, second = two[0].turn(NAME), two[1].turn(NAME)
    assert await first.acquire(None)
    waiting = asyncio.create_task(second.acquire(None))
    done, _ = await asyncio.wait([waiting], timeout=0.3)
    assert not done  # still waiting while the first holds it
    await first.release()
    assert await asyncio.wait_for(waiting, 30)
    await second.release()


async def test_a_killed_holder_does_not_keep_the_turn(url: str, two: tuple[Turns, Turns]) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        url,
        NAME,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 60)
        assert line == b"held\n", await holder.stderr.read() if holder.stderr else b""
        turn = two[0].turn(NAME)
        assert not await turn.acquire(0.3)
        holder.send_signal(signal.SIGKILL)
        assert await turn.acquire(30.0)
        await turn.release()
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


async def test_on_postgres_the_turn_goes_to_who_asked_first(postgres_url: str) -> None:
    """A holder that gives the turn back and asks again queues behind the one waiting."""
    engines = [make_engine(postgres_url), make_engine(postgres_url)]
    a, b = Turns(postgres_url, engines[0]), Turns(postgres_url, engines[1])
    try:
        order: list[str] = []
        assert await a.turn(NAME).acquire(None)
        waiting = asyncio.create_task(b.turn(NAME).acquire(None))
        # Wait until b's request is queued at the server before a gives the turn back.
        deadline = asyncio.get_running_loop().time() + 30
        while not await _someone_waits(postgres_url):
            assert asyncio.get_running_loop().time() < deadline, "b never queued"
            await asyncio.sleep(0.02)
        await a.turn(NAME).release()
        again = asyncio.create_task(a.turn(NAME).acquire(None))
        assert await asyncio.wait_for(waiting, 30)
        order.append("b")
        done, _ = await asyncio.wait([again], timeout=0.3)
        assert not done  # a waits behind b
        await b.turn(NAME).release()
        assert await asyncio.wait_for(again, 30)
        order.append("a")
        await a.turn(NAME).release()
        assert order == ["b", "a"]
    finally:
        await a.close()
        await b.close()
        for engine in engines:
            await engine.dispose()


async def _someone_waits(url: str) -> bool:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            )
            return bool(found.scalar_one())
    finally:
        await engine.dispose()
