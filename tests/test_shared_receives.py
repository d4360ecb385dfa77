"""Receives batched across the nodes of one database (ecash/receiving.py, `ReceiveBook`).

Two nodes share one database (a SQLite file, or Postgres). X-Cashu payments reach both
while a third party holds the mint's turn; once it is free, whichever node gets it swaps
every waiting token in one swap and credits each, and the other node's requests are served
from the outcome written in their rows. A node killed at each step of a swap that carries
the other's receives loses nothing: recovery finishes or undoes it, and the requests that
waited on it are answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from conftest import NodeFactory, RunningNode, eventually
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.billing.audit import audit
from satsrouter.store.engine import make_engine
from satsrouter.store.signals import Signals
from satsrouter.store.turns import Turn, Turns
from satsrouter.store.tx import EngineTxRunner

CHAT = {"model": "test/priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def _rows(node: RunningNode, sql: str) -> list[tuple[Any, ...]]:
    return await node.node.tx.read(lambda tx: tx.execute(sql, {})[0])


@pytest_asyncio.fixture
async def mint_turn(node: RunningNode, local_mint: LocalMint) -> AsyncIterator[Turn]:
    """The mint's turn as a third process would take it (released at the end)."""
    url = node.node.settings.effective_database_url
    turns = Turns(url, node.node.engine)
    try:
        yield turns.turn(f"mint {local_mint.url}")
    finally:
        await turns.close()


async def _pay(http: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    return await http.post(f"{url}/v1/chat/completions", json=CHAT, headers={"X-Cashu": token})


async def _all_waiting(node: RunningNode, count: int) -> bool:
    rows = await _rows(
        node,
        "SELECT count(*) FROM redemptions WHERE state = 'pending' AND proofs IS NOT NULL "
        "AND op_id IS NULL",
    )
    return int(rows[0][0]) == count


async def _second_node(node: RunningNode, node_factory: NodeFactory, tmp_path: Path) -> RunningNode:
    """Another node on `node`'s database."""
    url = node.node.settings.effective_database_url
    return await node_factory(data_dir=tmp_path / "other", database_url=url)


async def _pay_both_at_once(
    node: RunningNode, other: RunningNode, tokens: list[str], mint_turn: Turn
) -> list[httpx.Response]:
    """Pay with each token at the two nodes in turn while the mint's turn is held; release
    it once every payment is waiting in the book; the answers, in token order."""
    assert await mint_turn.acquire(None)
    async with httpx.AsyncClient(timeout=30) as http:
        paying = [
            asyncio.create_task(_pay(http, (node, other)[i % 2].url, t))
            for i, t in enumerate(tokens)
        ]
        await eventually(lambda: _all_waiting(node, len(tokens)), within=20)
        await mint_turn.release()
        return await asyncio.gather(*paying)


async def _change_redeems(user_wallet: TestWallet, answers: list[httpx.Response]) -> None:
    """Each paid 40 sat less its own cost and got the rest back, redeemable to the sat."""
    for answer in answers:
        cost = int(answer.headers["X-Routstr-Cost-Msats"])
        assert await user_wallet.redeem(answer.headers["X-Cashu"]) == (40_000 - cost) // 1000


async def _exact(node: RunningNode) -> None:
    await node.check_invariants()
    books = await audit(node.node.tx, node.node.wallet)
    assert books.ok, books.report()


async def test_payments_at_two_nodes_go_to_the_mint_in_one_swap(
    node: RunningNode,
    node_factory: NodeFactory,
    user_wallet: TestWallet,
    mint_turn: Turn,
    tmp_path: Path,
) -> None:
    other = await _second_node(node, node_factory, tmp_path)
    tokens = await user_wallet.mint_tokens(40, 6)
    answers = await _pay_both_at_once(node, other, tokens, mint_turn)
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    # one swap carried all six, whichever node's requests they were
    ops = await _rows(node, "SELECT instance_id, state FROM wallet_ops WHERE kind = 'receive'")
    assert len(ops) == 1 and ops[0][1] == "done"
    owners = await _rows(node, "SELECT DISTINCT instance_id FROM redemptions")
    assert {row[0] for row in owners} == {node.node.instance_id, other.node.instance_id}
    # each paid its own cost and got its own change, redeemable to the sat
    await _change_redeems(user_wallet, answers)
    credited = await _rows(node, "SELECT state, proofs FROM redemptions")
    assert credited == [("credited", None)] * 6  # no proofs kept once swapped
    await _exact(node)
    await _exact(other)


async def test_a_spent_token_in_a_shared_swap_fails_alone_at_its_own_node(
    node: RunningNode,
    node_factory: NodeFactory,
    user_wallet: TestWallet,
    mint_turn: Turn,
    tmp_path: Path,
) -> None:
    other = await _second_node(node, node_factory, tmp_path)
    tokens = await user_wallet.mint_tokens(40, 4)
    assert await user_wallet.redeem(tokens[1]) == 40  # its proofs are spent at the mint
    answers = await _pay_both_at_once(node, other, tokens, mint_turn)
    # the shared swap was refused for the spent token; each was then swapped alone
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 400, 200, 200], [a.text for a in answers]
    assert answers[1].json()["error"]["type"] == "cashu_token_already_spent"
    states = await _rows(node, "SELECT state, count(*) FROM redemptions GROUP BY state")
    assert sorted(states) == [("credited", 3), ("failed", 1)]
    ops = await _rows(
        node, "SELECT state, count(*) FROM wallet_ops WHERE kind = 'receive' GROUP BY state"
    )
    assert sorted(ops) == [("done", 3), ("undone", 2)]
    await _change_redeems(user_wallet, [answers[0], answers[2], answers[3]])
    await _exact(node)


async def test_a_payment_waits_for_the_turn_no_longer_than_its_bound(
    node: RunningNode, user_wallet: TestWallet, mint_turn: Turn
) -> None:
    (token,) = await user_wallet.mint_tokens(40)
    node.node.billing.mint_wait = 0.3
    assert await mint_turn.acquire(None)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await _pay(http, node.url, token)
    finally:
        await mint_turn.release()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["type"] == "mint_busy"
    # nothing was recorded or sent: the token is still its owner's
    assert await _rows(node, "SELECT count(*) FROM redemptions") == [(0,)]
    assert await user_wallet.redeem(token) == 40


@pytest.mark.parametrize(
    "step", ["receive.after_intent", "receive.after_swap", "receive.after_store"]
)
async def test_a_node_killed_while_carrying_the_others_payments_loses_nothing(
    step: str,
    node_factory: NodeFactory,
    local_mint: LocalMint,
    upstream: FakeUpstream,
    user_wallet: TestWallet,
    tmp_path: Path,
) -> None:
    # On Postgres a node is known dead by its heartbeat's silence: both beat well within it
    # (on a busy machine too), or the carrier takes the waiter for dead and forgets its
    # waiting payments (safe: they would get `mint_busy`; this test is about the carrier).
    waiter = await node_factory(instance_dead_after=5.0, sweep_interval=0.5)
    url = waiter.node.settings.effective_database_url
    carrier = KillableNode(
        tmp_path / "carrier",
        local_mint.url,
        upstream.url,
        DATABASE_URL=url,
        INSTANCE_DEAD_AFTER="5",
    )
    (tmp_path / "carrier").mkdir()
    await carrier.start(crash_at=step)
    # The waiter's payments are recorded but it does not send them itself: the carrier will.
    (batcher,) = waiter.node.wallet._receivers.values()
    stalled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    batcher._feeder = stalled  # type: ignore[assignment]
    tokens = await user_wallet.mint_tokens(40, 4)
    try:
        async with httpx.AsyncClient(timeout=90) as http:
            paying = [asyncio.create_task(_pay(http, waiter.url, t)) for t in tokens[:3]]
            await eventually(lambda: _all_waiting(waiter, 3), within=20)
            with pytest.raises(httpx.TransportError):  # the carrier dies in its swap
                await _pay(http, carrier.url, tokens[3])
            assert await carrier.wait_exit() == 137
            batcher._feeder = None
            batcher._feeder = asyncio.create_task(batcher._feed())  # its turn, at last

            async def answered() -> bool:
                await waiter.node.billing.recover()  # finishes or undoes the dead one's swap
                return all(p.done() for p in paying)

            await eventually(answered, within=60, every=0.2)
            answers = [p.result() for p in paying]
            if step == "receive.after_intent":
                # the mint never saw the swap: nobody was charged, every token is usable
                assert [a.status_code for a in answers] == [503] * 3, [a.text for a in answers]
                assert {a.json()["error"]["type"] for a in answers} == {"mint_busy"}
                for token in tokens:
                    assert await user_wallet.redeem(token) == 40
            else:
                # the mint swapped them all: the waiter's requests were served, and the
                # carrier's own payment is its payer's balance, refundable at any node
                assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
                await _change_redeems(user_wallet, answers)
                refund = await http.post(
                    f"{waiter.url}/v1/balance/refund", headers={"X-Cashu": tokens[3]}
                )
                assert refund.status_code == 200, refund.text
                assert await user_wallet.redeem(refund.json()["token"]) == 40
    finally:
        if not stalled.done():
            stalled.cancel()
        carrier.kill()
    left = await _rows(waiter, "SELECT count(*) FROM redemptions WHERE state = 'pending'")
    assert left == [(0,)]
    await _exact(waiter)


async def test_on_postgres_a_signal_wakes_the_other_processes_at_commit(
    postgres_url: str,
) -> None:
    engines = [make_engine(postgres_url), make_engine(postgres_url)]
    sender, listener = Signals(postgres_url, engines[0]), Signals(postgres_url, engines[1])
    woken = asyncio.Event()
    try:
        await listener.watch("receives", woken.set)
        runner = EngineTxRunner(engines[0])
        await runner.run(lambda tx: sender.send_tx(tx, "other"))  # another name: not ours
        await runner.run(lambda tx: sender.send_tx(tx, "receives"))
        await asyncio.wait_for(woken.wait(), 10)
        # a lost listening connection is opened again, and its watchers look at once
        woken.clear()
        assert listener._conn is not None
        await listener._conn.invalidate()
        await listener.watch("receives", woken.set)
        await asyncio.wait_for(woken.wait(), 10)
    finally:
        await sender.close()
        await listener.close()
        for engine in engines:
            await engine.dispose()
