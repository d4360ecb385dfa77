"""OpenAI chat completions, with the official `openai` SDK, served by an Anthropic-dialect
upstream: the node translates the request to Anthropic Messages and the answer (or event
stream) back. Every answer is charged exactly the published price × the fake upstream's
usage (cache reads and writes at their own prices); failures charge nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import openai
import pytest
from conftest import (
    FEE,
    TEST_MODELS,
    NodeFactory,
    RunningNode,
    expected_cost,
    model_entry,
    msat_per_token,
)
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from satsrouter_dev.fake_anthropic import input_tokens_of
from satsrouter_dev.fake_upstream import FakeUpstream, default_models
from satsrouter_dev.mint import TestWallet
from test_messages import NATIVE_ERROR_STREAM, OVERLOADED, ScriptedUpstream

from satsrouter.upstream.providers import ProviderConfig

MODEL = "test/priced"
MAX_COMPLETION = model_entry(MODEL)["top_provider"]["max_completion_tokens"]
WORDS_10 = " ".join(f"w{i}" for i in range(1, 11))
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "tell me three things"},
]
# The fake's formula: (4 + 4 words) for the user turn, + 2 words of system.
PROMPT = 10
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]
FUNDS_SAT = 100


def cost(prompt: int, completion: int) -> int:
    return expected_cost(model_entry(MODEL), prompt, completion)


def client(node: RunningNode, key: str, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0, **options)


async def funded_token(node: RunningNode, wallet: TestWallet) -> str:
    """A Cashu token redeemed into its own balance, so later drops are exactly the charges."""
    (token,) = await wallet.mint_tokens(FUNDS_SAT)
    assert (await node.balance(token))["balance"] == FUNDS_SAT * 1000
    return token


async def spent(node: RunningNode, key: str) -> int:
    """Msat spent from FUNDS_SAT so far (and nothing left reserved)."""
    info = await node.balance(key)
    assert info["reserved"] == 0
    return FUNDS_SAT * 1000 - int(info["balance"])


def seen(upstream: FakeUpstream) -> dict[str, Any]:
    """The last (Anthropic) request body the upstream received."""
    body: dict[str, Any] = upstream.stats["last_request"]
    return body


async def collect_texts(stream: Any, into: list[str]) -> None:
    """The content deltas of a chunk stream, appended as they come (kept if it fails)."""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            into.append(chunk.choices[0].delta.content)


def cost_of(usage: Any) -> int:
    """`usage.cost.total_msats`, the node's extra field on the SDK's usage model."""
    total: int = (usage.model_extra or {})["cost"]["total_msats"]
    return total


# -- chat.completions.create ---------------------------------------------------------------------


async def test_create_charged_the_upstream_usage(
    anthropic_node: RunningNode, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    raw = await client(anthropic_node, token).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=50
    )
    completion = raw.parse()
    (choice,) = completion.choices
    assert choice.message.content == WORDS_10 and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.id.startswith("chatcmpl-msg_fake")
    body = seen(anthropic_upstream)
    assert anthropic_upstream.stats["last_path"] == "/v1/messages"
    assert body["system"] == [{"type": "text", "text": "be brief"}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "tell me three things"}]}
    ]
    assert body["max_tokens"] == 50 and body["model"] == MODEL
    assert input_tokens_of(body["messages"], body["system"]) == PROMPT
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT, 10)
    assert completion.usage.total_tokens == PROMPT + 10
    charged = cost(PROMPT, 10)
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == charged
    assert cost_of(completion.usage) == charged
    assert await spent(anthropic_node, token) == charged
    await anthropic_node.check_invariants()


async def test_max_tokens_absent_asks_for_the_models_budget(
    anthropic_node: RunningNode, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    """Anthropic requires `max_tokens`: the node sends the model's whole completion budget
    (what it reserved); one beyond the model's cap is cut to it."""
    token = await funded_token(anthropic_node, user_wallet)
    api = client(anthropic_node, token)
    completion = await api.chat.completions.create(model=MODEL, messages=QUESTION)
    assert completion.choices[0].message.content == WORDS_10
    assert seen(anthropic_upstream)["max_tokens"] == MAX_COMPLETION
    assert cost_of(completion.usage) == cost(PROMPT, 10)
    capped = await api.chat.completions.create(
        model=MODEL, messages=QUESTION, max_completion_tokens=3
    )
    assert capped.choices[0].message.content == "w1 w2 w3"
    assert capped.choices[0].finish_reason == "length"
    assert seen(anthropic_upstream)["max_tokens"] == 3
    await api.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10**6)
    assert seen(anthropic_upstream)["max_tokens"] == MAX_COMPLETION
    assert await spent(anthropic_node, token) == 2 * cost(PROMPT, 10) + cost(PROMPT, 3)
    await anthropic_node.check_invariants()


async def test_parameters_reach_the_upstream_in_its_dialect(
    anthropic_node: RunningNode, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    png = "iVBORw0KGgo="
    messages: list[ChatCompletionMessageParam] = [
        {"role": "developer", "content": "rule one"},
        {"role": "system", "content": [{"type": "text", "text": "rule two"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
    ]
    await client(anthropic_node, token).chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=50,
        temperature=1.5,
        top_p=0.9,
        stop="END",
        user="alice",
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "search"}},
        parallel_tool_calls=False,
        seed=7,
    )
    body = seen(anthropic_upstream)
    assert body["model"] == MODEL
    assert body["system"] == [
        {"type": "text", "text": "rule one"},
        {"type": "text", "text": "rule two"},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": png},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    assert body["tools"] == [
        {
            "name": "search",
            "description": "Search the web",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "search",
        "disable_parallel_tool_use": True,
    }
    assert body["stop_sequences"] == ["END"]
    assert body["temperature"] == 1.0  # Anthropic's range ends at 1
    assert body["top_p"] == 0.9
    assert body["metadata"] == {"user_id": "alice"}
    assert "seed" not in body and "stream" not in body and "thinking" not in body


THINKER = {
    **model_entry(MODEL),
    "id": "test/thinker",
    "pricing": {"prompt": "0.0000001", "completion": "0.0000002"},  # a big budget, cheaply
    "context_length": 64000,
    "top_provider": {"context_length": 64000, "max_completion_tokens": 32000},
}


async def test_reasoning_effort_becomes_a_thinking_budget(
    node_factory: NodeFactory, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    anthropic_upstream.reset()
    anthropic_upstream.set_models([*default_models(), *TEST_MODELS, THINKER])
    node = await node_factory(
        upstream_base_url=anthropic_upstream.url, upstream_dialect="anthropic"
    )
    token = await funded_token(node, user_wallet)
    api = client(node, token)
    await api.chat.completions.create(
        model="test/thinker", messages=QUESTION, max_tokens=4000, reasoning_effort="low"
    )
    assert seen(anthropic_upstream)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    # Without max_tokens the model's whole budget is asked for, and thinking fits in it.
    await api.chat.completions.create(
        model="test/thinker", messages=QUESTION, reasoning_effort="high"
    )
    assert seen(anthropic_upstream)["max_tokens"] == 32000
    assert seen(anthropic_upstream)["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    # A budget that cannot fit under max_tokens, or a temperature (which Anthropic refuses
    # with thinking): no thinking rather than a refused request.
    for options in ({"max_tokens": 1000}, {"temperature": 0.2}):
        await api.chat.completions.create(
            model="test/thinker", messages=QUESTION, reasoning_effort="medium", **options
        )
        assert "thinking" not in seen(anthropic_upstream)
    await node.check_invariants()


# -- streaming -------------------------------------------------------------------------------------


@pytest.mark.parametrize("usage_asked", [False, True], ids=["plain", "include_usage"])
async def test_stream_text_usage_and_cost(
    anthropic_node: RunningNode,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    usage_asked: bool,
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if usage_asked else {}
    stream = await client(anthropic_node, token).chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=50, stream=True, **options
    )
    chunks = [chunk async for chunk in stream]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == WORDS_10
    assert len(texts) == 10  # word by word, not buffered
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-msg_fake")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    with_usage = [c for c in chunks if c.usage is not None]
    (last,) = with_usage
    assert last is chunks[-1]
    # Asked: the usage-only chunk OpenAI sends. Not asked: the usage rides on the finish chunk,
    # so a loop reading `chunk.choices[0]` never meets an empty list.
    assert (last.choices == []) is usage_asked
    assert all(c.choices for c in chunks[:-1])
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT, 10)
    assert cost_of(last.usage) == cost(PROMPT, 10)
    assert seen(anthropic_upstream)["stream"] is True
    assert await spent(anthropic_node, token) == cost(PROMPT, 10)
    await anthropic_node.check_invariants()


async def test_stream_x_cashu_change_on_the_last_chunk(
    anthropic_node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT)
    api = client(anthropic_node, "unused", default_headers={"X-Cashu": token})
    stream = await api.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=50, stream=True
    )
    chunks = [chunk async for chunk in stream]
    extra = chunks[-1].model_extra or {}
    charged = cost(PROMPT, 10)
    assert extra["change_msats"] == 1000 * ((FUNDS_SAT * 1000 - charged) // 1000)
    assert await user_wallet.redeem(extra["x_cashu_change"]) == (FUNDS_SAT * 1000 - charged) // 1000
    await api.close()
    await anthropic_node.check_invariants()


# -- a tool call round trip --------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_tool_round_trip(
    anthropic_node: RunningNode,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    streamed: bool,
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    api = client(anthropic_node, token)
    question: list[ChatCompletionMessageParam] = [QUESTION[1]]
    if streamed:
        stream = await api.chat.completions.create(
            model=MODEL, messages=question, max_tokens=50, tools=TOOLS, stream=True
        )
        call_id, name, arguments, finish = "", "", "", None
        async for chunk in stream:
            if not chunk.choices:
                continue
            for part in chunk.choices[0].delta.tool_calls or ():
                assert part.index == 0
                call_id += part.id or ""
                if part.function is not None:
                    name += part.function.name or ""
                    arguments += part.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    else:
        first = await api.chat.completions.create(
            model=MODEL, messages=question, max_tokens=50, tools=TOOLS
        )
        (call,) = first.choices[0].message.tool_calls or []
        assert call.type == "function"
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        finish = first.choices[0].finish_reason
        assert first.choices[0].message.content is None
    assert finish == "tool_calls"
    assert name == "search" and json.loads(arguments) == {"query": "w1 w2"}
    assert call_id.startswith("toolu_fake")
    first_cost = cost(8, 5)  # the fake's tool call: 5 output tokens
    assert await spent(anthropic_node, token) == first_cost

    # The result goes back as OpenAI tool messages; the upstream gets tool_use / tool_result.
    turns: list[ChatCompletionMessageParam] = [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny and warm"},
    ]
    answer = await api.chat.completions.create(
        model=MODEL, messages=turns, max_tokens=50, tools=TOOLS
    )
    assert answer.choices[0].message.content == WORDS_10
    assert answer.choices[0].finish_reason == "stop"
    body = seen(anthropic_upstream)
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": call_id, "name": "search", "input": {"query": "w1 w2"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": "sunny and warm"}
            ],
        },
    ]
    # (4 + 4) + (4 + 0) + (4 + 0): tool blocks count nothing in the fake's formula.
    assert answer.usage is not None and answer.usage.prompt_tokens == 16
    assert await spent(anthropic_node, token) == first_cost + cost(16, 10)
    await anthropic_node.check_invariants()


async def test_parallel_tool_results_share_one_user_turn(
    anthropic_node: RunningNode, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": "{}"}}
        for i in (1, 2)
    ]
    turns: list[Any] = [
        QUESTION[1],
        {"role": "assistant", "content": "looking", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "and so?"},
    ]
    await client(anthropic_node, token).chat.completions.create(
        model=MODEL, messages=turns, max_tokens=50, tools=TOOLS, tool_choice="none"
    )
    body = seen(anthropic_upstream)
    assert body["tool_choice"] == {"type": "none"}
    assert [turn["role"] for turn in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "looking"}
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
        {"type": "text", "text": "and so?"},
    ]


# -- cache reads and writes, each at its own price ------------------------------------------------

CACHED_MODEL = {
    **model_entry(MODEL),
    "id": "test/cached",
    "pricing": {
        **model_entry(MODEL)["pricing"],
        "input_cache_read": "0.000001",
        "input_cache_write": "0.0000125",
    },
}


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_cache_reads_and_writes_priced_as_such(
    node_factory: NodeFactory,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    streamed: bool,
) -> None:
    anthropic_upstream.reset()
    anthropic_upstream.set_models([*default_models(), *TEST_MODELS, CACHED_MODEL])
    node = await node_factory(
        upstream_base_url=anthropic_upstream.url, upstream_dialect="anthropic"
    )
    anthropic_upstream.configure(cache_read_tokens=5, cache_write_tokens=3)
    token = await funded_token(node, user_wallet)
    api = client(node, token)
    request: dict[str, Any] = {"model": "test/cached", "messages": QUESTION, "max_tokens": 50}
    if streamed:
        stream = await api.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        usage = [chunk async for chunk in stream][-1].usage
    else:
        usage = (await api.chat.completions.create(**request)).usage
    assert usage is not None
    # OpenAI's prompt includes the cached part: 2 fresh + 5 read + 3 written.
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT, 10)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert usage.prompt_tokens_details.cache_write_tokens == 3  # OpenRouter's field
    pricing = CACHED_MODEL["pricing"]
    charged = math.ceil(
        2 * msat_per_token(pricing["prompt"])
        + 5 * msat_per_token(pricing["input_cache_read"])
        + 3 * msat_per_token(pricing["input_cache_write"])
    ) + math.ceil(10 * msat_per_token(pricing["completion"]))
    assert charged != expected_cost(CACHED_MODEL, PROMPT, 10)
    assert cost_of(usage) == charged
    assert await spent(node, token) == charged
    await node.check_invariants()


# -- refused before anything is reserved -----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                }
            },
            "response_format",
        ),
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "mp3"}},
            "modalities",
        ),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
async def test_unsupported_parameter_is_refused_for_free(
    anthropic_node: RunningNode,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    option: dict[str, Any],
    named: str,
) -> None:
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT)
    api = client(anthropic_node, "unused", default_headers={"X-Cashu": token})
    with pytest.raises(openai.BadRequestError) as info:
        await api.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=50, **option)
    body = info.value.response.json()
    assert body["error"]["type"] == "invalid_request"
    assert f"`{named}`" in body["error"]["message"]
    # Refused before the token was even redeemed: it comes back whole, not as change.
    assert "X-Cashu" not in info.value.response.headers
    assert "/v1/messages" not in anthropic_upstream.stats["paths"]
    assert await user_wallet.redeem(token) == FUNDS_SAT
    await api.close()
    await anthropic_node.check_invariants()


async def test_legacy_completions_still_refused(
    anthropic_node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    with pytest.raises(openai.BadRequestError) as info:
        await client(anthropic_node, token).completions.create(
            model=MODEL, prompt="hello", max_tokens=5
        )
    assert info.value.response.json()["error"]["type"] == "unsupported_endpoint"
    assert await spent(anthropic_node, token) == 0


# -- upstream failures: nothing charged ----------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_upstream_500_is_a_free_502(
    anthropic_node: RunningNode,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    streamed: bool,
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    anthropic_upstream.configure(fail="500")
    with pytest.raises(openai.APIStatusError) as info:
        await client(anthropic_node, token).chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=50, stream=streamed
        )
    assert info.value.status_code == 502
    assert "nothing was charged" in info.value.message
    assert await spent(anthropic_node, token) == 0
    await anthropic_node.check_invariants()


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_midstream_drop_is_free(
    anthropic_node: RunningNode,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    streamed: bool,
) -> None:
    token = await funded_token(anthropic_node, user_wallet)
    anthropic_upstream.configure(fail="drop_midstream")
    api = client(anthropic_node, token)
    texts: list[str] = []
    with pytest.raises(openai.APIError) as info:
        if streamed:
            stream = await api.chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=50, stream=True
            )
            await collect_texts(stream, texts)
        else:
            await api.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=50)
    if streamed:
        assert "".join(texts) == "w1 w2"  # what arrived before the upstream went away
        assert "nothing was charged" in info.value.message
    else:
        assert isinstance(info.value, openai.APIStatusError)
        assert info.value.status_code == 502
    assert await spent(anthropic_node, token) == 0
    await anthropic_node.check_invariants()


async def test_error_event_inside_the_stream_is_free(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    scripted = ScriptedUpstream("anthropic", NATIVE_ERROR_STREAM)
    await scripted.start()
    try:
        node = await node_factory(upstream_base_url=scripted.url, upstream_dialect="anthropic")
        token = await funded_token(node, user_wallet)
        texts: list[str] = []
        with pytest.raises(openai.APIError) as info:
            stream = await client(node, token).chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=50, stream=True
            )
            await collect_texts(stream, texts)
        assert texts == ["w1"]
        assert OVERLOADED["error"]["message"] in info.value.message
        assert "nothing was charged" in info.value.message
        assert await spent(node, token) == 0
        await node.check_invariants()
        await node.stop()
    finally:
        await scripted.stop()


async def test_raw_stream_ends_with_done(
    anthropic_node: RunningNode, user_wallet: TestWallet
) -> None:
    """The wire format OpenAI clients parse by hand: `data:` chunks, then `data: [DONE]`."""
    token = await funded_token(anthropic_node, user_wallet)
    async with httpx.AsyncClient(base_url=anthropic_node.api) as http:
        resp = await http.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            json={"model": MODEL, "messages": QUESTION, "max_tokens": 50, "stream": True},
        )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") or e.startswith(":") for e in events)
    assert await spent(anthropic_node, token) == cost(PROMPT, 10)


# -- an Anthropic provider as the fallback of an OpenAI one ---------------------------------------


async def routed_node(
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    anthropic_upstream: FakeUpstream,
    order: list[str],
    claude_id: str = "",
) -> RunningNode:
    """A node with two providers of MODEL, "openai" and "claude" (Anthropic), in `order`;
    "claude" knows the model as `claude_id` when one is given."""
    running = await node_factory()
    running.node.set_providers(
        [
            ProviderConfig(name="openai", base_url=upstream.url, fee=FEE),
            ProviderConfig(
                name="claude",
                base_url=anthropic_upstream.url,
                dialect="anthropic",
                api_key="upstream-secret",
                fee=FEE,
                models={MODEL: claude_id} if claude_id else {},
            ),
        ],
        {MODEL: order},
    )
    assert await running.node.catalogue_sync.refresh()
    return running


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_anthropic_provider_takes_over_for_chat_clients(
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
    streamed: bool,
) -> None:
    """The OpenAI provider fails with a 500 before any byte: the Anthropic one, which knows the
    model by its own id, answers the same chat request in the client's dialect."""
    upstream.reset()
    anthropic_upstream.reset()
    try:
        upstream.configure(fail="500")
        anthropic_upstream.set_models([{**model_entry(MODEL), "id": "claude-priced"}])
        running = await routed_node(
            node_factory, upstream, anthropic_upstream, ["openai", "claude"], "claude-priced"
        )
        token = await funded_token(running, user_wallet)
        api = client(running, token)
        request: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "max_tokens": 50}
        if streamed:
            raw = await api.chat.completions.with_raw_response.create(**request, stream=True)
            served = raw.headers["x-routstr-provider"]
            chunks = [chunk async for chunk in raw.parse()]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
        else:
            reply = await api.chat.completions.with_raw_response.create(**request)
            served = reply.headers["x-routstr-provider"]
            completion = reply.parse()
            text, usage = completion.choices[0].message.content or "", completion.usage
        assert served == "claude" and text == WORDS_10
        assert upstream.stats["paths"].get("/v1/chat/completions") == 1  # tried, failed
        assert seen(anthropic_upstream)["model"] == "claude-priced"
        assert usage is not None and cost_of(usage) == cost(PROMPT, 10)
        assert await spent(running, token) == cost(PROMPT, 10)
        await api.close()
        await running.check_invariants()
    finally:
        upstream.reset()
        anthropic_upstream.reset()


async def test_a_parameter_anthropic_lacks_passes_the_route_over(
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    anthropic_upstream: FakeUpstream,
    user_wallet: TestWallet,
) -> None:
    """Anthropic first in the route, but the request asks for logprobs: the OpenAI provider
    serves it, and the Anthropic one is never called."""
    upstream.reset()
    anthropic_upstream.reset()
    running = await routed_node(node_factory, upstream, anthropic_upstream, ["claude", "openai"])
    token = await funded_token(running, user_wallet)
    api = client(running, token)
    raw = await api.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=50, logprobs=True
    )
    assert raw.headers["x-routstr-provider"] == "openai"
    assert "/v1/messages" not in anthropic_upstream.stats["paths"]
    plain = await api.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=50
    )
    assert plain.headers["x-routstr-provider"] == "claude"
    await api.close()
    await running.check_invariants()
