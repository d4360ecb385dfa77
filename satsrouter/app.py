"""Build the ASGI app: the node's components, its routes, and the middleware around them
(request ids, CORS, the concurrency and body size limits)."""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satsrouter import __version__
from satsrouter.http import (
    admin,
    admin_money,
    admin_providers,
    admin_settings,
    admin_usage,
    balance,
    catalog,
    dashboard,
    lightning,
    metrics,
    proxy,
)
from satsrouter.http.body_limit import BodyLimit
from satsrouter.http.concurrency import ConcurrencyLimit
from satsrouter.http.cors import LiveCORS
from satsrouter.http.errors import install_error_handlers
from satsrouter.http.openapi import install_openapi
from satsrouter.http.rate_limit import RateLimit
from satsrouter.logs import REQUEST_ID
from satsrouter.metrics import RequestMetrics
from satsrouter.node import Node
from satsrouter.settings import Settings


class RequestIdMiddleware:
    """Give every request an id (`request.state.request_id`, and `logs.REQUEST_ID` for the log
    records made while serving it) and every response `x-request-id`.

    Ids are a random per-process prefix plus a counter: unique across processes and
    restarts (they key reservations), without a getrandom syscall per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._prefix}{next(self._counter):08x}"
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if not any(name == b"x-request-id" for name, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def create_app(
    settings: Settings | None = None, node: Node | None = None, freeze_heap: bool = False
) -> FastAPI:
    """The node's ASGI app; `node` lets tests build and inspect the components themselves.

    `freeze_heap` (for a process that serves one node for its life) freezes what start-up
    built for the cycle collector.
    """
    settings = settings or (node.settings if node else Settings.from_env())
    the_node = node or Node(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_node.start()
        if freeze_heap:
            # What exists now lives as long as the process. Frozen, the cycle collector
            # stops walking it on every full collection: those walks were the p99 of paid
            # requests (73 ms at c=32, 14 ms frozen). Not for tests: they start hundreds of
            # nodes in one process, and a full collection each costs more than it saves.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await the_node.stop()

    app = FastAPI(
        title="satsrouter",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.node = the_node
    install_error_handlers(app)
    app.include_router(proxy.router)
    app.include_router(balance.router)
    app.include_router(catalog.router)
    app.include_router(lightning.router)
    app.include_router(admin.router)
    app.include_router(admin.protected)
    app.include_router(admin_settings.router)
    app.include_router(admin_usage.router)
    app.include_router(admin_money.router)
    app.include_router(admin_providers.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)

    # Clients probe the base URL before anything else (Claude Code sends `HEAD /v1`, and
    # `HEAD <base>/api/hello` unless its non-essential traffic is off): a 200 that says what
    # answers here, rather than a 404 that looks like a wrong URL.
    @app.api_route("/", methods=["GET", "HEAD"])
    @app.api_route("/v1", methods=["GET", "HEAD"])
    @app.api_route("/api/hello", methods=["GET", "HEAD"])
    @app.api_route("/v1/api/hello", methods=["GET", "HEAD"])
    async def root() -> dict[str, object]:
        current = the_node.settings  # the admin may have renamed the node since start
        return {
            "name": current.name,
            "version": __version__,
            "mints": current.cashu_mints,
            "api": "/v1 (OpenAI and Anthropic compatible); node details at /v1/info",
        }

    install_openapi(app)  # after every route: the document describes them all

    # Innermost, so that its 413 still gets CORS headers and a request id. Both read the
    # node's settings per request: the admin may change them.
    # Inside the body limit, whose rules close a connection whose body was never read (a
    # refused request's); before any handler, so that a refusal reserves nothing.
    app.add_middleware(RateLimit, node=the_node, paths=frozenset(proxy.PAID_ROUTES))
    app.add_middleware(BodyLimit, max_bytes=lambda: the_node.settings.max_body_bytes)
    # Outside the body limit (a refused request reads nothing), inside CORS, so that a
    # browser can read the 503.
    app.add_middleware(ConcurrencyLimit, limit=lambda: the_node.settings.max_concurrent_requests)
    app.add_middleware(
        LiveCORS,
        origins=lambda: the_node.settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=[
            "x-request-id",
            "X-Cashu",
            "X-Routstr-Cost-Msats",
            "X-Routstr-Balance-Msats",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "Retry-After",
        ],
    )
    # Outside the body limit and CORS, so that their answers are counted too.
    app.add_middleware(
        RequestMetrics,
        metrics=the_node.metrics,
        paths=proxy.PAID_ROUTES,
        model_key=proxy.MODEL_STATE,
    )
    app.add_middleware(RequestIdMiddleware)
    return app
