"""The node's HTTP to its mints: its own `POST /v1/swap` (NUT-03), and the timing of every call.

nutshell's `LedgerAPI.split` goes through httpx and pydantic models both ways; with swaps
sent to a mint one at a time, the client's time is the mint's idle time. Errors read the
same as nutshell's, so that `map_mint_error` is the one mapping for both.

Every call to a mint goes through one of two long-lived clients per mint, both made here or
handed a transport from here: the aiohttp session for swaps, and the httpx client nutshell
uses for everything else. Each reports (mint, operation, outcome, seconds) to a
`MintCallObserver` — the node's metrics — timed until the mint's answer starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson

from satsrouter.ecash._cashu import UNCOMPRESSED, BlindedMessage, BlindedSignature, Proof
from satsrouter.ecash.errors import EcashError, map_mint_error

TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=5.0)
_HEADERS = {"Content-Type": "application/json", **UNCOMPRESSED}


_UNREADABLE = "The mint's answer to the swap could not be read; the node will check with the mint."


MintCallObserver = Callable[[str, str, str, float], None]
"""Told of each call to a mint: (mint URL, operation, outcome, seconds).

The operation is the path below the mint's URL with ids replaced (`/v1/keys/{id}`); the
outcome the answer's status class (`2xx`, `4xx`, …) or `error` when no answer came.
"""

# Path segments that name an operation; any other segment is an id (keyset, quote).
_OPERATION_WORDS = frozenset(
    {
        "v1",
        "keys",
        "keysets",
        "info",
        "swap",
        "split",
        "mint",
        "melt",
        "quote",
        "bolt11",
        "bolt12",
        "checkstate",
        "restore",
        "check",
    }
)


def mint_operation(mint_url: str, path: str) -> str:
    """`path` of a request to `mint_url` as a bounded label: `/v1/mint/quote/bolt11/{id}`."""
    base = urlsplit(mint_url).path.rstrip("/")
    if base and path.startswith(base):
        path = path[len(base) :]
    parts = [p if p in _OPERATION_WORDS else "{id}" for p in path.strip("/").split("/") if p]
    return "/" + "/".join(parts[:6])


def _outcome(status: int) -> str:
    return f"{status // 100}xx"


def _timing_trace(mint_url: str, observe: MintCallObserver) -> aiohttp.TraceConfig:
    """aiohttp's hooks around each request of a session: start, answer, or failure."""

    async def started(
        _: aiohttp.ClientSession, ctx: SimpleNamespace, __: aiohttp.TraceRequestStartParams
    ) -> None:
        ctx.started = time.perf_counter()

    async def answered(
        _: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        seconds = time.perf_counter() - ctx.started
        observe(
            mint_url,
            mint_operation(mint_url, params.url.path),
            _outcome(params.response.status),
            seconds,
        )

    async def failed(
        _: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        if isinstance(params.exception, asyncio.CancelledError):
            return  # the caller gave up: nothing to say about the mint
        seconds = time.perf_counter() - ctx.started
        observe(mint_url, mint_operation(mint_url, params.url.path), "error", seconds)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(answered)
    trace.on_request_exception.append(failed)
    return trace


def new_mint_session(
    mint_url: str = "", observe: MintCallObserver | None = None
) -> aiohttp.ClientSession:
    """A long-lived session for swaps at a mint (must be made in the event loop)."""
    connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=60, ttl_dns_cache=300)
    traces = [_timing_trace(mint_url, observe)] if observe is not None else []
    return aiohttp.ClientSession(
        connector=connector, timeout=TIMEOUT, headers=_HEADERS, trace_configs=traces
    )


class TimedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that reports each request to a mint to a `MintCallObserver`."""

    def __init__(self, mint_url: str, observe: MintCallObserver) -> None:
        self._inner = httpx.AsyncHTTPTransport(verify=True)
        self._mint = mint_url
        self._observe = observe

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        operation = mint_operation(self._mint, request.url.path)
        try:
            response = await self._inner.handle_async_request(request)
        except Exception:  # not a cancellation: that is the caller's doing, not the mint's
            self._observe(self._mint, operation, "error", time.perf_counter() - started)
            raise
        self._observe(
            self._mint, operation, _outcome(response.status_code), time.perf_counter() - started
        )
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _input(proof: Proof) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": proof.id,
        "amount": proof.amount,
        "secret": proof.secret,
        "C": proof.C,
    }
    if proof.witness is not None:
        data["witness"] = proof.witness
    return data


async def post_swap(
    session: aiohttp.ClientSession,
    mint_url: str,
    proofs: list[Proof],
    outputs: list[BlindedMessage],
) -> list[BlindedSignature]:
    """The mint's signatures on `outputs` for spending `proofs`; EcashError if refused.

    `mint_unreachable` means the outcome is unknown (no answer, or a server error).
    """
    body = orjson.dumps(
        {
            "inputs": [_input(p) for p in proofs],
            "outputs": [{"amount": o.amount, "id": o.id, "B_": o.B_} for o in outputs],
        }
    )
    try:
        async with session.post(f"{mint_url.rstrip('/')}/v1/swap", data=body) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        raise EcashError("mint_unreachable") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if status == 200:
        try:
            return [BlindedSignature.model_validate(s) for s in data["signatures"]]
        except (TypeError, KeyError, ValueError):
            # The mint took the proofs: only a restore from the seed gets their value back.
            raise EcashError("mint_unreachable", _UNREADABLE) from None
    if status >= 500:
        raise EcashError("mint_unreachable")
    if isinstance(data, dict) and "detail" in data:
        # nutshell's wording, so that its error codes and phrases map as everywhere else
        message = f"Mint Error: {data['detail']}"
        if "code" in data:
            message += f" (Code: {data['code']})"
        raise map_mint_error(Exception(message))
    raise EcashError("mint_error")
