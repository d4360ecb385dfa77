"""Model listing: what the node sells, with prices in USD and sats and the max cost."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from satsrouter.errors import ApiError
from satsrouter.market.catalogue import Model
from satsrouter.node import Node

router = APIRouter()


def model_entry(node: Node, model: Model) -> dict[str, Any]:
    """One model as published: the upstream's fields plus sats pricing and max cost."""
    entry = dict(model.raw)
    entry.setdefault("object", "model")
    entry.setdefault("owned_by", model.id.split("/", 1)[0] if "/" in model.id else "system")
    entry.setdefault("created", 0)
    entry["context_length"] = model.context_length
    entry["pricing"] = {name: format(price, "f") for name, price in model.pricing.items()}
    try:
        prices = node.prices.prices(model)
    except ApiError:
        return entry  # no exchange rate: publish USD prices only
    entry["sats_pricing"] = prices.as_sats()
    entry["max_cost"] = node.prices.max_cost(model) / 1000  # sats
    return entry


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """OpenAI list shape with OpenRouter fields, `sats_pricing` and `max_cost`."""
    node: Node = request.app.state.node
    data = [model_entry(node, m) for m in node.catalogue.models()]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
