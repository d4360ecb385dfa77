"""OpenAI chat.completion.chunk stream → Anthropic Messages SSE events.

Usage in the events:
- `message_start` carries `input_tokens` = the estimate given to the constructor (or the
  upstream's prompt count when its first chunk already has usage), since OpenAI-dialect
  upstreams report usage only in their last chunk.
- `message_delta` (from `finish`) carries the final counts: `output_tokens` and also
  `input_tokens` / `cache_read_input_tokens` / `cache_creation_input_tokens`. The anthropic
  SDK's accumulator overwrites the message_start values with these (they are cumulative), so
  `stream.get_final_message().usage` shows the real input count.
- `extra_usage` (e.g. the node's `cost`) is merged into message_delta's `usage`. The SDK
  models allow unknown fields, so a client sees it as `event.usage.cost` on the
  message_delta event; the SDK's final-message accumulator copies only the known counts.

Only choice 0 is translated (Anthropic has no `n`). Reasoning deltas become a `thinking`
block (`thinking_delta`s, then one `signature_delta` with the upstream's signature, empty when
it sent none) when the client enabled thinking, and are left out otherwise; with display
"omitted" the block carries only the signature. Tool arguments
are forwarded fragment by fragment as `input_json_delta`, as Anthropic streams them.
"""

from __future__ import annotations

from typing import Any

import orjson

from satsrouter.upstream.anthropic_response import (
    anthropic_usage,
    message_id_of,
    new_message_id,
    new_tool_use_id,
    reasoning_of,
    stop_reason_of,
)
from satsrouter.usage import Usage, usage_from_openai


def sse_event(event_type: str, data: dict[str, Any]) -> bytes:
    """One complete SSE event in Anthropic's framing."""
    return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(message: str, type_: str = "api_error") -> bytes:
    """Anthropic's mid-stream `event: error` (the SDK raises it as an APIStatusError)."""
    return sse_event("error", {"type": "error", "error": {"type": type_, "message": message}})


class StreamTranslator:
    """Turns parsed OpenAI chunks into Anthropic events; one instance per response stream."""

    def __init__(self, model: str, input_tokens: int = 0, thinking: str | None = None) -> None:
        self._model = model
        self._thinking = thinking
        self._signature = ""  # of the open thinking block, sent when it closes
        self._input_estimate = max(input_tokens, 0)
        self._started = False
        self._finished = False
        self._next_index = 0  # index the next content block gets
        self._open: int | None = None  # index of the open block, if any
        self._open_kind = ""  # "text", "thinking" or "tool_use"
        # OpenAI tool_call index → (Anthropic block index, tool call id).
        self._tools: dict[int, tuple[int, str]] = {}
        self._finish_reason: Any = None
        self._matched_stop: Any = None
        self._refused = False

    @property
    def started(self) -> bool:
        """Whether message_start has been emitted (after it, errors go as `error_event`)."""
        return self._started

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """Events for one parsed chunk (empty when it carries nothing to show)."""
        if self._finished:
            return []
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(chunk))
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return out
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._feed_choice(choice, out)
        return out

    def finish(self, usage: Usage, extra_usage: dict[str, Any] | None = None) -> list[bytes]:
        """Close the open block, then `message_delta` (stop reason, final usage), `message_stop`."""
        if self._finished:
            return []
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start({}))
        self._close(out)
        stop_reason, stop_sequence = stop_reason_of(
            self._finish_reason, self._matched_stop, bool(self._tools)
        )
        if self._refused and stop_reason == "end_turn":
            stop_reason = "refusal"
        usage_out = anthropic_usage(usage)
        if extra_usage:
            usage_out.update(extra_usage)
        out.append(
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage_out,
                },
            )
        )
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        self._finished = True
        return out

    def _message_start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        early = usage_from_openai(chunk.get("usage"))
        counts = anthropic_usage(early or Usage(self._input_estimate, 0))
        counts["output_tokens"] = 0
        chunk_id = chunk.get("id")
        message: dict[str, Any] = {
            "id": message_id_of(chunk_id) if chunk_id else new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": counts,
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _feed_choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if self._thinking:
                self._reasoning(delta, out)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text(content, out)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._refused = True
                self._text(refusal, out)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._tool(call, out)
            legacy = delta.get("function_call")
            if isinstance(legacy, dict):
                self._tool({"index": 0, "function": legacy}, out)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
            self._matched_stop = choice.get("stop_reason")

    def _open_block(self, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        index = self._next_index
        self._next_index += 1
        self._open, self._open_kind = index, block["type"]
        out.append(
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            if self._open_kind == "thinking":
                delta = {"type": "signature_delta", "signature": self._signature}
                self._delta(self._open, delta, out)
                self._signature = ""
            out.append(
                sse_event("content_block_stop", {"type": "content_block_stop", "index": self._open})
            )
            self._open = None

    def _delta(self, index: int, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(
            sse_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )

    def _reasoning(self, delta: dict[str, Any], out: list[bytes]) -> None:
        text, signature = reasoning_of(delta)
        if not text and not signature:
            return
        if self._open is None or self._open_kind != "thinking":
            self._open_block({"type": "thinking", "thinking": "", "signature": ""}, out)
        assert self._open is not None
        self._signature += signature
        if text and self._thinking != "omitted":
            self._delta(self._open, {"type": "thinking_delta", "thinking": text}, out)

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._open is None or self._open_kind != "text":
            self._open_block({"type": "text", "text": ""}, out)
        assert self._open is not None
        self._delta(self._open, {"type": "text_delta", "text": text}, out)

    def _tool(self, call: dict[str, Any], out: list[bytes]) -> None:
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        raw_index = call.get("index")
        if isinstance(raw_index, int):
            tool_index = raw_index
        elif self._tools:  # no index: a continuation of the latest call
            tool_index = max(self._tools)
        else:
            tool_index = 0
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        known = self._tools.get(tool_index)
        # Some upstreams reuse index 0 for every call; a new id then starts a new call.
        if known is None or (call_id is not None and call_id != known[1]):
            block_id = call_id or new_tool_use_id()
            name = fn.get("name") if isinstance(fn.get("name"), str) else ""
            block: dict[str, Any] = {"type": "tool_use", "id": block_id, "name": name, "input": {}}
            known = (self._open_block(block, out), block_id)
            self._tools[tool_index] = known
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A fragment for an earlier, already closed call (interleaved parallel calls) still
            # goes to that call's index: the SDK accumulates by index.
            self._delta(known[0], {"type": "input_json_delta", "partial_json": arguments}, out)
        elif isinstance(arguments, dict) and arguments:
            self._delta(
                known[0],
                {"type": "input_json_delta", "partial_json": orjson.dumps(arguments).decode()},
                out,
            )
