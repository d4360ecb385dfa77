"""What one client connection may hold: bounded request headers, and a deadline to send them.

uvicorn's httptools protocol parses headers with no size or count limit and gives a
connection no deadline before its first request or inside a request's headers (its
keep-alive timer only covers the gap between a response and the next request's first byte,
and any byte cancels it). `GuardedHttpTools` is that protocol with three additions:

- a header deadline: a request's line and headers must be complete within `header_timeout`
  seconds of the connection opening (first request) or of the request's first byte (later
  ones), or the connection is closed: a slow-loris client holds a socket for that long at most;
- a size limit: the request line and headers, counted as sent (`NAME: VALUE\\r\\n`), at most
  `max_header_bytes`;
- a count limit: at most `max_header_count` header fields.

Over a limit, the client gets 431 in the node's error envelope and the connection closes.
The size is checked twice: exactly once the headers are complete, and, while they are not,
on every chunk read, so the parser (which buffers a header value until it ends) never holds
more than the limit plus a read or two of a header that never ends.

A subclass of the protocol rather than a wrapper in front of it: the deadline and the limits
need to know where a request starts and where its headers end, which only the parser's
callbacks tell; a wrapper would have to parse HTTP a second time.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from satsrouter.errors import ApiError

LINGER_S = 2.0  # how long a refused client may go on sending (dropped) before the close


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds `GuardedHttpTools` holds each connection to."""

    max_header_bytes: int
    max_header_count: int
    header_timeout: float  # seconds


def _too_large(limits: ConnectionLimits) -> bytes:
    """The whole 431 response, in the node's envelope, closing the connection."""
    error = ApiError(
        431,
        "request_header_fields_too_large",
        f"The request's headers are larger than this node accepts: at most "
        f"{limits.max_header_bytes} bytes and {limits.max_header_count} fields.",
    )
    body = orjson.dumps(error.envelope())
    status = http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and header size and count limits.

    Use `guarded_protocol(limits)`: uvicorn builds protocols itself, from a class.
    """

    limits: ConnectionLimits  # set on the class by `guarded_protocol`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_headers = False  # between a request's first byte and its headers' end
        self._began_in_chunk = False  # that first byte came in the chunk being parsed
        self._raw_header_bytes = 0  # chunks read wholly inside the headers
        self._header_bytes = 0  # the request line and the headers completed so far
        self._header_count = 0
        self._refused = False

    # -- the deadline ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def _arm_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.limits.header_timeout, self._headers_too_slow
            )

    def _disarm_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            # No answer: a client this slow is gone, or holding the socket on purpose.
            self.transport.close()

    # -- the parser's callbacks --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request is not parsed
        self._began_in_chunk = False
        whole_chunk_in_headers = self._in_headers
        super().data_received(data)
        if self._refused or not self._in_headers:
            return
        # Headers still incomplete. Count only chunks read wholly inside them (not the one
        # the request began in, which may end a previous request's body): an undercount, so
        # never a refusal of headers within the limit; the exact count comes at their end.
        if whole_chunk_in_headers and not self._began_in_chunk:
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._began_in_chunk = True
        self._raw_header_bytes = 0
        self._header_count = 0
        # "METHOD " and " HTTP/1.1\r\n" around the URL, the blank line after the headers.
        self._header_bytes = len(b"  HTTP/1.1\r\n\r\n")
        self._arm_deadline()  # a later request on the connection: its clock starts now

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self._header_count += 1
        if self._header_count <= self.limits.max_header_count:
            super().on_header(name, value)  # past the limit, not kept: it is refused anyway

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_deadline()
        self._header_bytes += len(self.parser.get_method())
        if (
            self._header_bytes > self.limits.max_header_bytes
            or self._header_count > self.limits.max_header_count
        ):
            self._refuse()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _refuse(self) -> None:
        """Answer 431 and close, unless a response is under way (then just close)."""
        self._refused = True
        self._in_headers = False
        self._disarm_deadline()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request refused while an earlier response is being sent: a 431
            # now would land inside that response.
            self.transport.close()
            return
        self.transport.write(_too_large(self.limits))
        # A lingering close: closing with the client's bytes unread would send a reset, and
        # the client, still sending, would likely lose the 431 with it. So: end our side,
        # read and drop what still comes (`data_received`) for a moment, then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self._close)
        else:
            self.transport.close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpTools]:
    """A `GuardedHttpTools` class bound to `limits`, for uvicorn's `http` option."""
    return type("GuardedHttpTools", (GuardedHttpTools,), {"limits": limits})


class ConnectionSettings(Protocol):
    """The settings `connection_options` reads (satsrouter.settings.Settings has them)."""

    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_header_count(self) -> int: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def keepalive_timeout(self) -> float: ...


def connection_options(settings: ConnectionSettings) -> dict[str, Any]:
    """uvicorn options that bound connections: the guarded protocol and the keep-alive timeout.

    Built in each serving process (a protocol class made at run time does not pickle to a
    `--workers` child).
    """
    limits = ConnectionLimits(
        settings.max_header_bytes, settings.max_header_count, settings.header_timeout
    )
    return {"http": guarded_protocol(limits), "timeout_keep_alive": settings.keepalive_timeout}
