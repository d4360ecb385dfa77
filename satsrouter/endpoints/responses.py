"""OpenAI Responses API: usage in the response, or in the `response.completed` event."""

from __future__ import annotations

from typing import Any

import orjson

from satsrouter.endpoints.base import Call, Endpoint, Reply, StreamMeter, json_reply, sse_event
from satsrouter.endpoints.chat import with_images
from satsrouter.usage import Usage, count_input_images, count_tokens

# Events that end a response and carry its usage; held back and re-sent with the cost.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _details(usage: dict[str, Any], name: str, key: str) -> int:
    details = usage.get(name)
    value = details.get(key) if isinstance(details, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


def usage_from_responses(usage: Any) -> Usage | None:
    """A Responses `usage` object as our Usage; None when absent or empty."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    prompt = prompt if isinstance(prompt, int) and prompt > 0 else 0
    completion = completion if isinstance(completion, int) and completion > 0 else 0
    if not prompt and not completion:
        return None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=min(_details(usage, "input_tokens_details", "cached_tokens"), prompt),
        reasoning_tokens=min(
            _details(usage, "output_tokens_details", "reasoning_tokens"), completion
        ),
    )


def _texts(value: Any) -> list[str]:
    """Every text in a Responses input or output (strings, content parts, nested items)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        found: list[str] = []
        for key in ("text", "content", "arguments", "output", "summary"):
            if key in value:
                found.extend(_texts(value[key]))
        return found
    return []


def prompt_tokens(body: dict[str, Any]) -> int:
    """Local estimate of a Responses request's input tokens (instructions, input, tools)."""
    total = sum(
        count_tokens(t) for t in _texts(body.get("instructions")) + _texts(body.get("input"))
    )
    if isinstance(body.get("input"), list):
        total += 4 * len(body["input"])  # per-item formatting, as for chat messages
    if body.get("tools"):
        total += count_tokens(orjson.dumps(body["tools"]).decode())
    return max(total, 1)


def _local(call: Call, output_text: str) -> Usage:
    return Usage(prompt_tokens(call.body), count_tokens(output_text), source="local")


class Responses(Endpoint):
    """`POST /v1/responses`, streamed as typed events or not."""

    path = "/responses"
    streams = True
    max_tokens_fields = ("max_output_tokens",)

    def inspect(self, call: Call) -> None:
        super().inspect(call)
        call.images = count_input_images(call.body)

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        data = json_reply(raw)
        usage = usage_from_responses(data.get("usage"))
        if usage is None:
            usage = _local(call, "".join(_texts(data.get("output"))))
            data["usage"] = {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        return Reply(with_images(usage, call), raw, data)

    def meter(self, call: Call) -> StreamMeter:
        return ResponsesMeter(call)


class ResponsesMeter(StreamMeter):
    """Typed Responses events: the final one is held back and re-sent with the cost."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.deltas: list[bytes] = []  # parsed only if the upstream reports no usage
        self.final: tuple[str, dict[str, Any]] | None = None
        self.sequence = 0

    def feed(self, event: bytes, payload: bytes) -> list[bytes]:
        self.sequence += 1
        # Deltas are most events: recognise them without parsing (their type comes first).
        if b'.delta"' in payload[:64]:
            if b"output_text.delta" in payload[:64]:
                self.deltas.append(payload)
            return [event]
        data = orjson.loads(payload)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind in _FINAL_EVENTS:
            self.final = (str(kind), data)
            return []
        return [event]

    def _reported(self) -> Usage | None:
        if self.final is None:
            return None
        response = self.final[1].get("response")
        return usage_from_responses(response.get("usage") if isinstance(response, dict) else None)

    def usage(self) -> Usage:
        usage = self._reported()
        if usage is None:
            text = "".join(_delta(p) for p in self.deltas)
            usage = _local(self.call, text)
        return with_images(usage, self.call)

    def closing(self, cost: dict[str, int], change: str | None, change_msat: int) -> list[bytes]:
        kind, data = self.final or (
            # The upstream ended without its final event: say what was charged all the same.
            "response.completed",
            {"type": "response.completed", "response": {}},
        )
        response = data.setdefault("response", {})
        usage = response.get("usage")
        if not isinstance(usage, dict):
            counted = self.usage()
            usage = response["usage"] = {
                "input_tokens": counted.prompt_tokens,
                "output_tokens": counted.completion_tokens,
                "total_tokens": counted.prompt_tokens + counted.completion_tokens,
            }
        usage["cost"] = cost
        if change is not None:
            data["x_cashu_change"], data["change_msats"] = change, change_msat
        return [sse_event(data, kind)]

    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        error: dict[str, Any] = {
            "type": "error",
            "code": "upstream_error",
            "message": message,
            "param": None,
            "sequence_number": self.sequence,
        }
        if change is not None:
            error["x_cashu_change"], error["change_msats"] = change, change_msat
        return [sse_event(error, "error")]


def _delta(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except ValueError:
        return ""
    delta = data.get("delta") if isinstance(data, dict) else None
    return delta if isinstance(delta, str) else ""
