"""Reading who pays from request headers (API.md, "Authentication")."""

from __future__ import annotations

from starlette.datastructures import Headers

from satsrouter.billing.payments import Credentials


def credentials(headers: Headers) -> Credentials:
    """X-Cashu, then `Authorization: Bearer`, then `x-api-key`."""
    x_cashu = headers.get("x-cashu", "").strip() or None
    bearer: str | None = None
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        bearer = auth[7:].strip() or None
    if bearer is None:
        bearer = headers.get("x-api-key", "").strip() or None
    return Credentials(x_cashu=x_cashu, bearer=bearer)
