"""Admin login, logout and the check every `/admin/api` route sits behind (API.md, "Admin").

Other admin modules make their routers with `admin_router()`: every route on it answers 401
unless the request carries a live session cookie or the seed's `admin_password` cookie.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from satsrouter import __version__
from satsrouter.admin.auth import PASSWORD_COOKIE, SESSION_COOKIE, TooManyAttempts
from satsrouter.errors import ApiError
from satsrouter.http.client_ip import client_ip
from satsrouter.jsonbody import json_object
from satsrouter.node import Node

PREFIX = "/admin/api"

router = APIRouter(prefix=PREFIX)


def client_of(request: Request) -> str:
    """The address failed logins are counted against (a trusted proxy's client)."""
    node: Node = request.app.state.node
    forwarded = request.headers.get("x-forwarded-for")
    return client_ip(request.client, forwarded, node.settings.trusted_proxies)


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "admin_unauthorized",
        "Admin login required: POST /admin/api/login, or the admin_password cookie.",
    )


def too_many(exc: TooManyAttempts) -> ApiError:
    """429 with `Retry-After` for a client over its failed-attempt limit."""
    seconds = max(1, int(exc.retry_after + 0.999))
    return ApiError(
        429,
        "too_many_attempts",
        f"Too many failed attempts from this address; retry in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


async def is_admin(request: Request) -> bool:
    """Whether the request carries a live session or the right admin password cookie."""
    node: Node = request.app.state.node
    if await node.admin.session_ok(request.cookies.get(SESSION_COOKIE, "")):
        return True
    password = request.cookies.get(PASSWORD_COOKIE, "")
    if not password:
        return False
    try:
        return await node.admin.password_ok(password, client_of(request))
    except TooManyAttempts as exc:
        raise too_many(exc) from None


async def require_admin(request: Request) -> None:
    """The dependency of every protected admin route: 401 unless `is_admin`."""
    if not await is_admin(request):
        raise _unauthorized()


def admin_router() -> APIRouter:
    """A router under `/admin/api` whose every route requires the admin."""
    return APIRouter(prefix=PREFIX, dependencies=[Depends(require_admin)])


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON body as the admin API answers (orjson: Decimal-free, fast)."""
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _secure(request: Request) -> bool:
    # Behind a TLS-terminating proxy the scheme seen here is http: the configured public URL
    # says what the browser used.
    node: Node = request.app.state.node
    return request.url.scheme == "https" or node.settings.http_url.startswith("https://")


@router.post("/login")
async def login(request: Request) -> Response:
    """`{"password"}` → a session cookie (HTTP-only, SameSite=Strict)."""
    node: Node = request.app.state.node
    body = json_object(await request.body())
    password = body.get("password")
    if not isinstance(password, str):
        raise ApiError(400, "invalid_request", 'Send {"password": "…"}.')
    try:
        session = await node.admin.login(password, client_of(request))
    except TooManyAttempts as exc:
        raise too_many(exc) from None
    if session is None:
        raise ApiError(401, "admin_unauthorized", "Wrong admin password.")
    response = json_response({"ok": True, "expires_at": session.expires_at})
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int(node.admin.session_seconds),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End this browser's session (always 200; the cookie is cleared)."""
    node: Node = request.app.state.node
    await node.admin.logout(request.cookies.get(SESSION_COOKIE, ""))
    response = json_response({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/session")
async def session(request: Request) -> Response:
    """Whether this browser is logged in (the dashboard asks before showing anything)."""
    return json_response({"authenticated": await is_admin(request)})


protected = admin_router()


@protected.get("/node")
async def node_summary(request: Request) -> Response:
    """Who this node is and what it serves: the dashboard's header."""
    node: Node = request.app.state.node
    settings = node.settings
    return json_response(
        {
            "name": settings.name,
            "version": __version__,
            "instance_id": node.instance_id,
            "npub": node.npub,
            "mints": settings.cashu_mints,
            "providers": sorted(node.upstreams),
            "models": len(node.catalogue),
            "admin_password_from_environment": node.admin.from_environment,
            # The fleet-wide jobs: which instance runs each (`mine`: this one).
            "leases": await node.leases.all(),
        }
    )
