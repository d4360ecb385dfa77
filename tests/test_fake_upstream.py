"""The fake upstream, exercised with the official openai SDK as a real client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from satsrouter.testing.fake_upstream import (
    FakeUpstream,
    FakeUpstreamProcess,
    default_models,
    prompt_tokens_of,
)

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
