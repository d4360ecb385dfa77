"""Usage figures and keys for the operator (API.md "Admin"; logic in `admin.usage`)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from satsrouter.admin.usage import MAX_DAYS, OperatorUsage, parse_kinds
from satsrouter.errors import ApiError
from satsrouter.http.admin import admin_router, json_response
from satsrouter.jsonbody import json_object
from satsrouter.node import Node

router = admin_router()

MAX_PAGE = 500


def _usage(request: Request) -> OperatorUsage:
    node: Node = request.app.state.node
    return OperatorUsage(node.tx)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name} must be a whole number, {low} to {high}.")
    return value


@router.get("/usage")
async def usage(request: Request) -> Response:
    """Requests, errors, tokens and revenue: totals, by model, by provider, by day."""
    days = _int_param(request, "days", 30, 1, MAX_DAYS)
    return json_response(await _usage(request).figures(days))


@router.get("/keys")
async def keys(request: Request) -> Response:
    """Keys by hash prefix with balance, last use, expiry; `?kind=` (default: not X-Cashu)."""
    kinds = parse_kinds(request.query_params.get("kind"))
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    offset = _int_param(request, "offset", 0, 0, 2**31)
    return json_response(await _usage(request).keys(kinds, limit, offset))


@router.post("/keys/{hash_prefix}/disable")
async def disable_key(request: Request, hash_prefix: str) -> Response:
    """Refuse the key's (and its child keys') requests from now on; its balance stays."""
    return json_response(await _usage(request).set_disabled(hash_prefix, True))


@router.post("/keys/{hash_prefix}/enable")
async def enable_key(request: Request, hash_prefix: str) -> Response:
    """Let a disabled key pay for requests again."""
    return json_response(await _usage(request).set_disabled(hash_prefix, False))


@router.patch("/keys/{hash_prefix}")
async def patch_key(request: Request, hash_prefix: str) -> Response:
    """Set a key's own rate limit: `{"rate_limit": "120/minute"}`, or null for the node's."""
    node: Node = request.app.state.node
    body = json_object(await request.body())
    if set(body) != {"rate_limit"}:
        raise ApiError(400, "invalid_request", 'Send {"rate_limit": "120/minute"} or null.')
    limit = body["rate_limit"]
    if limit is not None and not isinstance(limit, str):
        raise ApiError(400, "invalid_request", "rate_limit must be a string or null.")
    key_hash, key = await _usage(request).set_rate_limit(hash_prefix, limit)
    node.key_limits.set(key_hash, limit)  # here at once; other nodes at their next refresh
    return json_response(key)
