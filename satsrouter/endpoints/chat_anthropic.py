"""OpenAI chat completions served by an Anthropic-dialect upstream: translated both ways.

The client speaks OpenAI chat; the upstream gets an Anthropic Messages request
(`satsrouter.upstream.chat_to_anthropic`) and its message or event stream comes back as a
chat completion or chunk stream (`satsrouter.upstream.anthropic_to_chat`). Usage is
Anthropic's, cache reads and writes kept apart so that each is priced as such.
"""

from __future__ import annotations

from typing import Any

import orjson

from satsrouter.endpoints.base import (
    DONE,
    Call,
    Endpoint,
    Reply,
    StreamMeter,
    UpstreamStreamError,
    json_reply,
    sse_event,
    with_images,
)
from satsrouter.errors import ApiError
from satsrouter.market.catalogue import Model
from satsrouter.upstream.anthropic_response import TranslationError
from satsrouter.upstream.anthropic_to_chat import ChunkTranslator, chat_usage, to_chat_completion
from satsrouter.upstream.anthropic_usage import (
    AnthropicStreamUsage,
    anthropic_text_of,
    usage_from_anthropic,
)
from satsrouter.upstream.chat_to_anthropic import to_anthropic_request
from satsrouter.usage import Usage, local_usage

# Anthropic's keep-alive, passed on as an SSE comment (OpenAI clients skip comments).
PING = b": ping\n\n"


class TranslatedChat(Endpoint):
    """`POST /v1/chat/completions` to an Anthropic-dialect upstream (its `/messages`).

    The request was read by `ChatCompletions` (reservation, images, `usage_asked`); this
    endpoint only builds the upstream body and reads the answer.
    """

    path = "/messages"
    streams = True

    def upstream_body(self, call: Call, model: Model) -> bytes:
        try:
            request = to_anthropic_request(
                call.body, model.wire_id, model.max_completion_tokens, model.context_length
            )
        except TranslationError as exc:
            raise ApiError(400, "invalid_request", exc.message) from None
        call.body["model"] = model.id  # what the answer names, as other chat answers do
        return orjson.dumps(request)

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        message = json_reply(raw)
        usage = usage_from_anthropic(message.get("usage"))
        if usage is None:
            usage = local_usage(call.body, anthropic_text_of(message))
        usage = with_images(usage, call)
        data = to_chat_completion(message, str(call.body.get("model")), usage)
        return Reply(usage, raw, data)

    def meter(self, call: Call) -> StreamMeter:
        return AnthropicChunkMeter(call)


class AnthropicChunkMeter(StreamMeter):
    """An Anthropic event stream relayed as OpenAI chunks, ending like `ChunkMeter`'s: the
    finish chunk carries the usage and cost, or (a client that asked for usage) a usage-only
    chunk follows it; X-Cashu change rides on that last chunk, then `[DONE]`."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.translator = ChunkTranslator(str(call.body.get("model")))
        self.reader = AnthropicStreamUsage()
        self.upstream_error: str | None = None

    def feed(self, event: bytes, payload: bytes) -> list[bytes]:
        data = orjson.loads(payload)
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        if kind == "error":
            # Anthropic's mid-stream failure (overloaded, api_error): the answer is cut short.
            self.upstream_error = _error_message(data.get("error"))
            raise UpstreamStreamError("the upstream sent an error event")
        if kind == "ping":
            return [PING]
        self.reader.feed(data)
        return [sse_event(chunk) for chunk in self.translator.feed(data)]

    def usage(self) -> Usage:
        usage = self.reader.usage() or local_usage(self.call.body, self.reader.text)
        return with_images(usage, self.call)

    def closing(self, cost: dict[str, int], change: str | None, change_msat: int) -> list[bytes]:
        usage: dict[str, Any] = {**chat_usage(self.usage()), "cost": cost}
        finish = self.translator.finish()
        events: list[bytes] = []
        if self.call.usage_asked:
            if finish is not None:
                events.append(sse_event(finish))
            final = self.translator.chunk(None)
        else:
            final = finish or self.translator.chunk({})
        final["usage"] = usage
        if change is not None:
            final["x_cashu_change"], final["change_msats"] = change, change_msat
        return [*events, sse_event(final), DONE]

    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        if self.upstream_error:
            message = (
                f"The upstream failed mid-stream ({self.upstream_error}); nothing was charged."
            )
        events = [sse_event({"error": {"message": message, "type": "upstream_error", "code": 502}})]
        if change is not None:
            last = {**self.translator.chunk(None), "x_cashu_change": change}
            events.append(sse_event({**last, "change_msats": change_msat}))
        return [*events, DONE]


def _error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else "error event"
