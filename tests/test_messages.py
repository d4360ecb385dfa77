"""Anthropic Messages with the official `anthropic` SDK, against a native Anthropic-dialect
upstream and (translated) an OpenAI-dialect one: every answer charged exactly the published
price × the fake upstream's usage, count_tokens free, X-Cashu change, failures charged nothing.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from anthropic.types import ImageBlockParam, MessageParam, TextBlockParam, ToolParam
from conftest import (
    TEST_MODELS,
    NodeFactory,
    RunningNode,
    expected_cost,
    model_entry,
    msat_per_token,
)
from satsrouter_dev.fake_anthropic import input_tokens_of
from satsrouter_dev.fake_models import anthropic_models
from satsrouter_dev.fake_upstream import FakeUpstream, default_models, prompt_tokens_of
from satsrouter_dev.mint import TestWallet, free_port

from satsrouter.upstream.anthropic_usage import count_anthropic_prompt_tokens
from satsrouter.usage import count_tokens

MODEL = "test/priced"
WORDS_10 = " ".join(f"w{i}" for i in range(1, 11))
SYSTEM = "be brief"
QUESTION: list[MessageParam] = [{"role": "user", "content": "tell me three things"}]
TOOLS: list[ToolParam] = [
    {
        "name": "search",
        "description": "Search the web",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]
# A 1×1 transparent PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()
FUNDS_SAT = 100


@dataclass
class Target:
    """A node in front of one fake upstream, and which dialect that upstream speaks."""

    node: RunningNode
    upstream: FakeUpstream
    native: bool

    def seen(self) -> dict[str, Any]:
        """The last request body the upstream received."""
        body: dict[str, Any] = self.upstream.stats["last_request"]
        return body

    def prompt_tokens(self) -> int:
        """The upstream's prompt count for the last request, by the fake's own formula."""
        body = self.seen()
        if self.native:
            return input_tokens_of(body["messages"], body.get("system"))
        return prompt_tokens_of(body["messages"])


@pytest_asyncio.fixture(params=["native", "translated"])
async def target(
    request: pytest.FixtureRequest,
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    anthropic_upstream: FakeUpstream,
) -> Target:
    """The same tests against an Anthropic-dialect upstream and an OpenAI-dialect one."""
    if request.param == "native":
        anthropic_upstream.reset()
        node = await node_factory(
            upstream_base_url=anthropic_upstream.url, upstream_dialect="anthropic"
        )
        return Target(node, anthropic_upstream, native=True)
    upstream.reset()
    return Target(await node_factory(), upstream, native=False)


def client(
    node: RunningNode, key: str, *, root: bool = False, **options: Any
) -> anthropic.AsyncAnthropic:
    """The SDK as the seeds configure it (`ANTHROPIC_BASE_URL=<node>/v1`), or at the root."""
    return anthropic.AsyncAnthropic(
        base_url=node.url if root else node.api, api_key=key, max_retries=0, **options
    )


def cost(prompt: int, completion: int) -> int:
    return expected_cost(model_entry(MODEL), prompt, completion)


async def funded_token(node: RunningNode, wallet: TestWallet) -> str:
    """A Cashu token redeemed into its own balance, so later drops are exactly the charges."""
    (token,) = await wallet.mint_tokens(FUNDS_SAT)
    assert (await node.balance(token))["balance"] == FUNDS_SAT * 1000
    return token


async def new_key(node: RunningNode, wallet: TestWallet) -> str:
    """An `sk-` key funded with FUNDS_SAT."""
    (token,) = await wallet.mint_tokens(FUNDS_SAT)
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/v1/wallet/create", json={"cashu_token": token})
    resp.raise_for_status()
    key: str = resp.json()["api_key"]
    assert key.startswith("sk-")
    return key


async def spent(node: RunningNode, key: str) -> int:
    """Msat spent from FUNDS_SAT so far (and nothing left reserved)."""
    info = await node.balance(key)
    assert info["reserved"] == 0
    return FUNDS_SAT * 1000 - int(info["balance"])


def cost_of(usage: anthropic.types.Usage | anthropic.types.MessageDeltaUsage) -> int:
    """`usage.cost.total_msats`, the node's extra field on the SDK's usage model."""
    total: int = (usage.model_extra or {})["cost"]["total_msats"]
    return total


def tool_result_turns(tool_use: anthropic.types.ToolUseBlock) -> list[MessageParam]:
    """The conversation after a tool call: the call itself, then its result."""
    return [
        *QUESTION,
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": tool_use.id,
                    "name": tool_use.name,
                    "input": tool_use.input,
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny and warm"}
            ],
        },
    ]


# -- messages.create ---------------------------------------------------------------------------


@pytest.mark.parametrize("root", [False, True], ids=["base-v1", "base-root"])
async def test_create_charged_the_upstream_usage(
    target: Target, user_wallet: TestWallet, root: bool
) -> None:
    token = await funded_token(target.node, user_wallet)
    raw = await client(target.node, token, root=root).messages.with_raw_response.create(
        model=MODEL, max_tokens=50, system=SYSTEM, messages=QUESTION
    )
    message = raw.parse()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == WORDS_10  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.role == "assistant"
    assert message.model == MODEL
    # Native: (4 + 4 words) + 2 system words. Translated: the system prompt is a message.
    prompt = 10 if target.native else 14
    assert target.prompt_tokens() == prompt
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, 10)
    charged = cost(prompt, 10)
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == charged
    assert cost_of(message.usage) == charged
    assert int(raw.headers["X-Routstr-Balance-Msats"]) == FUNDS_SAT * 1000 - charged
    assert await spent(target.node, token) == charged
    # The client's base URL decides which of the two routes served it.
    prefix = "" if root else "/v1"
    assert raw.http_request.url.path == f"{prefix}/v1/messages"
    await target.node.check_invariants()


async def test_create_capped_by_max_tokens(target: Target, user_wallet: TestWallet) -> None:
    key = await new_key(target.node, user_wallet)
    message = await client(target.node, key).messages.create(
        model=MODEL, max_tokens=3, messages=QUESTION
    )
    assert message.content[0].text == "w1 w2 w3"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"
    assert target.seen()["max_tokens"] == 3
    assert message.usage.output_tokens == 3 and message.usage.input_tokens == 8
    assert cost_of(message.usage) == cost(8, 3)
    assert await spent(target.node, key) == cost(8, 3)


async def test_sk_key_as_bearer_or_x_api_key(target: Target, user_wallet: TestWallet) -> None:
    key = await new_key(target.node, user_wallet)
    total = 0
    # `api_key` is sent as x-api-key, `auth_token` as Authorization: Bearer.
    for api in (
        client(target.node, key),
        anthropic.AsyncAnthropic(base_url=target.node.api, auth_token=key, max_retries=0),
    ):
        message = await api.messages.create(model=MODEL, max_tokens=50, messages=QUESTION)
        assert message.content[0].text == WORDS_10  # type: ignore[union-attr]
        assert cost_of(message.usage) == cost(8, 10)
        total += cost(8, 10)
        assert await spent(target.node, key) == total
    await target.node.check_invariants()


# -- streaming -----------------------------------------------------------------------------------


async def test_stream_text_usage_and_cost(target: Target, user_wallet: TestWallet) -> None:
    token = await funded_token(target.node, user_wallet)
    deltas: list[anthropic.types.RawMessageDeltaEvent] = []
    texts: list[str] = []
    async with client(target.node, token).messages.stream(
        model=MODEL, max_tokens=50, system=SYSTEM, messages=QUESTION
    ) as stream:
        async for event in stream:
            if event.type == "text":
                texts.append(event.text)
            elif event.type == "message_delta":
                deltas.append(event)
        final = await stream.get_final_message()
    assert "".join(texts) == WORDS_10
    assert len(texts) == 10  # streamed word by word, not buffered into one event
    prompt = 10 if target.native else 14
    assert target.prompt_tokens() == prompt
    assert final.content[0].text == WORDS_10  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, 10)
    (delta,) = deltas
    assert delta.delta.stop_reason == "end_turn"
    assert cost_of(delta.usage) == cost(prompt, 10)
    assert await spent(target.node, token) == cost(prompt, 10)
    await target.node.check_invariants()


# -- a tool call round trip ------------------------------------------------------------------


async def test_tool_round_trip(target: Target, user_wallet: TestWallet) -> None:
    token = await funded_token(target.node, user_wallet)
    api = client(target.node, token)
    call = await api.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=TOOLS,
        messages=QUESTION,
    )
    assert call.stop_reason == "tool_use"
    (tool_use,) = call.content
    assert tool_use.type == "tool_use"
    assert (tool_use.name, tool_use.input) == ("search", {"query": "w1 w2"})
    assert (call.usage.input_tokens, call.usage.output_tokens) == (8, 5)
    assert cost_of(call.usage) == cost(8, 5)
    assert await spent(target.node, token) == cost(8, 5)
    if not target.native:
        (tool,) = target.seen()["tools"]
        assert tool == {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": TOOLS[0]["input_schema"],
                "description": "Search the web",
            },
        }

    answer = await api.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=TOOLS,
        messages=tool_result_turns(tool_use),
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == WORDS_10  # type: ignore[union-attr]
    seen = target.seen()["messages"]
    if target.native:
        prompt = 16  # tool_use and tool_result blocks count 0: 8 + 4 + 4
    else:
        # The call returns as the assistant's tool_calls, its result as a `tool` message.
        assert seen[1]["tool_calls"] == [
            {
                "id": tool_use.id,
                "type": "function",
                "function": {"name": "search", "arguments": '{"query":"w1 w2"}'},
            }
        ]
        assert seen[2] == {"role": "tool", "tool_call_id": tool_use.id, "content": "sunny and warm"}
        prompt = 19  # 8 + 4 + (4 + 3 words of the result)
    assert target.prompt_tokens() == prompt
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (prompt, 10)
    assert cost_of(answer.usage) == cost(prompt, 10)
    assert await spent(target.node, token) == cost(8, 5) + cost(prompt, 10)
    await target.node.check_invariants()


async def test_tool_round_trip_streamed(target: Target, user_wallet: TestWallet) -> None:
    token = await funded_token(target.node, user_wallet)
    api = client(target.node, token)
    deltas: list[anthropic.types.RawMessageDeltaEvent] = []
    async with api.messages.stream(
        model=MODEL,
        max_tokens=50,
        tools=TOOLS,
        messages=QUESTION,
    ) as stream:
        async for event in stream:
            if event.type == "message_delta":
                deltas.append(event)
        call = await stream.get_final_message()
    assert call.stop_reason == "tool_use"
    (tool_use,) = call.content
    assert tool_use.type == "tool_use"
    # The SDK assembled the input from the streamed JSON fragments.
    assert (tool_use.name, tool_use.input) == ("search", {"query": "w1 w2"})
    assert (call.usage.input_tokens, call.usage.output_tokens) == (8, 5)
    assert cost_of(deltas[0].usage) == cost(8, 5)
    assert await spent(target.node, token) == cost(8, 5)

    async with api.messages.stream(
        model=MODEL,
        max_tokens=50,
        tools=TOOLS,
        messages=tool_result_turns(tool_use),
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        answer = await stream.get_final_message()
    assert text == WORDS_10 and answer.stop_reason == "end_turn"
    prompt = 16 if target.native else 19
    assert target.prompt_tokens() == prompt
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (prompt, 10)
    assert await spent(target.node, token) == cost(8, 5) + cost(prompt, 10)
    await target.node.check_invariants()


# -- count_tokens --------------------------------------------------------------------------------

COUNT_BODY: dict[str, Any] = {
    "system": "short system",
    "messages": [{"role": "user", "content": "how many tokens is this"}],
}


@pytest.mark.parametrize("upstream_counts", [True, False], ids=["upstream-counts", "no-count"])
async def test_count_tokens_is_free(
    target: Target, user_wallet: TestWallet, upstream_counts: bool
) -> None:
    if not upstream_counts and target.native:
        # (An OpenAI-dialect upstream has no count endpoint at all: counted here either way.)
        target.upstream.configure(count_tokens=False)
    token = await funded_token(target.node, user_wallet)
    before = target.upstream.stats["paths"]
    counted = await client(target.node, token).messages.count_tokens(model=MODEL, **COUNT_BODY)
    paths = target.upstream.stats["paths"]
    if target.native:
        # Asked upstream (answered there, or 404 there and counted here).
        assert paths.get("/v1/messages/count_tokens", 0) == 1
    else:
        assert paths == before  # the OpenAI upstream is not asked at all
    if target.native and upstream_counts:
        assert counted.input_tokens == 4 + 5 + 2  # the fake's formula
        assert target.seen()["model"] == MODEL
    else:
        local = count_anthropic_prompt_tokens({"model": MODEL, **COUNT_BODY})
        assert counted.input_tokens == local
    assert await spent(target.node, token) == 0
    await target.node.check_invariants()


# -- what the native upstream sees ---------------------------------------------------------------


async def test_native_upstream_gets_version_and_the_nodes_key(
    anthropic_node: RunningNode, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    api = client(anthropic_node, token)
    await api.messages.create(model=MODEL, max_tokens=5, messages=QUESTION)
    stats = anthropic_upstream.stats
    assert stats["last_path"] == "/v1/messages"
    assert stats["anthropic_version"] == "2023-06-01"  # the SDK's
    headers: dict[str, str] = stats["last_headers"]
    assert headers["x-api-key"] == "upstream-secret"
    assert "authorization" not in headers
    assert not any(token in value for value in headers.values())

    # A version (and beta flags) the client chooses reach the upstream unchanged.
    await api.messages.create(
        model=MODEL,
        max_tokens=5,
        messages=QUESTION,
        extra_headers={"anthropic-version": "2023-01-01", "anthropic-beta": "test-beta"},
    )
    stats = anthropic_upstream.stats
    assert stats["anthropic_version"] == "2023-01-01"
    assert stats["last_headers"]["anthropic-beta"] == "test-beta"
    assert stats["last_headers"]["x-api-key"] == "upstream-secret"
    assert stats["last_request"]["model"] == MODEL


# -- X-Cashu ------------------------------------------------------------------------------------


class _Captured(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, into: bytearray) -> None:
        self.inner = inner
        self.into = into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.into += chunk
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class Recorder(httpx.AsyncBaseTransport):
    """An httpx transport keeping a copy of every response body the SDK reads."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.body = bytearray()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        assert isinstance(resp.stream, httpx.AsyncByteStream)
        return httpx.Response(
            resp.status_code,
            headers=resp.headers,
            stream=_Captured(resp.stream, self.body),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The data of every `event: name` in what was recorded."""
        out = []
        for block in bytes(self.body).split(b"\n\n"):
            lines = block.split(b"\n")
            if lines[0] == b"event: " + name.encode():
                out.append(orjson.loads(lines[1].removeprefix(b"data: ")))
        return out


def cashu_client(node: RunningNode, token: str, transport: Recorder) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=node.api,
        api_key="unused",
        max_retries=0,
        default_headers={"X-Cashu": token},
        http_client=httpx.AsyncClient(transport=transport),
    )


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_x_cashu_change(target: Target, user_wallet: TestWallet, streamed: bool) -> None:
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT)
    recorder = Recorder()
    api = cashu_client(target.node, token, recorder)
    prompt = 10 if target.native else 14
    if streamed:
        async with api.messages.stream(
            model=MODEL, max_tokens=50, system=SYSTEM, messages=QUESTION
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        # The SDK skipped the change event; the raw stream had it just before message_stop.
        assert text == WORDS_10 and final.stop_reason == "end_turn"
        (event,) = recorder.events("x_cashu_change")
        charged = cost_of(recorder_delta_usage(recorder))
        assert event["change_msats"] == 1000 * ((FUNDS_SAT * 1000 - charged) // 1000)
        change = event["token"]
        tail = bytes(recorder.body).rstrip().rsplit(b"\n\n", 2)
        assert tail[-2].startswith(b"event: x_cashu_change")
        assert tail[-1].startswith(b"event: message_stop")
    else:
        raw = await api.messages.with_raw_response.create(
            model=MODEL, max_tokens=50, system=SYSTEM, messages=QUESTION
        )
        charged = int(raw.headers["X-Routstr-Cost-Msats"])
        assert cost_of(raw.parse().usage) == charged
        change = raw.headers["X-Cashu"]
    assert charged == cost(prompt, 10)
    assert await user_wallet.redeem(change) == (FUNDS_SAT * 1000 - charged) // 1000
    await api.close()
    await target.node.check_invariants()


def recorder_delta_usage(recorder: Recorder) -> anthropic.types.MessageDeltaUsage:
    (delta,) = recorder.events("message_delta")
    return anthropic.types.MessageDeltaUsage.model_validate(delta["usage"])


# -- failures: nothing charged -------------------------------------------------------------------

REJECTED = {
    "error": {
        "message": "fake upstream: scripted 400 error",
        "type": "upstream_rejected",
        "code": 400,
    }
}


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_upstream_rejection_is_free_and_in_our_envelope(
    target: Target, user_wallet: TestWallet, streamed: bool
) -> None:
    token = await funded_token(target.node, user_wallet)
    target.upstream.configure(fail="400")
    api = client(target.node, token)
    with pytest.raises(anthropic.APIStatusError) as info:
        if streamed:
            async with api.messages.stream(model=MODEL, max_tokens=50, messages=QUESTION) as s:
                await s.get_final_message()
        else:
            await api.messages.create(model=MODEL, max_tokens=50, messages=QUESTION)
    assert isinstance(info.value, anthropic.BadRequestError)
    assert info.value.status_code == 400
    assert info.value.response.json() == REJECTED
    assert await spent(target.node, token) == 0
    await target.node.check_invariants()


async def test_upstream_rejection_refunds_x_cashu(target: Target, user_wallet: TestWallet) -> None:
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT)
    target.upstream.configure(fail="400")
    api = cashu_client(target.node, token, Recorder())
    with pytest.raises(anthropic.BadRequestError) as info:
        await api.messages.create(model=MODEL, max_tokens=50, messages=QUESTION)
    assert await user_wallet.redeem(info.value.response.headers["X-Cashu"]) == FUNDS_SAT
    await api.close()
    await target.node.check_invariants()


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_midstream_drop_is_free_and_raises(
    target: Target, user_wallet: TestWallet, streamed: bool
) -> None:
    token = await funded_token(target.node, user_wallet)
    target.upstream.configure(fail="drop_midstream")
    api = client(target.node, token)
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        if streamed:
            async with api.messages.stream(model=MODEL, max_tokens=50, messages=QUESTION) as s:
                async for text in s.text_stream:
                    texts.append(text)
        else:
            await api.messages.create(model=MODEL, max_tokens=50, messages=QUESTION)
    if streamed:
        assert "".join(texts) == "w1 w2"  # what arrived before the upstream went away
        assert "nothing was charged" in str(info.value)
    else:
        assert info.value.status_code == 502
    assert await spent(target.node, token) == 0
    await target.node.check_invariants()


# -- what the translated path sends the OpenAI upstream ----------------------------------------


async def test_system_blocks_image_and_turns_reach_the_upstream(
    target: Target, user_wallet: TestWallet
) -> None:
    token = await funded_token(target.node, user_wallet)
    system: list[TextBlockParam] = [
        {"type": "text", "text": "first rule"},
        {"type": "text", "text": "second rule"},
    ]
    image: ImageBlockParam = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    messages: list[MessageParam] = [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello you"}]},
        {"role": "user", "content": [image, {"type": "text", "text": "what is this"}]},
    ]
    message = await client(target.node, token).messages.create(
        model=MODEL,
        max_tokens=50,
        system=system,
        messages=messages,
    )
    assert message.content[0].text == WORDS_10  # type: ignore[union-attr]
    seen = target.seen()
    if target.native:
        assert (seen["system"], seen["messages"]) == (system, messages)
        prompt = 4 + (4 + 2) + (4 + 2) + (4 + 3)
    else:
        assert "system" not in seen
        assert seen["messages"] == [
            {"role": "system", "content": "first rule\n\nsecond rule"},
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello you"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "text", "text": "what is this"},
                ],
            },
        ]
        prompt = (4 + 4) + (4 + 2) + (4 + 2) + (4 + 3)
    assert target.prompt_tokens() == prompt
    assert message.usage.input_tokens == prompt
    assert cost_of(message.usage) == cost(prompt, 10)
    assert await spent(target.node, token) == cost(prompt, 10)
    await target.node.check_invariants()


# -- usage the upstream did not report is counted by the node ----------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_missing_usage_is_counted_locally(
    target: Target, user_wallet: TestWallet, streamed: bool
) -> None:
    # Native: every count 0 (Anthropic always sends `usage`); translated: no `usage` at all.
    target.upstream.configure(omit_usage=True)
    token = await funded_token(target.node, user_wallet)
    api = client(target.node, token)
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 50, "system": SYSTEM}
    if streamed:
        async with api.messages.stream(**request, messages=QUESTION) as stream:
            deltas = [e async for e in stream if e.type == "message_delta"]
            message = await stream.get_final_message()
        shown = cost_of(deltas[0].usage)
    else:
        message = await api.messages.create(**request, messages=QUESTION)
        shown = cost_of(message.usage)
    assert message.content[0].text == WORDS_10  # type: ignore[union-attr]
    prompt = count_anthropic_prompt_tokens({"system": SYSTEM, "messages": QUESTION})
    completion = count_tokens(WORDS_10)
    assert prompt > 0 and completion > 0
    # The usage shown is what was charged for, never the zeros the upstream sent.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, completion)
    assert shown == cost(prompt, completion)
    assert await spent(target.node, token) == cost(prompt, completion)
    await target.node.check_invariants()


async def test_native_cache_reads_are_part_of_the_prompt(
    anthropic_node: RunningNode, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    # test/priced has no cache price: a cached token costs what a fresh one does, and the
    # input is rounded up once however it splits (5 fresh + 5 cached of the 10 tokens).
    anthropic_upstream.configure(cache_read_tokens=5)
    token = await funded_token(anthropic_node, user_wallet)
    message = await client(anthropic_node, token).messages.create(
        model=MODEL, max_tokens=50, system=SYSTEM, messages=QUESTION
    )
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (5, 5)
    charged = cost(10, 10)
    assert cost_of(message.usage) == charged
    assert await spent(anthropic_node, token) == charged


@pytest.mark.parametrize("streamed", [False, True])
async def test_cache_writes_dearer_than_the_prompt_are_charged_in_full(
    node_factory: NodeFactory,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    streamed: bool,
) -> None:
    # Anthropic prices a cache write at 1.25x the prompt. A prompt that fills the context and
    # is all cache writes costs more than the same prompt at the plain price: the reservation
    # must cover it, or settle would cap the charge there (undercharging by a quarter).
    cached_model = {
        **model_entry(MODEL),
        "id": "test/cached",
        "pricing": {
            **model_entry(MODEL)["pricing"],
            "input_cache_read": "0.000001",
            "input_cache_write": "0.0000125",
        },
    }
    anthropic_upstream.reset()
    anthropic_upstream.set_models([*default_models(), *TEST_MODELS, cached_model])
    node = await node_factory(
        upstream_base_url=anthropic_upstream.url, upstream_dialect="anthropic"
    )
    context = cached_model["context_length"]
    anthropic_upstream.configure(prompt_tokens=context, cache_write_tokens=context)
    token = await funded_token(node, user_wallet)
    # More bytes than the context holds tokens: the reservation's prompt is the whole context.
    long_question: list[MessageParam] = [{"role": "user", "content": "word " * context}]
    request: dict[str, Any] = {"model": "test/cached", "max_tokens": 50}
    api = client(node, token)
    if streamed:
        async with api.messages.stream(**request, messages=long_question) as stream:
            message = await stream.get_final_message()
    else:
        message = await api.messages.create(**request, messages=long_question)
    assert (message.usage.input_tokens, message.usage.cache_creation_input_tokens) == (0, context)
    pricing = cached_model["pricing"]
    charged = math.ceil(context * msat_per_token(pricing["input_cache_write"])) + math.ceil(
        10 * msat_per_token(pricing["completion"])
    )
    assert charged > expected_cost(cached_model, context, 10)
    assert await spent(node, token) == charged
    await node.check_invariants()


async def test_untranslatable_request_is_free(node: RunningNode, user_wallet: TestWallet) -> None:
    """A server tool cannot be served by a plain OpenAI upstream: 400 before the token is even
    redeemed (so it comes back untouched, not as change)."""
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT)
    api = cashu_client(node, token, Recorder())
    with pytest.raises(anthropic.BadRequestError) as info:
        await api.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=QUESTION,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    assert "web_search" in info.value.message
    assert "X-Cashu" not in info.value.response.headers
    assert await user_wallet.redeem(token) == FUNDS_SAT
    await api.close()
    await node.check_invariants()


# -- an error the upstream sends inside its stream ---------------------------------------------


class ScriptedUpstream:
    """A bare upstream on 127.0.0.1: the model list, and one scripted answer to every POST."""

    def __init__(self, dialect: str, stream: bytes) -> None:
        self.dialect = dialect
        self.stream = stream
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/{path:.*}", self._answer)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        models = default_models() + TEST_MODELS
        page = anthropic_models(models) if self.dialect == "anthropic" else {"data": models}
        return web.json_response(page)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # One event per write, apart in time: the error comes in a read of its own.
        for event in self.stream.split(b"\n\n")[:-1]:
            await resp.write(event + b"\n\n")
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp


def _native_events(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        for name, data in events
    )


OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
NATIVE_ERROR_STREAM = _native_events(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 8, "output_tokens": 1},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "w1"}},
    ),
    ("error", OVERLOADED),
)
_CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL}
OPENAI_ERROR_STREAM = (
    b"".join(
        b"data: " + orjson.dumps(chunk) + b"\n\n"
        for chunk in (
            {**_CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "w1"}}]},
            {
                **_CHUNK,
                "error": {"message": "Provider disconnected", "code": 502},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            },
        )
    )
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
async def test_error_inside_the_stream_is_free(
    node_factory: NodeFactory, user_wallet: TestWallet, dialect: str
) -> None:
    native = dialect == "anthropic"
    scripted = ScriptedUpstream(dialect, NATIVE_ERROR_STREAM if native else OPENAI_ERROR_STREAM)
    await scripted.start()
    try:
        node = await node_factory(upstream_base_url=scripted.url, upstream_dialect=dialect)
        token = await funded_token(node, user_wallet)
        texts: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client(node, token).messages.stream(
                model=MODEL, max_tokens=50, messages=QUESTION
            ) as stream:
                async for text in stream.text_stream:
                    texts.append(text)
        assert texts == ["w1"]
        # The upstream's own error reaches the client (Anthropic's kept as it was sent).
        if native:
            assert info.value.body == OVERLOADED
        else:
            assert "Provider disconnected" in info.value.message
        assert await spent(node, token) == 0
        await node.check_invariants()
        await node.stop()
    finally:
        await scripted.stop()


# -- an OpenRouter upstream: thinking, web search and structured output ------------------------


@pytest.fixture
async def openrouter_node(node_factory: NodeFactory, upstream: FakeUpstream) -> RunningNode:
    upstream.reset()
    return await node_factory(upstream_dialect="openrouter")


@pytest.mark.parametrize("streamed", [False, True])
async def test_openrouter_thinking_and_web_search(
    openrouter_node: RunningNode, upstream: FakeUpstream, user_wallet: TestWallet, streamed: bool
) -> None:
    """Thinking comes back as a signed thinking block, web search runs as the web plugin, and
    the reasoning tokens are charged as output."""
    node = openrouter_node
    key = await new_key(node, user_wallet)
    api = client(node, key)
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 50,
        "messages": QUESTION,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "extra_headers": {"anthropic-beta": "interleaved-thinking-2025-05-14,unknown-beta-1"},
    }
    if streamed:
        async with api.messages.stream(**request) as stream:
            message = await stream.get_final_message()
        charged = cost_of(message.usage) if "cost" in (message.usage.model_extra or {}) else None
    else:
        message = await api.messages.create(**request)
        charged = cost_of(message.usage)
    seen = upstream.stats["last_request"]
    assert seen["reasoning"] == {"max_tokens": 1024} and seen["plugins"] == [{"id": "web"}]
    assert "tools" not in seen
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "r1 r2 r3"
    assert thinking.signature == "fake-signature"
    assert text.type == "text" and text.text == WORDS_10
    assert message.usage.output_tokens == 13  # ten words and three of reasoning
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    expected = cost(prompt_tokens_of(seen["messages"]), 13)
    assert await spent(node, key) == expected
    if charged is not None:
        assert charged == expected

    # The signed thinking block goes back to OpenRouter on the next turn.
    history: list[MessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": [thinking.model_dump(), text.model_dump()]},
        {"role": "user", "content": "and then?"},
    ]
    await api.messages.create(model=MODEL, max_tokens=5, messages=history)
    sent = upstream.stats["last_request"]["messages"][1]
    assert sent["reasoning_details"][0]["signature"] == "fake-signature"
    await api.close()
    await node.check_invariants()


async def test_openrouter_structured_output_and_system_entries(
    openrouter_node: RunningNode, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    node = openrouter_node
    key = await new_key(node, user_wallet)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post(
            "/v1/messages?beta=true",
            json={
                "model": MODEL,
                "max_tokens": 20,
                "system": [{"type": "text", "text": "top", "cache_control": {"type": "ephemeral"}}],
                "messages": [
                    {"role": "user", "content": "one"},
                    {"role": "system", "content": "mid-conversation"},
                    {"role": "user", "content": "two"},
                ],
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
                "context_management": {"edits": []},
            },
            headers={"x-api-key": key, "anthropic-beta": "structured-outputs-2025-11-13"},
        )
    assert resp.status_code == 200, resp.text
    seen = upstream.stats["last_request"]
    assert [m["role"] for m in seen["messages"]] == ["system", "user", "system", "user"]
    assert seen["response_format"]["json_schema"]["schema"] == schema
    assert await spent(node, key) == resp.json()["usage"]["cost"]["total_msats"]
    await node.check_invariants()
