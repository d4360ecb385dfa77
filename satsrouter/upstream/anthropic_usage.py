"""Usage of Anthropic-dialect traffic: reported counts, and local counts when they are missing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from satsrouter.usage import Usage, count_tokens, web_searches_of

# Per-message overhead, as the OpenAI-side counter uses (usage._TOKENS_PER_MESSAGE).
_TOKENS_PER_MESSAGE = 4
# An image cannot be measured without decoding it; Anthropic documents ~1,600 tokens for a
# full-size (~1.15 megapixel) image, the most an image is billed, so the estimate never
# undercounts an image.
_IMAGE_TOKENS = 1600

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "server_tool_use",
)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_anthropic(usage: Any) -> Usage | None:
    """Our `Usage` from an Anthropic `usage` object; None when absent or all zero.

    prompt = input + cache_read + cache_creation (Anthropic's input_tokens excludes both);
    web searches from `server_tool_use.web_search_requests`.
    """
    if not isinstance(usage, dict):
        return None
    fresh = _int(usage.get("input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    output = _int(usage.get("output_tokens"))
    searches = web_searches_of(usage)
    if fresh + read + written + output + searches == 0:
        return None
    return Usage(
        prompt_tokens=fresh + read + written,
        completion_tokens=output,
        cached_tokens=read,
        cache_write_tokens=written,
        web_searches=searches,
    )


class AnthropicStreamUsage:
    """Reads usage and generated text from a native Anthropic event stream, event by event."""

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}
        self._parts: list[str] = []

    def feed(self, event: dict[str, Any]) -> None:
        """Take one parsed SSE `data` object."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._take(message.get("usage"))
        elif kind == "message_delta":
            self._take(event.get("usage"))
        elif kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict):
                self._parts.extend(_block_texts(block))
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                for key in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(key), str):
                        self._parts.append(delta[key])

    def _take(self, usage: Any) -> None:
        # message_delta counts are cumulative: a present count replaces the earlier one, an
        # absent (or null) one leaves message_start's value standing.
        if isinstance(usage, dict):
            for key in _USAGE_KEYS:
                if usage.get(key) is not None:
                    self._usage[key] = usage[key]

    @property
    def text(self) -> str:
        """Generated text so far (text, tool input JSON, thinking), for a local count."""
        return "".join(self._parts)

    def usage(self) -> Usage | None:
        """The reported usage, or None when the stream reported none."""
        return usage_from_anthropic(self._usage)


def _block_texts(block: dict[str, Any]) -> Iterable[str]:
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        yield block["text"]
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        yield block["thinking"]
    elif kind in ("tool_use", "server_tool_use"):
        yield str(block.get("name") or "")
        tool_input = block.get("input")
        if tool_input:  # streamed tool_use starts with `{}`; its JSON arrives as deltas
            yield orjson.dumps(tool_input).decode()


def anthropic_text_of(message: dict[str, Any]) -> str:
    """All generated text of a non-streamed Anthropic message, for a local count."""
    content = message.get("content")
    if not isinstance(content, list):
        return ""
    return "".join(
        text for block in content if isinstance(block, dict) for text in _block_texts(block)
    )


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            total += count_tokens(block["text"])
        elif kind == "image":
            total += _IMAGE_TOKENS
        elif kind == "tool_use":
            total += count_tokens(str(block.get("name") or ""))
            total += count_tokens(orjson.dumps(block.get("input") or {}).decode())
        elif kind == "tool_result":
            total += _content_tokens(block.get("content"))
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict) and isinstance(source.get("data"), str):
                if source.get("type") == "text":
                    total += count_tokens(source["data"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            total += count_tokens(block["thinking"])
    return total


def count_anthropic_prompt_tokens(body: dict[str, Any]) -> int:
    """Local estimate of a Messages request's input tokens (never below 1).

    Counts system, message text, tool calls and results, tool definitions as JSON, a flat
    estimate per image; PDF documents are not counted.
    """
    total = _content_tokens(body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
    tools = body.get("tools")
    if tools:
        total += count_tokens(orjson.dumps(tools).decode())
    return max(total, 1)
