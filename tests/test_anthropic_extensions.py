"""What Claude Code sends beyond plain Messages, translated for OpenAI and OpenRouter upstreams:
system entries inside `messages`, structured output, thinking, web search, and what is ignored.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from satsrouter.upstream.anthropic import (
    StreamTranslator,
    TranslationError,
    to_anthropic_response,
    to_openai_request,
)
from satsrouter.usage import Usage

USER_HI = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def _req(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": USER_HI, **fields}


# --- requests -------------------------------------------------------------------------------


def test_system_entries_inside_messages_keep_their_place() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "Reminder: be brief."},
        {"role": "assistant", "content": "two"},
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "B"},
            ],
        },
        {"role": "system", "content": ""},  # says nothing: left out
        {"role": "user", "content": "three"},
    ]
    out = to_openai_request(_req(system="Top.", messages=messages))
    assert out["messages"] == [
        {"role": "system", "content": "Top."},
        {"role": "user", "content": "one"},
        {"role": "system", "content": "Reminder: be brief."},
        {"role": "assistant", "content": "two"},
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "three"},
    ]


def test_a_system_entry_with_an_image_is_refused() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    with pytest.raises(TranslationError, match=r"messages\.0\.content\.0"):
        to_openai_request(_req(messages=[{"role": "system", "content": [image]}]))


@pytest.mark.parametrize(
    "fields",
    [
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        {"output_format": {"type": "json_schema", "schema": SCHEMA}},  # the beta's spelling
    ],
)
def test_structured_output_becomes_response_format(fields: dict[str, Any]) -> None:
    out = to_openai_request(_req(**fields))
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    ("fmt", "fragment"),
    [
        ({"type": "json_object"}, "output_config.format.type"),
        ({"type": "json_schema"}, "output_config.format.schema"),
        ("json", "output_config.format.type"),
    ],
)
def test_structured_output_shapes_refused(fmt: Any, fragment: str) -> None:
    with pytest.raises(TranslationError, match=fragment):
        to_openai_request(_req(output_config={"format": fmt}))


def test_output_config_effort_alone_changes_nothing() -> None:
    assert "reasoning" not in to_openai_request(
        _req(output_config={"effort": "high"}), "openrouter"
    )


@pytest.mark.parametrize(
    ("dialect", "effort_ok", "fields", "expected"),
    [
        # OpenRouter: its unified `reasoning`, for every model.
        (
            "openrouter",
            False,
            {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            {"reasoning": {"max_tokens": 2048}, "max_tokens": 100},
        ),
        (
            "openrouter",
            False,
            {"thinking": {"type": "adaptive"}},
            {"reasoning": {"enabled": True}, "max_tokens": 100},
        ),
        (
            "openrouter",
            False,
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}},
            {"reasoning": {"effort": "high"}, "max_tokens": 100},
        ),
        ("openrouter", False, {"thinking": {"type": "disabled"}}, {"max_tokens": 100}),
        # OpenAI: only for a model that lists reasoning_effort (others refuse the field).
        (
            "openai",
            False,
            {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            {"max_tokens": 100},
        ),
        (
            "openai",
            True,
            {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            {"reasoning_effort": "low", "max_completion_tokens": 100},
        ),
        (
            "openai",
            True,
            {"thinking": {"type": "enabled", "budget_tokens": 32000}},
            {"reasoning_effort": "high", "max_completion_tokens": 100},
        ),
        (
            "openai",
            True,
            {"thinking": {"type": "adaptive"}},
            {"reasoning_effort": "medium", "max_completion_tokens": 100},
        ),
    ],
)
def test_thinking_settings(
    dialect: str, effort_ok: bool, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    out = to_openai_request(_req(**fields), dialect, reasoning_effort=effort_ok)
    keys = ("reasoning", "reasoning_effort", "max_tokens", "max_completion_tokens")
    assert {k: out[k] for k in keys if k in out} == expected


def test_thinking_budget_must_be_positive() -> None:
    with pytest.raises(TranslationError, match="budget_tokens"):
        to_openai_request(_req(thinking={"type": "enabled", "budget_tokens": 0}), "openrouter")


HISTORY = [
    {"role": "user", "content": "q"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "let me see", "signature": "sig-1"},
            {"type": "thinking", "thinking": "unsigned", "signature": ""},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "a"},
        ],
    },
    {"role": "user", "content": "more"},
]


def test_signed_thinking_goes_back_to_openrouter() -> None:
    assistant = to_openai_request(_req(messages=HISTORY), "openrouter")["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": "a",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "let me see", "signature": "sig-1", "index": 0},
            {"type": "reasoning.encrypted", "data": "opaque", "index": 1},
        ],
    }


def test_thinking_history_is_dropped_for_openai() -> None:
    assistant = to_openai_request(_req(messages=HISTORY))["messages"][1]
    assert assistant == {"role": "assistant", "content": "a"}


WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
WEATHER = {"name": "weather", "input_schema": {"type": "object"}}


def test_web_search_becomes_the_openrouter_web_plugin() -> None:
    out = to_openai_request(_req(tools=[WEB_SEARCH, WEATHER]), "openrouter")
    assert out["plugins"] == [{"id": "web"}]
    assert [t["function"]["name"] for t in out["tools"]] == ["weather"]


def test_web_search_alone_leaves_no_tools_nor_tool_choice() -> None:
    out = to_openai_request(_req(tools=[WEB_SEARCH], tool_choice={"type": "auto"}), "openrouter")
    assert out["plugins"] == [{"id": "web"}]
    assert "tools" not in out and "tool_choice" not in out


@pytest.mark.parametrize(
    ("dialect", "tool"),
    [
        ("openai", WEB_SEARCH),
        ("openrouter", {"type": "code_execution_20250522", "name": "code_execution"}),
        ("openrouter", {"type": "web_fetch_20250910", "name": "web_fetch"}),
    ],
)
def test_other_server_tools_are_refused(dialect: str, tool: dict[str, Any]) -> None:
    with pytest.raises(TranslationError, match="server tool"):
        to_openai_request(_req(tools=[tool]), dialect)


def test_deferred_tools_wait_for_a_tool_search() -> None:
    deferred = {"name": "Later", "input_schema": {"type": "object"}, "defer_loading": True}
    out = to_openai_request(_req(tools=[WEATHER, deferred]))
    assert [t["function"]["name"] for t in out["tools"]] == ["weather"]
    search_result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "tool_reference", "tool_name": "Later"}],
    }
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch"}]},
        {"role": "user", "content": [search_result]},
    ]
    out = to_openai_request(_req(tools=[WEATHER, deferred], messages=messages))
    assert [t["function"]["name"] for t in out["tools"]] == ["weather", "Later"]
    assert out["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": "Tool Later is now available.",
    }


def test_top_k_only_for_openrouter() -> None:
    assert to_openai_request(_req(top_k=5), "openrouter")["top_k"] == 5
    assert "top_k" not in to_openai_request(_req(top_k=5))


def test_ignored_fields_never_break_a_request() -> None:
    body = _req(
        context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
        cache_control={"type": "ephemeral"},
        service_tier="auto",
        container="c",
        mcp_servers=[],
        metadata={"user_id": "u", "other": 1},
    )
    out = to_openai_request(body, "openrouter")
    assert out == {"model": "m", "max_tokens": 100, "messages": USER_HI, "user": "u"}


def test_long_user_ids_become_a_stable_digest() -> None:
    long_id = "user_" + "a" * 64 + "_account__session_" + "b" * 36
    first = to_openai_request(_req(metadata={"user_id": long_id}))["user"]
    assert first == to_openai_request(_req(metadata={"user_id": long_id}))["user"]
    assert first.startswith("sha256:") and len(first) <= 64 and long_id not in first


# --- replies --------------------------------------------------------------------------------


def _completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "x",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }


REASONED = {
    "role": "assistant",
    "content": "answer",
    "reasoning": "r1 r2",
    "reasoning_details": [{"type": "reasoning.text", "text": "r1 r2", "signature": "sig"}],
}


def test_reasoning_comes_back_as_a_thinking_block_when_asked() -> None:
    message = to_anthropic_response(_completion(REASONED), "m", thinking="summarized")
    assert message["content"] == [
        {"type": "thinking", "thinking": "r1 r2", "signature": "sig"},
        {"type": "text", "text": "answer"},
    ]
    plain = to_anthropic_response(_completion(REASONED), "m")
    assert plain["content"] == [{"type": "text", "text": "answer"}]


def test_reasoning_content_without_signature() -> None:
    message = {"role": "assistant", "content": "a", "reasoning_content": "hmm"}
    out = to_anthropic_response(_completion(message), "m", thinking="summarized")
    assert out["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": ""}


def _events(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        data = frame.split(b"data: ", 1)[1]
        out.append(orjson.loads(data))
    return out


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_streamed_reasoning_becomes_a_signed_thinking_block() -> None:
    translator = StreamTranslator("m", 3, thinking="summarized")
    frames: list[bytes] = []
    for chunk in [
        _chunk({"role": "assistant", "content": "", "reasoning": "r1"}),
        _chunk({"content": "", "reasoning": " r2"}),
        _chunk({"reasoning_details": [{"type": "reasoning.text", "text": "", "signature": "s"}]}),
        _chunk({"content": "w1"}),
        _chunk({}, "stop"),
    ]:
        frames += translator.feed(chunk)
    frames += translator.finish(Usage(3, 4))
    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in _events(frames)]
    assert kinds == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", None),
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]
    events = _events(frames)
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[4]["delta"] == {"type": "signature_delta", "signature": "s"}
    assert events[6]["index"] == 1


def test_omitted_display_sends_only_the_signature() -> None:
    out = to_anthropic_response(_completion(REASONED), "m", thinking="omitted")
    assert out["content"][0] == {"type": "thinking", "thinking": "", "signature": "sig"}
    translator = StreamTranslator("m", 3, thinking="omitted")
    frames = translator.feed(_chunk({"role": "assistant", "content": "", "reasoning": "r1"}))
    frames += translator.feed(
        _chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "s"}]})
    )
    frames += translator.feed(_chunk({"content": "w1"}))
    deltas = [e["delta"] for e in _events(frames) if e["type"] == "content_block_delta"]
    assert deltas == [
        {"type": "signature_delta", "signature": "s"},
        {"type": "text_delta", "text": "w1"},
    ]


def test_streamed_reasoning_left_out_unless_asked() -> None:
    translator = StreamTranslator("m", 3)
    frames = translator.feed(_chunk({"role": "assistant", "content": "", "reasoning": "r1"}))
    frames += translator.feed(_chunk({"content": "w1"}))
    assert all(e.get("content_block", {}).get("type") != "thinking" for e in _events(frames))
