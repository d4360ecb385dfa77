"""Balance endpoints (seed `/v1/wallet/*` and Routstr `/v1/balance/*` paths, same handlers).

Answers carry the seed's fields and Routstr's; `wallet_units` says in which unit.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from satsrouter.billing.ledger import Account
from satsrouter.billing.payouts import Payout
from satsrouter.errors import ApiError
from satsrouter.http.auth import credentials
from satsrouter.http.wallet_units import amounts_for
from satsrouter.jsonbody import json_object
from satsrouter.node import Node

router = APIRouter()


def _bearer(request: Request, hint: str = "Send your sk- key or Cashu token as Bearer.") -> str:
    """The key in `Authorization: Bearer` / `x-api-key`; 401 with `hint` when there is none."""
    bearer = credentials(request.headers).bearer
    if not bearer:
        raise ApiError(401, "missing_api_key", hint)
    return bearer


async def _token_from(request: Request) -> str:
    token = request.query_params.get("initial_balance_token") or request.query_params.get(
        "cashu_token"
    )
    if token is None and request.method == "POST":
        body = json_object(await request.body())
        token = body.get("cashu_token") or body.get("initial_balance_token")
    if not isinstance(token, str) or not token.strip():
        raise ApiError(400, "missing_token", "Send a Cashu token as `cashu_token`.")
    return token.strip()


def _expiry(request: Request) -> float | None:
    value = request.headers.get("key-expiry-time")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ApiError(400, "invalid_expiry", "Key-Expiry-Time must be a Unix time.") from None


@router.post("/v1/wallet/create")
@router.post("/v1/balance/create")
@router.get("/v1/balance/create")
async def create_key(request: Request) -> dict[str, Any]:
    """Redeem a Cashu token into a new `sk-` key (optionally refunded to Lightning at expiry)."""
    node: Node = request.app.state.node
    refund = request.headers.get("refund-lnurl", "").strip() or None
    if refund is not None:
        await node.lightning_refunds.vet_destination(refund)
    key, account = await node.keys.create(await _token_from(request), refund, _expiry(request))
    body: dict[str, Any] = {"api_key": key, "mint": account.mint_url, "unit": account.unit}
    amounts_for(request, account.unit).put(body, balance=account.balance_msat)
    body.update(refund_address=account.refund_lnurl, expires_at=account.expires_at)
    return body


@router.get("/v1/balance/info")
@router.get("/v1/wallet/balance")
@router.get("/v1/wallet")
async def balance_info(request: Request) -> dict[str, Any]:
    """Balance, reserved amount and totals of the key in the Authorization header."""
    node: Node = request.app.state.node
    account = await node.billing.account(_bearer(request))
    info: dict[str, Any] = {
        "mint": account.mint_url,
        "unit": account.unit,
        "token_unit": account.unit,
        "total_requests": account.total_requests,
        "refund_address": account.refund_lnurl,
        "expires_at": account.expires_at,
    }
    amounts = amounts_for(request, account.unit)
    if account.parent_id is None:
        amounts.put(
            info,
            balance=account.balance_msat,
            reserved=account.reserved_msat,
            available=account.available_msat,
            total_spent=account.total_spent_msat,
        )
        return info
    # A child key shows the money it can reach: the parent's, within its own limit.
    parent = await node.ledger.get_account_by_id(account.parent_id)
    spent = account.period_spent_now(time.time())
    available = parent.available_msat
    if account.spend_limit_msat is not None:
        available = min(available, account.spend_limit_msat - spent)
    info.update(is_child=True, limit_period=account.limit_period)
    amounts.put(
        info,
        balance=parent.balance_msat,
        reserved=parent.reserved_msat,
        available=available,
        total_spent=account.total_spent_msat,
        spend_limit=account.spend_limit_msat,
        period_spent=spent,
    )
    return info


@router.post("/v1/wallet/topup")
@router.post("/v1/balance/topup")
async def topup(request: Request) -> dict[str, Any]:
    """Add a Cashu token's value to the key in the Authorization header."""
    node: Node = request.app.state.node
    key = _bearer(request, "Send the key to top up as Bearer.")
    result = await node.keys.topup(key, await _token_from(request))
    account = result.account
    body: dict[str, Any] = {"msats": result.added_msat, "unit": account.unit}
    amounts_for(request, account.unit).put(
        body, balance=account.balance_msat, amount_added=result.added_msat
    )
    body["added"] = body["amount_added"]  # the name this node used before the seed's
    return body


async def _json_body(request: Request) -> dict[str, Any]:
    return json_object(await request.body())


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ApiError(400, "invalid_request", f"`{name}` must be a positive integer.")
    return value


@router.post("/v1/wallet/withdraw")
@router.post("/v1/balance/refund")
@router.post("/v1/wallet/refund")
async def withdraw(request: Request) -> dict[str, Any]:
    """Pay a key's balance out (all, or `amount` in its unit); or an X-Cashu request's change."""
    node: Node = request.app.state.node
    creds = credentials(request.headers)
    if creds.x_cashu:
        payout, rest = await node.billing.refund_x_cashu(creds.x_cashu)
        # `balance`: what stays against the token, less than one unit, which no token carries
        return _paid_out(request, payout, rest)
    if not creds.bearer:
        raise ApiError(
            401, "missing_api_key", "Send the key as Bearer, or the original token in X-Cashu."
        )
    body = await _json_body(request)
    amount = _positive_int(body.get("amount", request.query_params.get("amount")), "amount")
    amount_msat = _positive_int(body.get("amount_msat"), "amount_msat")
    if amount is not None and amount_msat is not None:
        raise ApiError(400, "invalid_request", "Send `amount` or `amount_msat`, not both.")
    if amount is not None:
        account = await node.keys.parent_account(creds.bearer)
        amount_msat = amount * (1000 if account.unit == "sat" else 1)
    payout = await node.keys.withdraw(
        creds.bearer, amount_msat, request.headers.get("idempotency-key")
    )
    return _paid_out(request, payout, await node.billing.account(creds.bearer))


def _paid_out(request: Request, payout: Payout, account: Account) -> dict[str, Any]:
    """A payout's answer: the seed's `cashu_token`, `amount`, `mint`, and Routstr's `token`."""
    body: dict[str, Any] = {
        "method": payout.method,
        "mint": account.mint_url,
        "unit": account.unit,
        "msats": payout.amount_msat,
        "sats": payout.amount_msat // 1000,
    }
    amounts = amounts_for(request, account.unit)
    amounts.put(body, amount=payout.amount_msat, balance=account.balance_msat)
    if payout.method == "lightning":
        body["recipient"] = account.refund_lnurl
        amounts.put(body, fee=payout.fee_msat)
    else:
        body.update(token=payout.token, cashu_token=payout.token)
    return body


@router.get("/v1/balance/history")
@router.get("/v1/wallet/history")
async def history(request: Request) -> dict[str, Any]:
    """The key's journal: credits, charges and payouts, newest first."""
    node: Node = request.app.state.node
    key = _bearer(request)
    try:
        limit = min(int(request.query_params.get("limit", "100")), 1000)
        before_text = request.query_params.get("before")
        before = int(before_text) if before_text else None
    except ValueError:
        raise ApiError(400, "invalid_request", "limit and before must be integers.") from None
    if before is not None and not 0 <= before < 2**63:
        # A journal id: past the database's integer range it is a 400, not an overflow (500).
        raise ApiError(400, "invalid_request", "before must be a journal entry id.")
    entries = await node.keys.history(key, max(limit, 1), before)
    return {"entries": entries, "unit": "msat"}


@router.post("/v1/balance/child-key")
@router.post("/v1/wallet/child-key")
async def child_keys(request: Request) -> dict[str, Any]:
    """Keys that spend this key's balance, each within an optional limit per period."""
    node: Node = request.app.state.node
    key = _bearer(request, "Send the parent key as Bearer.")
    body = await _json_body(request)
    count = _positive_int(body.get("count", 1), "count") or 1
    limit = _positive_int(body.get("balance_limit", body.get("spend_limit_msat")), "balance_limit")
    period = body.get("balance_limit_reset", body.get("limit_period"))
    expires = body.get("validity_date", body.get("expires_at"))
    if period is not None and not isinstance(period, str):
        raise ApiError(400, "invalid_request", "balance_limit_reset must be a string.")
    if expires is not None and not isinstance(expires, int | float):
        raise ApiError(400, "invalid_request", "validity_date must be a Unix time.")
    keys = await node.keys.create_children(
        key, count, limit, period, float(expires) if expires is not None else None
    )
    return {
        "api_keys": keys,
        "count": len(keys),
        "balance_limit": limit,
        "balance_limit_reset": period,
        "validity_date": expires,
    }
