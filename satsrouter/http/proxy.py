"""Paid proxy endpoints: thin handlers over quote → billing.begin → upstream → finish/fail."""

from __future__ import annotations

import asyncio
import logging

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from satsrouter.billing.payments import Charge, Receipt
from satsrouter.billing.quote import Quote
from satsrouter.ecash.requests import payment_request
from satsrouter.endpoints.audio import AudioTranscriptions
from satsrouter.endpoints.base import JSON, Call, Endpoint
from satsrouter.endpoints.chat import ChatCompletions, Completions
from satsrouter.endpoints.media import Embeddings, ImageGenerations
from satsrouter.endpoints.messages import Messages
from satsrouter.endpoints.responses import Responses
from satsrouter.errors import ApiError
from satsrouter.http.auth import credentials
from satsrouter.http.errors import error_response
from satsrouter.http.streaming import MeteredStream
from satsrouter.node import Node
from satsrouter.upstream.anthropic_usage import count_anthropic_prompt_tokens
from satsrouter.upstream.client import (
    Upstream,
    UpstreamFailure,
    forwardable_headers,
    read_body,
)
from satsrouter.usage import estimate_prompt_tokens

log = logging.getLogger(__name__)

router = APIRouter()
# Each paid route's path → the endpoint it is counted under in the metrics.
PAID_ROUTES: dict[str, str] = {}
# The state key `satsrouter.metrics` reads the priced model from (a catalogue id).
MODEL_STATE = "metrics_model"


def _payment_required(node: Node, quote: Quote) -> ApiError:
    sats = -(-quote.max_cost_msat // 1000)
    return ApiError(
        402,
        "payment_required",
        f"This request needs payment: send an API key or Cashu token as Bearer, or a token "
        f"worth at least {sats} sat in X-Cashu.",
        headers={"X-Cashu": payment_request(sats, "sat", node.settings.cashu_mints)},
    )


def receipt_headers(receipt: Receipt) -> dict[str, str]:
    """What a finished or failed request tells the client about its money, as headers."""
    headers: dict[str, str] = {}
    if receipt.cost:
        headers["X-Routstr-Cost-Msats"] = str(receipt.charged_msat)
    if receipt.balance_msat is not None:
        headers["X-Routstr-Balance-Msats"] = str(receipt.balance_msat)
    if receipt.change_token:
        headers["X-Cashu"] = receipt.change_token
    return headers


async def _failed(charge: Charge, error: ApiError) -> Response:
    """Charge nothing (I4); an X-Cashu payer gets the whole value back as change."""
    error.headers.update(receipt_headers(await charge.fail(error.code)))
    return error_response(error)


def _error_kind(status: int) -> str:
    """An upstream's error status as the metrics count it."""
    if status == 429:
        return "rate_limited"
    return "rejected" if status < 500 else "server_error"


def _upstream_error(status: int, body: bytes, retry_after: str | None = None) -> ApiError:
    """An upstream error, in our envelope; its message kept when it is a client mistake."""
    message = "The upstream provider failed; nothing was charged."
    if status < 500:
        try:
            upstream = orjson.loads(body)
            err = upstream.get("error") if isinstance(upstream, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = err["message"]
            elif isinstance(err, str):
                message = err
        except orjson.JSONDecodeError:
            message = body[:500].decode(errors="replace") or message
        if status == 429:
            headers = {"Retry-After": retry_after} if retry_after else {}
            return ApiError(429, "rate_limited_upstream", message, headers=headers)
        return ApiError(status, "upstream_rejected", message)
    return ApiError(502, "upstream_error", message)


def _stream_headers(charge: Charge) -> dict[str, str]:
    return {
        "x-request-id": charge.request_id,
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }


async def paid(request: Request, endpoint: Endpoint) -> Response:
    """Every paid endpoint: quote → reserve → forward → settle (or release on failure)."""
    node: Node = request.app.state.node
    raw = await request.body()  # at most MAX_BODY_BYTES: the app's BodyLimit sees to it
    call = endpoint.parse(raw, request.headers.get("content-type", ""))
    call.request_id = request.state.request_id
    quote = node.prices.quote(
        call.model_id,
        len(raw),
        call.max_tokens,
        prompt_estimate=lambda context: estimate_prompt_tokens(call.body, context),
        units=call.units(),
        image_size=call.body.get("size"),
        image_quality=call.body.get("quality"),
        choices=call.choices,
        prompts=call.prompts,
    )
    setattr(request.state, MODEL_STATE, quote.model.id)  # priced: a catalogue model
    upstream = node.upstreams.get(quote.model.provider, node.upstream)
    api_path = endpoint.path  # what the client called, whatever the upstream speaks
    endpoint = endpoint.for_dialect(upstream.dialect)
    # Built before anything is reserved: a body that cannot be sent is a plain 400.
    body = endpoint.upstream_body(call, quote.model)
    creds = credentials(request.headers)
    if not creds.present:
        raise _payment_required(node, quote)
    charge = await node.billing.begin(creds, quote, call.request_id, api_path)
    try:
        return await _forward(node, request, upstream, endpoint, call, body, charge)
    except ApiError as error:
        if charge.done:
            raise
        return await _failed(charge, error)
    except BaseException as exc:
        if not charge.done:  # e.g. cancelled: no one is left to take change
            gone = isinstance(exc, asyncio.CancelledError)
            await charge.fail("client_gone" if gone else "internal_error", change=False)
        raise


async def _forward(
    node: Node,
    request: Request,
    upstream: Upstream,
    endpoint: Endpoint,
    call: Call,
    body: bytes,
    charge: Charge,
) -> Response:
    upstream_name = charge.quote.model.provider
    metrics = node.metrics
    try:
        resp = await upstream.post(
            endpoint.path,
            body,
            forwardable_headers(request.headers, node.settings.forward_headers),
            call.content_type,
            stream=call.stream,
        )
        node.health.record(upstream_name, resp.status < 500)
        if resp.status >= 400:
            metrics.upstream_error(upstream_name, _error_kind(resp.status))
            retry_after = resp.headers.get("Retry-After")
            error = _upstream_error(resp.status, await read_body(resp), retry_after)
            return await _failed(charge, error)
        if call.stream:
            # Its first bytes within the first-byte timeout, before anything is sent on.
            first = await upstream.first_chunk(resp)
            meter = endpoint.meter(call)
            headers = _stream_headers(charge)
            return MeteredStream(
                resp,
                charge,
                meter,
                headers,
                node.settings.drain_timeout,
                on_failure=lambda: metrics.upstream_error(upstream_name, "stream"),
                first=first,
            )
        media_type = resp.content_type or JSON
        reply = endpoint.reply(call, await read_body(resp), media_type)
    except UpstreamFailure as exc:
        node.health.record(upstream_name, False)
        metrics.upstream_error(upstream_name, exc.kind)
        status = 504 if exc.kind == "timeout" else 502
        message = "The upstream provider did not answer in full; nothing was charged."
        return await _failed(charge, ApiError(status, f"upstream_{exc.kind}", message))
    except ValueError:
        metrics.upstream_error(upstream_name, "unreadable")
        message = "The upstream sent an unreadable answer; nothing was charged."
        return await _failed(charge, ApiError(502, "upstream_error", message))

    receipt = await charge.finish(reply.usage)
    headers = {"x-request-id": charge.request_id, **receipt_headers(receipt)}
    body = endpoint.render(reply, receipt.cost)
    return Response(body, media_type=reply.media_type, headers=headers)


def _route(path: str, endpoint: Endpoint) -> None:
    async def handler(request: Request) -> Response:
        return await paid(request, endpoint)

    handler.__doc__ = endpoint.__doc__
    # A plain Starlette route: FastAPI's dependency solving and query parsing cost ~4% of the
    # CPU of a paid request, and these handlers only need the request itself.
    router.add_route(path, handler, methods=["POST"], name=path)
    PAID_ROUTES[path] = path.replace("/v1/v1/", "/v1/")


_route("/v1/chat/completions", ChatCompletions())
_route("/v1/completions", Completions())
_route("/v1/embeddings", Embeddings())
_route("/v1/images/generations", ImageGenerations())
_route("/v1/audio/transcriptions", AudioTranscriptions())
_route("/v1/audio/translations", AudioTranscriptions("/audio/translations"))
_route("/v1/responses", Responses())
for _prefix in ("/v1", "/v1/v1"):  # `ANTHROPIC_BASE_URL=<node>/v1`, as the seeds say, adds /v1
    _route(f"{_prefix}/messages", Messages())


async def count_tokens(request: Request) -> Response:
    """Anthropic `messages/count_tokens`: free; the upstream's count, or the node's own."""
    node: Node = request.app.state.node
    call = Messages().parse(await request.body(), JSON)
    model = node.prices.model(call.model_id)
    upstream = node.upstreams.get(model.provider, node.upstream)
    if upstream.dialect == "anthropic":
        call.body["model"] = model.id
        try:
            resp = await upstream.post(
                "/messages/count_tokens",
                orjson.dumps(call.body),
                forwardable_headers(request.headers, node.settings.forward_headers),
            )
            body = await read_body(resp)
            if resp.status < 400:
                return Response(body, media_type=JSON)
            if resp.status < 500 and resp.status != 404:
                return error_response(_upstream_error(resp.status, body))
        except UpstreamFailure:
            pass  # counted here instead
    counted = count_anthropic_prompt_tokens(call.body)
    return Response(orjson.dumps({"input_tokens": counted}), media_type=JSON)


for _prefix in ("/v1", "/v1/v1"):
    router.add_route(f"{_prefix}/messages/count_tokens", count_tokens, methods=["POST"])
