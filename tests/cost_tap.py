"""A pass-through HTTP proxy that keeps what each response said it cost.

Real client programs (Claude Code) consume the node's answers themselves, so a test
cannot see the costs they were told. The tap sits between the program and the node on
127.0.0.1, relays every request and response unchanged (streams as they arrive), and
records per exchange: method, path, status, the cost the node reported
(`X-Routstr-Cost-Msats`, `usage.cost.total_msats` in a JSON body, or the last stream
event carrying `usage.cost`) and the token usage shown next to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import orjson
from aiohttp import web

# Hop-by-hop headers, and the ones aiohttp recomputes for the relayed message.
_NOT_RELAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "host",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)
COST_HEADER = "x-routstr-cost-msats"


@dataclasses.dataclass
class Exchange:
    """One request relayed to the node and what its response reported."""

    method: str
    path: str
    status: int
    model: str | None
    cost_msat: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None  # the start of a non-2xx body, for failure messages

    def describe(self) -> str:
        """One line for assertion messages (no credentials: headers are not kept)."""
        return (
            f"{self.method} {self.path} model={self.model} -> {self.status} "
            f"cost={self.cost_msat} usage=({self.input_tokens}, {self.output_tokens})"
            + (f" error={self.error}" if self.error else "")
        )


def _cost_of(data: object) -> tuple[int | None, int | None, int | None]:
    """(total_msats, input_tokens, output_tokens) from an object with `usage`, if any."""
    if not isinstance(data, dict):
        return None, None, None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        message = data.get("message")  # Anthropic message_start
        usage = message.get("usage") if isinstance(message, dict) else None
    if not isinstance(usage, dict):
        return None, None, None
    cost = usage.get("cost")
    total = cost.get("total_msats") if isinstance(cost, dict) else None
    tokens_in = usage.get("input_tokens", usage.get("prompt_tokens"))
    tokens_out = usage.get("output_tokens", usage.get("completion_tokens"))
    return (
        total if isinstance(total, int) else None,
        tokens_in if isinstance(tokens_in, int) else None,
        tokens_out if isinstance(tokens_out, int) else None,
    )


def _read_stream(exchange: Exchange, body: bytes) -> None:
    """Fill in cost and usage from server-sent events: later events win."""
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload.startswith(b"{"):
                continue
            data = orjson.loads(payload)
            if isinstance(data, dict) and data.get("error") is not None:
                # A failure after the 200 (Anthropic `error` event, OpenAI error chunk).
                exchange.error = payload[:300].decode(errors="replace")
            total, tokens_in, tokens_out = _cost_of(data)
            exchange.cost_msat = total if total is not None else exchange.cost_msat
            if tokens_in is not None:
                exchange.input_tokens = tokens_in
            if tokens_out is not None:
                exchange.output_tokens = tokens_out


class CostTap:
    """The proxy: `url` stands in for the node's root URL."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # No decompression and no timeout of our own: relay exactly, let the client decide.
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def paid(self) -> list[Exchange]:
        """The exchanges whose response reported a cost."""
        return [e for e in self.exchanges if e.cost_msat is not None]

    def report(self) -> str:
        """Every exchange, one per line."""
        return "\n".join(e.describe() for e in self.exchanges) or "(no requests reached the tap)"

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        model = None
        if raw[:1] == b"{":
            with_model = orjson.loads(raw)
            if isinstance(with_model, dict) and isinstance(with_model.get("model"), str):
                model = with_model["model"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_RELAYED}
        # Plain bodies so the tap can read the costs in them.
        headers["Accept-Encoding"] = "identity"
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=raw if raw else None,
            allow_redirects=False,
        ) as upstream:
            exchange = Exchange(request.method, request.path_qs, upstream.status, model)
            self.exchanges.append(exchange)
            reply_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_RELAYED
            }
            response = web.StreamResponse(status=upstream.status, headers=reply_headers)
            await response.prepare(request)
            chunks: list[bytes] = []
            async for chunk in upstream.content.iter_any():
                chunks.append(chunk)
                await response.write(chunk)
            await response.write_eof()
        self._record(exchange, upstream.headers, b"".join(chunks))
        return response

    def _record(self, exchange: Exchange, headers: Any, body: bytes) -> None:
        header_cost = headers.get(COST_HEADER)
        if header_cost is not None:
            exchange.cost_msat = int(header_cost)
        if not 200 <= exchange.status < 300:
            exchange.error = body[:300].decode(errors="replace")
            return
        if headers.get("content-type", "").startswith("text/event-stream"):
            _read_stream(exchange, body)
            return
        if body[:1] == b"{":
            total, tokens_in, tokens_out = _cost_of(orjson.loads(body))
            if total is not None:
                # The header and the body must agree when both are present.
                assert header_cost is None or int(header_cost) == total, (header_cost, total)
                exchange.cost_msat = total
            exchange.input_tokens, exchange.output_tokens = tokens_in, tokens_out
