"""What the node sells and who it is: models, the catalogue, providers, node info.

Price units, as published (per model, `pricing` and `sats_pricing` use the same keys):

- `prompt`, `completion`, `internal_reasoning`, `input_cache_read`, `input_cache_write`:
  per **token** (not per 1,000 tokens);
- `request`: per request; `image`: per image (carried in, or generated); `web_search`: per
  search the upstream ran.

`pricing` is in USD as exact decimal strings (OpenRouter's schema), already including this
node's fee; `sats_pricing` is the same in sats as numbers; `max_cost` is in sats: the most a
text request can cost (full context, whole completion limit, and the default web-search
allowance when the model prices search); each image adds its `image` price. A request is
charged exactly `ceil(units × sats_pricing × 1000)` msat per component.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from satsrouter import __version__
from satsrouter.billing.pricing import MSAT_PER_BTC, usd_prices, with_image_price
from satsrouter.errors import ApiError
from satsrouter.market.catalogue import PRICE_FIELDS, Model
from satsrouter.market.health import worse
from satsrouter.node import Node

router = APIRouter()

PRICE_UNITS = {
    "prompt": "per token",
    "completion": "per token",
    "internal_reasoning": "per token",
    "input_cache_read": "per token",
    "input_cache_write": "per token",
    "request": "per request",
    "image": "per input image",
    "image_output": "per generated image (image generation; `image` when 0)",
    "web_search": "per search",
    "audio_second": "per second of input audio",
}
ENDPOINTS = [
    "chat/completions",
    "completions",
    "embeddings",
    "images/generations",
    "audio/transcriptions",
    "audio/translations",
    "responses",
    "messages",
    "messages/count_tokens",
]

# What an Anthropic-dialect provider serves: its Messages API, and chat completions
# translated to it.
ANTHROPIC_ENDPOINTS = ["chat/completions", "messages", "messages/count_tokens"]


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def model_entry(node: Node, model: Model) -> dict[str, Any]:
    """One model as published: OpenAI + OpenRouter fields, sats pricing and max cost."""
    entry = {k: v for k, v in model.raw.items() if k not in ("fee", "sats_per_million", "enabled")}
    entry["id"] = model.id
    entry["object"] = "model"
    entry.setdefault("name", model.id)
    entry.setdefault("created", 0)
    entry["owned_by"] = model.id.split("/", 1)[0] if "/" in model.id else model.provider
    entry["context_length"] = model.context_length
    top = dict(entry.get("top_provider") or {})
    top.setdefault("context_length", model.context_length)
    top.setdefault("max_completion_tokens", model.max_completion_tokens)
    top.setdefault("is_moderated", False)
    entry["top_provider"] = top
    entry.setdefault(
        "architecture",
        {
            "input_modalities": ["text"],
            "output_modalities": model.output_modalities,
            "tokenizer": None,
            "instruct_type": None,
        },
    )
    entry.setdefault("supported_parameters", [])
    entry["provider"] = model.provider
    # Every provider that may serve it (failover moves between them; `provider` is the first).
    entry["providers"] = list(model.providers)
    entry["pricing_units"] = PRICE_UNITS
    try:
        usd = node.prices.usd_per_btc()
        prices = node.prices.prices(model)
    except ApiError:
        # No exchange rate: the upstream's USD prices, and no sats figures to promise.
        entry["pricing"] = {name: format(model.pricing[name], "f") for name in PRICE_FIELDS}
        return entry
    entry["pricing"] = usd_prices(prices, usd)
    entry["sats_pricing"] = prices.as_sats()
    if model.image_variants:
        # Per generated image by "size/quality" or "size": what images/generations charges.
        variants = {
            key: with_image_price(prices, model, usd_price, usd, node.prices.fee).image_output
            for key, usd_price in model.image_variants.items()
        }
        entry["image_pricing"] = {
            key: format((msat * usd / MSAT_PER_BTC).normalize(), "f")
            for key, msat in variants.items()
        }
        entry["sats_image_pricing"] = {key: float(msat / 1000) for key, msat in variants.items()}
    entry["max_cost"] = node.prices.max_cost(model) / 1000
    return entry


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """OpenAI list shape with OpenRouter fields, `sats_pricing` and `max_cost`."""
    node: Node = request.app.state.node
    # The list only changes with the catalogue, the rate or the fee: build it once per
    # combination (pricing every model per request made this the slowest GET the node serves).
    try:
        rate: Decimal | None = node.prices.usd_per_btc()
    except ApiError:
        rate = None
    key = (node.catalogue.version, rate, node.prices.fee)
    cached: tuple[Any, bytes] | None = getattr(request.app.state, "models_list", None)
    if cached is None or cached[0] != key:
        data = [model_entry(node, m) for m in node.catalogue.models()]
        cached = (key, orjson.dumps({"object": "list", "data": data}))
        request.app.state.models_list = cached
    return Response(cached[1], media_type="application/json")


@router.get("/v1/models/catalog")
async def catalog(request: Request) -> Response:
    """Models grouped by what they produce, then by provider, with `configured`."""
    node: Node = request.app.state.node
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model in node.catalogue.models():
        for modality in model.output_modalities:
            groups.setdefault(modality, {}).setdefault(model.provider, []).append(
                model_entry(node, model)
            )
    return _json(
        {
            modality: [
                {"provider": name, "configured": _configured(node, name), "models": models}
                for name, models in providers.items()
            ]
            for modality, providers in groups.items()
        }
    )


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    """One model (OpenAI `models.retrieve`); ids with a slash work."""
    node: Node = request.app.state.node
    return _json(model_entry(node, node.prices.model(model_id)))


def _dialect(node: Node, provider: str) -> str | None:
    upstream = node.upstreams.get(provider)
    return upstream.dialect if upstream is not None else None


def _configured(node: Node, provider: str) -> bool:
    upstream = node.upstreams.get(provider)
    return upstream is not None and upstream.has_credentials


def _provider(node: Node, name: str, detail: bool) -> dict[str, Any]:
    # This provider's own entry of each model it serves: its prices, its limits.
    models = [r for m in node.catalogue.models() for r in m.routes if r.provider == name]
    supported = {p for m in models for p in m.raw.get("supported_parameters") or []}
    features = ["streaming"]
    if "tools" in supported or "functions" in supported:
        features.append("function_calling")
    if any(
        "image" in (m.raw.get("architecture") or {}).get("input_modalities", []) for m in models
    ):
        features.append("vision")
    # The worse of what health checks and real traffic say and what the last catalogue sync
    # says: a provider whose model list failed to load is degraded, one with no models offline.
    synced = "degraded" if name in node.catalogue_sync.status.errors else "online"
    health = node.health.snapshot(name)
    status = worse(health["status"], synced if models else "offline")
    result: dict[str, Any] = {
        "name": name,
        "display_name": name.replace("-", " ").title().replace(" ", ""),
        "description": f"Models served through {node.upstreams[name].base_url}",
        "endpoints": ANTHROPIC_ENDPOINTS if _dialect(node, name) == "anthropic" else ENDPOINTS,
        "features": features,
        "status": status,
        "last_checked": health["last_checked"],
        "latency_ms": health["latency_ms"],
        "error_rate": health["error_rate"],
        "circuit": health["circuit"],
        "exchange_latency_ms": health["exchange_latency_ms"],
        "consecutive_failures": health["consecutive_failures"],
        "rate_limited": health["rate_limited"],
        "opened_at": health["opened_at"],
        "configured": _configured(node, name),
    }
    if detail:
        result["models"] = [
            {
                "id": m.id,
                "name": m.raw.get("name", m.id),
                "context_window": m.context_length,
                "pricing": model_entry(node, m)["pricing"],
                "pricing_units": PRICE_UNITS,
            }
            for m in models
        ]
    else:
        result["models"] = [m.id for m in models]
    return result


@router.get("/v1/providers")
async def providers(request: Request) -> Response:
    """The upstream providers this node routes to, and (`NOSTR_DISCOVERY`) the other nodes
    found on Nostr that answered their last health check."""
    node: Node = request.app.state.node
    return _json(
        {
            "providers": [_provider(node, name, False) for name in node.upstreams],
            "nodes": node.discovery.nodes,
        }
    )


@router.get("/v1/providers/{name}")
async def provider(name: str, request: Request) -> Response:
    """One provider with its models, endpoints, features and status."""
    node: Node = request.app.state.node
    if name not in node.upstreams:
        raise ApiError(404, "provider_not_found", f"No provider {name!r}; see /v1/providers.")
    return _json(_provider(node, name, True))


@router.get("/v1/info")
async def info(request: Request) -> Response:
    """Who this node is: name, version, mints, URLs, and the state of its catalogue."""
    node: Node = request.app.state.node
    settings = node.settings
    return _json(
        {
            "name": settings.name,
            "description": settings.description,
            "version": __version__,
            "npub": node.npub,
            "mints": settings.cashu_mints,
            "http_url": settings.http_url,
            "onion_url": settings.onion_url,
            "models": len(node.catalogue),
            "catalogue": node.catalogue_sync.status.as_dict(),
            "exchange_rate": node.rate_status(),
        }
    )
