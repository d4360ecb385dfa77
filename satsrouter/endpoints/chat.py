"""OpenAI chat completions and legacy completions: `usage` in the body or the last chunk."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from satsrouter.endpoints.base import (
    DONE,
    JSON,
    Call,
    Endpoint,
    Reply,
    StreamMeter,
    UpstreamStreamError,
    batch_size,
    event_data,
    input_tokens,
    json_reply,
    now,
    sse_event,
    with_images,
)
from satsrouter.endpoints.chat_anthropic import TranslatedChat
from satsrouter.usage import (
    Usage,
    completion_text_of,
    count_input_images,
    count_tokens,
    delta_text_of,
    local_usage,
    usage_from_openai,
)


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class ChatCompletions(Endpoint):
    """`POST /v1/chat/completions`; streams get `stream_options.include_usage` added.

    An Anthropic-dialect upstream is served by `TranslatedChat` (its `/messages`).
    """

    path = "/chat/completions"
    streams = True
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    # A choice that says nothing, for a closing chunk when the upstream sent no finish chunk.
    empty_choice: ClassVar[dict[str, Any]] = {"index": 0, "delta": {}, "finish_reason": None}

    def inspect(self, call: Call) -> None:
        super().inspect(call)
        call.images = count_input_images(call.body)
        options = call.body.get("stream_options")
        call.usage_asked = isinstance(options, dict) and options.get("include_usage") is True

    def for_dialect(self, dialect: str) -> Endpoint:
        return TranslatedChat() if dialect == "anthropic" else super().for_dialect(dialect)

    def adjust(self, call: Call) -> bool:
        if not call.stream or call.usage_asked:
            return False
        options = call.body.get("stream_options")
        call.body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        return True

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        data = json_reply(raw)
        usage = usage_from_openai(data.get("usage"))
        if usage is None:
            usage = self.local(call, completion_text_of(data))
            data["usage"] = _usage_json(usage)
        return Reply(with_images(usage, call), raw, data)

    def local(self, call: Call, completion_text: str) -> Usage:
        """Usage counted by the node when the upstream reports none (I3)."""
        return local_usage(call.body, completion_text)

    def meter(self, call: Call) -> StreamMeter:
        return ChunkMeter(self, call)


class Completions(ChatCompletions):
    """`POST /v1/completions` (legacy): same usage shape, text in `choices[].text`."""

    path = "/completions"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"
    empty_choice: ClassVar[dict[str, Any]] = {"index": 0, "text": "", "finish_reason": None}

    def for_dialect(self, dialect: str) -> Endpoint:
        # Legacy completions have no Anthropic translation.
        return Endpoint.for_dialect(self, dialect)

    def inspect(self, call: Call) -> None:
        super().inspect(call)
        # A batch of prompts: `n` (or `best_of`) completions for each.
        call.prompts = batch_size(call.body.get("prompt"))
        call.choices *= call.prompts

    def local(self, call: Call, completion_text: str) -> Usage:
        # `prompt` may be a list of prompts or token arrays, which chat counting ignores.
        return Usage(
            max(input_tokens(call.body.get("prompt")), 1),
            count_tokens(completion_text),
            source="local",
        )


class ChunkMeter(StreamMeter):
    """OpenAI chunk streams, ending in one chunk with the usage and its cost (and change).

    The node always asks the upstream for usage. A client that asked too gets the usage-only
    chunk (`choices: []`) it expects, re-sent last with the cost. One that did not never sees
    such a chunk (a loop reading `chunk.choices[0]` must not fail): the last chunk with a
    `finish_reason` is held back and carries the usage instead.
    """

    def __init__(self, endpoint: ChatCompletions, call: Call) -> None:
        self.endpoint = endpoint
        self.call = call
        self.texts: list[bytes] = []  # parsed lazily, only if the upstream reports no usage
        self.reported: Usage | None = None
        self.usage_json: dict[str, Any] | None = None  # the upstream's own usage object
        self.usage_chunk: dict[str, Any] | None = None  # its usage-only chunk
        self.held: bytes | None = None  # the latest finish chunk, when usage was not asked

    def feed(self, event: bytes, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return []  # sent once, by us, after the usage and change
        if b'"error":' in payload and _is_error_chunk(payload):
            # OpenRouter reports a failure mid-stream as a chunk with a top-level `error`.
            raise UpstreamStreamError("the upstream reported an error mid-stream")
        # Most chunks carry `"usage": null`; only parse the one with counts.
        if b'"usage":{' in payload or b'"usage": {' in payload:
            chunk = orjson.loads(payload)
            found = usage_from_openai(chunk.get("usage"))
            if found is not None:
                self.reported, self.usage_json = found, chunk["usage"]
                if not chunk.get("choices"):
                    self.usage_chunk = chunk
                    return []  # re-sent at the end with its cost
                chunk["usage"] = None  # the counts come last, with their cost
                event = sse_event(chunk)
        self.texts.append(payload)
        if self.call.usage_asked:
            return [event]
        out = [self.held] if self.held is not None else []
        if b'"finish_reason":"' in payload or b'"finish_reason": "' in payload:
            self.held = event
        else:
            self.held = None
            out.append(event)
        return out

    def usage(self) -> Usage:
        usage = self.reported or self.endpoint.local(self.call, self._completion_text())
        return with_images(usage, self.call)

    def _chunk(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": f"{self.endpoint.id_prefix}{self.call.request_id}",
            "object": self.endpoint.chunk_object,
            "created": now(),
            "model": self.call.body.get("model"),
            "choices": [],
            **fields,
        }

    def closing(self, cost: dict[str, int], change: str | None, change_msat: int) -> list[bytes]:
        usage: dict[str, Any] = (
            dict(self.usage_json) if self.usage_json else dict(_usage_json(self.usage()))
        )
        usage["cost"] = cost
        if self.call.usage_asked:
            final = self.usage_chunk or self._chunk()
        elif self.held is not None:
            final = orjson.loads(event_data(self.held))
        else:
            final = self._chunk(choices=[dict(self.endpoint.empty_choice)])
        final["usage"] = usage
        if change is not None:
            final["x_cashu_change"], final["change_msats"] = change, change_msat
        return [sse_event(final), DONE]

    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        error = {"error": {"message": message, "type": "upstream_error", "code": 502}}
        events = [self.held] if self.held is not None else []
        events.append(sse_event(error))
        if change is not None:
            events.append(sse_event(self._chunk(x_cashu_change=change, change_msats=change_msat)))
        return [*events, DONE]

    def _completion_text(self) -> str:
        parts: list[str] = []
        for payload in self.texts:
            try:
                chunk = orjson.loads(payload)
            except ValueError:
                continue
            if isinstance(chunk, dict):
                parts.append(delta_text_of(chunk))
        return "".join(parts)


def _is_error_chunk(payload: bytes) -> bool:
    chunk = orjson.loads(payload)
    return isinstance(chunk, dict) and chunk.get("error") is not None


__all__ = ["JSON", "ChatCompletions", "ChunkMeter", "Completions", "with_images"]
