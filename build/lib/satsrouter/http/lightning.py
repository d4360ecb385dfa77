"""Lightning funding (Routstr-compatible): pay a bolt11 invoice to create or top up a key."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from satsrouter.errors import ApiError
from satsrouter.http.auth import credentials
from satsrouter.node import Node

router = APIRouter()


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "Send a JSON object.")
    return body


@router.post("/lightning/invoice")
async def create_invoice(request: Request) -> dict[str, Any]:
    """A bolt11 invoice; once paid it funds a new key (`create`) or the Bearer key (`topup`)."""
    node: Node = request.app.state.node
    body = await _body(request)
    amount = body.get("amount_sats")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ApiError(400, "invalid_amount", "Send `amount_sats` as a whole number of sats.")
    purpose = body.get("purpose", "create")
    account_id: int | None = None
    if purpose == "topup":
        # Routstr clients may still send the key in the body (its legacy `api_key` field).
        key = credentials(request.headers).bearer or body.get("api_key")
        if not isinstance(key, str) or not key.strip():
            raise ApiError(
                401, "missing_api_key", "Send the key to top up as `Authorization: Bearer`."
            )
        account_id = (await node.billing.account(key.strip())).id
    invoice = await node.lightning.create_invoice(amount, str(purpose), account_id)
    return {
        "invoice_id": invoice.invoice_id,
        "bolt11": invoice.bolt11,
        "amount_sats": invoice.amount_sats,
        "expires_at": int(invoice.expires_at),
        "purpose": invoice.purpose,
    }


@router.get("/lightning/invoice/{invoice_id}/status")
async def invoice_status(request: Request, invoice_id: str) -> dict[str, Any]:
    """`pending`, `expired`, or `paid` with the key's balance (and the new key for `create`)."""
    node: Node = request.app.state.node
    status = await node.lightning.status(invoice_id)
    result: dict[str, Any] = {
        "status": status.status,
        "purpose": status.purpose,
        "amount_sats": status.amount_sats,
        "created_at": int(status.created_at),
        "expires_at": int(status.expires_at),
    }
    if status.api_key is not None:
        result["api_key"] = status.api_key
    if status.balance_msat is not None:
        result["balance"] = status.balance_msat
    return result
