"""OpenAI chat completion → Anthropic message, and the mappings the stream translator shares.

Tool call ids pass through unchanged in both directions (`call_…` stays `call_…`), so a
tool round trip through the translator keeps the ids the upstream chose.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from satsrouter.usage import Usage, usage_from_openai

# Tool arguments the upstream sent that are not a JSON object are kept, verbatim, under this
# single key of the tool_use `input` (Anthropic requires an object there). The request
# translator recognises the key and sends the raw string back as `arguments`, so the
# upstream sees its own call unchanged on the next turn.
RAW_ARGUMENTS_KEY = "_raw_arguments"


class TranslationError(ValueError):
    """A body that cannot be translated between dialects (a 400 for requests, 502 for replies)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def new_tool_use_id() -> str:
    """An id for a tool call the upstream sent without one."""
    return "toolu_" + uuid.uuid4().hex[:24]


def new_message_id() -> str:
    """An id for a message whose upstream reply carried none."""
    return "msg_" + uuid.uuid4().hex[:24]


def message_id_of(upstream_id: Any) -> str:
    """Anthropic message id from the upstream's completion id."""
    if isinstance(upstream_id, str) and upstream_id:
        return "msg_" + upstream_id
    return new_message_id()


def tool_input_of(arguments: Any) -> dict[str, Any]:
    """Tool `input` from OpenAI `arguments` (a JSON string; some upstreams send an object)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {RAW_ARGUMENTS_KEY: arguments}


def stop_reason_of(
    finish_reason: Any, matched_stop: Any, had_tool_calls: bool
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish_reason.

    `matched_stop` is vLLM's `stop_reason` (the stop string that matched); plain OpenAI
    does not say which stop sequence matched, so "stop" is then reported as end_turn.
    """
    if finish_reason in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    # Some upstreams (Ollama, a few OpenAI-compatible servers) say "stop" after tool calls.
    if had_tool_calls:
        return "tool_use", None
    if isinstance(matched_stop, str) and matched_stop:
        return "stop_sequence", matched_stop
    return "end_turn", None


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic `usage` from ours: input_tokens excludes cache reads and cache writes."""
    prompt = max(usage.prompt_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), prompt)
    written = min(max(usage.cache_write_tokens, 0), prompt - cached)
    out: dict[str, Any] = {
        "input_tokens": prompt - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": max(usage.completion_tokens, 0),
    }
    if usage.web_searches > 0:
        out["server_tool_use"] = {
            "web_search_requests": usage.web_searches,
            "web_fetch_requests": 0,
        }
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tool_use_block(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise TranslationError("upstream tool call is not an object")
    fn = call.get("function")
    if not isinstance(fn, dict):
        # The legacy `function_call` field is the function object itself.
        fn = call
    call_id = call.get("id")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else new_tool_use_id(),
        "name": fn.get("name") if isinstance(fn.get("name"), str) else "",
        "input": tool_input_of(fn.get("arguments")),
    }


def reasoning_of(part: dict[str, Any]) -> tuple[str, str]:
    """(text, signature) of the reasoning in an OpenAI `message` or `delta`.

    OpenRouter sends the text as `reasoning` and, for models that sign it (Anthropic's),
    `reasoning_details` entries with a `signature`; some servers send `reasoning_content`.
    """
    text = part.get("reasoning")
    if not isinstance(text, str):
        text = part.get("reasoning_content")
    details = part.get("reasoning_details")
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    if not isinstance(text, str):
        text = "".join(
            d["text"]
            for d in details
            if d.get("type") == "reasoning.text" and isinstance(d.get("text"), str)
        )
    signature = "".join(d["signature"] for d in details if isinstance(d.get("signature"), str))
    return text, signature


def to_anthropic_response(
    resp: dict[str, Any], model: str, usage: Usage | None = None, thinking: str | None = None
) -> dict[str, Any]:
    """Anthropic message from an OpenAI chat completion.

    `usage` (the node's metering, e.g. a local count) replaces the upstream's when given;
    with `thinking` (a `thinking_display`) the upstream's reasoning comes first as a thinking
    block, its text left out when "omitted".
    """
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TranslationError("upstream reply has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise TranslationError("upstream reply has no message")

    content: list[dict[str, Any]] = []
    if thinking:
        reasoning, signature = reasoning_of(message)
        if thinking == "omitted":
            reasoning = ""
        if reasoning or signature:
            content.append({"type": "thinking", "thinking": reasoning, "signature": signature})
    text = _text_of(message.get("content"))
    refusal = message.get("refusal")
    refused = not text and isinstance(refusal, str) and bool(refusal)
    if text or refused:
        content.append({"type": "text", "text": text or refusal})
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        content.extend(_tool_use_block(call) for call in calls)
    if isinstance(message.get("function_call"), dict):
        content.append(_tool_use_block(message["function_call"]))

    had_tools = any(block["type"] == "tool_use" for block in content)
    stop_reason, stop_sequence = stop_reason_of(
        choice.get("finish_reason"), choice.get("stop_reason"), had_tools
    )
    if refused:
        stop_reason, stop_sequence = "refusal", None
    counts = usage or usage_from_openai(resp.get("usage")) or Usage(0, 0)
    return {
        "id": message_id_of(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(counts),
    }
