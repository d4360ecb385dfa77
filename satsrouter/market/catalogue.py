"""The model catalogue: what the node sells, at which USD prices (OpenRouter schema)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

# OpenRouter's per-token (or per-unit) USD price fields, all strings on the wire.
PRICE_FIELDS = (
    "prompt",
    "completion",
    "request",
    "image",
    "web_search",
    "internal_reasoning",
    "input_cache_read",
    "input_cache_write",
)


class CatalogueError(ValueError):
    """A model entry the node cannot price safely."""


def _price(value: Any) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    try:
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogueError(f"price {value!r} is not a number") from exc
    if price < 0 or not price.is_finite():
        # OpenRouter marks "variable" pricing as -1: we cannot charge for it correctly.
        raise CatalogueError(f"price {value!r} is not a usable price")
    return price


@dataclass(frozen=True)
class Model:
    """One model: identity, limits and USD prices per token (or per unit)."""

    id: str
    context_length: int
    max_completion_tokens: int | None
    pricing: dict[str, Decimal]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_openrouter(cls, entry: dict[str, Any]) -> Model:
        """Build from one OpenRouter `/models` entry; raises CatalogueError if unusable."""
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise CatalogueError("model without an id")
        top = entry.get("top_provider") or {}
        context = entry.get("context_length") or top.get("context_length")
        if not isinstance(context, int) or context <= 0:
            raise CatalogueError(f"{model_id}: context_length missing")
        max_completion = top.get("max_completion_tokens")
        if not isinstance(max_completion, int) or max_completion <= 0:
            max_completion = None
        pricing_in = entry.get("pricing") or {}
        pricing = {name: _price(pricing_in.get(name)) for name in PRICE_FIELDS}
        return cls(model_id, context, max_completion, pricing, dict(entry))


def parse_models(payload: Any) -> list[Model]:
    """Parse an OpenRouter-style `{"data": [...]}` (or a bare list), skipping bad entries."""
    entries = payload.get("data", []) if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise CatalogueError("model list must be a list or {'data': [...]}")
    models: list[Model] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            models.append(Model.from_openrouter(entry))
        except CatalogueError as exc:
            log.warning("skipping model: %s", exc)
    return models


def load_models_file(path: Path) -> list[Model]:
    """Models from a `MODELS_PATH` JSON file in `/v1/models` shape."""
    return parse_models(orjson.loads(path.read_bytes()))


class Catalogue:
    """The current set of models, looked up by id or unambiguous short alias."""

    def __init__(self, models: list[Model] | None = None) -> None:
        self._by_id: dict[str, Model] = {}
        self._aliases: dict[str, str] = {}
        self.replace(models or [])

    def replace(self, models: list[Model]) -> None:
        """Swap in a new model list atomically (readers never see a half-built catalogue)."""
        by_id = {m.id: m for m in models}
        short: dict[str, list[str]] = {}
        for model_id in by_id:
            if "/" in model_id:
                short.setdefault(model_id.split("/", 1)[1], []).append(model_id)
        aliases = {name: ids[0] for name, ids in short.items() if len(ids) == 1}
        self._by_id, self._aliases = by_id, aliases

    def get(self, model_id: str) -> Model | None:
        """Find a model by full id or short alias."""
        model = self._by_id.get(model_id)
        if model is None and (full := self._aliases.get(model_id)) is not None:
            model = self._by_id.get(full)
        return model

    def models(self) -> list[Model]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
