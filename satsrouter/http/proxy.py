"""Paid proxy endpoints: thin handlers over quote → billing.begin → upstream → finish/fail."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

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
from satsrouter.market.catalogue import Model
from satsrouter.market.routing import ROUTING_FIELDS, Preferences, fallback_models
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
# Names the provider that served a request (Routstr's header).
PROVIDER_HEADER = "X-Routstr-Provider"


def _payment_required(node: Node, quote: Quote) -> ApiError:
    """402 with the NUT-24 payment request: the reservation in whole sats, rounded up (a
    token carries whole sats, and at least one)."""
    sats = max(1, -(-quote.max_cost_msat // 1000))
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
    content_type = request.headers.get("content-type", "")
    call = endpoint.parse(raw, content_type)
    call.request_id = request.state.request_id

    def priced(model_id: object) -> Quote:
        return node.prices.quote(
            model_id,
            len(raw),
            call.max_tokens,
            prompt_estimate=lambda context: estimate_prompt_tokens(call.body, context),
            units=call.units(),
            image_size=call.body.get("size"),
            image_quality=call.body.get("quality"),
            choices=call.choices,
            prompts=call.prompts,
        )

    quote = priced(call.model_id)
    setattr(request.state, MODEL_STATE, quote.model.id)  # priced: a catalogue model
    wishes = Preferences.from_body(call.body)
    routes = node.router.rank(quote.model, node.prices.route_price, wishes)
    for fallback in fallback_models(call.body):
        # OpenRouter's `models`: more models to fall back on, each served by its own price;
        # the reservation covers the dearest of them.
        other = priced(fallback)
        quote = replace(quote, max_cost_msat=max(quote.max_cost_msat, other.max_cost_msat))
        ranked = node.router.rank(other.model, node.prices.route_price, wishes)
        routes += [r for r in ranked if r not in routes]
    # Built before anything is reserved: a body no route can send is a plain 400.
    first = _first_sendable(node, endpoint, call, routes, content_type)
    creds = credentials(request.headers)
    if not creds.present:
        raise _payment_required(node, quote)
    charge = await node.billing.begin(creds, quote, call.request_id, endpoint.path)
    try:
        return await _serve(node, request, endpoint, routes, first, charge, content_type)
    except ApiError as error:
        if charge.done:
            raise
        return await _failed(charge, error)
    except BaseException as exc:
        if not charge.done:  # e.g. cancelled: no one is left to take change
            gone = isinstance(exc, asyncio.CancelledError)
            await charge.fail("client_gone" if gone else "internal_error", change=False)
        raise


@dataclass
class Attempt:
    """One route made ready to call: its upstream, the endpoint in its dialect, the body."""

    index: int  # in the ranked routes
    route: Model
    upstream: Upstream
    endpoint: Endpoint
    call: Call
    body: bytes


def _prepare(node: Node, endpoint: Endpoint, call: Call, index: int, route: Model) -> Attempt:
    """Make `route` ready to call, or raise ApiError when it cannot serve this request."""
    upstream = node.upstreams.get(route.provider)
    if upstream is None:
        raise ApiError(503, "provider_unavailable", f"Provider {route.provider!r} is gone.")
    # The node routes `models` itself (each priced as served); only OpenRouter understands
    # `provider`, and no one else may be sent it.
    call.drop(*(ROUTING_FIELDS if upstream.dialect != "openrouter" else ("models", "route")))
    sent = endpoint.for_dialect(upstream.dialect)
    return Attempt(index, route, upstream, sent, call, sent.upstream_body(call, route))


def _first_sendable(
    node: Node, endpoint: Endpoint, call: Call, routes: list[Model], content_type: str
) -> Attempt:
    """The first route that can carry this request; the first route's refusal if none can."""
    refusal: ApiError | None = None
    for index, route in enumerate(routes):
        if index:  # building a body may have changed the parsed request: start afresh
            call = _reparsed(endpoint, call, content_type)
        try:
            return _prepare(node, endpoint, call, index, route)
        except ApiError as error:
            refusal = refusal or error
    assert refusal is not None  # a model has at least one route
    raise refusal


def _reparsed(endpoint: Endpoint, call: Call, content_type: str) -> Call:
    fresh = endpoint.parse(call.raw, content_type)
    fresh.request_id = call.request_id
    return fresh


async def _serve(
    node: Node,
    request: Request,
    endpoint: Endpoint,
    routes: list[Model],
    first: Attempt,
    charge: Charge,
    content_type: str,
) -> Response:
    """Try the routes in order until one answers; fail over only before the client got a byte.

    Connection errors, timeouts, 5xx and 429 move on to the next route; a 4xx is the client's
    and ends the request. Nothing is charged unless a route served (I4).
    """
    failures: list[ApiError] = []
    attempt: Attempt | None = first
    while attempt is not None:
        outcome = await _attempt(node, request, attempt, charge)
        if isinstance(outcome, Response):
            return outcome
        failures.append(outcome)
        attempt = _next_attempt(node, endpoint, attempt, routes, content_type)
    return await _failed(charge, _every_route_failed(failures))


def _next_attempt(
    node: Node, endpoint: Endpoint, last: Attempt, routes: list[Model], content_type: str
) -> Attempt | None:
    for index in range(last.index + 1, len(routes)):
        try:
            call = _reparsed(endpoint, last.call, content_type)
            return _prepare(node, endpoint, call, index, routes[index])
        except ApiError:
            continue  # this provider cannot carry the request (its dialect lacks the endpoint)
    return None


def _every_route_failed(failures: list[ApiError]) -> ApiError:
    """What the client hears when no route served: 429 if every one was busy, else the last."""
    if all(f.status == 429 for f in failures):
        waits = [f.headers.get("Retry-After", "") for f in failures]
        seconds = [int(w) for w in waits if w.isdigit()]
        error = failures[-1]
        if seconds:
            error.headers["Retry-After"] = str(min(seconds))
        return error
    return next(f for f in reversed(failures) if f.status != 429)


async def _attempt(
    node: Node, request: Request, attempt: Attempt, charge: Charge
) -> Response | ApiError:
    """Call one route. A Response ends the request (served, or refused for the client's
    fault); an ApiError is a failure the next route may make good (nothing charged yet)."""
    name = attempt.route.provider
    call, endpoint = attempt.call, attempt.endpoint
    metrics, health = node.metrics, node.health
    # Claims a half-open circuit's one trial; a route out of rotation is only reached when
    # every route is, and is tried anyway (see `market.routing`).
    health.acquire(name)
    started = time.perf_counter()
    try:
        resp = await attempt.upstream.post(
            endpoint.path,
            attempt.body,
            forwardable_headers(request.headers, node.settings.forward_headers),
            call.content_type,
            stream=call.stream,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        if resp.status >= 400:
            health.record(name, resp.status < 500, latency_ms, rate_limited=resp.status == 429)
            metrics.upstream_error(name, _error_kind(resp.status))
            retry_after = resp.headers.get("Retry-After")
            error = _upstream_error(resp.status, await read_body(resp), retry_after)
            if resp.status >= 500 or resp.status == 429:
                return error
            return await _failed(charge, error)
        charge.serve(node.prices.served(charge.quote, attempt.route))
        if call.stream:
            # Its first bytes within the first-byte timeout, before anything is sent on:
            # until then another route may still take over.
            first = await attempt.upstream.first_chunk(resp)
            health.record(name, True, latency_ms)
            headers = {**_stream_headers(charge), PROVIDER_HEADER: name}
            return MeteredStream(
                resp,
                charge,
                endpoint.meter(call),
                headers,
                node.settings.drain_timeout,
                on_failure=lambda: metrics.upstream_error(name, "stream"),
                first=first,
            )
        media_type = resp.content_type or JSON
        reply = endpoint.reply(call, await read_body(resp), media_type)
        health.record(name, True, latency_ms)
    except UpstreamFailure as exc:
        health.record(name, False)
        metrics.upstream_error(name, exc.kind)
        status = 504 if exc.kind == "timeout" else 502
        message = "The upstream provider did not answer in full; nothing was charged."
        return ApiError(status, f"upstream_{exc.kind}", message)
    except ValueError:
        # A failed exchange like any other: it counts toward the circuit and, when this was a
        # half-open circuit's trial, gives the verdict (else the trial slot stays claimed).
        health.record(name, False)
        metrics.upstream_error(name, "unreadable")
        message = "The upstream sent an unreadable answer; nothing was charged."
        return ApiError(502, "upstream_error", message)

    receipt = await charge.finish(reply.usage)
    headers = {
        "x-request-id": charge.request_id,
        PROVIDER_HEADER: name,
        **receipt_headers(receipt),
    }
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
    native = [r for r in model.routes if _dialect(node, r.provider) == "anthropic"]
    if native:
        upstream = node.upstreams[native[0].provider]
        call.body["model"] = native[0].wire_id
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


def _dialect(node: Node, provider: str) -> str | None:
    upstream = node.upstreams.get(provider)
    return upstream.dialect if upstream is not None else None
