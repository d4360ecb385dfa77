"""Shared pieces of the fake upstream: behaviour, error bodies and response writers.

Every dialect module (``fake_openai``, ``fake_responses``, ``fake_media``,
``fake_audio``, ``fake_anthropic``) builds on these; the server in
``fake_server`` implements :class:`Host`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal, Protocol, TypedDict

import orjson
from aiohttp import web

# A "timeout" hangs at most this long, so a forgotten server cannot pin a loop forever.
TIMEOUT_HANG_S = 3600.0

# Output tokens reported for a tool call reply, in every dialect (not capped by max_tokens).
TOOL_CALL_TOKENS = 5
# The arguments of every scripted tool call.
TOOL_CALL_INPUT: dict[str, str] = {"query": "w1 w2"}

JSON_TYPE = "application/json"

Dialect = Literal["openai", "anthropic"]
DIALECTS: tuple[Dialect, ...] = ("openai", "anthropic")


class Behaviour(TypedDict, total=False):
    """Scriptable knobs; every key optional (see the ``fake_upstream`` module docstring)."""

    latency_ms: float
    chunk_delay_ms: float
    completion_tokens: int
    prompt_tokens: int | None
    fail: str | int | None
    omit_usage: bool
    fail_after_chunks: int
    fail_every: int
    image_usage: bool
    report_cost: float | None
    audio_seconds: float
    audio_usage: str
    cache_read_tokens: int
    cache_write_tokens: int
    count_tokens: bool
    tool_call: str | dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ScriptedCall:
    """A tool call the fake makes once per conversation (behaviour ``tool_call``)."""

    name: str
    arguments: str  # JSON text, sent as the model would


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Fully resolved behaviour for one request."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    completion_tokens: int = 10
    prompt_tokens: int | None = None
    fail: str | None = None
    omit_usage: bool = False
    fail_after_chunks: int = 2
    fail_every: int = 1
    image_usage: bool = False
    report_cost: float | None = None
    audio_seconds: float = 1.0
    audio_usage: str = "duration"
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    count_tokens: bool = True
    tool_call: str | ScriptedCall = "first"


_FAIL_MODES = frozenset({"drop", "timeout", "drop_midstream"})
_AUDIO_USAGE = frozenset({"duration", "tokens", "none"})


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a number >= 0")
    return float(value)


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an integer >= 0")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be a boolean")
    return value


def check_behaviour(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise behaviour keys; raise ValueError on anything unknown."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("latency_ms", "chunk_delay_ms", "audio_seconds"):
            out[key] = _number(key, value)
        elif key in (
            "completion_tokens",
            "fail_after_chunks",
            "fail_every",
            "cache_read_tokens",
            "cache_write_tokens",
        ):
            out[key] = _count(key, value)
        elif key == "prompt_tokens":
            out[key] = None if value is None else _count(key, value)
        elif key == "report_cost":
            out[key] = None if value is None else _number(key, value)
        elif key in ("omit_usage", "image_usage", "count_tokens"):
            out[key] = _flag(key, value)
        elif key == "audio_usage":
            if value not in _AUDIO_USAGE:
                raise ValueError("audio_usage must be 'duration', 'tokens' or 'none'")
            out[key] = value
        elif key == "fail":
            out[key] = _check_fail(value)
        elif key == "tool_call":
            out[key] = _check_tool_call(value)
        else:
            raise ValueError(f"unknown behaviour key {key!r}")
    return out


def _check_fail(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value in _FAIL_MODES:
        return value
    if isinstance(value, int | str) and not isinstance(value, bool):
        status = str(value)
        if status.isdigit() and 400 <= int(status) <= 599:
            return status
    raise ValueError(
        "fail must be null, an HTTP status 400..599, 'drop', 'timeout' or 'drop_midstream'"
    )


def _check_tool_call(value: object) -> str | ScriptedCall:
    if isinstance(value, ScriptedCall) or (isinstance(value, str) and value in ("first", "none")):
        return value
    if isinstance(value, dict) and set(value) == {"name", "arguments"}:
        name, arguments = value["name"], value["arguments"]
        if isinstance(name, str) and name and isinstance(arguments, dict):
            return ScriptedCall(name, orjson.dumps(arguments).decode())
    raise ValueError("tool_call must be 'first', 'none' or {\"name\": str, \"arguments\": object}")


# -- replies and counting ------------------------------------------------------


@lru_cache(maxsize=256)
def words(n: int) -> tuple[str, ...]:
    """The reply words ``w1 … wN``."""
    return tuple(f"w{i}" for i in range(1, n + 1))


def word_count(text: object) -> int:
    """Whitespace-separated words of a string; anything else counts 0."""
    return len(text.split()) if isinstance(text, str) else 0


def reply_length(plan: Plan, limit: object) -> tuple[int, bool]:
    """(N, capped): the reply length and whether the request's token limit cut it."""
    n = plan.completion_tokens
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < n:
        return limit, True
    return n, False


def tool_call_fragments(arguments: str | None = None) -> list[str]:
    """The JSON arguments of a tool call, split as a provider streams them.

    The default call's arguments in four fragments; scripted ``arguments`` in two halves.
    """
    if arguments is None:
        return ['{"query": "', "w1", " w2", '"}']
    half = len(arguments) // 2
    return [arguments[:half], arguments[half:]]


def choose_tool(
    plan: Plan, declared: list[str], *, answered: bool, any_answer: bool
) -> tuple[str, str | None] | None:
    """(tool name, scripted JSON arguments or None for the default ones), or None for text.

    ``declared``: the request's tool names, in order (empty: no tools, or tool choice
    none); ``answered``: its last message is a tool result; ``any_answer``: some message
    is. ``tool_call`` ``"first"`` calls the first declared tool unless ``answered``;
    ``"none"`` never calls one; a scripted call names a declared tool and is made once
    per conversation (until some message is a tool result), so a client that adds text
    after the result cannot make the fake loop.
    """
    script = plan.tool_call
    if not declared or script == "none":
        return None
    if isinstance(script, ScriptedCall):
        if any_answer or script.name not in declared:
            return None
        return script.name, script.arguments
    return None if answered else (declared[0], None)


# -- errors ----------------------------------------------------------------------


def openai_error(status: int, message: str, code: str | None = None) -> web.Response:
    """An OpenAI-shaped error body (429 carries ``Retry-After: 1``)."""
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "api_error")
    if status == 429 and code is None:
        code = "rate_limit_exceeded"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    # Retry-After lets tests check that the node passes it through on 429.
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers
    )


_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, code: str | None = None) -> web.Response:
    """An Anthropic-shaped error body; ``code`` is ignored (Anthropic has none)."""
    kind = _ANTHROPIC_KINDS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers
    )


ErrorFactory = Callable[..., web.Response]


def json_response(obj: object) -> web.Response:
    """``obj`` as an ``application/json`` 200 response."""
    return web.Response(body=orjson.dumps(obj), content_type=JSON_TYPE)


def sse(data: object) -> bytes:
    """One ``data:``-only server-sent event (OpenAI chat/completions style)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def typed_sse(event: str, data: object) -> bytes:
    """One ``event:`` + ``data:`` server-sent event (Responses API and Anthropic style)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# -- the server side ------------------------------------------------------------


class Host(Protocol):
    """What dialect handlers need from the server that routes to them."""

    def record_body(self, body: object) -> None:
        """Remember ``body`` as the stats' ``last_request``."""

    def plan_for(self, override: object) -> Plan:
        """The server's plan with a request's ``fake`` object merged in (ValueError if bad)."""

    def next_id(self) -> int:
        """A number never handed out before by this server (for response ids)."""

    def next_failure_slot(self) -> int:
        """Counts the requests a scripted failure could hit (for ``fail_every``)."""

    async def pause(self, ms: float) -> None:
        """Sleep ``ms`` milliseconds, cut short when the server stops."""


async def read_json(
    host: Host, request: web.Request, error: ErrorFactory
) -> tuple[dict[str, Any], Plan] | web.Response:
    """Parse a JSON-object body and resolve its plan, or the 400 response to send."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object")
    host.record_body(body)
    try:
        return body, host.plan_for(body.get("fake"))
    except ValueError as exc:
        return error(400, f"fake: {exc}")


def close_connection(request: web.Request) -> None:
    """Close the TCP connection under ``request``."""
    # close() (not abort()) so bytes already written reach the client before the FIN;
    # aiohttp then fails to write anything more and drops the response silently.
    transport = request.transport
    if transport is not None:
        transport.close()


async def start_reply(
    host: Host, request: web.Request, plan: Plan, error: ErrorFactory
) -> web.StreamResponse | None:
    """Wait ``latency_ms``, then the response for a scripted failure, or None to answer."""
    await host.pause(plan.latency_ms)
    fail = plan.fail
    if fail is None or fail == "drop_midstream":
        return None
    if plan.fail_every > 1 and host.next_failure_slot() % plan.fail_every:
        return None  # not this request's turn to fail
    if fail == "drop":
        close_connection(request)
        return web.Response()
    if fail == "timeout":
        await host.pause(TIMEOUT_HANG_S * 1000.0)
        close_connection(request)
        return web.Response()
    return error(int(fail), f"fake upstream: scripted {fail} error")


async def send_events(
    host: Host, request: web.Request, plan: Plan, events: list[bytes], *, abort: bool
) -> web.StreamResponse:
    """Stream ``events`` as ``text/event-stream``; ``abort`` closes instead of ending cleanly."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    if plan.chunk_delay_ms <= 0:
        # One write: the benchmark wants the fake to cost as little as possible.
        await resp.write(b"".join(events))
    else:
        for i, chunk in enumerate(events):
            if i:
                await host.pause(plan.chunk_delay_ms)
            await resp.write(chunk)
    if abort:
        close_connection(request)
        return resp
    await resp.write_eof()
    return resp


async def send_body(
    request: web.Request, plan: Plan, body: bytes, content_type: str = JSON_TYPE
) -> web.StreamResponse:
    """Send a complete body, or only its first half when the plan says ``drop_midstream``."""
    if plan.fail != "drop_midstream":
        return web.Response(body=body, headers={"Content-Type": content_type})
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    close_connection(request)
    return resp
