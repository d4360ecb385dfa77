"""Streaming a metered SSE response: pass chunks through as they arrive, settle at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from satsrouter.billing.metering import Usage, delta_text_of, local_usage, usage_from_openai
from satsrouter.billing.payments import Charge
from satsrouter.billing.quote import Quote

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event_data(event: bytes) -> bytes:
    """The `data:` payload of one SSE event (multi-line data joined, comments ignored)."""
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines)


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
        quote: Quote,
        request_body: dict[str, Any],
        headers: dict[str, str],
        drain_timeout: float,
    ) -> None:
        self.upstream = upstream
        self.charge = charge
        self.quote = quote
        self.request_body = request_body
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
                await asyncio.shield(self.charge.release())

    async def _send(self, send: Send, data: bytes, more: bool = True) -> None:
        if not self.disconnected.is_set():
            await send({"type": "http.response.body", "body": data, "more_body": more})

    async def _relay(self, send: Send) -> None:
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in self.out_headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})

        texts: list[bytes] = []  # parsed lazily, only if the upstream reports no usage
        usage_chunk: dict[str, Any] | None = None
        usage: Usage | None = None
        failed: str | None = None
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
                while (end := buf.find(b"\n\n")) >= 0:
                    event, buf = buf[: end + 2], buf[end + 2 :]
                    payload = _event_data(event)
                    if payload == b"[DONE]":
                        continue  # sent once, by us, after the usage and change
                    if not payload:
                        # Comments (": PROCESSING") keep idle clients and proxies patient.
                        await self._send(send, event)
                        continue
                    # Most chunks carry `"usage": null`; only parse the one with counts.
                    if b'"usage":{' in payload or b'"usage": {' in payload:
                        chunk = orjson.loads(payload)
                        found = usage_from_openai(chunk.get("usage"))
                        if found is not None:
                            usage, usage_chunk = found, chunk
                            if not chunk.get("choices"):
                                continue  # held back: re-sent at the end with its cost
                            chunk.pop("usage")
                            event = sse_event(chunk)
                    texts.append(payload)
                    await self._send(send, event)
                if self.disconnected.is_set() and drain_deadline is None:
                    drain_deadline = time.monotonic() + self.drain_timeout
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed = type(exc).__name__
        except ValueError:
            failed = "invalid upstream stream"

        if failed and not self.disconnected.is_set():
            await self.charge.release()
            log.warning(
                "stream %s: upstream failed (%s); nothing charged", self.charge.request_id, failed
            )
            await self._send(
                send,
                sse_event(
                    {
                        "error": {
                            "message": "The upstream failed mid-stream; nothing was charged.",
                            "type": "upstream_error",
                            "code": 502,
                        }
                    }
                ),
            )
            await self._finish(send)
            return

        if usage is None:
            usage = local_usage(self.request_body, self._completion_text(texts))
        cost = self.quote.cost(usage)
        settlement = await self.charge.settle(cost.total_msats)
        charged = settlement.charged_msat if settlement else 0
        final = usage_chunk or {
            "id": f"chatcmpl-{self.charge.request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.request_body.get("model"),
            "choices": [],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        }
        final["usage"]["cost"] = {**cost.as_dict(), "total_msats": charged}
        await self._send(send, sse_event(final))
        await self._finish(send)

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

    async def _finish(self, send: Send) -> None:
        """Send X-Cashu change (if any) as the last event, then `[DONE]` once."""
        payout = await self.charge.change_or_none()
        if payout is not None and payout.token:
            await self._send(
                send,
                sse_event(
                    {
                        "id": f"chatcmpl-{self.charge.request_id}",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": self.request_body.get("model"),
                        "choices": [],
                        "x_cashu_change": payout.token,
                        "change_msats": payout.amount_msat,
                    }
                ),
            )
        await self._send(send, DONE)
        await self._send(send, b"", more=False)

    @staticmethod
    def _completion_text(texts: list[bytes]) -> str:
        parts: list[str] = []
        for payload in texts:
            try:
                chunk = orjson.loads(payload)
            except ValueError:
                continue
            if isinstance(chunk, dict):
                parts.append(delta_text_of(chunk))
        return "".join(parts)
