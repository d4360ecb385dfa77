"""The Anthropic ⇄ OpenAI translator: every mapping, and its output read by the real SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from satsrouter.upstream.anthropic import (
    RAW_ARGUMENTS_KEY,
    AnthropicStreamUsage,
    StreamTranslator,
    TranslationError,
    anthropic_text_of,
    count_anthropic_prompt_tokens,
    error_event,
    to_anthropic_response,
    to_openai_request,
    usage_from_anthropic,
)
from satsrouter.usage import Usage, count_tokens, usage_from_openai

USER_HI = [{"role": "user", "content": "hi"}]
PNG_B64 = "iVBORw0KGgo="


def _req(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": USER_HI, **fields}


# --- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
        ({"stop_sequences": ["END", "###"]}, {"stop": ["END", "###"]}),
        ({"stop_sequences": []}, {}),
        ({"temperature": 0.2, "top_p": 0.9, "top_k": 5}, {"temperature": 0.2, "top_p": 0.9}),
        ({"metadata": {"user_id": "u-1"}}, {"user": "u-1"}),
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, {}),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, {}),
        ({"service_tier": "auto"}, {}),
    ],
)
def test_request_scalar_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_openai_request(_req(**fields))
    base = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    assert out == {**base, **expected}


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("Be brief.", [{"role": "system", "content": "Be brief."}]),
        (
            [
                {"type": "text", "text": "You are X.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."},
            ],
            [{"role": "system", "content": "You are X.\n\nBe brief."}],
        ),
        ("", []),
        ([], []),
    ],
)
def test_request_system(system: Any, expected: list[dict[str, Any]]) -> None:
    out = to_openai_request(_req(system=system))
    assert out["messages"] == [*expected, {"role": "user", "content": "hi"}]


def test_request_images_and_text_blocks() -> None:
    content = [
        {"type": "text", "text": "What is in these?", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ]
    out = to_openai_request(_req(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        }
    ]


def test_request_documents() -> None:
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
        {
            "type": "document",
            "title": "r.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
    ]
    out = to_openai_request(_req(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "d"},
        {
            "type": "file",
            "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
    ]


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}


def test_request_multi_turn_tool_round_trip() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go."},
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "service down"}],
                },
            ],
        },
        {"role": "assistant", "content": "Paris is 18C; Rome unknown."},
    ]
    out = to_openai_request(_req(messages=messages, tools=[WEATHER_TOOL]))
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        # Tool messages come straight after the assistant's calls, before the user's text.
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: service down"},
        {"role": "user", "content": "Here you go."},
        {"role": "assistant", "content": "Paris is 18C; Rome unknown."},
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Weather for a city",
            },
        }
    ]


def test_request_tool_only_turns() -> None:
    messages = [
        *USER_HI,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "text", "text": "b"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/jpeg", "data": "AA"},
                        },
                    ],
                },
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "d"}]},
    ]
    out = to_openai_request(_req(messages=messages))
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "a\n\nb"},
        # An image in a tool result cannot ride in the tool message: it follows as user content.
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}}],
        },
        {"role": "tool", "tool_call_id": "d", "content": ""},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": False},
            {"tool_choice": "required"},
        ),
    ],
)
def test_request_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_openai_request(_req(tools=[WEATHER_TOOL], tool_choice=choice))
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


def test_tool_choice_needs_tools() -> None:
    # OpenAI refuses `tool_choice` and `parallel_tool_calls` on a request without tools.
    out = to_openai_request(_req(tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert "tool_choice" not in out and "parallel_tool_calls" not in out


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": "hi"}, "messages must be a non-empty list"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": ["hi"]}, "messages.0 must be an object"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "'video' is not supported",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "image source 'file'",
        ),
        ({"messages": USER_HI, "system": 3}, "system must be"),
        ({"messages": USER_HI, "max_tokens": "10"}, "max_tokens"),
        ({"messages": USER_HI, "stop_sequences": "END"}, "stop_sequences"),
        ({"messages": USER_HI, "temperature": "hot"}, "temperature"),
        ({"messages": USER_HI, "tools": {"name": "x"}}, "tools must be a list"),
        (
            {"messages": USER_HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "server tool 'web_search_20250305'",
        ),
        ({"messages": USER_HI, "tool_choice": {"type": "tool"}}, "tool_choice.type"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "a", "name": "f", "input": [1]}],
                    }
                ]
            },
            "input must be an object",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "tool_use_id",
        ),
    ],
)
def test_request_invalid_shapes(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TranslationError) as info:
        to_openai_request({"model": "m", **body})
    assert fragment in info.value.message
    assert isinstance(info.value, ValueError)


# --- non-streamed replies -------------------------------------------------------------------


def _completion(message: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    choice.update(extra)
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "model": "upstream-model",
        "choices": [choice],
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }


def test_response_text() -> None:
    out = to_anthropic_response(_completion({"content": "Hello!"}, "stop"), "claude-x")
    assert out == {
        "id": "msg_chatcmpl-9",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
            "output_tokens": 30,
        },
    }


def test_response_tool_calls() -> None:
    message = {
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "f", "arguments": '{"x": 1}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{oops"}},
            {"id": "call_c", "type": "function", "function": {"name": "h", "arguments": ""}},
        ],
    }
    out = to_anthropic_response(_completion(message, "tool_calls"), "claude-x")
    assert out["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_b", "name": "g", "input": {RAW_ARGUMENTS_KEY: "{oops"}},
        {"type": "tool_use", "id": "call_c", "name": "h", "input": {}},
    ]
    assert out["stop_reason"] == "tool_use"
    # On the next turn the upstream gets its own unparsable arguments back verbatim.
    back = to_openai_request(
        _req(messages=[*USER_HI, {"role": "assistant", "content": out["content"]}])
    )
    assert [c["function"]["arguments"] for c in back["messages"][1]["tool_calls"]] == [
        '{"x":1}',
        "{oops",
        "{}",
    ]


@pytest.mark.parametrize(
    ("finish", "message", "extra", "reason", "sequence"),
    [
        ("stop", {"content": "a"}, {}, "end_turn", None),
        ("length", {"content": "a"}, {}, "max_tokens", None),
        ("content_filter", {"content": ""}, {}, "refusal", None),
        ("tool_calls", {"content": "a"}, {}, "tool_use", None),
        (
            "function_call",
            {"function_call": {"name": "f", "arguments": "{}"}},
            {},
            "tool_use",
            None,
        ),
        # vLLM says which stop string matched.
        ("stop", {"content": "a"}, {"stop_reason": "###"}, "stop_sequence", "###"),
        ("stop", {"content": "a"}, {"stop_reason": 128001}, "end_turn", None),
        # Ollama and others report "stop" after tool calls.
        (
            "stop",
            {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
            {},
            "tool_use",
            None,
        ),
        (None, {"content": "a"}, {}, "end_turn", None),
        ("stop", {"content": None, "refusal": "I can't help with that."}, {}, "refusal", None),
    ],
)
def test_response_stop_reasons(
    finish: str | None,
    message: dict[str, Any],
    extra: dict[str, Any],
    reason: str,
    sequence: str | None,
) -> None:
    out = to_anthropic_response(_completion(message, finish, **extra), "m")
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)


def test_response_refusal_becomes_text() -> None:
    out = to_anthropic_response(_completion({"content": None, "refusal": "No."}, "stop"), "m")
    assert out["content"] == [{"type": "text", "text": "No."}]


def test_response_usage_override_and_missing() -> None:
    resp = _completion({"content": "a"}, "stop")
    del resp["usage"], resp["id"]
    out = to_anthropic_response(resp, "m")
    assert out["id"].startswith("msg_") and len(out["id"]) > 4
    assert out["usage"]["input_tokens"] == 0 and out["usage"]["output_tokens"] == 0
    counted = Usage(prompt_tokens=50, completion_tokens=7, cache_write_tokens=5, source="local")
    out = to_anthropic_response(resp, "m", usage=counted)
    assert out["usage"] == {
        "input_tokens": 45,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 0,
        "output_tokens": 7,
    }


@pytest.mark.parametrize("resp", [{}, {"choices": []}, {"choices": [{"message": "x"}]}])
def test_response_invalid(resp: dict[str, Any]) -> None:
    with pytest.raises(TranslationError):
        to_anthropic_response(resp, "m")


# --- streams --------------------------------------------------------------------------------


def _chunk(
    delta: dict[str, Any] | None,
    finish: str | None = None,
    stop_reason: str | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A chat.completion.chunk as OpenAI sends it; `delta=None` makes a usage-only chunk."""
    choices: list[dict[str, Any]] = []
    if delta is not None:
        choices.append({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish})
        if stop_reason is not None:
            choices[0]["stop_reason"] = stop_reason
    return {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": choices,
        "usage": None,
        **top,
    }


def _call(index: int, args: str, call_id: str | None = None, name: str | None = None) -> Any:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


# Text, then two tool calls with fragmented arguments, then a usage-only chunk (include_usage).
STREAM = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me "}),
    _chunk({"content": "check."}),
    _chunk(_call(0, "", "call_a", "get_weather")),
    _chunk(_call(0, '{"city": ')),
    _chunk(_call(0, '"Paris"}')),
    _chunk(_call(1, '{"tz"', "call_b", "get_time")),
    _chunk(_call(1, ': "CET"}')),
    _chunk({}, "tool_calls"),
    _chunk(
        None,
        usage={
            "prompt_tokens": 50,
            "completion_tokens": 20,
            "total_tokens": 70,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    ),
]
COST = {"cost": {"total_msats": 1234, "input_msats": 1000, "output_msats": 234}}


def _translate(
    chunks: list[dict[str, Any]], usage: Usage, extra: dict[str, Any] | None = None, **kw: Any
) -> bytes:
    translator = StreamTranslator("claude-x", **kw)
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(translator.feed(chunk))
    out.extend(translator.finish(usage, extra))
    assert translator.finish(usage, extra) == []  # finishing twice emits nothing more
    return b"".join(out)


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.split(b"\n\n"):
        if not frame:
            continue
        name, data = frame.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        payload = orjson.loads(data[len(b"data: ") :])
        assert payload["type"] == name[len(b"event: ") :].decode()
        events.append((payload["type"], payload))
    return events


def _stream_usage() -> Usage:
    usage = usage_from_openai(STREAM[-1]["usage"])
    assert usage is not None
    return usage


def test_stream_event_sequence() -> None:
    events = _events(_translate(STREAM, _stream_usage(), COST, input_tokens=45))
    shape = [
        (kind, p.get("index"), (p.get("delta") or p.get("content_block") or {}).get("type"))
        for kind, p in events
    ]
    assert shape == [
        ("message_start", None, None),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_chatcmpl-s1" and start["model"] == "claude-x"
    assert start["usage"]["input_tokens"] == 45 and start["usage"]["output_tokens"] == 0
    assert events[5][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
        "output_tokens": 20,
        **COST,
    }


def _mock_client(body: bytes, content_type: str, seen: list[httpx.Request]) -> anthropic.Anthropic:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    return anthropic.Anthropic(
        api_key="test-key",
        base_url="http://127.0.0.1:9/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def test_stream_through_the_anthropic_sdk() -> None:
    raw = _translate(STREAM, _stream_usage(), COST)
    seen: list[httpx.Request] = []
    client = _mock_client(raw, "text/event-stream", seen)
    with client.messages.stream(model="claude-x", max_tokens=100, messages=USER_HI) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.id == "msg_chatcmpl-s1"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].type == "text" and final.content[0].text == "Let me check."
    tools = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert tools == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {"tz": "CET"}),
    ]
    assert final.stop_reason == "tool_use" and final.stop_sequence is None
    # message_start said 0 input tokens; message_delta's cumulative counts replace it.
    assert final.usage.input_tokens == 40
    assert final.usage.cache_read_input_tokens == 10
    assert final.usage.cache_creation_input_tokens == 0
    assert final.usage.output_tokens == 20
    # The node's cost survives on the message_delta event as an extra field.
    delta = next(e for e in events if e.type == "message_delta")
    assert getattr(delta.usage, "cost", None) == COST["cost"]
    client.close()


def test_raw_stream_through_messages_create() -> None:
    raw = _translate(STREAM, _stream_usage())
    client = _mock_client(raw, "text/event-stream", [])
    stream = client.messages.create(model="claude-x", max_tokens=100, messages=USER_HI, stream=True)
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 3
    client.close()


@pytest.mark.parametrize(
    ("chunks", "reason", "sequence", "texts"),
    [
        ([_chunk({"content": "a"}), _chunk({"content": "b"}, "stop")], "end_turn", None, ["ab"]),
        ([_chunk({"content": "a"}, "length")], "max_tokens", None, ["a"]),
        ([_chunk({"content": ""}, "content_filter")], "refusal", None, []),
        ([_chunk({"refusal": "No."}), _chunk({}, "stop")], "refusal", None, ["No."]),
        (
            # vLLM names the stop string that matched.
            [_chunk({"content": "a"}), _chunk({}, "stop", stop_reason="###")],
            "stop_sequence",
            "###",
            ["a"],
        ),
        ([], "end_turn", None, []),  # nothing at all still makes a valid, empty message
        (
            [_chunk({"content": "a"}), _chunk(_call(0, "{}", "c1", "f")), _chunk({"content": "b"})],
            "tool_use",
            None,
            ["a", "b"],
        ),
    ],
)
def test_stream_stop_reasons_via_sdk(
    chunks: list[dict[str, Any]], reason: str, sequence: str | None, texts: list[str]
) -> None:
    raw = _translate(chunks, Usage(prompt_tokens=5, completion_tokens=2))
    client = _mock_client(raw, "text/event-stream", [])
    with client.messages.stream(model="claude-x", max_tokens=100, messages=USER_HI) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == (reason, sequence)
    assert [b.text for b in final.content if b.type == "text"] == texts
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 2)
    client.close()


def test_stream_tool_calls_sharing_index_zero() -> None:
    # Some upstreams number every call 0; a new id still starts a new block.
    chunks = [
        _chunk(_call(0, '{"a":1}', "c1", "f")),
        _chunk(_call(0, '{"b":2}', "c2", "g")),
        _chunk({}, "tool_calls"),
    ]
    events = _events(_translate(chunks, Usage(1, 1)))
    starts = [p["content_block"]["id"] for kind, p in events if kind == "content_block_start"]
    assert starts == ["c1", "c2"]
    deltas = [
        (p["index"], p["delta"]["partial_json"]) for k, p in events if k == "content_block_delta"
    ]
    assert deltas == [(0, '{"a":1}'), (1, '{"b":2}')]


def test_stream_first_chunk_usage_sets_message_start() -> None:
    first = _chunk({"content": "x"}, usage={"prompt_tokens": 12, "completion_tokens": 0})
    events = _events(_translate([first], Usage(12, 1)))
    assert events[0][1]["message"]["usage"]["input_tokens"] == 12


def test_error_event_raises_in_the_sdk() -> None:
    translator = StreamTranslator("claude-x")
    raw = b"".join(translator.feed(_chunk({"content": "partial"})))
    raw += error_event("Upstream connection lost; you were charged for what was sent.", "api_error")
    assert raw.endswith(b"\n\n")
    client = _mock_client(raw, "text/event-stream", [])
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="claude-x", max_tokens=100, messages=USER_HI) as stream:
            stream.get_final_message()
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "Upstream connection lost; you were charged for what was sent.",
        },
    }
    client.close()


def test_response_through_the_anthropic_sdk() -> None:
    message = {
        "content": "Calling.",
        "tool_calls": [
            {
                "id": "call_z",
                "type": "function",
                "function": {"name": "f", "arguments": '{"q":"x"}'},
            }
        ],
    }
    body = to_anthropic_response(_completion(message, "tool_calls"), "claude-x")
    body["usage"].update(COST)
    seen: list[httpx.Request] = []
    client = _mock_client(orjson.dumps(body), "application/json", seen)
    result = client.messages.create(
        model="claude-x",
        max_tokens=100,
        messages=USER_HI,
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
    )
    assert result.content[0].type == "text" and result.content[0].text == "Calling."
    assert result.content[1].type == "tool_use" and result.content[1].input == {"q": "x"}
    assert result.stop_reason == "tool_use"
    assert (result.usage.input_tokens, result.usage.cache_read_input_tokens) == (20, 100)
    assert getattr(result.usage, "cost", None) == COST["cost"]
    # The SDK's own request body translates cleanly.
    sent = orjson.loads(seen[0].content)
    assert to_openai_request(sent)["tools"][0]["function"]["name"] == "f"
    client.close()


# --- usage of native Anthropic traffic ------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        ({}, None),
        ({"input_tokens": 0, "output_tokens": 0}, None),
        ({"input_tokens": 10, "output_tokens": 5}, Usage(10, 5)),
        (
            {
                "input_tokens": 10,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 30,
                "output_tokens": 5,
            },
            Usage(140, 5, cached_tokens=100, cache_write_tokens=30),
        ),
        ({"input_tokens": None, "output_tokens": 3}, Usage(0, 3)),
        (
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0},
            },
            Usage(10, 5, web_searches=2),
        ),
    ],
)
def test_usage_from_anthropic(usage: Any, expected: Usage | None) -> None:
    assert usage_from_anthropic(usage) == expected


NATIVE_STREAM: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {
                "input_tokens": 25,
                "cache_read_input_tokens": 200,
                "cache_creation_input_tokens": 0,
                "output_tokens": 1,
            },
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "hm"},
    },
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi "}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "there"}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": ":1}"},
    },
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use"},
        "usage": {"output_tokens": 17, "input_tokens": None},
    },
    {"type": "message_stop"},
]


def test_anthropic_stream_usage() -> None:
    reader = AnthropicStreamUsage()
    assert reader.usage() is None
    for event in NATIVE_STREAM:
        reader.feed(event)
    # output_tokens is cumulative (last wins); a null input_tokens keeps message_start's.
    assert reader.usage() == Usage(225, 17, cached_tokens=200)
    assert reader.text == 'hmHi theref{"a":1}'


def test_anthropic_stream_usage_delta_input_overrides() -> None:
    reader = AnthropicStreamUsage()
    reader.feed(NATIVE_STREAM[0])
    reader.feed({"type": "message_delta", "usage": {"input_tokens": 30, "output_tokens": 4}})
    assert reader.usage() == Usage(230, 4, cached_tokens=200)


def test_anthropic_text_of() -> None:
    message = {
        "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "x", "name": "f", "input": {"a": 1}},
        ]
    }
    assert anthropic_text_of(message) == 'tHellof{"a":1}'
    assert anthropic_text_of({}) == ""


# --- local prompt counts --------------------------------------------------------------------


def _sum(*texts: str) -> int:
    return sum(count_tokens(text) for text in texts)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": []}, lambda: 1),
        ({"messages": USER_HI}, lambda: 4 + _sum("hi")),
        (
            {"system": "Be brief.", "messages": [{"role": "user", "content": "What is 2+2?"}]},
            lambda: _sum("Be brief.") + 4 + _sum("What is 2+2?"),
        ),
        (
            {
                "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "c", "name": "f", "input": {"q": 1}}
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "c", "content": "done"},
                            {
                                "type": "tool_result",
                                "tool_use_id": "c",
                                "content": [{"type": "text", "text": "also"}],
                            },
                        ],
                    },
                ],
                "tools": [WEATHER_TOOL],
            },
            lambda: (
                _sum("A", "B")
                + 4
                + _sum("look")
                + 1600
                + 4
                + _sum("f", '{"q":1}')
                + 4
                + _sum("done", "also")
                + _sum(orjson.dumps([WEATHER_TOOL]).decode())
            ),
        ),
    ],
)
def test_count_anthropic_prompt_tokens(body: dict[str, Any], expected: Callable[[], int]) -> None:
    assert count_anthropic_prompt_tokens(body) == expected()


def test_web_searches_reach_the_sdk_usage() -> None:
    resp = _completion({"content": "Found it."}, "stop")
    resp["usage"]["server_tool_use"] = {"web_search_requests": 3}
    body = to_anthropic_response(resp, "claude-x")
    assert body["usage"]["server_tool_use"] == {"web_search_requests": 3, "web_fetch_requests": 0}
    assert usage_from_anthropic(body["usage"]) == usage_from_openai(resp["usage"])
    client = _mock_client(orjson.dumps(body), "application/json", [])
    result = client.messages.create(model="claude-x", max_tokens=10, messages=USER_HI)
    assert result.usage.server_tool_use is not None
    assert result.usage.server_tool_use.web_search_requests == 3
    client.close()
