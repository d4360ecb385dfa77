"""Rate limits on the paid routes, as ASGI middleware: decided before the handler runs, so a
refused request reserves nothing and redeems no X-Cashu token.

Who is counted: the key (its sha256, as the ledger names it; a Cashu token used as a key
likewise), or the client IP for X-Cashu payers and requests without credentials. Every
answer on these routes carries `X-RateLimit-*` for the tightest window. A client IP with too
many failed authentications (401s here, wrong admin passwords) gets 429 before anything is
looked up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from functools import lru_cache

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satsrouter.admin.ratelimit import Limits, Verdict, parse_limits
from satsrouter.errors import ApiError
from satsrouter.http.auth import credentials
from satsrouter.http.client_ip import client_ip
from satsrouter.http.errors import error_response
from satsrouter.node import Node

# The node's RATE_LIMIT, parsed once per distinct text (the admin may change it).
_node_limits = lru_cache(maxsize=8)(parse_limits)


def _refusal(status: int, code: str, message: str, retry_after: int) -> ApiError:
    return ApiError(status, code, message, headers={"Retry-After": str(retry_after)})


class RateLimit:
    """ASGI middleware: per-key (or per-IP) request limits and in-flight caps on `paths`."""

    def __init__(self, app: ASGIApp, node: Node, paths: Collection[str]) -> None:
        self.app = app
        self.node = node
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        node = self.node
        settings = node.settings
        headers = Headers(scope=scope)
        forwarded = headers.get("x-forwarded-for")
        ip = client_ip(scope.get("client"), forwarded, settings.trusted_proxies)
        failures = node.admin.limiter
        locked = failures.blocked(ip)
        if locked is not None:
            seconds = max(1, int(locked + 0.999))
            error = _refusal(
                429,
                "too_many_attempts",
                f"Too many failed authentications from this address; retry in {seconds} s.",
                seconds,
            )
            await error_response(error)(scope, receive, send)
            return

        creds = credentials(headers)
        items: Limits | None = None
        if creds.bearer and not creds.x_cashu:
            identity = hashlib.sha256(creds.bearer.encode()).hexdigest()
            items = node.key_limits.get(identity)
        else:
            identity = f"ip:{ip}"
        if items is None:
            items = _node_limits(settings.rate_limit)
        verdict = await node.rate_limiter.hit(items, identity)
        if verdict is not None and not verdict.allowed:
            seconds = verdict.retry_after()
            error = _refusal(
                429,
                "rate_limited",
                f"Rate limit of {verdict.limit} requests reached; retry in {seconds} s. "
                "Nothing was charged.",
                seconds,
            )
            await self._answer(error, verdict, scope, receive, send)
            return

        in_flight = node.in_flight
        if not in_flight.enter(identity, settings.max_concurrent_per_key):
            error = _refusal(
                429,
                "too_many_concurrent",
                f"At most {settings.max_concurrent_per_key} requests of one key may run at "
                "once; retry when one has finished. Nothing was charged.",
                1,
            )
            await self._answer(error, verdict, scope, receive, send)
            return
        extra = verdict.headers() if verdict is not None else []

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 401 and creds.present:
                    await failures.failed(ip)  # its next request is refused when over
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            in_flight.leave(identity)

    async def _answer(
        self, error: ApiError, verdict: Verdict | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response = error_response(error)
        if verdict is not None:
            for name, value in verdict.headers():
                response.headers[name.decode()] = value.decode()
        await response(scope, receive, send)
