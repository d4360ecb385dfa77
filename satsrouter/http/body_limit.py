"""Request bodies are bounded while they are read, on every route: 413 in our envelope.

A declared `Content-Length` over the limit is refused before a byte of the body is read; a
body without one (chunked) is counted as it arrives and refused when it passes the limit. The
413 closes the connection, so the node stops reading there: a client can neither make it
buffer more than the limit nor make it receive (and throw away) the rest. A response to a
request whose body was never read to its end closes the connection too, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satsrouter.errors import ApiError


class _BodyTooLarge(Exception):
    """Raised into the app from `receive`: it stops reading the body, the 413 is ours."""


def _declared_length(scope: Scope) -> tuple[int | None, bool]:
    """The request's Content-Length (None if absent), and whether it has a body at all."""
    length: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value)  # the HTTP parser already refused a malformed length
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked or bool(length)


def _refusal(limit: int) -> tuple[Message, Message]:
    error = ApiError(
        413,
        "request_too_large",
        f"The request body is larger than {limit} bytes, the most this node accepts.",
    )
    body = orjson.dumps(error.envelope())
    start: Message = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """ASGI middleware: no route reads more than `max_bytes` of a request body.

    `max_bytes` is a number, or a function read per request (the admin may change it).
    """

    def __init__(self, app: ASGIApp, max_bytes: int | Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes() if callable(self.max_bytes) else self.max_bytes
        declared, has_body = _declared_length(scope)
        if declared is not None and declared > limit:
            for message in _refusal(limit):
                await send(message)
            return

        received = 0
        read_to_end = not has_body
        cut = False  # the body passed the limit: the app's answer is dropped, ours goes
        started = False

        async def limited_receive() -> Message:
            nonlocal received, read_to_end, cut
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    raise _BodyTooLarge
                if not message.get("more_body", False):
                    read_to_end = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut:
                return
            if message["type"] == "http.response.start":
                started = True
                if not read_to_end:
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not cut:
                raise
        if cut and not started:
            for message in _refusal(limit):
                await send(message)
