"""Streaming a metered SSE response: pass chunks through as they arrive, settle at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from satsrouter.billing.payments import Charge
from satsrouter.endpoints.base import StreamMeter, UpstreamStreamError, event_data
from satsrouter.upstream.client import idle_timeout_of, read_within

log = logging.getLogger(__name__)


class MeteredStream(Response):
    """An ASGI response relaying an upstream SSE stream and charging for what it carried.

    Client disconnects do not cancel it: it keeps reading the upstream (bounded by
    `drain_timeout`) so that what was produced is charged (I5). An upstream failure while the
    client is still listening charges nothing (I4), and so does a pause longer than the
    upstream's idle timeout (there is no limit on the total time).

    `first`: the body's first bytes, already read (`Upstream.first_chunk`) while another
    provider could still have been tried; relayed before anything else.
    """

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        charge: Charge,
        meter: StreamMeter,
        headers: dict[str, str],
        drain_timeout: float,
        on_failure: Callable[[], None] | None = None,
        first: bytes = b"",
    ) -> None:
        self.upstream = upstream
        self.first = first
        self.idle_timeout = idle_timeout_of(upstream)
        self.on_failure = on_failure  # told when the upstream fails mid-stream
        self.charge = charge
        self.meter = meter
        self.out_headers = headers
        self.drain_timeout = drain_timeout
        self.disconnected = asyncio.Event()
        self.status_code = 200
        self.background = None

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await self._relay(send)
        finally:
            watcher.cancel()
            if self.upstream.content.at_eof():
                self.upstream.release()
            else:
                self.upstream.close()  # abandoned mid-stream: never reuse that connection
            if not self.charge.done:
                # Only reached on a bug or server shutdown: never keep money held for nothing.
                # No one is left to take change: it stays refundable by the token.
                await asyncio.shield(self.charge.fail("interrupted", change=False))

    async def _send(self, send: Send, data: bytes, more: bool = True) -> None:
        if not self.disconnected.is_set():
            await send({"type": "http.response.body", "body": data, "more_body": more})

    async def _relay(self, send: Send) -> None:
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in self.out_headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})

        meter = self.meter
        failed: str | None = None  # why the upstream failed, for the log
        error = "upstream_error"  # and as the reservation's error code
        try:
            # One timeout for the whole relay, pushed back before each read: a pause longer
            # than the idle timeout fails the stream, however long it has run.
            async with asyncio.timeout(None) as gap:
                await self._pump(send, gap)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed = type(exc).__name__
            if isinstance(exc, TimeoutError):
                error = "upstream_timeout"
        except UpstreamStreamError:
            failed = "error reported by the upstream"
        except ValueError:
            failed = "invalid upstream stream"

        if failed and self.on_failure is not None:
            self.on_failure()
        if failed and not self.disconnected.is_set():
            receipt = await self.charge.fail(error)
            log.warning(
                "stream %s: upstream failed (%s); nothing charged", self.charge.request_id, failed
            )
            message = "The upstream failed mid-stream; nothing was charged."
            events = meter.failure(message, receipt.change_token, receipt.change_msat)
        else:
            receipt = await self.charge.finish(meter.usage())
            events = meter.closing(receipt.cost, receipt.change_token, receipt.change_msat)
        await self._finish(send, events)

    async def _pump(self, send: Send, gap: asyncio.Timeout) -> None:
        """Relay and meter the upstream's events until its end (or the drain time is up)."""
        meter = self.meter
        drain_deadline: float | None = None
        buf = b""
        data, self.first = self.first, b""
        while True:
            if not data:
                data = await self._read(gap, drain_deadline)
                if not data:
                    return
            buf += data
            if b"\r\n" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            # Everything complete in this read goes out in one write: the upstream's
            # pacing is kept, and a burst of events costs one send, not one per event.
            ready: list[bytes] = []
            start = 0
            try:
                while (end := buf.find(b"\n\n", start)) >= 0:
                    event = buf[start : end + 2]
                    start = end + 2
                    payload = event_data(event)
                    if not payload:
                        # Comments (": PROCESSING") keep idle clients and proxies patient.
                        ready.append(event)
                        continue
                    ready.extend(meter.feed(event, payload))
            finally:
                buf = buf[start:]
                if ready:  # what came before a failure still reaches the client
                    await self._send(send, b"".join(ready))
            if self.disconnected.is_set() and drain_deadline is None:
                drain_deadline = time.monotonic() + self.drain_timeout
            data = b""

    async def _read(self, gap: asyncio.Timeout, drain_deadline: float | None) -> bytes:
        """Next bytes from the upstream; b"" at its end or when the drain time is up.

        Waiting longer than the idle timeout makes `gap` fire (TimeoutError: a failure).
        """
        if drain_deadline is None:
            return await read_within(gap, self.idle_timeout, self.upstream.content)
        remaining = drain_deadline - time.monotonic()
        if remaining <= 0:
            return b""
        try:
            # No one is listening any more: a pause ends the drain like its deadline does.
            wait = min(remaining, self.idle_timeout)
            return await asyncio.wait_for(self.upstream.content.readany(), wait)
        except TimeoutError:
            log.info("stream %s: drain time over after disconnect", self.charge.request_id)
            return b""

    async def _finish(self, send: Send, events: list[bytes]) -> None:
        await self._send(send, b"".join(events), more=False)  # one write, end of body included
