"""The operator's dashboard at `/admin`: a small static app shipped inside the package.

Plain HTML, CSS and ES modules from `http/static/` (package data), no build step and nothing
fetched from elsewhere. It talks to the node only through the admin API and the public
`/v1` catalogue routes, so it holds no secrets itself: the page is served to anyone, and
every figure behind it needs the admin session.

Every answer carries a strict Content-Security-Policy (scripts and styles from this origin
only, no inline script, no framing): a dashboard that can move the node's money must not be
scriptable by anything injected into it, nor clickjacked.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from satsrouter.errors import ApiError

STATIC_DIR = Path(__file__).parent / "static"
INDEX = "index.html"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

router = APIRouter()


@dataclass(frozen=True)
class Asset:
    """One file of the app, read once: its bytes, type and validator."""

    body: bytes
    media_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    """The app's files by name. Only these are served: no path from a URL reaches the disk."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[path.name] = Asset(body, media_type, etag)
    return found


def _not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"No dashboard file {name!r}.")


@router.api_route("/admin", methods=["GET", "HEAD"], include_in_schema=False)
@router.api_route("/admin/", methods=["GET", "HEAD"], include_in_schema=False)
async def dashboard() -> Response:
    """The app's page. Never cached: a logged-out browser must not show a stored copy."""
    asset = assets()[INDEX]
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.api_route("/admin/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static_file(name: str, request: Request) -> Response:
    """A script or stylesheet of the app; revalidated on every load (an upgrade shows at once)."""
    asset = assets().get(name)
    if asset is None or name == INDEX:
        raise _not_found(name)
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)
