"""The one error envelope, as responses and exception handlers."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from satsrouter.billing.payouts import PayoutConflict, PayoutInvalid
from satsrouter.ecash.errors import EcashError
from satsrouter.errors import ApiError

log = logging.getLogger(__name__)


def error_response(exc: ApiError) -> Response:
    """Render an ApiError as `{"error": {...}}` with its status and headers."""
    return Response(
        orjson.dumps(exc.envelope()),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def logged(request: Request, exc: ApiError) -> Response:
    """`error_response`, and a log line saying why, so an operator sees why a client failed.

    The path only (a query may carry a token), the stable code and the message, cut short;
    the masking filter stands behind it as everywhere.
    """
    level = logging.WARNING if exc.status >= 500 else logging.INFO
    log.log(
        level,
        "%s %s -> %d %s: %s",
        request.method,
        request.url.path,
        exc.status,
        exc.code,
        exc.message[:300],
    )
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure, ours or the framework's, use the same envelope."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return logged(request, exc)

    async def on_ecash_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EcashError)
        return logged(request, ApiError(exc.status, exc.code, exc.message))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return logged(request, ApiError(exc.status_code, code, str(exc.detail)))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return logged(request, ApiError(400, "invalid_request", "Invalid request parameters."))

    async def on_payout_conflict(request: Request, exc: Exception) -> Response:
        return logged(request, ApiError(409, "conflict", str(exc)))

    async def on_payout_invalid(request: Request, exc: Exception) -> Response:
        return logged(request, ApiError(400, "invalid_amount", str(exc)))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return logged(request, ApiError(500, "internal_error", "Internal error; please report."))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(EcashError, on_ecash_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(PayoutConflict, on_payout_conflict)
    app.add_exception_handler(PayoutInvalid, on_payout_invalid)
    app.add_exception_handler(Exception, on_unexpected)
