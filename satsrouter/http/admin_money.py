"""The operator's money: the wallet view, revenue withdrawals and their list (API.md, "Admin").

Thin handlers over `billing/revenue.py`; every route requires the admin (`admin_router`).
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from satsrouter.http.admin import admin_router, json_response
from satsrouter.jsonbody import json_object
from satsrouter.node import Node

router = admin_router()


@router.get("/wallet")
async def wallet(request: Request) -> Response:
    """Ecash per mint (checked at the mint), users' liabilities, revenue, and the audit."""
    node: Node = request.app.state.node
    return json_response(await node.revenue.view())


@router.post("/withdraw")
async def withdraw(request: Request) -> Response:
    """`{"amount": <sat>, "unit": "sat", "mint_url"?, "destination"?}` → a token or a payment.

    An `Idempotency-Key` header makes a retry (after a lost answer) return the same one.
    """
    node: Node = request.app.state.node
    body = json_object(await request.body())
    amount, unit, mint_url, destination = node.revenue.check_request(
        body.get("amount"), body.get("unit", "sat"), body.get("mint_url"), body.get("destination")
    )
    idempotency_key = request.headers.get("idempotency-key", "").strip() or None
    done = await node.revenue.withdraw(amount, unit, mint_url, destination, idempotency_key)
    return json_response(
        {
            "id": done.payout.id,
            "method": done.payout.method,
            "token": done.payout.token,
            "amount": done.amount,
            "unit": done.unit,
            "mint_url": done.mint_url,
            "fee_msat": done.payout.fee_msat,
            "available_msat": done.available_msat,
        }
    )


@router.get("/withdrawals")
async def withdrawals(request: Request) -> Response:
    """Every withdrawal made (newest first), without its token."""
    node: Node = request.app.state.node
    return json_response({"withdrawals": await node.revenue.withdrawals()})
