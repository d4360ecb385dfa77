"""The fake upstream's aiohttp server: routing per dialect, auth, control and stats.

See the ``fake_upstream`` module docstring for the behaviour and control surface,
and each dialect module for its endpoints' replies and usage formulas.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import itertools
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, Unpack

import orjson
from aiohttp import web

from satsrouter_dev import (
    fake_anthropic,
    fake_audio,
    fake_media,
    fake_openai,
    fake_responses,
)
from satsrouter_dev.fake_core import (
    DIALECTS,
    JSON_TYPE,
    Behaviour,
    Dialect,
    Plan,
    anthropic_error,
    check_behaviour,
    json_response,
    openai_error,
)
from satsrouter_dev.fake_models import anthropic_model, anthropic_models, default_models

Handler = Callable[["FakeUpstream", web.Request], Awaitable[web.StreamResponse]]
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Endpoints under /v1 (and, like OpenRouter-compatible servers, also without it).
_OPENAI_ROUTES: dict[str, Handler] = {
    "/chat/completions": fake_openai.chat,
    "/completions": fake_openai.completions,
    "/embeddings": fake_media.embeddings,
    "/images/generations": fake_media.images,
    "/audio/transcriptions": fake_audio.transcriptions,
    "/audio/translations": fake_audio.translations,
    "/responses": fake_responses.responses,
}
_ANTHROPIC_ROUTES: dict[str, Handler] = {
    "/messages": fake_anthropic.messages,
    "/messages/count_tokens": fake_anthropic.count_tokens,
}


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
        dialect: Dialect = "openai",
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.dialect = dialect
        self._error = anthropic_error if dialect == "anthropic" else openai_error
        self._bearer = f"Bearer {api_key}" if api_key is not None else None
        self._defaults = check_behaviour(defaults or {})
        self._control: dict[str, Any] = {}
        self._plan = Plan(**self._defaults)
        self._initial_models = copy.deepcopy(models) if models is not None else None
        self._models: list[dict[str, Any]] = []
        self._models_body = b""
        self._set_models(self._initial_models or default_models())
        self._reset_stats()
        # Never reset, so response ids stay unique across resets.
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.app = self._build_app()

    # -- Python API ---------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, as the node's ``UPSTREAM_BASE_URL``."""
        return self.root + "/v1"

    @property
    def root(self) -> str:
        """Base URL without ``/v1`` (the Anthropic SDK's ``base_url``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
        self._plan = Plan(**self._defaults)
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
        """``requests``, ``chat_requests``, ``paths``, ``last_path``, ``last_request``, …"""
        return {**self._stats, "paths": dict(self._stats["paths"])}

    # -- Host (what the dialect handlers use) ---------------------------------

    def record_body(self, body: object) -> None:
        """Remember ``body`` as ``last_request``."""
        self._stats["last_request"] = body

    def plan_for(self, override: object) -> Plan:
        """The current plan with a request's ``fake`` object merged in."""
        if override is None:
            return self._plan
        if not isinstance(override, dict):
            raise ValueError("'fake' must be an object")
        return dataclasses.replace(self._plan, **check_behaviour(override))

    def next_id(self) -> int:
        """A fresh number for response ids."""
        return next(self._ids)

    def next_failure_slot(self) -> int:
        """1, 2, 3…: which request this is among those a scripted failure could hit."""
        return next(self._failure_slots)

    async def pause(self, ms: float) -> None:
        """Sleep ``ms`` milliseconds, cut short when the server stops."""
        if ms <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), ms / 1000.0)

    # -- state --------------------------------------------------------------

    def _configure(self, raw: Mapping[str, Any]) -> None:
        checked = check_behaviour(raw)
        self._control.update(checked)
        self._plan = Plan(**{**self._defaults, **self._control})

    def _set_models(self, models: object) -> None:
        if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in models
        ):
            raise ValueError("models must be a list of objects with a string 'id'")
        self._models = models
        # Serialised once: /v1/models is hit often and never changes between replacements.
        page = anthropic_models(models) if self.dialect == "anthropic" else {"data": models}
        self._models_body = orjson.dumps(page)

    def _reset_stats(self) -> None:
        self._failure_slots = itertools.count(1)
        self._stats: dict[str, Any] = {
            "requests": 0,
            "chat_requests": 0,
            "paths": {},
            "last_path": None,
            "last_request": None,
            "last_headers": None,
            "anthropic_version": None,
        }

    def _record(self, request: web.Request) -> None:
        stats = self._stats
        stats["requests"] += 1
        stats["paths"][request.path] = stats["paths"].get(request.path, 0) + 1
        stats["last_path"] = request.path
        stats["last_headers"] = {k.lower(): v for k, v in request.headers.items()}
        version = request.headers.get("anthropic-version")
        if version is not None:
            stats["anthropic_version"] = version

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        if self.dialect == "anthropic":
            return request.headers.get("x-api-key") == self.api_key
        return request.headers.get("Authorization") == self._bearer

    def _unauthorized(self) -> web.Response:
        if self.dialect == "anthropic":
            return anthropic_error(401, "invalid x-api-key")
        return openai_error(401, "invalid api key", "invalid_api_key")

    # -- app ----------------------------------------------------------------

    def _endpoint(self, handler: Endpoint, *, chat: bool = False) -> Endpoint:
        """``handler`` behind stats recording and the dialect's auth check."""

        async def handle(request: web.Request) -> web.StreamResponse:
            self._record(request)
            if chat:
                self._stats["chat_requests"] += 1
            if not self._authorized(request):
                return self._unauthorized()
            return await handler(request)

        return handle

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        routes = _ANTHROPIC_ROUTES if self.dialect == "anthropic" else _OPENAI_ROUTES
        for prefix in ("/v1", ""):
            app.router.add_get(prefix + "/models", self._endpoint(self._handle_models))
            app.router.add_get(prefix + "/models/{model_id:.+}", self._endpoint(self._handle_model))
            for path, handler in routes.items():
                endpoint = self._endpoint(
                    functools.partial(handler, self), chat=path == "/chat/completions"
                )
                app.router.add_post(prefix + path, endpoint)
        app.router.add_get(fake_media.IMAGE_PATH, fake_media.image_file)
        app.router.add_get("/_control", self._handle_control_get)
        app.router.add_post("/_control", self._handle_control)
        app.router.add_post("/_control/reset", self._handle_reset)
        app.router.add_post("/_control/models", self._handle_set_models)
        app.router.add_get("/_stats", self._handle_stats)
        # Last, so it only sees what nothing else matched: a JSON 404 in our dialect.
        app.router.add_route("*", "/{tail:.*}", self._handle_not_found)
        return app

    # -- handlers -------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type=JSON_TYPE)

    async def _handle_model(self, request: web.Request) -> web.StreamResponse:
        model_id = request.match_info["model_id"]
        for model in self._models:
            if model["id"] == model_id:
                return json_response(
                    anthropic_model(model) if self.dialect == "anthropic" else model
                )
        return self._error(404, f"model {model_id!r} not found", "model_not_found")

    async def _handle_not_found(self, request: web.Request) -> web.Response:
        self._record(request)
        return self._error(404, f"no route {request.method} {request.path} on this upstream")

    async def _handle_control_get(self, request: web.Request) -> web.Response:
        return json_response(
            {"control": self._control, "effective": dataclasses.asdict(self._plan)}
        )

    async def _handle_control(self, request: web.Request) -> web.Response:
        try:
            raw = orjson.loads(await request.read())
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            self._configure(raw)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return openai_error(400, str(exc))
        return json_response({"control": self._control})

    async def _handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"control": self._control})

    async def _handle_set_models(self, request: web.Request) -> web.Response:
        try:
            raw = orjson.loads(await request.read())
            self._set_models(raw.get("data") if isinstance(raw, dict) else raw)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return openai_error(400, str(exc))
        return json_response({"models": len(self._models)})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return json_response(self._stats)
