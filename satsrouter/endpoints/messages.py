"""Anthropic Messages: passed through to Anthropic-dialect upstreams, else translated.

The client always speaks Anthropic. A native upstream's answer is relayed with its usage read
from `message_start` / `message_delta`; an OpenAI-dialect upstream gets an OpenAI chat request
and its answer (or chunk stream) is translated back by `satsrouter.upstream.anthropic*`.
"""

from __future__ import annotations

from typing import Any

import orjson

from satsrouter.endpoints.base import (
    Call,
    Endpoint,
    Reply,
    StreamMeter,
    UpstreamStreamError,
    json_reply,
)
from satsrouter.endpoints.chat import with_images
from satsrouter.errors import ApiError
from satsrouter.market.catalogue import Model
from satsrouter.upstream.anthropic import thinking_display, to_openai_request
from satsrouter.upstream.anthropic_response import (
    TranslationError,
    anthropic_usage,
    to_anthropic_response,
)
from satsrouter.upstream.anthropic_stream import StreamTranslator, error_event, sse_event
from satsrouter.upstream.anthropic_usage import (
    AnthropicStreamUsage,
    anthropic_text_of,
    count_anthropic_prompt_tokens,
    usage_from_anthropic,
)
from satsrouter.usage import (
    Usage,
    completion_text_of,
    count_input_images,
    count_tokens,
    delta_text_of,
    usage_from_openai,
)


def _local(call: Call, text: str) -> Usage:
    return Usage(count_anthropic_prompt_tokens(call.body), count_tokens(text), source="local")


def _with_cost(usage: dict[str, Any], cost: dict[str, int]) -> dict[str, Any]:
    usage["cost"] = cost
    return usage


class Messages(Endpoint):
    """`POST /v1/messages` to an Anthropic-dialect upstream: native passthrough."""

    path = "/messages"
    streams = True
    max_tokens_fields = ("max_tokens",)

    def inspect(self, call: Call) -> None:
        super().inspect(call)
        call.images = count_input_images(call.body)

    def for_dialect(self, dialect: str) -> Endpoint:
        return self if dialect == "anthropic" else TranslatedMessages(dialect)

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        data = json_reply(raw)
        usage = usage_from_anthropic(data.get("usage"))
        if usage is None:
            usage = _local(call, anthropic_text_of(data))
            data["usage"] = anthropic_usage(usage)
        return Reply(with_images(usage, call), raw, data)

    def meter(self, call: Call) -> StreamMeter:
        return NativeMeter(call)


class TranslatedMessages(Messages):
    """`POST /v1/messages` to an OpenAI-dialect upstream: translated both ways."""

    path = "/chat/completions"

    def __init__(self, dialect: str = "openai") -> None:
        self.dialect = dialect

    def upstream_body(self, call: Call, model: Model) -> bytes:
        params = model.raw.get("supported_parameters") or ()
        try:
            request = to_openai_request(
                call.body, self.dialect, reasoning_effort="reasoning_effort" in params
            )
        except TranslationError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        request["model"] = model.wire_id
        return orjson.dumps(request)

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        data = json_reply(raw)
        usage = usage_from_openai(data.get("usage"))
        if usage is None:
            usage = _local(call, completion_text_of(data))
        usage = with_images(usage, call)
        message = to_anthropic_response(
            {**data, "usage": None},
            str(call.body.get("model")),
            thinking=thinking_display(call.body),
        )
        return Reply(usage, raw, message, extra={"usage": usage})

    def render(self, reply: Reply, cost: dict[str, int]) -> bytes:
        assert reply.data is not None
        reply.data["usage"] = _with_cost(anthropic_usage(reply.extra["usage"]), cost)
        return orjson.dumps(reply.data)

    def meter(self, call: Call) -> StreamMeter:
        return TranslatedMeter(call)


class NativeMeter(StreamMeter):
    """An Anthropic event stream: `message_delta` and `message_stop` are held back and re-sent
    last, the delta's usage carrying the cost (and X-Cashu change, if any)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.reader = AnthropicStreamUsage()
        self.deltas: list[bytes] = []  # parsed only when the upstream reports no usage
        self.held: dict[str, Any] | None = None
        self.error: bytes | None = None  # the upstream's own `error` event, if it sent one

    def feed(self, event: bytes, payload: bytes) -> list[bytes]:
        # Text deltas are most events: recognise them without parsing (type comes first).
        if b'"content_block_delta"' in payload[:40]:
            self.deltas.append(payload)
            return [event]
        data = orjson.loads(payload)
        if not isinstance(data, dict):
            return [event]
        kind = data.get("type")
        if kind == "error":
            # Anthropic's mid-stream failure (overloaded, api_error): the answer is cut short.
            self.error = sse_event("error", data)
            raise UpstreamStreamError("the upstream sent an error event")
        self.reader.feed(data)
        if kind == "message_delta":
            self.held = data
            return []
        if kind == "message_stop":
            return []
        return [event]

    def usage(self) -> Usage:
        usage = self.reader.usage()
        if usage is None:
            for payload in self.deltas:
                self.reader.feed(orjson.loads(payload))
            self.deltas.clear()
            usage = _local(self.call, self.reader.text)
        return with_images(usage, self.call)

    def closing(self, cost: dict[str, int], change: str | None, change_msat: int) -> list[bytes]:
        delta = self.held or {"type": "message_delta", "delta": {"stop_reason": None}}
        usage = delta.get("usage")
        if not isinstance(usage, dict):
            usage = delta["usage"] = {}
        if self.reader.usage() is None:
            # Nothing (or all zeros) reported: show the counts the cost was computed from; the
            # SDK's accumulator takes message_delta's counts over message_start's.
            counted = self.usage()
            usage["input_tokens"] = counted.prompt_tokens
            usage["output_tokens"] = counted.completion_tokens
        usage["cost"] = cost
        events = [sse_event("message_delta", delta)]
        if change is not None:
            events.append(_change_event(change, change_msat))
        return [*events, sse_event("message_stop", {"type": "message_stop"})]

    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        return _failure(self.error or error_event(message), change, change_msat)


def _failure(error: bytes, change: str | None, change_msat: int) -> list[bytes]:
    events = [error]
    if change is not None:
        events.append(_change_event(change, change_msat))
    return events


class TranslatedMeter(StreamMeter):
    """An OpenAI chunk stream translated into Anthropic events as it arrives."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.translator = StreamTranslator(
            str(call.body.get("model")),
            count_anthropic_prompt_tokens(call.body),
            thinking=thinking_display(call.body),
        )
        self.reported: Usage | None = None
        self.texts: list[str] = []
        self.error: bytes | None = None

    def feed(self, event: bytes, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return []
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error") is not None:
            # OpenRouter-style `{"error": {...}}` chunk: the provider failed mid-answer.
            self.error = error_event(_error_message(chunk["error"]))
            raise UpstreamStreamError("the upstream sent an error chunk")
        found = usage_from_openai(chunk.get("usage"))
        if found is not None:
            self.reported = found
        self.texts.append(delta_text_of(chunk))
        return self.translator.feed(chunk)

    def usage(self) -> Usage:
        usage = self.reported or _local(self.call, "".join(self.texts))
        return with_images(usage, self.call)

    def closing(self, cost: dict[str, int], change: str | None, change_msat: int) -> list[bytes]:
        extra: dict[str, Any] = {"cost": cost}
        events = self.translator.finish(self.usage(), extra)
        if change is not None:
            events.insert(-1, _change_event(change, change_msat))
        return events

    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        return _failure(self.error or error_event(message), change, change_msat)


def _error_message(error: object) -> str:
    """The message of an OpenAI-shaped error (an object with `message`, or a string)."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"The upstream failed mid-stream ({error['message']}); nothing was charged."
    if isinstance(error, str):
        return f"The upstream failed mid-stream ({error}); nothing was charged."
    return "The upstream failed mid-stream; nothing was charged."


def _change_event(change: str, change_msat: int) -> bytes:
    """X-Cashu change as its own event: SDKs skip unknown event types, raw clients read it."""
    return sse_event("x_cashu_change", {"token": change, "change_msats": change_msat})
