"""What a paid endpoint is: how its request is read, its usage found, and its cost shown.

Every paid endpoint goes through the same reserve → forward → settle path
(`satsrouter.http.proxy`); an `Endpoint` only says what differs between them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from satsrouter.errors import ApiError
from satsrouter.jsonbody import json_object
from satsrouter.market.catalogue import Model
from satsrouter.upstream.client import OPENAI_DIALECTS
from satsrouter.usage import Usage, count_tokens, reserved_web_searches

JSON = "application/json"
DONE = b"data: [DONE]\n\n"


@dataclass
class Call:
    """One client request to a paid endpoint, read once."""

    raw: bytes
    body: dict[str, Any]  # the JSON body, or a multipart request's text fields
    content_type: str = JSON
    stream: bool = False
    max_tokens: int | None = None
    images: int = 0  # images the request carries in or asks for (priced per image)
    web_searches: int = 0  # web searches the request allows (priced per search)
    generated_images: int = 0  # images the request asks to be made
    audio_seconds: int | None = None  # most seconds an uploaded audio file can last
    audio_exact: bool = False  # audio_seconds read from the file's header, not a size bound
    choices: int = 1  # completions the request may produce (`n`, `best_of`, × prompts)
    prompts: int = 1  # prompts of a batch (completions `prompt`, embeddings `input` lists)
    usage_asked: bool = False  # a stream whose client asked for its usage-only chunk
    request_id: str = ""
    edited: bool = False  # `body` was changed after parsing: send it re-serialised

    def drop(self, *names: str) -> None:
        """Remove fields from the JSON body before it goes upstream."""
        for name in names:
            if name in self.body:
                del self.body[name]
                self.edited = True

    def units(self) -> Usage:
        """The most of each per-unit component this request can use, for its reservation."""
        return Usage(
            0,
            0,
            images=self.images,
            web_searches=self.web_searches,
            audio_seconds=self.audio_seconds or 0,
            generated_images=self.generated_images,
        )

    @property
    def model_id(self) -> Any:
        return self.body.get("model")


@dataclass
class Reply:
    """A whole (non-streamed) upstream answer with its usage; `data` is None for non-JSON."""

    usage: Usage
    raw: bytes
    data: dict[str, Any] | None = None
    media_type: str = JSON
    extra: dict[str, Any] = field(default_factory=dict)


def with_images(usage: Usage, call: Call) -> Usage:
    """`usage` with the request's images counted (upstreams do not report input images)."""
    if not call.images or usage.images:
        return usage
    return replace(usage, images=call.images)


def sse_event(obj: Any, event: str | None = None) -> bytes:
    """One SSE event carrying `obj` as JSON (with an `event:` line when named)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def event_data(event: bytes) -> bytes:
    """The `data:` payload of one SSE event (multi-line data joined, comments ignored)."""
    if event.startswith(b"data:") and event.find(b"\n", 5) == len(event) - 2:
        return event[5:-2].lstrip(b" ")  # the usual one-line event, not split into lines
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines)


class UpstreamStreamError(ValueError):
    """The upstream said, inside its stream, that the request failed: charge nothing (I4)."""


class StreamMeter(ABC):
    """Reads one upstream SSE stream for its usage while it is relayed to the client."""

    @abstractmethod
    def feed(self, event: bytes, payload: bytes) -> list[bytes]:
        """Events to send on for one upstream event (`payload` is its data); may hold some."""

    @abstractmethod
    def usage(self) -> Usage:
        """What the stream used: as reported, or counted locally (I3)."""

    @abstractmethod
    def closing(self, cost: dict[str, int], change: str | None, change_msat: int) -> list[bytes]:
        """The last events: usage with its cost, X-Cashu change if any, the end marker."""

    @abstractmethod
    def failure(self, message: str, change: str | None, change_msat: int) -> list[bytes]:
        """The last events when the upstream failed mid-stream (nothing charged)."""


class Endpoint(ABC):
    """A paid endpoint family: its upstream path and how its usage is read and shown."""

    path: str  # on the upstream, e.g. "/chat/completions"
    streams: bool = False

    def parse(self, raw: bytes, content_type: str) -> Call:
        """Read the client's request (JSON by default)."""
        if not raw:
            raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
        body = json_object(raw)
        call = Call(raw, body, JSON, stream=self.streams and body.get("stream") is True)
        self.inspect(call)
        return call

    max_tokens_fields: tuple[str, ...] = ("max_completion_tokens", "max_tokens")
    # The most completions one request may ask for: OpenAI's own bound on chat `n`. Upstreams
    # that honour `n` bill every completion, so each is reserved for; past this, 400.
    max_choices: int = 128

    def inspect(self, call: Call) -> None:
        """Read what the reservation needs from the body (a hook: extend, calling super)."""
        call.max_tokens = positive_int(call.body, *self.max_tokens_fields)
        call.web_searches = reserved_web_searches(call.body)
        call.choices = choices_asked(call.body, self.max_choices)

    def for_dialect(self, dialect: str) -> Endpoint:
        """The endpoint that talks to an upstream of this dialect (translating if needed)."""
        if dialect not in OPENAI_DIALECTS:
            raise ApiError(
                400,
                "unsupported_endpoint",
                f"This model's provider speaks the {dialect} API, which does not serve "
                f"{self.path}.",
            )
        return self

    def upstream_body(self, call: Call, model: Model) -> bytes:
        """The body to send upstream: the client's, with the provider's id for the model."""
        changed = self.adjust(call) or call.edited
        if call.body.get("model") != model.wire_id:
            call.body["model"], changed = model.wire_id, True
        return orjson.dumps(call.body) if changed else call.raw

    def adjust(self, call: Call) -> bool:
        """Hook: change the JSON body before it goes upstream; True when changed."""
        return False

    @abstractmethod
    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        """Read a whole upstream answer; raise ValueError when it is unreadable."""

    def render(self, reply: Reply, cost: dict[str, int]) -> bytes:
        """The answer for the client, with `usage.cost` when it is JSON."""
        if reply.data is None:
            return reply.raw
        usage = reply.data.get("usage")
        if not isinstance(usage, dict):
            usage = reply.data["usage"] = {}
        usage["cost"] = cost
        return orjson.dumps(reply.data)

    def meter(self, call: Call) -> StreamMeter:
        raise NotImplementedError(f"{self.path} does not stream")


def positive_int(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` present in `body`, checked to be a positive integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ApiError(400, "invalid_request", f"`{name}` must be a positive integer.")
        return value
    return None


def choices_asked(body: dict[str, Any], limit: int) -> int:
    """How many completions a request asks for: the larger of `n` and `best_of` (the upstream
    generates `best_of` and returns the best `n`); 400 past `limit`."""
    asked = 1
    for name in ("n", "best_of"):
        value = positive_int(body, name)
        if value is not None and value > limit:
            raise ApiError(
                400,
                "invalid_request",
                f"`{name}` must be at most {limit}; ask for more completions in several requests.",
            )
        asked = max(asked, value or 1)
    return asked


def batch_size(value: Any) -> int:
    """Prompts in a completions `prompt` or embeddings `input`: a list of strings or of token
    arrays is a batch of that many; a string or one token array is one."""
    if isinstance(value, list) and value and all(isinstance(v, str | list) for v in value):
        return len(value)
    return 1


def input_tokens(value: Any) -> int:
    """Local count of a completions `prompt` or embeddings `input`: a string, a token array,
    or a list of either (strings tokenised, token arrays by their length)."""
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return len(value)
        return sum(input_tokens(v) for v in value if isinstance(v, str | list))
    return 0


def json_reply(raw: bytes) -> dict[str, Any]:
    """An upstream answer that must be a JSON object (ValueError otherwise)."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def now() -> int:
    return int(time.time())
