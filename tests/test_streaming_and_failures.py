"""Streaming, upstream failures and client disconnects: charged for what was served, only."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import orjson
import pytest
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from sqlalchemy import select

from satsrouter.billing.pricing import usage_cost
from satsrouter.store.tables import reservations
from satsrouter.usage import local_usage

MESSAGES = [{"role": "user", "content": "stream me some words please"}]


def client(node: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)


async def funded_token(node: RunningNode, wallet: TestWallet, sats: int = 100) -> str:
    (token,) = await wallet.mint_tokens(sats)
    assert (await node.balance(token))["balance"] == sats * 1000
    return token


async def collect(stream: Any) -> tuple[str, list[Any]]:
    text, chunks = "", []
    async for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, chunks


async def test_stream_with_upstream_usage(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    stream = await client(node, token).chat.completions.create(
        model="test/priced", messages=MESSAGES, stream=True, max_tokens=12
    )
    text, chunks = await collect(stream)
    assert text == " ".join(f"w{i}" for i in range(1, 11))
    # The node asked the upstream for usage even though the client did not.
    assert upstream.stats["last_request"]["stream_options"] == {"include_usage": True}
    # It did not ask: no usage-only chunk (the seed's `chunk.choices[0]` loop must work); the
    # finish chunk, last, carries the usage and its cost.
    assert all(chunk.choices for chunk in chunks)
    final = chunks[-1]
    assert final.usage is not None and final.choices[0].finish_reason == "stop"
    assert [c for c in chunks if c.usage is not None] == [final]
    cost = expected_cost(
        model_entry("test/priced"), final.usage.prompt_tokens, final.usage.completion_tokens
    )
    assert final.usage.model_extra["cost"]["total_msats"] == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    await node.check_invariants()


async def test_stream_usage_chunk_when_asked(node: RunningNode, user_wallet: TestWallet) -> None:
    token = await funded_token(node, user_wallet)
    stream = await client(node, token).chat.completions.create(
        model="test/priced",
        messages=MESSAGES,
        stream=True,
        max_tokens=12,
        stream_options={"include_usage": True},
    )
    text, chunks = await collect(stream)
    assert text == " ".join(f"w{i}" for i in range(1, 11))
    final = chunks[-1]
    assert final.usage is not None and final.choices == []
    assert all(chunk.choices for chunk in chunks[:-1])
    cost = final.usage.model_extra["cost"]["total_msats"]
    assert cost == expected_cost(
        model_entry("test/priced"), final.usage.prompt_tokens, final.usage.completion_tokens
    )
    assert (await node.balance(token))["balance"] == 100_000 - cost


async def test_stream_without_usage_is_charged_from_local_count(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(omit_usage=True)
    stream = await client(node, token).chat.completions.create(
        model="test/priced", messages=MESSAGES, stream=True, max_tokens=12
    )
    text, chunks = await collect(stream)
    assert text
    quote = node.node.prices.quote("test/priced", 1, 12)
    usage = local_usage({"messages": MESSAGES}, text)
    cost = usage_cost(quote.prices, usage).total_msats
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0 and cost > 0
    assert chunks[-1].usage.model_extra["cost"]["total_msats"] == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    await node.check_invariants()


async def test_non_streaming_without_usage_is_charged_from_local_count(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(omit_usage=True)
    reply = await client(node, token).chat.completions.create(
        model="test/priced", messages=MESSAGES, max_tokens=5
    )
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    charged = reply.usage.model_extra["cost"]["total_msats"]
    assert charged > 0
    assert (await node.balance(token))["balance"] == 100_000 - charged


async def test_client_disconnect_is_charged_for_what_was_produced(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(chunk_delay_ms=20, completion_tokens=40)
    body = {"model": "test/priced", "messages": MESSAGES, "stream": True, "max_tokens": 40}
    async with httpx.AsyncClient(base_url=node.url) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status_code == 200
            seen = 0
            async for _ in resp.aiter_lines():
                seen += 1
                if seen >= 6:
                    break  # leave mid-stream: the connection closes here
    for _ in range(200):
        info = await node.balance(token)
        if info["reserved"] == 0:
            break
        await asyncio.sleep(0.05)
    charged = 100_000 - info["balance"]
    async with node.node.engine.connect() as conn:
        state, reserved, recorded = (
            await conn.execute(
                select(
                    reservations.c.state, reservations.c.amount_msat, reservations.c.charged_msat
                )
            )
        ).one()
    assert info["reserved"] == 0
    assert 0 < charged
    # The node drained the upstream and charged its reported usage (40 completion tokens).
    prompt = upstream.stats["last_request"]
    assert prompt["max_tokens"] == 40
    assert charged == expected_cost(model_entry("test/priced"), 4 + 5, 40)
    assert state == "charged" and recorded == charged and charged <= reserved
    await node.check_invariants()


@pytest.mark.parametrize("fail", ["500", "drop", "timeout"])
async def test_upstream_failure_charges_nothing(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream, fail: str
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(fail=fail)
    with pytest.raises(openai.APIStatusError) as info:
        await client(node, token).chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=5
        )
    assert info.value.status_code == (504 if fail == "timeout" else 502)
    assert info.value.body["message"]  # type: ignore[index]
    balance = await node.balance(token)
    assert balance["balance"] == 100_000 and balance["reserved"] == 0
    await node.check_invariants()


@pytest.mark.parametrize("fail", ["500", "drop", "timeout", "drop_midstream"])
async def test_streaming_upstream_failure_charges_nothing(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream, fail: str
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(fail=fail)
    with pytest.raises(openai.APIError):
        stream = await client(node, token).chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=5, stream=True
        )
        await collect(stream)
    balance = await node.balance(token)
    assert balance["balance"] == 100_000 and balance["reserved"] == 0
    await node.check_invariants()


async def test_upstream_client_error_is_passed_back_and_free(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(fail="400")
    with pytest.raises(openai.BadRequestError) as info:
        await client(node, token).chat.completions.create(model="test/priced", messages=MESSAGES)
    assert info.value.body["type"] == "upstream_rejected"  # type: ignore[index]
    assert (await node.balance(token))["balance"] == 100_000


async def test_disconnect_then_upstream_breaks_charges_what_was_streamed(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    upstream.configure(chunk_delay_ms=30, fail="drop_midstream", fail_after_chunks=10)
    body = {"model": "test/priced", "messages": MESSAGES, "stream": True, "max_tokens": 40}
    async with httpx.AsyncClient(base_url=node.url) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            seen = 0
            async for _ in resp.aiter_lines():
                seen += 1
                if seen >= 4:
                    break
    for _ in range(200):
        info = await node.balance(token)
        if info["reserved"] == 0:
            break
        await asyncio.sleep(0.05)
    assert info["reserved"] == 0
    # No usage ever came: the node counted the ten words it relayed, plus the prompt.
    charged = 100_000 - info["balance"]
    quote = node.node.prices.quote("test/priced", 1, 40)
    words = " ".join(f"w{i}" for i in range(1, 11))
    assert charged == usage_cost(quote.prices, local_usage(body, words)).total_msats
    await node.check_invariants()


async def test_error_chunk_mid_stream_charges_nothing(
    node_factory: Any, user_wallet: TestWallet
) -> None:
    """OpenRouter ends a failed stream with a chunk carrying `error`: that is a failure (I4)."""
    from aiohttp import web
    from satsrouter_dev.mint import free_port

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [model_entry("test/priced")]})

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "gen-1", "object": "chat.completion.chunk", "model": "test/priced"}
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
            {
                **base,
                "error": {"code": 502, "message": "provider went away"},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            },
        ]
        for chunk in chunks:
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        node = await node_factory(upstream_base_url=f"http://127.0.0.1:{port}/v1")
        token = await funded_token(node, user_wallet)
        stream = await client(node, token).chat.completions.create(
            model="test/priced", messages=MESSAGES, stream=True
        )
        with pytest.raises(openai.APIError):
            await collect(stream)
        assert (await node.balance(token))["balance"] == 100_000
        await node.check_invariants()
    finally:
        await runner.cleanup()
