"""A bound on the requests one node process serves at once: past it, 503 `overloaded`.

Counted here, per in-flight request (a stream counts until its last byte), rather than by
uvicorn's `limit_concurrency`: that one counts open connections too, so idle keep-alive
sockets and half-sent slow-loris requests would use up the limit and turn real requests
away, and its 503 is plain text, not the node's envelope.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from satsrouter.errors import ApiError

RETRY_AFTER_S = 1  # requests are short next to a client's back-off; a second is plenty


def _overloaded(limit: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    error = ApiError(
        503,
        "overloaded",
        f"This node is serving as many requests as it takes at once ({limit}); "
        f"retry in {RETRY_AFTER_S} s.",
    )
    body = orjson.dumps(error.envelope())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    return body, headers


class ConcurrencyLimit:
    """ASGI middleware: at most `limit()` HTTP requests in the app at once (0: no limit)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        if limit and self.in_flight >= limit:
            body, headers = _overloaded(limit)
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        # One event loop per process: the check and the increment cannot interleave.
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
