"""Usage: read from upstream responses, or counted locally when the upstream omits it (I3)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Usage:
    """Token counts of one request. `source` says whether the upstream reported them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    source: str = "upstream"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def usage_from_openai(usage: Any) -> Usage | None:
    """Parse an OpenAI-style `usage` object; None when absent or empty."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    if prompt == 0 and completion == 0:
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    cache_write = (
        _int(prompt_details.get("cache_write_tokens")) if isinstance(prompt_details, dict) else 0
    )
    reasoning = (
        _int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0
    )
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=min(cached, prompt),
        cache_write_tokens=min(cache_write, prompt - min(cached, prompt)),
        reasoning_tokens=min(reasoning, completion),
    )


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@functools.cache
def _encoder() -> _Encoder | None:
    try:
        import bpe_openai  # bundles the o200k/cl100k tables: works offline, unlike tiktoken

        enc: _Encoder = bpe_openai.get_encoding("o200k_base")
        return enc
    except Exception:  # pragma: no cover - only when the optional tokenizer is broken
        return None


def count_tokens(text: str) -> int:
    """Tokens in `text` (o200k); falls back to a conservative 1 token per 3 bytes."""
    if not text:
        return 0
    enc = _encoder()
    if enc is None:
        return -(-len(text.encode()) // 3)
    return len(enc.encode(text))


# Per-message overhead of chat formatting, as OpenAI documents for its chat models.
_TOKENS_PER_MESSAGE = 4


def _content_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Local estimate of a chat request's prompt tokens (messages, tools, or a plain prompt)."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += _TOKENS_PER_MESSAGE
            for text in _content_text(message.get("content")):
                total += count_tokens(text)
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    fn = call.get("function") or {}
                    total += count_tokens(str(fn.get("name", ""))) + count_tokens(
                        str(fn.get("arguments", ""))
                    )
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        total += count_tokens(prompt)
    tools = body.get("tools")
    if tools:
        import orjson

        total += count_tokens(orjson.dumps(tools).decode())
    return max(total, 1)


def local_usage(body: dict[str, Any], completion_text: str) -> Usage:
    """Usage counted by the node itself: never zero for a served request (I3)."""
    return Usage(
        prompt_tokens=count_prompt_tokens(body),
        completion_tokens=count_tokens(completion_text),
        source="local",
    )


def completion_text_of(response: dict[str, Any]) -> str:
    """All generated text of a non-streaming chat/completions response."""
    parts: list[str] = []
    for choice in response.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") or {}
        if isinstance(message, dict):
            parts.extend(_content_text(message.get("content")))
            if isinstance(message.get("reasoning"), str):
                parts.append(message["reasoning"])
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    fn = call.get("function") or {}
                    parts.append(str(fn.get("name", "")) + str(fn.get("arguments", "")))
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


def delta_text_of(chunk: dict[str, Any]) -> str:
    """Generated text carried by one streamed chunk."""
    parts: list[str] = []
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            if isinstance(delta.get("reasoning"), str):
                parts.append(delta["reasoning"])
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    fn = call.get("function") or {}
                    parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)
