"""The OpenAI chat → Anthropic translator (`chat_to_anthropic`, `anthropic_to_chat`):
the mappings the end-to-end tests do not reach, and its output read by the real `openai` SDK."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from satsrouter.upstream.anthropic_response import TranslationError
from satsrouter.upstream.anthropic_to_chat import (
    ChunkTranslator,
    finish_reason_of,
    to_chat_completion,
)
from satsrouter.upstream.chat_to_anthropic import DEFAULT_MAX_TOKENS, to_anthropic_request
from satsrouter.usage import Usage

USER_HI = [{"role": "user", "content": "hi"}]


def _req(**fields: Any) -> dict[str, Any]:
    body = {"model": "public/name", "messages": USER_HI, **fields}
    return to_anthropic_request(body, "wire-id", 1000, 8000)


def test_model_and_max_tokens() -> None:
    assert _req()["model"] == "wire-id"
    assert _req()["max_tokens"] == 1000
    assert _req(max_tokens=10)["max_tokens"] == 10
    assert _req(max_completion_tokens=20, max_tokens=10)["max_tokens"] == 20
    assert _req(max_tokens=5000)["max_tokens"] == 1000  # the model's cap, as reserved
    body = {"messages": USER_HI}
    assert to_anthropic_request(body, "m", None, 100_000)["max_tokens"] == DEFAULT_MAX_TOKENS
    assert to_anthropic_request(body, "m", None, 1000)["max_tokens"] == 1000


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    fields: dict[str, Any] = {"tools": tools}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    out = _req(**fields)
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert out.get("tool_choice") == expected


def test_stop_and_user() -> None:
    assert _req(stop=["a", "", "b"])["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in _req(stop="")
    assert _req(safety_identifier="s")["metadata"] == {"user_id": "s"}


def test_pdf_file_and_cache_control_pass_on() -> None:
    content = [
        {"type": "text", "text": "read", "cache_control": {"type": "ephemeral"}},
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,QQ=="},
        },
    ]
    out = _req(messages=[{"role": "user", "content": content}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "read", "cache_control": {"type": "ephemeral"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "QQ=="},
            "title": "a.pdf",
        },
    ]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages.0.content.0",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,xx"}}
                        ],
                    }
                ]
            },
            "image_url.url",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"stop": 3}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_refused(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(TranslationError) as info:
        _req(**fields)
    assert named in info.value.message


def test_harmless_defaults_are_accepted() -> None:
    out = _req(n=1, logprobs=False, presence_penalty=0, response_format={"type": "text"}, seed=1)
    assert set(out) == {"model", "messages", "max_tokens"}


def test_thinking_round_trip() -> None:
    """A thinking answer's `reasoning_details` come back as its thinking blocks, signed."""
    message = {
        "id": "msg_1",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
    }
    completion = ChatCompletion.model_validate(to_chat_completion(message, "m", Usage(3, 4)))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "let me look"
    extra = choice.message.model_extra or {}
    assert extra["reasoning"] == "hmm"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    again = {
        "role": "assistant",
        "content": choice.message.content,
        "tool_calls": [call.model_dump() for call in choice.message.tool_calls or []],
        "reasoning_details": extra["reasoning_details"],
    }
    out = _req(messages=[*USER_HI, again])
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "let me look"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
    ]


def test_stream_of_thinking_text_and_two_tools() -> None:
    translator = ChunkTranslator("m")
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 3}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "so"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "s1"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "tool_use", "id": "t2", "name": "g", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 3,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    chunks = [ChatCompletionChunk.model_validate(c) for e in events for c in translator.feed(e)]
    finish = translator.finish()
    assert finish is not None
    chunks.append(ChatCompletionChunk.model_validate(finish))
    assert {c.id for c in chunks} == {"chatcmpl-msg_9"}
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(d.content or "" for d in deltas) == "ok"
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == "so"
    (details,) = [
        (d.model_extra or {})["reasoning_details"]
        for d in deltas
        if "reasoning_details" in (d.model_extra or {})
    ]
    assert details == [{"type": "reasoning.text", "text": "so", "index": 0, "signature": "s1"}]
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        for part in d.tool_calls or ():
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            if part.function is not None:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    assert calls == {
        0: {"id": "t1", "name": "f", "arguments": '{"a":1}'},
        1: {"id": "t2", "name": "g", "arguments": "{}"},
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_finish_reasons(stop: str, finish: str) -> None:
    assert finish_reason_of(stop) == finish
