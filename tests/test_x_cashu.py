"""Paying per request with X-Cashu: change to the msat, full refunds on failure, recovery."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

MESSAGES = [{"role": "user", "content": "pay as you go"}]


def client(node: RunningNode, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=node.api, api_key="unused", max_retries=0, default_headers={"X-Cashu": token}
    )


async def refund(node: RunningNode, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url) as http:
        return await http.post("/v1/balance/refund", headers={"X-Cashu": token})


async def test_change_is_value_minus_cost_and_redeemable(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(50)
    raw = await client(node, token).chat.completions.with_raw_response.create(
        model="test/priced",
        messages=MESSAGES,
        max_tokens=10,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert reply.usage is not None
    cost = expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    change = raw.headers["X-Cashu"]
    expected_change_sat = (50_000 - cost) // 1000
    assert await user_wallet.redeem(change) == expected_change_sat

    # Recovery returns the very same change token, as often as asked.
    for _ in range(2):
        again = await refund(node, token)
        assert again.status_code == 200
        assert again.json()["token"] == change
    # Spending the original token again is refused.
    with pytest.raises(openai.BadRequestError) as info:
        await client(node, token).chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=1
        )
    assert info.value.body["type"] == "cashu_token_already_spent"  # type: ignore[index]
    await node.check_invariants()


async def test_streamed_change_arrives_in_the_final_event(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(50)
    stream = await client(node, token).chat.completions.create(
        model="test/priced", messages=MESSAGES, max_tokens=10, stream=True
    )
    chunks = [chunk async for chunk in stream]
    usage_chunk = next(c for c in chunks if c.usage is not None)
    cost = usage_chunk.usage.model_extra["cost"]["total_msats"]
    assert cost == expected_cost(
        model_entry("test/priced"),
        usage_chunk.usage.prompt_tokens,
        usage_chunk.usage.completion_tokens,
    )
    last = chunks[-1].model_extra or {}
    change = last["x_cashu_change"]
    assert await user_wallet.redeem(change) == (50_000 - cost) // 1000
    assert (await refund(node, token)).json()["token"] == change


@pytest.mark.parametrize("fail", ["500", "drop"])
async def test_upstream_failure_returns_the_whole_value(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream, fail: str
) -> None:
    (token,) = await user_wallet.mint_tokens(20)
    upstream.configure(fail=fail)
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "test/priced", "messages": MESSAGES, "max_tokens": 5},
            headers={"X-Cashu": token},
        )
    assert resp.status_code == 502
    assert await user_wallet.redeem(resp.headers["X-Cashu"]) == 20
    await node.check_invariants()


async def test_streamed_upstream_failure_returns_the_whole_value(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    (token,) = await user_wallet.mint_tokens(20)
    upstream.configure(fail="drop_midstream")
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "test/priced", "messages": MESSAGES, "max_tokens": 5, "stream": True},
            headers={"X-Cashu": token},
        )
    assert resp.status_code == 200
    change = None
    for line in resp.text.splitlines():
        if line.startswith("data: {") and "x_cashu_change" in line:
            import json

            change = json.loads(line[6:])["x_cashu_change"]
    assert '"upstream_error"' in resp.text
    assert resp.text.rstrip().endswith("data: [DONE]")
    assert change is not None and await user_wallet.redeem(change) == 20


async def test_token_below_max_cost_is_refused_and_stays_spendable(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(1)
    with pytest.raises(openai.APIStatusError) as info:
        await client(node, token).chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=200
        )
    assert info.value.status_code == 400  # NUT-24: a short payment is a 400, not a 402
    assert info.value.body["type"] == "payment_too_small"  # type: ignore[index]
    assert await user_wallet.redeem(token) == 1
    assert await node.node.ledger.total_liabilities() == 0
