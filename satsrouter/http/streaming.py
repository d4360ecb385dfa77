"""Streaming a metered SSE response: pass chunks through as they arrive, settle at the end."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from satsrouter.billing.payments import Charge
from satsrouter.endpoints.base import StreamMeter, UpstreamStreamError, event_data

log = logging.getLogger(__name__)


class MeteredStream(Response):
    """An ASGI response relaying an upstream SSE stream and charging for what it carried.

    Client disconnects do not cancel it: it keeps reading the upstream (bounded by
    `drain_timeout`) so that what was produced is charged (I5). An upstream failure while the
    client is still listening charges nothing (I4).
    """

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        charge: Charge,
        meter: StreamMeter,
        headers: dict[str, str],
        drain_timeout: float,
    ) -> None:
        self.upstream = upstream
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
        drain_deadline: float | None = None
        buf = b""
        try:
            while True:
                data = await self._read(drain_deadline)
                if not data:
                    break
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed = type(exc).__name__
            if isinstance(exc, TimeoutError):
                error = "upstream_timeout"
        except UpstreamStreamError:
            failed = "error reported by the upstream"
        except ValueError:
            failed = "invalid upstream stream"

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

    async def _read(self, drain_deadline: float | None) -> bytes:
        """Next bytes from the upstream; b"" at its end or when the drain time is up."""
        if drain_deadline is None:
            return await self.upstream.content.readany()
        remaining = drain_deadline - time.monotonic()
        if remaining <= 0:
            return b""
        try:
            return await asyncio.wait_for(self.upstream.content.readany(), remaining)
        except TimeoutError:
            log.info("stream %s: drain time over after disconnect", self.charge.request_id)
            return b""

    async def _finish(self, send: Send, events: list[bytes]) -> None:
        await self._send(send, b"".join(events), more=False)  # one write, end of body included
