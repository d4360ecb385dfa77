"""What a request used: `Usage`, read from upstream answers or counted locally when the
upstream omits it (I3), and what a request may use, counted for its reservation (a lower
prompt estimate, images, web searches).

Shared vocabulary below every layer: endpoints, the upstream translation and billing all
speak it, so it imports nothing of the node's own.
"""

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
    # Priced per unit, not per token: images the request carried in (or generated), and web
    # searches the upstream ran. Upstreams report searches; images are counted by the node.
    images: int = 0
    generated_images: int = 0  # images made (image generation), priced `image_output`
    web_searches: int = 0
    # Seconds of audio transcribed (whisper-style upstreams report duration, not tokens).
    # Not priced by `usage_cost` yet: the catalogue has no per-second price field.
    audio_seconds: int = 0


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
        web_searches=web_searches_of(usage),
    )


def web_searches_of(usage: dict[str, Any]) -> int:
    """Web searches an upstream reports in `usage`.

    Anthropic and OpenRouter (server tools and the web plugin) report
    `server_tool_use.web_search_requests`; Perplexity's Sonar API reports
    `num_search_queries`. Should both appear they describe the same searches: take the larger.
    """
    server = usage.get("server_tool_use")
    reported = _int(server.get("web_search_requests")) if isinstance(server, dict) else 0
    return max(reported, _int(usage.get("num_search_queries")))


class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


@functools.cache
def _encoder(name: str = "o200k_base") -> _Encoder | None:
    try:
        import bpe_openai  # bundles the o200k/cl100k tables: works offline, unlike tiktoken

        enc: _Encoder = bpe_openai.get_encoding(name)
        return enc
    except Exception:  # pragma: no cover - only when the optional tokenizer is broken
        return None


# bpe_openai refuses a text of 1,000,000 characters or more, and one that encodes to more
# than 200,000 tokens. A token is at least one byte and a character at most four, so pieces
# of this many characters pass both limits.
_PIECE_CHARS = 50_000


def _pieces(text: str) -> Iterable[str]:
    """`text` in pieces the tokenizer accepts, cut before a space where there is one: o200k's
    pre-tokenizer cuts there too, so the pieces' counts add up to the whole text's."""
    start = 0
    while len(text) - start > _PIECE_CHARS:
        end = start + _PIECE_CHARS
        space = text.rfind(" ", start + _PIECE_CHARS // 2, end)
        end = space if space != -1 else end
        yield text[start:end]
        start = end
    yield text[start:]


def _encoded_tokens(text: str) -> int | None:
    """Tokens in `text` by o200k; None when the tokenizer is missing or fails on it."""
    enc = _encoder()
    if enc is None:
        return None
    try:
        # `encode_ordinary`: a special token spelled in user text (`<|endoftext|>`) is text
        # to count, where `encode` raises.
        return sum(len(enc.encode_ordinary(piece)) for piece in _pieces(text))
    except Exception:  # the tokenizer's own limits: hostile input must not make a 500
        return None


def count_tokens(text: str) -> int:
    """Tokens in `text` (o200k); falls back to a conservative 1 token per 3 bytes."""
    if not text:
        return 0
    counted = _encoded_tokens(text)
    if counted is None:
        return -(-len(text.encode()) // 3)
    return counted


# Per-message overhead of chat formatting, as OpenAI documents for its chat models.
_TOKENS_PER_MESSAGE = 4


def _content_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    """The objects of a JSON list; nothing for any other shape. Bodies and answers are read
    with this wherever a list of objects is expected: a malformed one must count, not crash."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _call_parts(call: dict[str, Any]) -> tuple[str, str]:
    """Name and arguments of an OpenAI tool call (its `function`), as text to count."""
    fn = call.get("function")
    if not isinstance(fn, dict):
        return "", ""
    return str(fn.get("name") or ""), str(fn.get("arguments") or "")


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Local estimate of a chat request's prompt tokens (messages, tools, or a plain prompt)."""
    total = 0
    for message in _dicts(body.get("messages")):
        total += _TOKENS_PER_MESSAGE
        for text in _content_text(message.get("content")):
            total += count_tokens(text)
        for call in _dicts(message.get("tool_calls")):
            name, arguments = _call_parts(call)
            total += count_tokens(name) + count_tokens(arguments)
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


def _generated_text(part: dict[str, Any]) -> Iterable[str]:
    """Text of one choice's `message` or streamed `delta`: content, reasoning, tool calls."""
    yield from _content_text(part.get("content"))
    if isinstance(part.get("reasoning"), str):
        yield part["reasoning"]
    for call in _dicts(part.get("tool_calls")):
        yield "".join(_call_parts(call))


def completion_text_of(response: dict[str, Any]) -> str:
    """All generated text of a non-streaming chat/completions response."""
    parts: list[str] = []
    for choice in _dicts(response.get("choices")):
        message = choice.get("message")
        if isinstance(message, dict):
            parts.extend(_generated_text(message))
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


def delta_text_of(chunk: dict[str, Any]) -> str:
    """Generated text carried by one streamed chunk."""
    parts: list[str] = []
    for choice in _dicts(chunk.get("choices")):
        delta = choice.get("delta")
        if isinstance(delta, dict):
            parts.extend(_generated_text(delta))
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


# Content part / block types that carry one image: chat `image_url` parts, Responses
# `input_image` parts, Anthropic `image` blocks (also inside `tool_result` blocks).
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})


def count_input_images(body: dict[str, Any]) -> int:
    """Images a request carries (chat, Responses or Anthropic shape); never fetches them."""
    count = 0
    # An explicit stack, not recursion: a hostile body may nest deeper than Python's limit.
    stack: list[Any] = [body.get("messages"), body.get("input")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str) and kind in _IMAGE_PART_TYPES:
                count += 1
                continue  # an image part holds no further images
            # Images sit in `content` lists (of messages, Responses items, tool results).
            if isinstance(content := item.get("content"), list):
                stack.append(content)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return count


# Web searches reserved for a request that enables search. The web plugin
# (`plugins: [{"id": "web"}]`) and `web_search_options` run once per request (OpenRouter's
# server-tools guide: plugins "always run once when enabled"); OpenRouter bills the plugin's
# results ($4 per 1000, `max_results` of them) to the node, but what the node charges is the
# model's `web_search` price per search the upstream reports, so `max_results` does not change
# the count. A search *tool* may be called 0..N times per request: its `max_uses`
# (Anthropic) or the request's `max_tool_calls` (Responses) bound it; without either the node
# reserves UNBOUNDED_TOOL_SEARCHES, so a request should set a bound to search more.
ONCE_PER_REQUEST_SEARCHES = 1
UNBOUNDED_TOOL_SEARCHES = 10


def _is_web_search_tool(kind: Any) -> bool:
    # OpenAI `web_search`, `web_search_preview[_2025_03_11]`; Anthropic `web_search_20250305`;
    # OpenRouter's server tool `openrouter:web_search`.
    return isinstance(kind, str) and (
        kind.startswith("web_search") or kind == "openrouter:web_search"
    )


def reserved_web_searches(body: dict[str, Any]) -> int:
    """How many web searches a request may run, for its reservation (0 when none enabled)."""
    total = 0
    plugins = body.get("plugins")
    if isinstance(plugins, list) and any(
        isinstance(p, dict) and p.get("id") == "web" for p in plugins
    ):
        total += ONCE_PER_REQUEST_SEARCHES
    if isinstance(body.get("web_search_options"), dict):
        total += ONCE_PER_REQUEST_SEARCHES
    tools = body.get("tools")
    if isinstance(tools, list):
        from_tools = 0
        for tool in tools:
            if isinstance(tool, dict) and _is_web_search_tool(tool.get("type")):
                from_tools += _int(tool.get("max_uses")) or UNBOUNDED_TOOL_SEARCHES
        if from_tools and (cap := _int(body.get("max_tool_calls"))):
            from_tools = min(from_tools, cap)
        total += from_tools
    return total


# The RIP-05 prompt estimate must never overstate the prompt: an overstated prompt shrinks the
# completion budget below what the model may produce, and the charge is capped at the
# reservation. So it counts only the request's text (images, tool definitions, chat-template
# tokens and anything the upstream injects only add to the real prompt), with o200k, and
# takes 3/4 of that: room for a model whose tokenizer encodes the same text in up to 25% fewer
# tokens than o200k (o200k is already among the most compact vocabularies in use).
# The alternative, bytes ÷ the longest token of any vocabulary, is safe but useless: tokens
# of 100+ bytes exist (runs of spaces or punctuation), so it would never shorten a budget.
_ESTIMATE_NUMERATOR, _ESTIMATE_DENOMINATOR = 3, 4


def _request_texts(body: dict[str, Any]) -> Iterable[str]:
    for key in ("messages", "input"):
        value = body.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    yield item  # completions/embeddings: a list of strings
                elif isinstance(item, dict):
                    if "content" in item:
                        yield from _content_text(item.get("content"))
                    elif item.get("type") in ("input_text", "text"):
                        yield from _content_text([item])
    for key in ("prompt", "system", "instructions"):
        value = body.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            yield from value
        else:
            yield from _content_text(value)


def estimate_prompt_tokens(body: dict[str, Any], enough: int | None = None) -> int:
    """A lower estimate of the request's prompt tokens, for the RIP-05 completion budget.

    Counting stops once the estimate reaches `enough` (the model's context: past it the
    budget is one token whatever the rest holds), so a body of megabytes costs the
    counting of one context, not of all of it: a prefix of a text counts no more than the
    whole. A text the tokenizer cannot count claims what was counted of it (never the
    bytes / 3 of count_tokens' fallback, which may overstate).
    """
    # Each vocabulary has texts it encodes in fewer tokens than the other ("NIL": one token in
    # cl100k, two in o200k): the smaller count of the two stands, so that no text can be
    # chosen to make the estimate exceed either.
    counts = [_estimate_with(enc, body, enough) for enc in (_encoder(), _encoder("cl100k_base"))]
    return min(counts)


def _estimate_with(enc: _Encoder | None, body: dict[str, Any], enough: int | None) -> int:
    """`estimate_prompt_tokens` with one vocabulary (0 without it)."""
    if enc is None:
        return 0
    # The same cut in text tokens, before the 3/4 below.
    cut = None if enough is None else -(-enough * _ESTIMATE_DENOMINATOR // _ESTIMATE_NUMERATOR)
    text_tokens = 0
    for text in _request_texts(body):
        for piece in _pieces(text):
            try:
                text_tokens += len(enc.encode_ordinary(piece))
            except Exception:  # the tokenizer's limits: the rest of this text claims nothing
                break
            if cut is not None and text_tokens >= cut:
                return text_tokens * _ESTIMATE_NUMERATOR // _ESTIMATE_DENOMINATOR
    return text_tokens * _ESTIMATE_NUMERATOR // _ESTIMATE_DENOMINATOR
    return text_tokens * _ESTIMATE_NUMERATOR // _ESTIMATE_DENOMINATOR
