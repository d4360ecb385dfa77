"""Paid proxy endpoints: thin handlers over quote → billing.begin → upstream → settle."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from satsrouter.billing.metering import completion_text_of, local_usage, usage_from_openai
from satsrouter.billing.payments import Charge
from satsrouter.billing.quote import Quote
from satsrouter.ecash.requests import payment_request
from satsrouter.errors import ApiError
from satsrouter.http.auth import credentials
from satsrouter.http.errors import error_response, json_object
from satsrouter.http.streaming import MeteredStream
from satsrouter.node import Node
from satsrouter.upstream.client import UpstreamFailure, forwardable_headers, read_body

log = logging.getLogger(__name__)

router = APIRouter()


async def read_json(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The request body, raw and parsed; 413 when too large, 400 when not a JSON object."""
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, "request_too_large", f"Request body exceeds {limit} bytes.")
    if not raw:
        raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
    return raw, json_object(raw)


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ApiError(400, "invalid_request", f"`{name}` must be a positive integer.")
        return value
    return None


def _payment_required(node: Node, quote: Quote) -> ApiError:
    sats = -(-quote.max_cost_msat // 1000)
    return ApiError(
        402,
        "payment_required",
        f"This request needs payment: send an API key or Cashu token as Bearer, or a token "
        f"worth at least {sats} sat in X-Cashu.",
        headers={"X-Cashu": payment_request(sats, "sat", node.settings.cashu_mints)},
    )


async def _failed(charge: Charge, error: ApiError) -> Response:
    """Charge nothing (I4); an X-Cashu payer gets the whole value back as change."""
    await charge.release()
    payout = await charge.change_or_none()
    if payout is not None and payout.token:
        error.headers["X-Cashu"] = payout.token
    return error_response(error)


def _upstream_error(status: int, body: bytes) -> ApiError:
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
        code = "rate_limited_upstream" if status == 429 else "upstream_rejected"
        return ApiError(status, code, message)
    return ApiError(502, "upstream_error", message)


def _stream_headers(charge: Charge) -> dict[str, str]:
    return {
        "x-request-id": charge.request_id,
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions, streaming or not, paid by whoever the headers name."""
    node: Node = request.app.state.node
    raw, body = await read_json(request, node.settings.max_body_bytes)
    quote = node.prices.quote(body.get("model"), len(raw), _max_tokens(body))
    creds = credentials(request.headers)
    if not creds.present:
        raise _payment_required(node, quote)
    request_id: str = request.state.request_id
    charge = await node.billing.begin(creds, quote.max_cost_msat, quote.model.id, request_id)
    try:
        return await _forward(node, request, charge, quote, raw, body)
    except BaseException:
        if not charge.done:
            await charge.release()
        raise


async def _forward(
    node: Node, request: Request, charge: Charge, quote: Quote, raw: bytes, body: dict[str, Any]
) -> Response:
    stream = body.get("stream") is True
    changed = False
    if body.get("model") != quote.model.id:
        body["model"], changed = quote.model.id, True
    if stream:
        options = body.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            changed = True
    if changed:
        raw = orjson.dumps(body)

    try:
        upstream = node.upstreams.get(quote.model.provider, node.upstream)
        resp = await upstream.post("/chat/completions", raw, forwardable_headers(request.headers))
        if resp.status >= 400:
            return await _failed(charge, _upstream_error(resp.status, await read_body(resp)))
        if stream:
            return MeteredStream(
                resp, charge, quote, body, _stream_headers(charge), node.settings.drain_timeout
            )
        data = orjson.loads(await read_body(resp))
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except UpstreamFailure as exc:
        status = 504 if exc.kind == "timeout" else 502
        message = "The upstream provider did not answer in full; nothing was charged."
        return await _failed(charge, ApiError(status, f"upstream_{exc.kind}", message))
    except ValueError:
        message = "The upstream sent an unreadable answer; nothing was charged."
        return await _failed(charge, ApiError(502, "upstream_error", message))

    headers = {"x-request-id": charge.request_id}
    usage = usage_from_openai(data.get("usage"))
    if usage is None:
        usage = local_usage(body, completion_text_of(data))
        data["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
    cost = quote.cost(usage)
    settlement = await charge.settle(cost.total_msats)
    charged = settlement.charged_msat if settlement else 0
    data["usage"]["cost"] = {**cost.as_dict(), "total_msats": charged}
    headers["X-Routstr-Cost-Msats"] = str(charged)
    if charge.x_cashu is None and settlement is not None:
        headers["X-Routstr-Balance-Msats"] = str(settlement.balance_msat)
    elif (payout := await charge.change_or_none()) is not None and payout.token:
        headers["X-Cashu"] = payout.token
    return Response(orjson.dumps(data), media_type="application/json", headers=headers)
