"""A scriptable fake LLM upstream speaking the OpenAI / OpenRouter dialect.

Used by the test suite, ``satsrouter demo`` and the benchmark: there is no
internet, so this is the one part of the system that has to be fake. It is
deterministic and cheap per request.

Replies
    The assistant reply is ``N`` words ``"w1 w2 … wN"`` where ``N`` is the
    ``completion_tokens`` behaviour (default 10), capped by the request's
    ``max_completion_tokens`` (or else ``max_tokens``); when the cap bites,
    ``finish_reason`` is ``"length"``, otherwise ``"stop"``.

    ``prompt_tokens`` (unless overridden by the behaviour) is::

        sum over messages of (4 + number of whitespace-separated words in its text)

    where a message's text is its string ``content``, or the ``text`` of every
    content part that has one (images, tool calls and names count 0).
    ``total_tokens = prompt_tokens + completion_tokens``.

Behaviour (merged: server defaults < control state < the request's ``"fake"`` object)
    ``latency_ms``        delay before the response headers (first byte)
    ``chunk_delay_ms``    delay between two stream events
    ``completion_tokens`` reply length in words/tokens
    ``prompt_tokens``     override of the prompt token count (null: computed)
    ``fail``              null | an HTTP status (``"500"``, ``"429"``, ``"400"``, any
                          400..599, OpenAI error body) | ``"drop"`` (close the
                          connection, no response) | ``"timeout"`` (never answer) |
                          ``"drop_midstream"`` (send part of the response, then close)
    ``omit_usage``        never send ``usage``
    ``fail_after_chunks`` for ``drop_midstream``: content chunks sent before the
                          connection closes (the role chunk comes first and is not
                          counted); non-streaming, half the body is sent

Behaviour applies to chat completions only; ``/v1/models`` always answers.

Control (no auth): ``POST /_control`` merges JSON into the control state,
``GET /_control`` shows it, ``POST /_control/reset`` clears control state,
stats and the model list, ``POST /_control/models`` replaces the model list
(a list, or ``{"data": [...]}``), ``GET /_stats`` returns ``requests``,
``chat_requests``, ``last_path``, ``last_request`` (the JSON body as received)
and ``last_headers`` (header names lower-cased).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack, cast

import orjson
from aiohttp import web

__all__ = [
    "Behaviour",
    "FakeUpstream",
    "FakeUpstreamProcess",
    "default_models",
    "prompt_tokens_of",
]

# A "timeout" hangs at most this long, so a forgotten server cannot pin a loop forever.
TIMEOUT_HANG_S = 3600.0

_JSON = "application/json"


class Behaviour(TypedDict, total=False):
    """Scriptable knobs; every key optional (see the module docstring)."""

    latency_ms: float
    chunk_delay_ms: float
    completion_tokens: int
    prompt_tokens: int | None
    fail: str | int | None
    omit_usage: bool
    fail_after_chunks: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """Fully resolved behaviour for one request."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    completion_tokens: int = 10
    prompt_tokens: int | None = None
    fail: str | None = None
    omit_usage: bool = False
    fail_after_chunks: int = 2


_FAIL_MODES = frozenset({"drop", "timeout", "drop_midstream"})


def _check_behaviour(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise behaviour keys; raise ValueError on anything unknown."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("latency_ms", "chunk_delay_ms"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a number >= 0")
            out[key] = float(value)
        elif key in ("completion_tokens", "fail_after_chunks"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0")
            out[key] = value
        elif key == "prompt_tokens":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError("prompt_tokens must be null or an integer >= 0")
            out[key] = value
        elif key == "omit_usage":
            if not isinstance(value, bool):
                raise ValueError("omit_usage must be a boolean")
            out[key] = value
        elif key == "fail":
            out[key] = _check_fail(value)
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


def _model(
    model_id: str,
    name: str,
    *,
    created: int,
    context_length: int,
    max_completion_tokens: int,
    prompt: str,
    completion: str,
    tokenizer: str,
    input_modalities: list[str],
) -> dict[str, Any]:
    return {
        "id": model_id,
        "canonical_slug": model_id,
        "name": name,
        "created": created,
        "description": f"{name} (served by the satsrouter fake upstream)",
        "context_length": context_length,
        "architecture": {
            "modality": "+".join(input_modalities) + "->text",
            "input_modalities": input_modalities,
            "output_modalities": ["text"],
            "tokenizer": tokenizer,
            "instruct_type": None,
        },
        "pricing": {
            "prompt": prompt,
            "completion": completion,
            "request": "0",
            "image": "0",
            "web_search": "0",
            "internal_reasoning": "0",
        },
        "top_provider": {
            "context_length": context_length,
            "max_completion_tokens": max_completion_tokens,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": [
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "response_format",
            "tools",
            "tool_choice",
        ],
    }


_DEFAULT_MODELS: list[dict[str, Any]] = [
    _model(
        "openai/gpt-4o-mini",
        "OpenAI: GPT-4o-mini",
        created=1721260800,
        context_length=128000,
        max_completion_tokens=16384,
        prompt="0.00000015",
        completion="0.0000006",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "openai/gpt-4o",
        "OpenAI: GPT-4o",
        created=1715558400,
        context_length=128000,
        max_completion_tokens=16384,
        prompt="0.0000025",
        completion="0.00001",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-3.5-sonnet",
        "Anthropic: Claude 3.5 Sonnet",
        created=1729555200,
        context_length=200000,
        max_completion_tokens=8192,
        prompt="0.000003",
        completion="0.000015",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "test/cheap",
        "Test: Cheap",
        created=1700000000,
        context_length=8192,
        max_completion_tokens=1024,
        prompt="0.0000001",
        completion="0.0000002",
        tokenizer="Other",
        input_modalities=["text"],
    ),
]


def default_models() -> list[dict[str, Any]]:
    """A fresh copy of the default model catalogue (OpenRouter ``/models`` entries)."""
    return copy.deepcopy(_DEFAULT_MODELS)


def prompt_tokens_of(messages: object) -> int:
    """The documented prompt token count: per message, 4 + words of its text."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        total += 4
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


@lru_cache(maxsize=256)
def _words(n: int) -> tuple[str, ...]:
    return tuple(f"w{i}" for i in range(1, n + 1))


def _openai_error(status: int, message: str, code: str | None = None) -> web.Response:
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
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


def _json(obj: object) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type=_JSON)


def _close_connection(request: web.Request) -> None:
    # close() (not abort()) so bytes already written reach the client before the FIN;
    # aiohttp then fails to write anything more and drops the response silently.
    transport = request.transport
    if transport is not None:
        transport.close()


_ErrorFactory = Callable[[int, str], web.Response]


class FakeUpstream:
    """The fake upstream as an aiohttp server in the current event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        defaults: Behaviour | None = None,
        models: list[dict[str, Any]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self._bearer = f"Bearer {api_key}" if api_key is not None else None
        self._defaults = _check_behaviour(defaults or {})
        self._control: dict[str, Any] = {}
        self._plan = _Plan(**self._defaults)
        self._initial_models = copy.deepcopy(models) if models is not None else None
        self._models: list[dict[str, Any]] = []
        self._models_body = b""
        self._set_models(self._initial_models or default_models())
        self._reset_stats()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.app = self._build_app()

    # -- Python API ---------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, as the node's ``UPSTREAM_BASE_URL``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, then ``port`` is set)."""
        self._closing = asyncio.Event()
        # handler_cancellation: a client that hangs up also ends a "timeout" hang.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening; in-flight delays and hangs end immediately."""
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def configure(self, **behaviour: Unpack[Behaviour]) -> None:
        """Merge behaviour into the control state (validated)."""
        self._configure(behaviour)

    def reset(self) -> None:
        """Clear the control state and stats and restore the initial model list."""
        self._control = {}
        self._plan = _Plan(**self._defaults)
        self._set_models(self._initial_models or default_models())
        self._reset_stats()

    def set_models(self, models: list[dict[str, Any]]) -> None:
        """Replace the model list served by ``/v1/models``."""
        self._set_models(models)

    @property
    def models(self) -> list[dict[str, Any]]:
        return self._models

    @property
    def control(self) -> dict[str, Any]:
        """The current control state (behaviour set via configure or ``/_control``)."""
        return dict(self._control)

    @property
    def stats(self) -> dict[str, Any]:
        """``requests``, ``chat_requests``, ``last_path``, ``last_request``, ``last_headers``."""
        return dict(self._stats)

    # -- state --------------------------------------------------------------

    def _configure(self, raw: Mapping[str, Any]) -> None:
        checked = _check_behaviour(raw)
        self._control.update(checked)
        self._plan = _Plan(**{**self._defaults, **self._control})

    def _set_models(self, models: object) -> None:
        if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in models
        ):
            raise ValueError("models must be a list of objects with a string 'id'")
        self._models = models
        # Serialised once: /v1/models is hit often and never changes between replacements.
        self._models_body = orjson.dumps({"data": models})

    def _reset_stats(self) -> None:
        self._stats: dict[str, Any] = {
            "requests": 0,
            "chat_requests": 0,
            "last_path": None,
            "last_request": None,
            "last_headers": None,
        }

    def _record(self, request: web.Request) -> None:
        stats = self._stats
        stats["requests"] += 1
        stats["last_path"] = request.path
        stats["last_headers"] = {k.lower(): v for k, v in request.headers.items()}

    def _authorized(self, request: web.Request) -> bool:
        return self._bearer is None or request.headers.get("Authorization") == self._bearer

    async def _pause(self, ms: float) -> None:
        """Sleep ``ms`` milliseconds, cut short when the server stops."""
        if ms <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), ms / 1000.0)

    # -- app ----------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("/v1", ""):
            app.router.add_get(prefix + "/models", self._handle_models)
            app.router.add_get(prefix + "/models/{model_id:.+}", self._handle_model)
            app.router.add_post(prefix + "/chat/completions", self._handle_chat)
        app.router.add_get("/_control", self._handle_control_get)
        app.router.add_post("/_control", self._handle_control)
        app.router.add_post("/_control/reset", self._handle_reset)
        app.router.add_post("/_control/models", self._handle_set_models)
        app.router.add_get("/_stats", self._handle_stats)
        return app

    # -- control handlers ----------------------------------------------------

    async def _handle_control_get(self, request: web.Request) -> web.Response:
        return _json({"control": self._control, "effective": dataclasses.asdict(self._plan)})

    async def _handle_control(self, request: web.Request) -> web.Response:
        try:
            raw = orjson.loads(await request.read())
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            self._configure(raw)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return _openai_error(400, str(exc))
        return _json({"control": self._control})

    async def _handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json({"control": self._control})

    async def _handle_set_models(self, request: web.Request) -> web.Response:
        try:
            raw = orjson.loads(await request.read())
            self._set_models(raw.get("data") if isinstance(raw, dict) else raw)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return _openai_error(400, str(exc))
        return _json({"models": len(self._models)})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return _json(self._stats)

    # -- OpenAI / OpenRouter dialect ---------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        self._record(request)
        if not self._authorized(request):
            return _openai_error(401, "invalid api key", "invalid_api_key")
        return web.Response(body=self._models_body, content_type=_JSON)

    async def _handle_model(self, request: web.Request) -> web.Response:
        self._record(request)
        if not self._authorized(request):
            return _openai_error(401, "invalid api key", "invalid_api_key")
        model_id = request.match_info["model_id"]
        for model in self._models:
            if model["id"] == model_id:
                return _json(model)
        return _openai_error(404, f"model {model_id!r} not found", "model_not_found")

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        self._stats["chat_requests"] += 1
        if not self._authorized(request):
            return _openai_error(401, "invalid api key", "invalid_api_key")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _openai_error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _openai_error(400, "request body must be a JSON object")
        self._stats["last_request"] = body
        try:
            plan = self._plan_for(body)
        except ValueError as exc:
            return _openai_error(400, f"fake: {exc}")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return _openai_error(400, "'model' is required")
        if not isinstance(messages, list):
            return _openai_error(400, "'messages' must be a list")

        await self._pause(plan.latency_ms)
        failed = await self._scripted_failure(request, plan, _openai_error)
        if failed is not None:
            return failed

        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        n = plan.completion_tokens
        finish = "stop"
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < n:
            n, finish = limit, "length"
        prompt = (
            plan.prompt_tokens if plan.prompt_tokens is not None else prompt_tokens_of(messages)
        )
        usage = None if plan.omit_usage else _usage(prompt, n)
        completion_id = f"chatcmpl-fake{self._stats['chat_requests']:08d}"

        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream_chat(
                request, plan, completion_id, model, n, finish, usage if include_usage else None
            )
        response: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(_words(n))},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }
        if usage is not None:
            response["usage"] = usage
        if plan.fail == "drop_midstream":
            return await self._send_half(request, orjson.dumps(response))
        return _json(response)

    async def _stream_chat(
        self,
        request: web.Request,
        plan: _Plan,
        completion_id: str,
        model: str,
        n: int,
        finish: str,
        usage: dict[str, int] | None,
    ) -> web.StreamResponse:
        created = int(time.time())
        with_usage = usage is not None

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if with_usage:
                # Like OpenAI: with include_usage every chunk carries "usage": null.
                chunk["usage"] = None
            chunk.update(extra)
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def delta(d: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return event(
                [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}]
            )

        words = _words(n)
        events = [delta({"role": "assistant", "content": ""})]
        events.extend(delta({"content": w if i == 0 else " " + w}) for i, w in enumerate(words))
        midstream = plan.fail == "drop_midstream"
        if midstream:
            events = events[: 1 + plan.fail_after_chunks]
        else:
            events.append(delta({}, finish))
            if usage is not None:
                events.append(event([], usage=usage))
            events.append(b"data: [DONE]\n\n")
        return await self._send_events(request, plan, events, abort=midstream)

    # -- shared by dialects -------------------------------------------------

    def _plan_for(self, body: dict[str, Any]) -> _Plan:
        override = body.get("fake")
        if override is None:
            return self._plan
        if not isinstance(override, dict):
            raise ValueError("'fake' must be an object")
        return dataclasses.replace(self._plan, **_check_behaviour(override))

    async def _scripted_failure(
        self, request: web.Request, plan: _Plan, error: _ErrorFactory
    ) -> web.StreamResponse | None:
        """The response for a scripted failure, or None to answer normally."""
        fail = plan.fail
        if fail is None or fail == "drop_midstream":
            return None
        if fail == "drop":
            _close_connection(request)
            return web.Response()
        if fail == "timeout":
            await self._pause(TIMEOUT_HANG_S * 1000.0)
            _close_connection(request)
            return web.Response()
        return error(int(fail), f"fake upstream: scripted {fail} error")

    async def _send_events(
        self, request: web.Request, plan: _Plan, events: list[bytes], *, abort: bool
    ) -> web.StreamResponse:
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
                    await self._pause(plan.chunk_delay_ms)
                await resp.write(chunk)
        if abort:
            _close_connection(request)
            return resp
        await resp.write_eof()
        return resp

    async def _send_half(self, request: web.Request, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        _close_connection(request)
        return resp


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# -- subprocess variant -----------------------------------------------------------


class FakeUpstreamProcess:
    """The same server in a child process, isolated from the caller's event loop."""

    def __init__(
        self,
        port: int | None = None,
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        defaults: Behaviour | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port or 0
        self.api_key = api_key
        self.defaults = _check_behaviour(defaults or {})
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Spawn the server and return once it answers HTTP."""
        cmd = [
            sys.executable,
            "-m",
            "satsrouter.testing.fake_upstream",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.api_key is not None:
            cmd += ["--api-key", self.api_key]
        if self.defaults:
            cmd += ["--behaviour", json.dumps(self.defaults)]
        env = dict(os.environ)
        # Works from any cwd, installed or not: put our source tree first.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        self._proc = proc
        try:
            self.port = self._read_port(proc, time.monotonic() + self.startup_timeout)
            self._wait_answering(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, proc: subprocess.Popen[bytes], deadline: float) -> int:
        assert proc.stdout is not None
        # The child prints one "listening on <url>" line once bound (so port 0 is race-free).
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("fake upstream listening on "):
            raise RuntimeError(f"fake upstream did not start (exit code {proc.poll()})")
        return int(line.strip().rsplit(":", 1)[1].split("/", 1)[0])

    def _wait_answering(self, deadline: float) -> None:
        while True:
            try:
                self._call("GET", "/_stats")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def configure(self, **behaviour: Unpack[Behaviour]) -> None:
        """Merge behaviour into the child's control state."""
        self._call("POST", "/_control", dict(behaviour))

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})

    def set_models(self, models: list[dict[str, Any]]) -> None:
        self._call("POST", "/_control/models", models)

    @property
    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_stats")
        return result

    def _call(self, method: str, path: str, payload: object = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        req = urllib.request.Request(self.root + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", _JSON)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return orjson.loads(resp.read())


# -- CLI ------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m satsrouter.testing.fake_upstream",
        description="Scriptable fake OpenAI/OpenRouter upstream.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--chunk-delay-ms", type=float)
    p.add_argument("--completion-tokens", type=int)
    p.add_argument("--prompt-tokens", type=int)
    p.add_argument("--fail")
    p.add_argument("--omit-usage", action="store_true", default=None)
    p.add_argument("--fail-after-chunks", type=int)
    p.add_argument("--behaviour", default=None, help="JSON object of default behaviour")
    p.add_argument("--models-file", default=None, help="JSON list or {'data': [...]}")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace, models: list[dict[str, Any]] | None) -> None:
    defaults: dict[str, Any] = json.loads(args.behaviour) if args.behaviour else {}
    for key in Behaviour.__annotations__:
        value = getattr(args, key, None)
        if value is not None:
            defaults[key] = value
    server = FakeUpstream(
        args.host, args.port, args.api_key, defaults=cast(Behaviour, defaults), models=models
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the fake upstream until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    models = None
    if args.models_file:
        raw = json.loads(Path(args.models_file).read_text())
        models = raw["data"] if isinstance(raw, dict) else raw
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args, models))


if __name__ == "__main__":
    main()
