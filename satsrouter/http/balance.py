"""Balance endpoints (seed `/v1/wallet/*` and Routstr `/v1/balance/*` paths, same handlers)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from satsrouter.billing.ledger import Account
from satsrouter.billing.payments import Credentials
from satsrouter.errors import ApiError
from satsrouter.http.auth import credentials
from satsrouter.node import Node

router = APIRouter()


async def _account(node: Node, creds: Credentials) -> Account:
    if not creds.bearer:
        raise ApiError(401, "missing_api_key", "Send your sk- key or Cashu token as Bearer.")
    return await node.billing.account(creds.bearer)


async def _token_from(request: Request) -> str:
    token = request.query_params.get("initial_balance_token") or request.query_params.get(
        "cashu_token"
    )
    if token is None and request.method == "POST":
        raw = await request.body()
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
            if isinstance(body, dict):
                token = body.get("cashu_token") or body.get("initial_balance_token")
    if not isinstance(token, str) or not token.strip():
        raise ApiError(400, "missing_token", "Send a Cashu token as `cashu_token`.")
    return token.strip()


@router.post("/v1/wallet/create")
@router.post("/v1/balance/create")
@router.get("/v1/balance/create")
async def create_key(request: Request) -> dict[str, Any]:
    """Redeem a Cashu token into a new `sk-` key."""
    node: Node = request.app.state.node
    key, account = await node.billing.create_key(await _token_from(request))
    return {
        "api_key": key,
        "balance": account.balance_msat,
        "mint": account.mint_url,
        "unit": account.unit,
    }


@router.get("/v1/balance/info")
@router.get("/v1/wallet/balance")
@router.get("/v1/wallet")
async def balance_info(request: Request) -> dict[str, Any]:
    """Balance, reserved amount and totals of the key in the Authorization header."""
    node: Node = request.app.state.node
    account = await _account(node, credentials(request.headers))
    return {
        "balance": account.balance_msat,
        "reserved": account.reserved_msat,
        "available": account.available_msat,
        "unit": "msat",
        "currency": "msat",
        "mint": account.mint_url,
        "token_unit": account.unit,
        "total_spent": account.total_spent_msat,
        "total_requests": account.total_requests,
    }


@router.post("/v1/balance/refund")
@router.post("/v1/wallet/refund")
async def refund(request: Request) -> dict[str, Any]:
    """Return the change of an `X-Cashu` request again (idempotent)."""
    node: Node = request.app.state.node
    creds = credentials(request.headers)
    if not creds.x_cashu:
        raise ApiError(
            400,
            "missing_token",
            "Send the original token in X-Cashu to recover its change "
            "(key withdrawals come with the wallet endpoints).",
        )
    payout = await node.billing.refund_x_cashu(creds.x_cashu)
    return {"token": payout.token, "amount_msat": payout.amount_msat, "msats": payout.amount_msat}
