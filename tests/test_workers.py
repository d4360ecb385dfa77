"""`satsrouter serve --workers 2`: two processes, one database, every charge adds up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import databases
from satsrouter_dev.fake_upstream import FakeUpstreamProcess
from satsrouter_dev.mint import LocalMint, TestWallet
from satsrouter_dev.stack import node_process

REQUESTS = 60
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert isinstance(data, dict)
    return data


async def _paid_requests(node_url: str, key: str) -> list[tuple[str, int]]:
    """REQUESTS paid chats, each on a new connection so the kernel spreads them."""
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[str, int]:
            url = f"{node_url}/v1/chat/completions"
            async with session.post(url, json=BODY, headers=headers) as resp:
                await _json(resp)
                return resp.headers["x-request-id"], int(resp.headers["X-Routstr-Cost-Msats"])

        return await asyncio.gather(*(one() for _ in range(REQUESTS)))


async def test_two_workers_share_the_database_and_charge_exactly(
    local_mint: LocalMint, user_wallet: TestWallet, tmp_path: Path
) -> None:
    (token,) = await user_wallet.mint_tokens(1000)
    with (
        FakeUpstreamProcess(defaults={"completion_tokens": 20}) as upstream,
        node_process(
            tmp_path,
            local_mint.url,
            upstream.url,
            workers=2,
            settings=databases.node_env(tmp_path / "node"),
        ) as node,
    ):
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{node.url}/v1/wallet/create", json={"cashu_token": token}
            ) as resp:
                key = (await _json(resp))["api_key"]
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{node.url}/v1/balance/info", headers=headers) as resp:
                before = await _json(resp)
            served = await _paid_requests(node.url, key)
            async with session.get(f"{node.url}/v1/balance/info", headers=headers) as resp:
                after = await _json(resp)
        # Each worker registered its own instance for reservation heartbeats (and removes
        # it again at a clean stop).
        url = databases.node_database(tmp_path / "node")
        ((instances,),) = databases.rows(url, "SELECT count(DISTINCT id) FROM instances")
        assert instances == 2

    costs = [cost for _, cost in served]
    assert len(set(costs)) == 1 and costs[0] > 0  # same request, same usage, same price
    assert int(before["balance"]) - int(after["balance"]) == sum(costs) == REQUESTS * costs[0]
    assert int(after["reserved"]) == 0
    assert int(after["total_requests"]) - int(before["total_requests"]) == REQUESTS
    # Request ids start with a per-process prefix: both workers answered.
    assert len({request_id[:16] for request_id, _ in served}) == 2


async def test_two_workers_never_hand_out_the_same_ecash(
    local_mint: LocalMint, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """X-Cashu across two workers: every change token is distinct ecash, all redeemable."""
    tokens = await user_wallet.mint_tokens(20, count=12)
    connector = aiohttp.TCPConnector(force_close=True)  # spread requests over both workers
    with (
        FakeUpstreamProcess(defaults={"completion_tokens": 20}) as upstream,
        node_process(
            tmp_path,
            local_mint.url,
            upstream.url,
            workers=2,
            settings=databases.node_env(tmp_path / "node"),
        ) as node,
    ):
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(token: str) -> tuple[str, str, int]:
                url = f"{node.url}/v1/chat/completions"
                async with session.post(url, json=BODY, headers={"X-Cashu": token}) as resp:
                    await _json(resp)
                    return (
                        resp.headers["x-request-id"],
                        resp.headers["X-Cashu"],
                        int(resp.headers["X-Routstr-Cost-Msats"]),
                    )

            served = await asyncio.gather(*(one(t) for t in tokens))

    assert len({request_id[:16] for request_id, _, _ in served}) == 2
    changes = [change for _, change, _ in served]
    assert len(set(changes)) == len(changes)
    # Redeeming each at the mint proves no two tokens share a proof (a double spend fails).
    for _, change, cost in served:
        assert await user_wallet.redeem(change) == (20_000 - cost) // 1000
