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
import hashlib
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
from satsrouter.store.turns import Turn, Turns

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
    other = await node_factory(
        data_dir=tmp_path / "other", database_url=node.node.settings.effective_database_url
    )
    tokens = await user_wallet.mint_tokens(40, 6)
    assert await mint_turn.acquire(None)
    async with httpx.AsyncClient(timeout=30) as http:
        paying = [
            asyncio.create_task(_pay(http, (node, other)[i % 2].url, t))
            for i, t in enumerate(tokens)
        ]
        await eventually(lambda: _all_waiting(node, 6), within=20)
        await mint_turn.release()
        answers = await asyncio.gather(*paying)
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    # one swap carried all six, whichever node's requests they were
    ops = await _rows(node, "SELECT instance_id, state FROM wallet_ops WHERE kind = 'receive'")
    assert len(ops) == 1 and ops[0][1] == "done"
    owners = await _rows(node, "SELECT DISTINCT instance_id FROM redemptions")
    assert {row[0] for row in owners} == {node.node.instance_id, other.node.instance_id}
    # each paid its own cost and got its own change, redeemable to the sat
    for answer in answers:
        cost = int(answer.headers["X-Routstr-Cost-Msats"])
        assert await user_wallet.redeem(answer.headers["X-Cashu"]) == (40_000 - cost) // 1000
    credited = await _rows(node, "SELECT state, proofs FROM redemptions")
    assert credited == [("credited", None)] * 6  # no proofs kept once swapped
    await _exact(node)
    await _exact(other)


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
