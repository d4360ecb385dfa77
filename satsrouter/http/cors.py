"""CORS whose allowed origins the admin may change while the node runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class LiveCORS:
    """Starlette's CORSMiddleware, rebuilt when `origins()` gives another list.

    The list is compared by identity: the node's settings object is replaced as a whole on
    a change, so an unchanged setting keeps its list and a request pays one call and one
    `is`.
    """

    def __init__(self, app: ASGIApp, /, origins: Callable[[], list[str]], **options: Any) -> None:
        self.app = app
        self._origins = origins
        self._options = options
        self._built: tuple[list[str], CORSMiddleware] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = self._origins()
        built = self._built
        if built is None or built[0] is not origins:
            middleware = CORSMiddleware(self.app, allow_origins=origins, **self._options)
            built = self._built = (origins, middleware)
        await built[1](scope, receive, send)
