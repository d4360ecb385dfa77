"""OpenAI chat completions and legacy completions: `usage` in the body or the last chunk."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from satsrouter.billing.metering import (
    Usage,
    completion_text_of,
    count_input_images,
    count_tokens,
    delta_text_of,
    local_usage,
    usage_from_openai,
)
from satsrouter.endpoints.base import (
    DONE,
    JSON,
    Call,
    Endpoint,
    Reply,
    StreamMeter,
    UpstreamStreamError,
    batch_size,
    input_tokens,
    json_reply,
    now,
    sse_event,
)


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class ChatCompletions(Endpoint):
    """`POST /v1/chat/completions`; streams get `stream_options.include_usage` added."""

    path = "/chat/completions"
    streams = True
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def inspect(self, call: Call) -> None:
        super().inspect(call)
        call.images = count_input_images(call.body)

    def adjust(self, call: Call) -> bool:
        if not call.stream:
            return False
        options = call.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
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
    """OpenAI chunk streams: the usage chunk is held back and re-sent last, with its cost."""

    def __init__(self, endpoint: ChatCompletions, call: Call) -> None:
        self.endpoint = endpoint
        self.call = call
        self.texts: list[bytes] = []  # parsed lazily, only if the upstream reports no usage
        self.usage_chunk: dict[str, Any] | None = None
        self.reported: Usage | None = None

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
                self.reported, self.usage_chunk = found, chunk
                if not chunk.get("choices"):
                    return []  # held back: re-sent at the end with its cost
                chunk.pop("usage")
                event = sse_event(chunk)
        self.texts.append(payload)
        return [event]

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
        final = self.usage_chunk or self._chunk(usage=_usage_json(self.usage()))
        final["usage"]["cost"] = cost
        return [sse_event(final), *self._ending(change, change_msat)]

    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        error = {"error": {"message": message, "type": "upstream_error", "code": 502}}
        return [sse_event(error), *self._ending(change, change_msat)]

    def _ending(self, change: str | None, change_msat: int) -> list[bytes]:
        """X-Cashu change (if any) as a last chunk SDKs parse, then `[DONE]` once."""
        if change is None:
            return [DONE]
        return [sse_event(self._chunk(x_cashu_change=change, change_msats=change_msat)), DONE]

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


def with_images(usage: Usage, call: Call) -> Usage:
    """`usage` with the request's images counted (upstreams do not report input images)."""
    if not call.images or usage.images:
        return usage
    return replace(usage, images=call.images)


__all__ = ["JSON", "ChatCompletions", "ChunkMeter", "Completions"]
