"""The model catalogue: what the node sells, at which USD prices (OpenRouter schema)."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

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
    "image_output",  # OpenRouter's: per image generated
    "audio_second",  # ours, not OpenRouter's: transcription priced per second of audio
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
    """One model: identity, limits and prices (USD per token or unit, or sats per million)."""

    id: str
    context_length: int
    max_completion_tokens: int | None
    pricing: dict[str, Decimal]
    raw: dict[str, Any] = field(repr=False, compare=False)
    provider: str = ""  # the upstream that serves it
    fee: Decimal | None = None  # overrides PROVIDER_FEE for this model
    sats_per_million: dict[str, Decimal] = field(default_factory=dict)
    # USD per generated image by "size/quality" or "size" (e.g. "1024x1792/hd"), ours.
    image_variants: dict[str, Decimal] = field(default_factory=dict)

    def image_variant(self, size: Any, quality: Any) -> Decimal | None:
        """The USD price of one image of this size and quality, if the model sets one."""
        if not self.image_variants:
            return None
        for key in (f"{size}/{quality}", str(size), f"*/{quality}"):
            if key in self.image_variants:
                return self.image_variants[key]
        return None

    @property
    def output_modalities(self) -> list[str]:
        arch = self.raw.get("architecture") or {}
        modalities = arch.get("output_modalities") if isinstance(arch, dict) else None
        return [m for m in modalities if isinstance(m, str)] if modalities else ["text"]

    @classmethod
    def from_openrouter(cls, entry: dict[str, Any], provider: str = "") -> Model:
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
        sats_in = entry.get("sats_per_million") or {}
        if not isinstance(sats_in, dict) or any(k not in PRICE_FIELDS for k in sats_in):
            raise CatalogueError(f"{model_id}: sats_per_million must use the price field names")
        sats = {name: _price(value) for name, value in sats_in.items()}
        fee = _price(entry["fee"]) if entry.get("fee") is not None else None
        if fee is not None and fee <= 0:
            raise CatalogueError(f"{model_id}: fee must be positive")
        variants_in = entry.get("image_pricing") or {}
        if not isinstance(variants_in, dict):
            raise CatalogueError(f"{model_id}: image_pricing must map size[/quality] to a price")
        variants = {str(key): _price(value) for key, value in variants_in.items()}
        return cls(
            model_id, context, max_completion, pricing, dict(entry), provider, fee, sats, variants
        )


def parse_models(payload: Any, provider: str = "") -> list[Model]:
    """Parse an OpenRouter-style `{"data": [...]}` (or a bare list), skipping bad entries."""
    entries = payload.get("data", []) if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise CatalogueError("model list must be a list or {'data': [...]}")
    models: list[Model] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            models.append(Model.from_openrouter(entry, provider))
        except CatalogueError as exc:
            log.warning("skipping model: %s", exc)
    return models


class UnknownModel(LookupError):
    """No model by that name; `candidates` are close matches (or the ambiguous choices)."""

    def __init__(self, name: str, candidates: list[str], ambiguous: bool = False) -> None:
        super().__init__(name)
        self.name = name
        self.candidates = candidates
        self.ambiguous = ambiguous


class Catalogue:
    """The current set of models, looked up by id, operator alias or unambiguous short name."""

    def __init__(self, models: list[Model] | None = None, aliases: dict[str, str] | None = None):
        self._by_id: dict[str, Model] = {}
        self._aliases: dict[str, str] = {}
        self._ambiguous: dict[str, list[str]] = {}
        self.replace(models or [], aliases)

    def replace(self, models: list[Model], aliases: dict[str, str] | None = None) -> None:
        """Swap in a new model list atomically (readers never see a half-built catalogue)."""
        by_id = {m.id: m for m in models}
        short: dict[str, list[str]] = {}
        for model_id in by_id:
            if "/" in model_id:
                short.setdefault(model_id.rsplit("/", 1)[1], []).append(model_id)
        resolved = {name: ids[0] for name, ids in short.items() if len(ids) == 1}
        ambiguous = {name: sorted(ids) for name, ids in short.items() if len(ids) > 1}
        for name, target in (aliases or {}).items():
            if target in by_id:  # explicit aliases win over short names
                resolved[name] = target
                ambiguous.pop(name, None)
            else:
                log.warning("alias %r points at unknown model %r", name, target)
        self._by_id, self._aliases, self._ambiguous = by_id, resolved, ambiguous
        self.version = getattr(self, "version", 0) + 1  # lets readers cache what they derive

    def get(self, model_id: str) -> Model | None:
        """Find a model by full id or alias; None if unknown or ambiguous."""
        model = self._by_id.get(model_id)
        if model is None and (full := self._aliases.get(model_id)) is not None:
            model = self._by_id.get(full)
        return model

    def resolve(self, model_id: str) -> Model:
        """Like `get`, but says why not: UnknownModel with close matches or the candidates."""
        model = self.get(model_id)
        if model is not None:
            return model
        if model_id in self._ambiguous:
            raise UnknownModel(model_id, self._ambiguous[model_id], ambiguous=True)
        names = list(self._by_id) + list(self._aliases)
        close = difflib.get_close_matches(model_id, names, n=5, cutoff=0.5)
        return_ids = [self._aliases.get(name, name) for name in close]
        raise UnknownModel(model_id, list(dict.fromkeys(return_ids)))

    def models(self) -> list[Model]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
