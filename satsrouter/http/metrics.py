"""`GET /metrics`: the node's Prometheus metrics, for the operator only.

Who may read them: a scraper with `Authorization: Bearer <METRICS_TOKEN>` (when the setting
is set; wrong tokens count against the client like wrong admin passwords), a logged-in admin
(session or the seed's `admin_password` cookie), and, only when `METRICS_LOOPBACK` is on,
a request from the loopback address that no proxy forwarded. Loopback is off by default: a
reverse proxy on the same host makes every internet request come from 127.0.0.1, and
nginx's `proxy_pass` adds no forwarding header unless told to.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from starlette.responses import Response

from satsrouter.admin.auth import TooManyAttempts
from satsrouter.errors import ApiError
from satsrouter.http.admin import client_of, is_admin, too_many
from satsrouter.node import Node

router = APIRouter()

# Headers a forwarding proxy sets: such a request is not the local scraper it looks like.
_FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _from_loopback(request: Request) -> bool:
    if any(name in request.headers for name in _FORWARDED):
        return False
    try:
        return ipaddress.ip_address(request.client.host if request.client else "").is_loopback
    except ValueError:
        return False


async def _allowed(request: Request, node: Node) -> bool:
    settings = node.settings
    given = _bearer(request)
    if settings.metrics_token and given is not None:
        client = client_of(request)
        await node.admin.limiter.check(client)
        if hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
            return True
        await node.admin.limiter.failed(client)
        return False
    if settings.metrics_loopback and _from_loopback(request):
        return True
    return await is_admin(request)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition; 401 without the token, an admin login or allowed loopback."""
    node: Node = request.app.state.node
    try:
        allowed = await _allowed(request, node)
    except TooManyAttempts as exc:
        raise too_many(exc) from None
    if not allowed:
        raise ApiError(
            401,
            "metrics_unauthorized",
            "Metrics need the METRICS_TOKEN as a bearer token, or an admin login.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(await node.metrics.exposition(), media_type=node.metrics.content_type)
