"""Leases: fleet-wide jobs run on one node at a time and move to a survivor when it dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import NodeFactory, admin_client, eventually
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint

from satsrouter.store.engine import make_engine, migrate
from satsrouter.store.leases import LeasedJob, Leases
from satsrouter.store.tx import TxRunner, make_tx_runner

FLEET_JOBS = {"invoice-watcher", "lightning-expiry", "auto-payout", "nostr-announce"}


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def runner(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TxRunner]:
    """A migrated database of each kind, used through its transaction runner."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'leases.db'}"
    engine = make_engine(url)
    await migrate(engine)
    tx = make_tx_runner(url, engine)
    try:
        yield tx
    finally:
        await tx.close()
        await engine.dispose()


class Clock:
    """A clock the test moves by hand (the lease table compares writers' clocks)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def rows(leases: Leases) -> dict[str, tuple[str, float, float]]:
    return {r["name"]: (r["holder"], r["expires_at"], r["acquired_at"]) for r in await leases.all()}


async def test_acquire_renew_expire_hand_over(runner: TxRunner) -> None:
    clock = Clock()
    a, b = Leases(runner, "node-a", clock), Leases(runner, "node-b", clock)

    assert await a.acquire_or_renew("job", 30)
    assert not await b.acquire_or_renew("job", 30)  # held by a, not expired
    assert await rows(a) == {"job": ("node-a", 1_000_030.0, 1_000_000.0)}

    clock.now += 20
    assert await a.acquire_or_renew("job", 30)  # a renews: acquired_at stays
    assert await rows(a) == {"job": ("node-a", 1_000_050.0, 1_000_000.0)}
    clock.now += 29.9
    assert not await b.acquire_or_renew("job", 30)  # still a's until 1_000_050

    clock.now += 0.2  # a stopped renewing: expired
    assert await b.acquire_or_renew("job", 30)
    assert await rows(a) == {"job": ("node-b", 1_000_080.1, 1_000_050.1)}
    assert not await a.acquire_or_renew("job", 30)  # a's late renewal finds it taken

    # Other leases are independent.
    assert await a.acquire_or_renew("other", 30)
    assert {n: h for n, (h, _, _) in (await rows(a)).items()} == {
        "job": "node-b",
        "other": "node-a",
    }


async def test_release_frees_the_lease_at_once(runner: TxRunner) -> None:
    clock = Clock()
    a, b = Leases(runner, "node-a", clock), Leases(runner, "node-b", clock)
    assert await a.acquire_or_renew("job", 30)
    assert await a.acquire_or_renew("other", 30)

    await b.release("job")  # not b's: nothing happens
    assert not await b.acquire_or_renew("job", 30)

    await a.release("job")
    assert await b.acquire_or_renew("job", 30)
    assert not await b.acquire_or_renew("other", 30)
    await a.release_all()
    assert await b.acquire_or_renew("other", 30)
    assert await rows(a) == {
        "job": ("node-b", 1_000_030.0, 1_000_000.0),
        "other": ("node-b", 1_000_030.0, 1_000_000.0),
    }


async def test_take_from_a_dead_holder_before_expiry(runner: TxRunner) -> None:
    clock = Clock()
    a, b, c = (Leases(runner, f"node-{x}", clock) for x in "abc")
    assert await a.acquire_or_renew("job", 30)
    assert await b.holder("job") == "node-a"
    assert await b.holder("nothing") is None
    assert not await c.take_from("job", "node-x", 30)  # names a holder that is not it
    assert await b.take_from("job", "node-a", 30)
    assert not await c.take_from("job", "node-a", 30)  # b was first
    assert not await a.acquire_or_renew("job", 30)
    assert await a.holder("job") == "node-b"


async def test_one_winner_when_many_race(runner: TxRunner) -> None:
    """Many instances asking at the same moment: exactly one gets the lease."""
    clock = Clock()
    contenders = [Leases(runner, f"node-{i}", clock) for i in range(8)]
    for _ in range(5):
        won = await asyncio.gather(*(c.acquire_or_renew("race", 10) for c in contenders))
        assert sum(won) == 1
        winner = contenders[won.index(True)].instance_id
        assert (await rows(contenders[0]))["race"][0] == winner
        clock.now += 11  # expire it for the next round


async def test_leased_job_runs_only_while_held(runner: TxRunner) -> None:
    """Two jobs of one name: only the holder's body runs; the other takes over after the
    holder stops renewing (its task cancelled, no release: as a dead process)."""
    counts = {"a": 0, "b": 0}

    def job(who: str) -> LeasedJob:
        async def body() -> None:
            counts[who] += 1

        return LeasedJob(Leases(runner, f"node-{who}"), "job", lambda: 0.6, lambda: 0.05, body)

    a, b = job("a"), job("b")
    task_a = asyncio.create_task(a.run())

    async def a_holds() -> bool:
        return a.held and counts["a"] >= 3

    await eventually(a_holds, within=10)
    task_b = asyncio.create_task(b.run())
    try:
        # b asks at once and every 0.2 s; a keeps running passes meanwhile, b none.
        seen = counts["a"]

        async def a_ran_on() -> bool:
            return counts["a"] >= seen + 8

        await eventually(a_ran_on, within=10)
        assert counts["b"] == 0 and not b.held

        task_a.cancel()
        died = time.monotonic()

        async def b_took_over() -> bool:
            return counts["b"] > 0

        await eventually(b_took_over, within=0.6 + 0.2 + 2.0)
        # a renewed at most 0.2 s before it died: its lease ran at least 0.4 s more.
        assert time.monotonic() - died >= 0.4
    finally:
        for task in (task_a, task_b):
            task.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)


# ---- two real nodes on one Postgres -----------------------------------------------------


async def test_two_nodes_share_the_jobs_and_hand_over_on_stop(
    node_factory: NodeFactory, postgres_url: str
) -> None:
    fast = {"lease_ttl_seconds": 1.0, "expiry_check_interval": 0.2, "payout_interval": 0.2}
    first = await node_factory(database_url=postgres_url, **fast)

    async def first_holds_all() -> bool:
        live = {r["name"]: r["holder"] for r in await first.node.leases.all() if r["live"]}
        return live == dict.fromkeys(FLEET_JOBS, first.node.instance_id)

    await eventually(first_holds_all, within=10)
    second = await node_factory(database_url=postgres_url, **fast)

    async def both_ran_rounds() -> bool:
        return all(first.node.jobs[name].passes >= 2 for name in FLEET_JOBS)

    await eventually(both_ran_rounds, within=10)
    # The second node renewed meanwhile and was refused every time: it ran nothing.
    assert {name: job.passes for name, job in second.node.jobs.items()} == dict.fromkeys(
        FLEET_JOBS, 0
    )
    assert not any(job.held for job in second.node.jobs.values())
    assert await first_holds_all()

    # The admin's node view lists them, from either node's side.
    for running, mine in ((first, True), (second, False)):
        http = await admin_client(running)
        try:
            leases = (await http.get("/admin/api/node")).json()["leases"]
        finally:
            await http.aclose()
        assert {
            lease["name"]: (lease["holder"], lease["mine"]) for lease in leases
        } == dict.fromkeys(FLEET_JOBS, (first.node.instance_id, mine))

    await first.stop()  # a clean stop releases its leases: no TTL to wait out

    async def second_holds_all() -> bool:
        live = {r["name"]: r["holder"] for r in await second.node.leases.all() if r["live"]}
        ran = all(second.node.jobs[name].passes >= 1 for name in FLEET_JOBS)
        return ran and live == dict.fromkeys(FLEET_JOBS, second.node.instance_id)

    await eventually(second_holds_all, within=1.0 / 3 + 3.0)


async def test_killed_holder_hands_its_jobs_to_a_survivor(
    node_factory: NodeFactory,
    postgres_url: str,
    local_mint: LocalMint,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """A node in a child process holds every lease; SIGKILL it (no release) and the node
    left takes every job over within one TTL plus a renewal period and a margin."""
    ttl = 2.0
    upstream.reset()
    victim = KillableNode(
        tmp_path / "victim",
        local_mint.url,
        upstream.url,
        DATABASE_URL=postgres_url,
        LEASE_TTL_SECONDS=str(ttl),
        EXPIRY_CHECK_INTERVAL="0.2",
        PAYOUT_INTERVAL="0.2",
    )
    (tmp_path / "victim").mkdir()
    try:
        await victim.start()
        survivor = await node_factory(
            database_url=postgres_url,
            lease_ttl_seconds=ttl,
            expiry_check_interval=0.2,
            payout_interval=0.2,
        )
        mine = survivor.node.instance_id

        async def victim_holds_all() -> bool:
            live = {r["name"]: r["holder"] for r in await survivor.node.leases.all() if r["live"]}
            return set(live) == FLEET_JOBS and mine not in live.values()

        await eventually(victim_holds_all, within=15)
        assert all(job.passes == 0 for job in survivor.node.jobs.values())

        victim.kill()
        killed = time.monotonic()

        async def survivor_holds_all() -> bool:
            live = {r["name"]: r["holder"] for r in await survivor.node.leases.all() if r["live"]}
            ran = all(job.passes >= 1 for job in survivor.node.jobs.values())
            return ran and live == dict.fromkeys(FLEET_JOBS, mine)

        # Expiry after at most one TTL, seen at the next renewal (a third of it later).
        await eventually(survivor_holds_all, within=ttl + ttl / 3 + 3.0)
        took = time.monotonic() - killed
        assert took <= ttl + ttl / 3 + 3.0
    finally:
        await victim.stop()


async def test_a_node_restarted_on_sqlite_takes_its_predecessors_leases_at_once(
    local_mint: LocalMint, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGKILL, then a restart on the same data (a new instance id): the predecessor's lock
    file is free, so its leases move at once, not after the 300 s TTL."""
    upstream.reset()
    node = KillableNode(tmp_path, local_mint.url, upstream.url, LEASE_TTL_SECONDS="300")
    try:
        await node.start()
        await eventually(lambda: _all_leased(node), within=15)
        (before,) = {h for (h,) in node.query("SELECT holder FROM leases")}
        node.kill()
        await node.start()

        async def moved() -> bool:
            live = {h for (h,) in node.query("SELECT holder FROM leases")}
            return await _all_leased(node) and before not in live

        await eventually(moved, within=15)
    finally:
        await node.stop()


async def _all_leased(node: KillableNode) -> bool:
    names = {n for (n,) in node.query("SELECT name FROM leases WHERE expires_at > ?", time.time())}
    return names == FLEET_JOBS
