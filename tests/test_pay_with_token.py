"""Paying with a Cashu token as the API key, against a real mint and the official SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
from conftest import NodeFactory, RunningNode, expected_cost, model_entry
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet

MESSAGES = [{"role": "user", "content": "how much does this cost"}]


def client(node: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)


async def test_token_as_bearer_pays_exact_cost(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    api = client(node, token)
    raw = await api.chat.completions.with_raw_response.create(
        model="test/priced",
        messages=MESSAGES,
        max_tokens=8,  # type: ignore[arg-type]
    )
    first = raw.parse()
    assert first.usage is not None
    cost1 = expected_cost(
        model_entry("test/priced"), first.usage.prompt_tokens, first.usage.completion_tokens
    )
    assert cost1 > 0
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost1
    assert (first.usage.model_extra or {})["cost"]["total_msats"] == cost1
    assert raw.headers["x-request-id"]
    # The upstream saw the node's own key, never the user's token.
    assert upstream.stats["last_headers"]["authorization"] == "Bearer upstream-secret"
    assert token not in str(upstream.stats["last_headers"])

    info = await node.balance(token)
    assert info["balance"] == 100_000 - cost1
    assert int(raw.headers["X-Routstr-Balance-Msats"]) == 100_000 - cost1

    # The same token string keeps working as a key, on the same balance.
    second = await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=3)
    assert second.usage is not None
    cost2 = expected_cost(
        model_entry("test/priced"), second.usage.prompt_tokens, second.usage.completion_tokens
    )
    info = await node.balance(token)
    assert info["balance"] == 100_000 - cost1 - cost2
    assert info["reserved"] == 0
    await node.check_invariants()


async def test_short_alias_resolves(node: RunningNode, user_wallet: TestWallet) -> None:
    (token,) = await user_wallet.mint_tokens(10)
    reply = await client(node, token).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=2
    )
    assert reply.model == "openai/gpt-4o-mini"


async def test_unknown_model_is_404_and_nothing_redeemed(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(10)
    with pytest.raises(openai.NotFoundError) as info:
        await client(node, token).chat.completions.create(model="nope/nothing", messages=MESSAGES)
    assert info.value.body["type"] == "model_not_found"  # type: ignore[index]
    assert await user_wallet.redeem(token) == 10  # still the user's


async def test_double_spend_with_reserialised_token(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(20)
    await client(node, token).chat.completions.create(
        model="test/priced", messages=MESSAGES, max_tokens=2
    )
    liabilities = await node.node.ledger.total_liabilities()
    other = await user_wallet.reserialize(token)
    assert other != token
    with pytest.raises(openai.BadRequestError) as info:
        await client(node, other).chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=2
        )
    assert info.value.body["type"] == "cashu_token_already_spent"  # type: ignore[index]
    assert await node.node.ledger.total_liabilities() == liabilities
    await node.check_invariants()


async def test_bad_tokens_are_refused_clearly(node: RunningNode) -> None:
    cases = {
        "cashuBgarbage": 400,
        "cashuA": 400,
        "sk-unknown-key-0000": 401,
        "hello": 401,
    }
    async with httpx.AsyncClient(base_url=node.url) as http:
        for key, status in cases.items():
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "test/priced", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == status, key
            body = resp.json()["error"]
            assert body["code"] == status and body["message"] and body["type"]
            assert len(key) < 10 or key not in body["message"]
        assert await node.node.ledger.total_liabilities() == 0


async def test_no_credentials_is_402_with_payment_request(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post(
            "/v1/chat/completions", json={"model": "test/priced", "messages": MESSAGES}
        )
    assert resp.status_code == 402
    assert resp.headers["X-Cashu"].startswith("creqA")
    assert resp.json()["error"]["type"] == "payment_required"


async def test_foreign_mint_token_is_refused_without_contacting_it(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    from test_ecash import _rehome

    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        (token,) = await user_wallet.mint_tokens(10)
        foreign = _rehome(token, f"http://127.0.0.1:{port}")
        with pytest.raises(openai.BadRequestError) as info:
            await client(node, foreign).chat.completions.create(
                model="test/priced", messages=MESSAGES
            )
        assert info.value.body["type"] == "mint_not_accepted"  # type: ignore[index]
        assert node.node.settings.cashu_mints[0] in info.value.body["message"]  # type: ignore[index]
    finally:
        server.close()
        await server.wait_closed()
    assert connections == []
    assert await node.node.ledger.total_liabilities() == 0
    assert await user_wallet.redeem(token) == 10


async def test_fifty_parallel_requests_on_a_key_that_affords_twenty(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    # test/flat: 10 completion tokens cost exactly 250 msat, the same as the reservation.
    (token,) = await user_wallet.mint_tokens(5)  # 5000 msat = 20 requests
    upstream.configure(latency_ms=400)
    api = client(node, token)
    await node.balance(token)  # redeem first, so all 50 race on the balance, not the swap

    async def one() -> int:
        try:
            await api.chat.completions.create(model="test/flat", messages=MESSAGES, max_tokens=10)
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert statuses.count(200) == 20
    assert statuses.count(402) == 30
    info = await node.balance(token)
    assert info["balance"] == 0 and info["reserved"] == 0
    await node.check_invariants()


async def test_insufficient_balance_message_says_current_and_required(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(1)
    with pytest.raises(openai.APIStatusError) as info:
        await client(node, token).chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=200
        )
    assert info.value.status_code == 402
    message = info.value.body["message"]  # type: ignore[index]
    assert "Current: 1000 msat" in message and "Required:" in message
    assert (await node.balance(token))["balance"] == 1000


async def test_dust_token_below_the_mint_fee_is_refused(
    node_factory: NodeFactory, fee_mint: LocalMint, tmp_path: Path
) -> None:
    running = await node_factory(cashu_mints=[fee_mint.url])
    wallet = await TestWallet.create(fee_mint.url, tmp_path / "fee-wallet")
    (dust,) = await wallet.mint_tokens(1)  # one proof: the 100 ppk input fee eats it all
    with pytest.raises(openai.BadRequestError) as info:
        await client(running, dust).chat.completions.create(model="test/priced", messages=MESSAGES)
    assert info.value.body["type"] == "token_too_small"  # type: ignore[index]
    assert await running.node.ledger.total_liabilities() == 0
