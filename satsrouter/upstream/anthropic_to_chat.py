"""Anthropic message (or event stream) → OpenAI chat completion (or chunk stream).

The other half of `chat_to_anthropic`. Tool call ids pass through unchanged (`toolu_…`
stays `toolu_…`), so a client's tool results reach the upstream under the ids it chose.
Thinking comes back as OpenRouter does it: the text as `reasoning`, and `reasoning_details`
carrying the signature that `chat_to_anthropic` needs to send the thinking back.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from satsrouter.upstream.anthropic_response import TranslationError
from satsrouter.usage import Usage

# Anthropic stop_reason → OpenAI finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason_of(stop_reason: Any) -> str:
    """OpenAI `finish_reason` for an Anthropic `stop_reason` (unknown ones: "stop")."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def chat_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI `usage` from ours: the prompt includes cache reads and writes, as OpenAI's does."""
    details: dict[str, int] = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens  # OpenRouter's name
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": details,
    }


def completion_id(message_id: Any) -> str:
    """The chat completion id for an Anthropic message id."""
    return f"chatcmpl-{message_id}" if isinstance(message_id, str) and message_id else "chatcmpl-"


def _arguments(tool_input: Any) -> str:
    return orjson.dumps(tool_input if isinstance(tool_input, dict) else {}).decode()


def _reasoning_detail(block: dict[str, Any], index: int) -> dict[str, Any] | None:
    if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
        return {"type": "reasoning.encrypted", "data": block["data"], "index": index}
    if block.get("type") == "thinking":
        text = block.get("thinking")
        detail: dict[str, Any] = {
            "type": "reasoning.text",
            "text": text if isinstance(text, str) else "",
            "index": index,
        }
        if isinstance(block.get("signature"), str):
            detail["signature"] = block["signature"]
        return detail
    return None


def to_chat_completion(message: dict[str, Any], model: str, usage: Usage) -> dict[str, Any]:
    """OpenAI chat completion for an Anthropic message; `usage` is what the node charges."""
    content = message.get("content")
    if not isinstance(content, list):
        raise TranslationError("upstream message has no content")
    texts: list[str] = []
    reasoning: list[str] = []
    details: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name") or ""),
                        "arguments": _arguments(block.get("input")),
                    },
                }
            )
        elif (detail := _reasoning_detail(block, len(details))) is not None:
            details.append(detail)
            reasoning.append(detail.get("text", ""))
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    if details:
        reply["reasoning"] = "".join(reasoning)
        reply["reasoning_details"] = details
    return {
        "id": completion_id(message.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason_of(message.get("stop_reason")),
            }
        ],
        "usage": chat_usage(usage),
    }


class ChunkTranslator:
    """Anthropic stream events in, OpenAI chunk objects out, one event at a time.

    The finish chunk (from `message_delta`) is not returned by `feed`: `finish` makes it,
    so the caller can add the usage and cost to it or after it.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = completion_id(None)
        self.created = int(time.time())
        self.stop_reason: Any = None
        self._calls: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._thinking: dict[int, dict[str, Any]] = {}  # block index → the block so far
        self._details = 0  # reasoning_details sent

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        """One chunk of this completion; `delta` None makes a chunk without choices."""
        choices = (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one parsed Anthropic event (none for most bookkeeping events)."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.id = completion_id(message.get("id"))
            return [self.chunk({"role": "assistant", "content": ""})]
        index = event.get("index")
        if kind == "content_block_start":
            return self._start(index, event.get("content_block"))
        if kind == "content_block_delta":
            return self._delta(index, event.get("delta"))
        if kind == "content_block_stop":
            return self._stop(index)
        if kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self.stop_reason = delta["stop_reason"]
        return []

    def _start(self, index: Any, block: Any) -> list[dict[str, Any]]:
        if not isinstance(index, int) or not isinstance(block, dict):
            return []
        kind = block.get("type")
        if kind == "tool_use":
            call = self._calls[index] = len(self._calls)
            opening = {
                "index": call,
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": ""},
            }
            return [self.chunk({"tool_calls": [opening]})]
        if kind in ("thinking", "redacted_thinking"):
            self._thinking[index] = dict(block)
            text = block.get("thinking")
            return [self.chunk({"reasoning": text})] if isinstance(text, str) and text else []
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            return [self.chunk({"content": block["text"]})]
        return []

    def _delta(self, index: Any, delta: Any) -> list[dict[str, Any]]:
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            return [self.chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and index in self._calls:
            fragment = delta.get("partial_json")
            if isinstance(fragment, str) and fragment:
                part = {"index": self._calls[index], "function": {"arguments": fragment}}
                return [self.chunk({"tool_calls": [part]})]
            return []
        block = self._thinking.get(index) if isinstance(index, int) else None
        if block is None:
            return []
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            block["thinking"] = str(block.get("thinking") or "") + delta["thinking"]
            return [self.chunk({"reasoning": delta["thinking"]})]
        if kind == "signature_delta" and isinstance(delta.get("signature"), str):
            block["signature"] = str(block.get("signature") or "") + delta["signature"]
        return []

    def _stop(self, index: Any) -> list[dict[str, Any]]:
        block = self._thinking.pop(index, None) if isinstance(index, int) else None
        if block is None:
            return []
        detail = _reasoning_detail(block, self._details)
        if detail is None:
            return []
        self._details += 1
        # The whole block once it is complete: the signature belongs to all of its text.
        return [self.chunk({"reasoning_details": [detail]})]

    def finish(self) -> dict[str, Any] | None:
        """The finish chunk, once the upstream said why it stopped (else None)."""
        if self.stop_reason is None:
            return None
        return self.chunk({}, finish_reason_of(self.stop_reason))
