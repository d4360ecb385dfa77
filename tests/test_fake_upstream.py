"""The fake upstream, exercised with the official openai SDK as a real client would."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.types import MessageParam, ToolParam
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from satsrouter_dev.fake_media import embedding_of
from satsrouter_dev.fake_upstream import (
    FakeUpstream,
    FakeUpstreamProcess,
    default_models,
    prompt_tokens_of,
)


class _AnyStr(str):
    """Equal to any non-empty string (for error messages in body comparisons)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    def __hash__(self) -> int:
        return 0


ANY_STR = _AnyStr()

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there"},
]
# 4 per message + words: (4 + 3) + (4 + 2)
MESSAGES_PROMPT_TOKENS = 13
TEN_WORDS = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"


@pytest.fixture
async def fu() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


def client(fu: FakeUpstream, timeout: float = 10.0) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=fu.url, api_key="sk-test", max_retries=0, timeout=timeout)


async def test_non_streaming_usage(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert r.model == "openai/gpt-4o-mini"
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == TEN_WORDS
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        MESSAGES_PROMPT_TOKENS,
        10,
        MESSAGES_PROMPT_TOKENS + 10,
    )


def test_prompt_token_formula() -> None:
    assert prompt_tokens_of(MESSAGES) == MESSAGES_PROMPT_TOKENS
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a b c"}, {"type": "image_url"}]}
    ]
    assert prompt_tokens_of(parts) == 7
    assert prompt_tokens_of([]) == 0


async def test_max_tokens_caps_reply(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
        r2 = await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            max_completion_tokens=2,
        )
    assert r.choices[0].message.content == "w1 w2 w3"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3
    assert r2.usage is not None and r2.usage.completion_tokens == 2


async def test_streaming_with_include_usage(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        stream = await c.chat.completions.create(
            model="openai/gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.model == "openai/gpt-4o" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == TEN_WORDS
    # role chunk + 10 words + finish chunk + usage chunk
    assert len(chunks) == 13
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (MESSAGES_PROMPT_TOKENS, 10)
    assert all(ch.usage is None for ch in chunks[:-1])


async def test_stream_wire_format_ends_with_done(fu: FakeUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with httpx.AsyncClient() as h:
        r = await h.post(fu.url + "/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert '"usage"' not in r.text


async def test_streaming_without_include_usage(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        stream = await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 12
    assert all(ch.usage is None and ch.choices for ch in chunks)


async def test_omit_usage(fu: FakeUpstream) -> None:
    fu.configure(omit_usage=True)
    async with client(fu) as c:
        r = await c.chat.completions.create(model="m", messages=MESSAGES)
        stream = await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert r.usage is None
    assert r.choices[0].message.content == TEN_WORDS
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("fail", "error"),
    [
        ("500", openai.InternalServerError),
        ("429", openai.RateLimitError),
        ("400", openai.BadRequestError),
        (503, openai.InternalServerError),
    ],
)
async def test_status_failures(fu: FakeUpstream, fail: str | int, error: type[Exception]) -> None:
    fu.configure(fail=fail)
    async with client(fu) as c:
        with pytest.raises(error) as info:
            await c.chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == int(fail)
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if fail == "429":
        assert info.value.response.headers["retry-after"] == "1"


async def test_drop_gives_connection_error(fu: FakeUpstream) -> None:
    fu.configure(fail="drop")
    async with client(fu) as c:
        with pytest.raises(openai.APIConnectionError) as info:
            await c.chat.completions.create(model="m", messages=MESSAGES)
    assert not isinstance(info.value, openai.APITimeoutError)


async def test_drop_closes_tcp_connection_without_response(fu: FakeUpstream) -> None:
    fu.configure(fail="drop")
    reader, writer = await asyncio.open_connection("127.0.0.1", fu.port)
    payload = b'{"model": "m", "messages": []}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), 2)
    except ConnectionResetError:
        data = b""
    writer.close()
    assert data == b""


async def test_drop_midstream(fu: FakeUpstream) -> None:
    fu.configure(fail="drop_midstream", fail_after_chunks=3)
    got: list[str] = []
    async with client(fu) as c:
        stream = await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
        )
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        with pytest.raises(openai.APIConnectionError):
            await c.chat.completions.create(model="m", messages=MESSAGES)
    assert "".join(got) == "w1 w2 w3"


async def test_timeout(fu: FakeUpstream) -> None:
    fu.configure(fail="timeout")
    async with client(fu, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.chat.completions.create(model="m", messages=MESSAGES)


async def test_stop_ends_hanging_requests_promptly() -> None:
    fu = FakeUpstream()
    await fu.start()
    fu.configure(fail="timeout")
    c = client(fu)
    pending = asyncio.create_task(c.chat.completions.create(model="m", messages=MESSAGES))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await fu.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(openai.APIConnectionError):
        await pending
    await c.close()


async def test_latency(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        t0 = time.monotonic()
        await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            extra_body={"fake": {"latency_ms": 150}},
        )
    assert time.monotonic() - t0 >= 0.15


async def test_merge_order_defaults_control_request() -> None:
    async with FakeUpstream(defaults={"completion_tokens": 7, "prompt_tokens": 100}) as fu:
        async with client(fu) as c:

            async def usage(**kw: object) -> tuple[int, int]:
                r = await c.chat.completions.create(model="m", messages=MESSAGES, **kw)  # type: ignore[call-overload]
                assert r.usage is not None
                return r.usage.prompt_tokens, r.usage.completion_tokens

            assert await usage() == (100, 7)
            fu.configure(completion_tokens=5)
            assert await usage() == (100, 5)
            assert await usage(extra_body={"fake": {"completion_tokens": 2}}) == (100, 2)
            assert await usage(extra_body={"fake": {"prompt_tokens": None}}) == (
                MESSAGES_PROMPT_TOKENS,
                5,
            )
            with pytest.raises(openai.BadRequestError):
                await usage(extra_body={"fake": {"no_such_knob": 1}})
            fu.reset()
            assert await usage() == (100, 7)


async def test_stats_and_control_endpoints(fu: FakeUpstream) -> None:
    root = fu.url.removesuffix("/v1")
    async with client(fu) as c, httpx.AsyncClient(base_url=root) as h:
        await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            extra_headers={"X-Trace": "abc"},
        )
        stats = (await h.get("/_stats")).json()
        assert stats["requests"] == 1 and stats["chat_requests"] == 1
        assert stats["last_request"]["messages"] == MESSAGES
        assert stats["last_headers"]["authorization"] == "Bearer sk-test"
        assert stats["last_headers"]["x-trace"] == "abc"
        assert fu.stats["last_path"] == "/v1/chat/completions"

        assert (await h.post("/_control", json={"fail": "500"})).status_code == 200
        assert (await h.post("/_control", json={"fail": "bogus"})).status_code == 400
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=MESSAGES)
        assert (await h.post("/_control/reset")).status_code == 200
        assert (await h.get("/_stats")).json()["requests"] == 0
        await c.chat.completions.create(model="m", messages=MESSAGES)


async def test_models(fu: FakeUpstream) -> None:
    root = fu.url.removesuffix("/v1")
    async with client(fu) as c, httpx.AsyncClient(base_url=root) as h:
        ids = [m.id async for m in c.models.list()]
        assert ids == [m["id"] for m in default_models()]
        assert "test/cheap" in ids
        data = (await h.get("/models")).json()["data"]  # also served without /v1
        for model in data:
            assert all(isinstance(v, str) for v in model["pricing"].values())
            assert model["top_provider"]["context_length"] == model["context_length"]
        cheap = (await h.get("/v1/models/test/cheap")).json()
        assert cheap["context_length"] == 8192
        assert cheap["top_provider"]["max_completion_tokens"] == 1024

        custom = [{**default_models()[0], "id": "x/only"}]
        assert (await h.post("/_control/models", json={"data": custom})).status_code == 200
        assert [m.id async for m in c.models.list()] == ["x/only"]
        fu.reset()
        assert len([m async for m in c.models.list()]) == len(default_models())


async def test_api_key_required() -> None:
    async with FakeUpstream(api_key="upstream-secret") as fu:
        async with client(fu) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.chat.completions.create(model="m", messages=MESSAGES)
        async with AsyncOpenAI(base_url=fu.url, api_key="upstream-secret", max_retries=0) as c:
            r = await c.chat.completions.create(model="m", messages=MESSAGES)
            assert r.choices[0].message.content == TEN_WORDS


def test_process_variant() -> None:
    with FakeUpstreamProcess(api_key="k", defaults={"completion_tokens": 4}) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        assert proc.port > 0
        with OpenAI(base_url=proc.url, api_key="k", max_retries=0) as c:
            r = c.chat.completions.create(model="m", messages=MESSAGES)
            assert r.choices[0].message.content == "w1 w2 w3 w4"
            proc.configure(fail="500")
            with pytest.raises(openai.InternalServerError):
                c.chat.completions.create(model="m", messages=MESSAGES)
        assert proc.stats["chat_requests"] == 2
        proc.reset()
        assert proc.stats["requests"] == 0
        port = proc.port
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/_stats")


# -- tool calls in chat -------------------------------------------------------------

TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "search", "parameters": {"type": "object", "properties": {}}},
    },
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


async def test_chat_tool_call_round_trip(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = choice.message.tool_calls
        assert calls is not None and len(calls) == 1
        call = calls[0]
        assert call.type == "function"
        assert call.function.name == "search"
        assert json.loads(call.function.arguments) == {"query": "w1 w2"}
        assert r.usage is not None
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (MESSAGES_PROMPT_TOKENS, 5)

        follow_up: list[ChatCompletionMessageParam] = [
            *MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "search", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "three result words"},
        ]
        r2 = await c.chat.completions.create(model="m", messages=follow_up, tools=TOOLS)
        assert r2.choices[0].message.content == TEN_WORDS
        assert r2.choices[0].finish_reason == "stop"
        assert r2.usage is not None
        assert r2.usage.prompt_tokens == MESSAGES_PROMPT_TOKENS + 4 + (4 + 3)
        r3 = await c.chat.completions.create(
            model="m", messages=MESSAGES, tools=TOOLS, tool_choice="none"
        )
        assert r3.choices[0].message.content == TEN_WORDS


async def test_chat_tool_call_streamed(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        stream = await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.tool_calls is not None
    head = first.tool_calls[0]
    assert head.id and head.function is not None and head.function.name == "search"
    arguments = "".join(
        (tc.function.arguments or "")
        for ch in chunks
        if ch.choices
        for tc in ch.choices[0].delta.tool_calls or []
        if tc.function is not None
    )
    assert json.loads(arguments) == {"query": "w1 w2"}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_chat_scripted_tool_call_once_per_conversation(fu: FakeUpstream) -> None:
    fu.configure(tool_call={"name": "other", "arguments": {"file_path": "/tmp/notes.txt"}})
    async with client(fu) as c:
        r = await c.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
        calls = r.choices[0].message.tool_calls
        assert calls is not None and calls[0].type == "function"
        assert calls[0].function.name == "other"
        assert json.loads(calls[0].function.arguments) == {"file_path": "/tmp/notes.txt"}
        stream = await c.chat.completions.create(
            model="m", messages=MESSAGES, tools=TOOLS, stream=True
        )
        arguments = "".join(
            [
                tc.function.arguments or ""
                async for ch in stream
                if ch.choices
                for tc in ch.choices[0].delta.tool_calls or []
                if tc.function is not None
            ]
        )
        assert json.loads(arguments) == {"file_path": "/tmp/notes.txt"}
        # A user turn after the tool result (as Claude Code may add) still ends in text.
        answered: list[ChatCompletionMessageParam] = [
            *MESSAGES,
            {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].id, "content": "read"},
            {"role": "user", "content": "and now?"},
        ]
        r2 = await c.chat.completions.create(model="m", messages=answered, tools=TOOLS)
        assert r2.choices[0].message.content == TEN_WORDS
        # Not declared: text.
        r3 = await c.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS[:1])
        assert r3.choices[0].message.content == TEN_WORDS
        fu.configure(tool_call="none")
        r4 = await c.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
        assert r4.choices[0].message.content == TEN_WORDS
    with pytest.raises(ValueError, match="tool_call"):
        fu.configure(tool_call={"name": "other"})  # type: ignore[typeddict-item]


async def test_chat_n_choices_each_billed(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.chat.completions.create(model="m", messages=MESSAGES, n=3, max_tokens=4)
        assert [ch.index for ch in r.choices] == [0, 1, 2]
        assert {ch.message.content for ch in r.choices} == {"w1 w2 w3 w4"}
        assert r.usage is not None
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (MESSAGES_PROMPT_TOKENS, 12)
        stream = await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            n=3,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        for bad in (0, 129):
            with pytest.raises(openai.BadRequestError):
                await c.chat.completions.create(model="m", messages=MESSAGES, n=bad)
    texts = {
        i: "".join(
            ch.choices[0].delta.content or ""
            for ch in chunks
            if ch.choices and ch.choices[0].index == i
        )
        for i in range(3)
    }
    assert texts == dict.fromkeys(range(3), "w1 w2 w3 w4")
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes.count("length") == 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


# -- legacy completions -------------------------------------------------------------


async def test_completions_non_streaming(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.completions.create(model="m", prompt="say hello to me")
        assert r.object == "text_completion"
        assert r.choices[0].text == TEN_WORDS
        assert r.choices[0].finish_reason == "stop"
        assert r.usage is not None
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
            4,
            10,
            14,
        )
        many = await c.completions.create(model="m", prompt=["a b", "c"], max_tokens=3)
        assert [ch.text for ch in many.choices] == ["w1 w2 w3", "w1 w2 w3"]
        assert [ch.index for ch in many.choices] == [0, 1]
        assert all(ch.finish_reason == "length" for ch in many.choices)
        assert many.usage is not None
        assert (many.usage.prompt_tokens, many.usage.completion_tokens) == (3, 6)
        tokens = await c.completions.create(model="m", prompt=[1, 2, 3, 4, 5])
        assert tokens.usage is not None and tokens.usage.prompt_tokens == 5
        empty = await c.completions.create(model="m", prompt="")
        assert empty.usage is not None and empty.usage.prompt_tokens == 1


async def test_completions_n_and_best_of(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.completions.create(model="m", prompt=["a b", "c"], n=2, max_tokens=3)
        assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
        assert r.usage is not None and r.usage.completion_tokens == 12  # 2 prompts × 2 × 3
        # best_of completions are generated (and billed) per prompt, n come back.
        best = await c.completions.create(model="m", prompt="a b", n=2, best_of=5, max_tokens=3)
        assert len(best.choices) == 2
        assert best.usage is not None and best.usage.completion_tokens == 15
        with pytest.raises(openai.BadRequestError):
            await c.completions.create(model="m", prompt="a", n=3, best_of=2)


async def test_completions_streaming(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        stream = await c.completions.create(
            model="m", prompt="one two", stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        plain = await c.completions.create(model="m", prompt="one two", stream=True)
        plain_chunks = [chunk async for chunk in plain]
    assert all(ch.object == "text_completion" for ch in chunks)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == TEN_WORDS
    # 10 words + finish chunk + usage chunk
    assert len(chunks) == 12
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 10)
    assert len(plain_chunks) == 11 and all(ch.usage is None for ch in plain_chunks)


async def test_completions_drop_midstream_and_omit_usage(fu: FakeUpstream) -> None:
    got: list[str] = []
    async with client(fu) as c:
        r = await c.completions.create(
            model="m", prompt="x", extra_body={"fake": {"omit_usage": True}}
        )
        assert r.usage is None
        fu.configure(fail="drop_midstream", fail_after_chunks=3)
        stream = await c.completions.create(model="m", prompt="x", stream=True)
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            async for chunk in stream:
                got.append(chunk.choices[0].text)
    assert "".join(got) == "w1 w2 w3"


# -- embeddings -----------------------------------------------------------------------


async def test_embeddings_float_and_base64(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        floats = await c.embeddings.create(
            model="e", input=["one two three", "four"], encoding_format="float"
        )
        # The SDK asks for base64 when no format is given, and decodes it.
        decoded = await c.embeddings.create(model="e", input="a b")
        tokens = await c.embeddings.create(model="e", input=[[1, 2, 3], [4, 5]])
        assert fu.stats["last_request"]["input"] == [[1, 2, 3], [4, 5]]
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == embedding_of(0) == [(j + 1) / 8 for j in range(8)]
    assert floats.data[1].embedding == embedding_of(1)
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (4, 4)
    assert decoded.data[0].embedding == embedding_of(0)
    assert decoded.usage.prompt_tokens == 2
    assert tokens.usage.prompt_tokens == 5


async def test_embeddings_base64_wire_format(fu: FakeUpstream) -> None:
    body = {"model": "e", "input": "x", "encoding_format": "base64", "dimensions": 3}
    async with httpx.AsyncClient() as h:
        r = (await h.post(fu.url + "/embeddings", json=body)).json()
        omitted = (
            await h.post(fu.url + "/embeddings", json={**body, "fake": {"omit_usage": True}})
        ).json()
    raw = base64.b64decode(r["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.125, 0.25, 0.375)
    assert r["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    assert "usage" not in omitted


# -- images ---------------------------------------------------------------------------


async def test_images_generate(fu: FakeUpstream) -> None:
    async with client(fu) as c, httpx.AsyncClient() as h:
        r = await c.images.generate(model="i", prompt="a red fox", n=2, size="1024x1024")
        assert r.data is not None and len(r.data) == 2
        png = base64.b64decode(r.data[0].b64_json or "")
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
        assert r.usage is None
        assert fu.stats["last_request"]["size"] == "1024x1024"

        priced = await c.images.generate(
            model="i",
            prompt="a red fox",
            quality="high",
            extra_body={"fake": {"image_usage": True, "report_cost": 0.04}},
        )
        assert priced.usage is not None
        assert priced.usage.input_tokens == 3
        assert priced.usage.output_tokens == 100
        assert priced.usage.total_tokens == 103
        assert priced.usage.input_tokens_details.text_tokens == 3
        assert priced.usage.input_tokens_details.image_tokens == 0
        assert (priced.usage.model_extra or {})["cost"] == 0.04

        by_url = await c.images.generate(model="i", prompt="fox", response_format="url")
        assert by_url.data is not None and by_url.data[0].url is not None
        fetched = await h.get(by_url.data[0].url)
        assert fetched.headers["content-type"] == "image/png"
        assert fetched.content == png

        cost_only = await h.post(
            fu.url + "/images/generations",
            json={"prompt": "fox", "n": 3, "fake": {"report_cost": 0.12}},
        )
        assert cost_only.json()["usage"] == {"cost": 0.12}
        assert len(cost_only.json()["data"]) == 3


# -- audio ----------------------------------------------------------------------------


def make_wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(rate * seconds))
    return buf.getvalue()


async def test_audio_transcription_json_and_usage_modes(fu: FakeUpstream) -> None:
    wav = make_wav(2.5)
    async with client(fu) as c:
        r = await c.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", wav, "audio/wav"), language="en"
        )
        assert r.text == TEN_WORDS
        assert r.usage is not None and r.usage.type == "duration"
        assert r.usage.seconds == 3
        last = fu.stats["last_request"]
        assert last["model"] == "whisper-1" and last["language"] == "en"
        assert last["file"] == {
            "filename": "clip.wav",
            "content_type": "audio/wav",
            "size": len(wav),
        }

        tokens = await c.audio.transcriptions.create(
            model="gpt-4o-transcribe",
            file=("clip.wav", wav),
            extra_body={"fake": json.dumps({"audio_usage": "tokens", "completion_tokens": 4})},
        )
        assert tokens.text == "w1 w2 w3 w4"
        assert tokens.usage is not None and tokens.usage.type == "tokens"
        assert (tokens.usage.input_tokens, tokens.usage.output_tokens) == (30, 4)
        assert tokens.usage.total_tokens == 34

        fu.configure(audio_usage="none")
        bare = await c.audio.transcriptions.create(model="w", file=("c.wav", wav))
        assert bare.usage is None
        fu.reset()

        # Not a WAV: the duration comes from the audio_seconds behaviour.
        fu.configure(audio_seconds=4.2)
        mp3 = await c.audio.transcriptions.create(model="w", file=("c.mp3", b"ID3 not really"))
        assert mp3.usage is not None and mp3.usage.type == "duration"
        assert mp3.usage.seconds == 5


async def test_audio_response_formats(fu: FakeUpstream) -> None:
    wav = make_wav(1.5)
    async with client(fu) as c:
        text = await c.audio.transcriptions.create(
            model="w", file=("c.wav", wav), response_format="text"
        )
        srt = await c.audio.transcriptions.create(
            model="w", file=("c.wav", wav), response_format="srt"
        )
        vtt = await c.audio.transcriptions.create(
            model="w", file=("c.wav", wav), response_format="vtt"
        )
        verbose = await c.audio.transcriptions.create(
            model="w", file=("c.wav", wav), response_format="verbose_json", language="de"
        )
        translated = await c.audio.translations.create(
            model="w", file=("c.wav", wav), response_format="verbose_json"
        )
        plain = await c.audio.translations.create(model="w", file=("c.wav", wav))
    assert text == TEN_WORDS + "\n"
    assert srt == f"1\n00:00:00,000 --> 00:00:01,500\n{TEN_WORDS}\n\n"
    assert vtt == f"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n{TEN_WORDS}\n\n"
    assert verbose.duration == 1.5 and verbose.language == "de" and verbose.text == TEN_WORDS
    assert verbose.segments is not None and verbose.segments[0].end == 1.5
    assert (verbose.model_extra or {})["task"] == "transcribe"
    assert verbose.usage is not None and verbose.usage.seconds == 2
    assert (translated.model_extra or {})["task"] == "translate"
    assert translated.language == "english"
    assert plain.text == TEN_WORDS
    assert fu.stats["paths"]["/v1/audio/translations"] == 2


async def test_audio_plain_formats_are_text_plain(fu: FakeUpstream) -> None:
    files = {"file": ("c.wav", make_wav(1.0), "audio/wav")}
    async with httpx.AsyncClient() as h:
        r = await h.post(
            fu.url + "/audio/transcriptions",
            data={"model": "w", "response_format": "srt"},
            files=files,
        )
        missing = await h.post(fu.url + "/audio/transcriptions", data={"model": "w"})
        not_form = await h.post(fu.url + "/audio/transcriptions", json={"model": "w"})
    assert r.headers["content-type"].startswith("text/plain")
    assert missing.status_code == 400 and not_form.status_code == 400
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


# -- Responses API ----------------------------------------------------------------------

RESPONSES_INPUT: list[dict[str, Any]] = [
    {"role": "user", "content": "hello there"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
    {"role": "user", "content": [{"type": "input_text", "text": "tell me more"}]},
]
# (4 + 2) + (4 + 1) + (4 + 3) + instructions "Be brief." (2)
RESPONSES_INPUT_TOKENS = 20


async def test_responses_non_streaming(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        r = await c.responses.create(
            model="m",
            input=RESPONSES_INPUT,  # type: ignore[arg-type]
            instructions="Be brief.",
        )
        short = await c.responses.create(model="m", input="one two three", max_output_tokens=4)
        bare = await c.responses.create(
            model="m", input="x", extra_body={"fake": {"omit_usage": True}}
        )
    assert r.object == "response" and r.status == "completed" and r.model == "m"
    assert r.output_text == TEN_WORDS
    assert r.output[0].type == "message"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (
        RESPONSES_INPUT_TOKENS,
        10,
        RESPONSES_INPUT_TOKENS + 10,
    )
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert short.status == "incomplete" and short.output_text == "w1 w2 w3 w4"
    assert short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens"
    assert short.usage is not None and short.usage.input_tokens == 4 + 3
    assert bare.usage is None


async def test_responses_streaming(fu: FakeUpstream) -> None:
    async with client(fu) as c:
        stream = await c.responses.create(
            model="m", input="hello there", instructions="Be brief.", stream=True
        )
        events = [event async for event in stream]
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 10,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == TEN_WORDS
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and created.response.usage is None
    assert completed.type == "response.completed"
    assert completed.response.output_text == TEN_WORDS
    usage = completed.response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (6 + 2, 10)

    async with client(fu) as c:
        capped = await c.responses.create(model="m", input="x", max_output_tokens=3, stream=True)
        capped_events = [event async for event in capped]
    last = capped_events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete" and last.response.output_text == "w1 w2 w3"
    assert last.response.usage is not None and last.response.usage.output_tokens == 3


async def test_responses_stream_wire_and_drop_midstream(fu: FakeUpstream) -> None:
    body = {"model": "m", "input": "x", "stream": True, "fake": {"completion_tokens": 2}}
    async with httpx.AsyncClient() as h:
        r = await h.post(fu.url + "/responses", json=body)
    blocks = r.text.strip().split("\n\n")
    assert all(b.startswith("event: response.") and "\ndata: {" in b for b in blocks)
    assert "[DONE]" not in r.text
    last = json.loads(blocks[-1].split("data: ", 1)[1])
    assert last["type"] == "response.completed"
    assert last["response"]["usage"]["total_tokens"] == 5 + 2

    fu.configure(fail="drop_midstream", fail_after_chunks=2)
    got: list[str] = []
    async with client(fu) as c:
        stream = await c.responses.create(model="m", input="x", stream=True)
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            async for event in stream:
                if event.type == "response.output_text.delta":
                    got.append(event.delta)
    assert "".join(got) == "w1 w2"


# -- Anthropic dialect -------------------------------------------------------------------

ANTHROPIC_KEY = "anthropic-upstream-secret"
A_SYSTEM = "You are terse."
A_MESSAGES: list[MessageParam] = [
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}},
        ],
    },
]
# (4 + 2) + (4 + 1) + (4 + 3) + system (3)
A_INPUT_TOKENS = 21
A_TOOLS: list[ToolParam] = [
    {"name": "search", "description": "Search.", "input_schema": {"type": "object"}},
    {"name": "other", "input_schema": {"type": "object"}},
]


@pytest.fixture
async def anth() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=ANTHROPIC_KEY, dialect="anthropic") as server:
        yield server


def anthropic_client(fu: FakeUpstream, key: str = ANTHROPIC_KEY) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=fu.root, api_key=key, max_retries=0, timeout=10.0)


async def test_anthropic_messages_non_streaming(anth: FakeUpstream) -> None:
    async with anthropic_client(anth) as c:
        m = await c.messages.create(
            model="claude", system=A_SYSTEM, messages=A_MESSAGES, max_tokens=100
        )
        capped = await c.messages.create(
            model="claude",
            system=[{"type": "text", "text": "Be brief."}],
            messages=[{"role": "user", "content": "x"}],
            max_tokens=3,
        )
    assert m.type == "message" and m.role == "assistant" and m.model == "claude"
    assert m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].type == "text" and m.content[0].text == TEN_WORDS
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (A_INPUT_TOKENS, 10)
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    assert capped.stop_reason == "max_tokens"
    assert (capped.usage.input_tokens, capped.usage.output_tokens) == (4 + 1 + 2, 3)
    stats = anth.stats
    assert stats["anthropic_version"] and stats["last_headers"]["x-api-key"] == ANTHROPIC_KEY
    assert stats["paths"] == {"/v1/messages": 2}
    assert stats["chat_requests"] == 0


async def test_anthropic_streaming(anth: FakeUpstream) -> None:
    async with anthropic_client(anth) as c:
        raw = await c.messages.create(
            model="claude", system=A_SYSTEM, messages=A_MESSAGES, max_tokens=100, stream=True
        )
        events = [event async for event in raw]
        async with c.messages.stream(model="claude", messages=A_MESSAGES, max_tokens=100) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 10,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK swallows ping
    start = events[0]
    assert start.type == "message_start"
    assert (start.message.usage.input_tokens, start.message.usage.output_tokens) == (
        A_INPUT_TOKENS,
        1,
    )
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 10
    assert text == TEN_WORDS
    assert final.usage.input_tokens == A_INPUT_TOKENS - 3
    assert final.usage.output_tokens == 10


async def test_anthropic_stream_wire_has_ping(anth: FakeUpstream) -> None:
    body = {"model": "c", "messages": A_MESSAGES, "max_tokens": 5, "stream": True}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient() as h:
        r = await h.post(anth.url + "/messages", json=body, headers=headers)
    names = [b.split("\n", 1)[0] for b in r.text.strip().split("\n\n")]
    assert names[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    assert names[-1] == "event: message_stop"
    assert anth.stats["anthropic_version"] == "2023-06-01"


async def test_anthropic_tool_round_trip(anth: FakeUpstream) -> None:
    question: list[MessageParam] = [{"role": "user", "content": "find foxes"}]
    async with anthropic_client(anth) as c:
        m = await c.messages.create(
            model="claude", messages=question, tools=A_TOOLS, max_tokens=100
        )
        assert m.stop_reason == "tool_use"
        block = m.content[0]
        assert block.type == "tool_use" and block.name == "search"
        assert block.input == {"query": "w1 w2"}
        assert (m.usage.input_tokens, m.usage.output_tokens) == (4 + 2, 5)

        answer: list[MessageParam] = [
            *question,
            {"role": "assistant", "content": [block.model_dump()]},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "many foxes"}
                ],
            },
        ]
        m2 = await c.messages.create(model="claude", messages=answer, tools=A_TOOLS, max_tokens=100)
        assert m2.stop_reason == "end_turn"
        assert m2.content[0].type == "text" and m2.content[0].text == TEN_WORDS
        # tool_use and tool_result blocks count 0 words: (4 + 2) + 4 + 4
        assert m2.usage.input_tokens == 14

        async with c.messages.stream(
            model="claude", messages=question, tools=A_TOOLS, max_tokens=100
        ) as stream:
            final = await stream.get_final_message()
        streamed = final.content[0]
        assert streamed.type == "tool_use" and streamed.input == {"query": "w1 w2"}
        assert final.stop_reason == "tool_use" and final.usage.output_tokens == 5

        none = await c.messages.create(
            model="claude",
            messages=question,
            tools=A_TOOLS,
            tool_choice={"type": "none"},
            max_tokens=100,
        )
        assert none.stop_reason == "end_turn"


async def test_anthropic_scripted_tool_call(anth: FakeUpstream) -> None:
    anth.configure(tool_call={"name": "search", "arguments": {"file_path": "/x"}})
    question: list[MessageParam] = [{"role": "user", "content": "read x"}]
    async with anthropic_client(anth) as c:
        m = await c.messages.create(
            model="claude", messages=question, tools=A_TOOLS, max_tokens=100
        )
        block = m.content[0]
        assert block.type == "tool_use" and block.input == {"file_path": "/x"}
        async with c.messages.stream(
            model="claude", messages=question, tools=A_TOOLS, max_tokens=100
        ) as stream:
            final = await stream.get_final_message()
        streamed = final.content[0]
        assert streamed.type == "tool_use" and streamed.input == {"file_path": "/x"}
        anth.configure(tool_call="none")
        m2 = await c.messages.create(
            model="claude", messages=question, tools=A_TOOLS, max_tokens=100
        )
        assert m2.stop_reason == "end_turn"


async def test_anthropic_count_tokens(anth: FakeUpstream) -> None:
    async with anthropic_client(anth) as c:
        counted = await c.messages.count_tokens(
            model="claude", system=A_SYSTEM, messages=A_MESSAGES
        )
        assert counted.input_tokens == A_INPUT_TOKENS
        anth.configure(count_tokens=False)
        with pytest.raises(anthropic.NotFoundError) as info:
            await c.messages.count_tokens(model="claude", messages=A_MESSAGES)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": ANY_STR},
    }


async def test_anthropic_cache_read_and_omit_usage(anth: FakeUpstream) -> None:
    async with anthropic_client(anth) as c:
        anth.configure(cache_read_tokens=15)
        m = await c.messages.create(
            model="claude", system=A_SYSTEM, messages=A_MESSAGES, max_tokens=100
        )
        assert (m.usage.input_tokens, m.usage.cache_read_input_tokens) == (
            A_INPUT_TOKENS - 15,
            15,
        )
        anth.configure(cache_read_tokens=1000)
        m = await c.messages.create(model="claude", messages=A_MESSAGES, max_tokens=100)
        assert (m.usage.input_tokens, m.usage.cache_read_input_tokens) == (0, A_INPUT_TOKENS - 3)
        # Cache writes take from what the reads leave; the three parts add up to the prompt.
        anth.configure(cache_read_tokens=5, cache_write_tokens=7)
        m = await c.messages.create(
            model="claude", system=A_SYSTEM, messages=A_MESSAGES, max_tokens=100
        )
        u = m.usage
        assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (
            A_INPUT_TOKENS - 12,
            5,
            7,
        )
        anth.reset()
        anth.configure(omit_usage=True)
        m = await c.messages.create(model="claude", messages=A_MESSAGES, max_tokens=100)
        assert m.content[0].type == "text" and m.content[0].text == TEN_WORDS
        assert m.usage.input_tokens == 0 and m.usage.output_tokens == 0
        async with c.messages.stream(model="claude", messages=A_MESSAGES, max_tokens=100) as stream:
            final = await stream.get_final_message()
        assert final.usage.input_tokens == 0 and final.usage.output_tokens == 0


async def test_anthropic_errors(anth: FakeUpstream) -> None:
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    async with anthropic_client(anth, key="wrong") as bad:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await bad.messages.create(model="c", messages=A_MESSAGES, max_tokens=5)
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": ANY_STR},
    }
    async with httpx.AsyncClient() as h:
        missing = await h.post(
            anth.url + "/messages", json={"model": "c", "messages": []}, headers=headers
        )
        openai_path = await h.post(
            anth.url + "/chat/completions", json={"model": "c", "messages": []}, headers=headers
        )
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]
    assert openai_path.status_code == 404
    assert openai_path.json()["error"]["type"] == "not_found_error"

    async with anthropic_client(anth) as c:
        for fail, kind in (("529", "overloaded_error"), ("429", "rate_limit_error")):
            anth.configure(fail=fail)
            with pytest.raises(anthropic.APIStatusError) as info:
                await c.messages.create(model="c", messages=A_MESSAGES, max_tokens=5)
            assert info.value.status_code == int(fail)
            assert info.value.body == {"type": "error", "error": {"type": kind, "message": ANY_STR}}
        anth.configure(fail="drop_midstream", fail_after_chunks=2)
        got: list[str] = []
        with pytest.raises((httpx.HTTPError, anthropic.APIError)):
            async with c.messages.stream(model="c", messages=A_MESSAGES, max_tokens=50) as s:
                async for t in s.text_stream:
                    got.append(t)
        assert "".join(got) == "w1 w2"


async def test_anthropic_models(anth: FakeUpstream) -> None:
    async with anthropic_client(anth) as c:
        page = await c.models.list()
        ids = [m.id for m in page.data]
        one = await c.models.retrieve("anthropic/claude-3.5-sonnet")
    assert ids == [m["id"] for m in default_models()]
    assert one.display_name == "Anthropic: Claude 3.5 Sonnet" and one.type == "model"
    # OpenRouter fields stay, so the node's catalogue sync reads the same entries.
    assert (one.model_extra or {})["pricing"]["prompt"] == "0.000003"


async def test_openai_dialect_has_no_messages(fu: FakeUpstream) -> None:
    async with httpx.AsyncClient() as h:
        r = await h.post(fu.url + "/messages", json={"model": "c", "max_tokens": 1})
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert fu.stats["paths"] == {"/v1/messages": 1}


# -- behaviours on every endpoint ---------------------------------------------------------

JSON_ENDPOINTS: list[tuple[str, dict[str, Any]]] = [
    ("/chat/completions", {"model": "m", "messages": MESSAGES}),
    ("/completions", {"model": "m", "prompt": "hi"}),
    ("/embeddings", {"model": "m", "input": "hi"}),
    ("/images/generations", {"model": "m", "prompt": "hi"}),
    ("/responses", {"model": "m", "input": "hi"}),
]


async def _post(
    h: httpx.AsyncClient,
    fu: FakeUpstream,
    path: str,
    body: dict[str, Any],
    fake: object,
    wait_s: float = 5.0,
) -> httpx.Response:
    """POST ``body`` scripted by ``fake``: JSON, or multipart for the audio endpoints."""
    if path.startswith("/audio/"):
        return await h.post(
            fu.url + path,
            data={"model": "w", "fake": json.dumps(fake)},
            files={"file": ("c.wav", make_wav(0.5), "audio/wav")},
            timeout=wait_s,
        )
    headers = {"x-api-key": ANTHROPIC_KEY} if fu.dialect == "anthropic" else {}
    return await h.post(fu.url + path, json={**body, "fake": fake}, headers=headers, timeout=wait_s)


ALL_OPENAI = [*JSON_ENDPOINTS, ("/audio/transcriptions", {}), ("/audio/translations", {})]


@pytest.mark.parametrize(("path", "body"), ALL_OPENAI)
async def test_behaviours_apply_to_every_openai_endpoint(
    fu: FakeUpstream, path: str, body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(timeout=5) as h:
        r400 = await _post(h, fu, path, body, {"fail": 400})
        r503 = await _post(h, fu, path, body, {"fail": "503"})
        t0 = time.monotonic()
        ok = await _post(h, fu, path, body, {"latency_ms": 100})
        waited = time.monotonic() - t0
        with pytest.raises(httpx.TransportError):
            await _post(h, fu, path, body, {"fail": "drop"})
        with pytest.raises(httpx.TransportError):
            await _post(h, fu, path, body, {"fail": "drop_midstream"})
        with pytest.raises(httpx.ReadTimeout):
            await _post(h, fu, path, body, {"fail": "timeout"}, wait_s=0.2)
        bad = await _post(h, fu, path, body, {"no_such_knob": 1})
    assert r400.status_code == 400 and set(r400.json()["error"]) >= {"message", "type", "code"}
    assert r503.status_code == 503 and r503.json()["error"]["type"] == "server_error"
    assert ok.status_code == 200 and waited >= 0.1
    assert bad.status_code == 400 and "no_such_knob" in bad.json()["error"]["message"]
    assert fu.stats["paths"]["/v1" + path] == 7


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/messages", {"model": "c", "messages": A_MESSAGES, "max_tokens": 5}),
        ("/messages/count_tokens", {"model": "c", "messages": A_MESSAGES}),
    ],
)
async def test_behaviours_apply_to_anthropic_endpoints(
    anth: FakeUpstream, path: str, body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(timeout=5) as h:
        r400 = await _post(h, anth, path, body, {"fail": 400})
        r500 = await _post(h, anth, path, body, {"fail": 500})
        t0 = time.monotonic()
        ok = await _post(h, anth, path, body, {"latency_ms": 100})
        waited = time.monotonic() - t0
        with pytest.raises(httpx.TransportError):
            await _post(h, anth, path, body, {"fail": "drop"})
        with pytest.raises(httpx.TransportError):
            await _post(h, anth, path, body, {"fail": "drop_midstream"})
    assert r400.status_code == 400
    assert r400.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": ANY_STR},
    }
    assert r500.status_code == 500 and r500.json()["error"]["type"] == "api_error"
    assert ok.status_code == 200 and waited >= 0.1


def test_process_variant_anthropic_dialect() -> None:
    with FakeUpstreamProcess(api_key="k", dialect="anthropic") as proc:
        with Anthropic(base_url=proc.root, api_key="k", max_retries=0) as c:
            m = c.messages.create(
                model="c", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert m.content[0].type == "text" and m.content[0].text == "w1 w2 w3"
        assert proc.stats["paths"] == {"/v1/messages": 1}
        assert httpx.post(proc.url + "/chat/completions", json={}).status_code == 404


async def test_fail_every_nth_request(fu: FakeUpstream) -> None:
    fu.configure(fail="500", fail_every=2)
    async with httpx.AsyncClient(base_url=fu.url, timeout=10) as http:
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        statuses = [(await http.post("/chat/completions", json=body)).status_code for _ in range(6)]
    assert statuses == [200, 500, 200, 500, 200, 500]
