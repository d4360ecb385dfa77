"""The model catalogue: what the node sells, at which USD prices (OpenRouter schema).

A requested model name is looked up, first match wins:

1. the exact catalogue id (`anthropic/claude-sonnet-4.5`, `openai/gpt-4o-2024-08-06`);
2. an operator alias from the models file, by its exact name;
3. the name's normalised key (`model_name`), which makes the names clients send match
   the catalogue's: case is ignored; a trailing `[1m]`-style bracket is dropped; the
   provider prefix is optional, but one that is given must be the entry's own (or the
   entry has none, as on an Anthropic upstream); `-latest` (or `:latest`) and a trailing
   date (`-20250929`, `-2024-08-06`, `@20250929`) are set apart; `.` and `-` between two
   digits are the same (`4-5` == `4.5`; `gpt-4o`, `llama-3.1-70b` keep their shape) and a
   bare `.0` minor version is dropped (`claude-sonnet-4-0` == `claude-sonnet-4`). So
   `claude-sonnet-4-5-20250929`, `claude-sonnet-4-5[1m]` and `anthropic/claude-sonnet-4-5`
   all find `anthropic/claude-sonnet-4.5`, and `claude-3-5-sonnet-latest` finds
   `anthropic/claude-3.5-sonnet` (Anthropic's ids use OpenRouter's word order, only the
   separators differ). A dated name takes the entry with that date if there is one, else
   the undated entry, else the newest dated one. An alias also answers to its own
   normalised forms, ahead of every catalogue entry's.

A key several entries share equally (`gpt-4o-mini` from two providers) resolves to none:
`resolve` raises `UnknownModel(ambiguous=True)` with the candidates.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from dataclasses import dataclass, field, replace
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
    upstream_id: str = ""  # the provider's own id for it, when not the public `id`
    # A public model several providers serve: one entry per provider (each priced and called
    # as that provider's), in catalogue order. Empty for a model one provider serves.
    candidates: tuple[Model, ...] = field(default=(), repr=False, compare=False)

    @property
    def wire_id(self) -> str:
        """The id sent to the provider in a request's `model`."""
        return self.upstream_id or self.id

    @property
    def routes(self) -> tuple[Model, ...]:
        """Every provider's entry for this model (itself, when only one serves it)."""
        return self.candidates or (self,)

    @property
    def providers(self) -> tuple[str, ...]:
        """The names of the providers serving this model."""
        return tuple(m.provider for m in self.routes)

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
        upstream_id = entry.get("upstream_id")
        return cls(
            model_id,
            context,
            max_completion,
            pricing,
            {k: v for k, v in entry.items() if k != "upstream_id"},
            provider,
            fee,
            sats,
            variants,
            upstream_id if isinstance(upstream_id, str) and upstream_id != model_id else "",
        )


def merge_candidates(models: list[Model]) -> Model:
    """One public model from the entries several providers list under its id.

    It is published and reserved for as its dearest route: the largest context and completion
    limit of any of them (prices: `PriceBook.prices` takes each field's highest), so the
    reservation covers whichever provider ends up serving.
    """
    if len(models) == 1:
        return models[0]
    first = models[0]
    limits = [m.max_completion_tokens or m.context_length for m in models]
    return replace(
        first,
        context_length=max(m.context_length for m in models),
        max_completion_tokens=max(limits),
        pricing={name: max(m.pricing[name] for m in models) for name in PRICE_FIELDS},
        candidates=tuple(models),
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


# No model id is this long: a longer name is only matched exactly (and never cached).
_MAX_NAME = 200
_BRACKETS = re.compile(r"(?:\[[^\[\]]*\])+$")
_LATEST = re.compile(r"[-:]latest$")
_DATE = re.compile(r"[-@](20\d\d)-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])$")
_DIGIT_SEPARATOR = re.compile(r"(?<=\d)[.-](?=\d)")
# `4.0` but not `3.0.1` nor `4.0613` (gpt-4-0613 is a model of its own).
_ZERO_MINOR = re.compile(r"(?<=\d)\.0(?![\d.])")


@dataclass(frozen=True)
class ModelName:
    """A model name taken apart: lower-case provider prefix, canonical key, YYYYMMDD date."""

    prefix: str
    key: str
    date: str


def model_name(name: str) -> ModelName | None:
    """The normalised form of a model name (see the module docstring); None if unusable."""
    if len(name) > _MAX_NAME:
        return None
    name = _BRACKETS.sub("", name.strip().lower())
    prefix, _, rest = name.rpartition("/")
    rest = _LATEST.sub("", rest)
    date = ""
    if (found := _DATE.search(rest)) is not None:
        date = "".join(found.groups())
        rest = rest[: found.start()]
    key = _ZERO_MINOR.sub("", _DIGIT_SEPARATOR.sub(".", rest))
    return ModelName(prefix, key, date) if key else None


def _entry_keys(model_id: str) -> list[tuple[str, tuple[bool, str]]]:
    """The lookup keys a catalogue id (or alias) is found under, with its rank for each.

    Keys live in three spaces: `key` for names without a prefix, `prefix/key` for names
    with that prefix, `/key` for ids without one (found by any prefix). Undated outranks
    dated, then the newer date the older.
    """
    name = model_name(model_id)
    if name is None:
        return []
    rank = (not name.date, name.date)
    keys = []
    for space in ("", f"{name.prefix}/"):
        keys.append((space + name.key, rank))
        if name.date:
            keys.append((f"{space}{name.key}@{name.date}", rank))
    return keys


@functools.lru_cache(maxsize=4096)
def _lookup_keys(requested: str) -> tuple[str, ...]:
    """The keys to try for a requested name, most specific first."""
    name = model_name(requested)
    if name is None:
        return ()
    spaces = (f"{name.prefix}/", "/") if name.prefix else ("",)
    keys: list[str] = []
    for space in spaces:
        if name.date:
            keys.append(f"{space}{name.key}@{name.date}")
        keys.append(space + name.key)
    return tuple(keys)


class UnknownModel(LookupError):
    """No model by that name; `candidates` are close matches (or the ambiguous choices)."""

    def __init__(self, name: str, candidates: list[str], ambiguous: bool = False) -> None:
        super().__init__(name)
        self.name = name
        self.candidates = candidates
        self.ambiguous = ambiguous


class Catalogue:
    """The current set of models, looked up by id, operator alias or normalised name."""

    def __init__(self, models: list[Model] | None = None, aliases: dict[str, str] | None = None):
        self._by_id: dict[str, Model] = {}
        self._aliases: dict[str, str] = {}
        # normalised key -> the id it resolves to, or the ids it could mean (ambiguous)
        self._derived: dict[str, str | tuple[str, ...]] = {}
        self.replace(models or [], aliases)

    def replace(self, models: list[Model], aliases: dict[str, str] | None = None) -> None:
        """Swap in a new model list atomically (readers never see a half-built catalogue)."""
        by_id = {m.id: m for m in models}
        ranked: dict[str, list[tuple[tuple[bool, str], str]]] = {}
        for model_id in by_id:
            for key, rank in _entry_keys(model_id):
                ranked.setdefault(key, []).append((rank, model_id))
        derived: dict[str, str | tuple[str, ...]] = {}
        for key, entries in ranked.items():
            best = max(rank for rank, _ in entries)
            top = sorted(model_id for rank, model_id in entries if rank == best)
            derived[key] = top[0] if len(top) == 1 else tuple(top)
        exact: dict[str, str] = {}
        for name, target in (aliases or {}).items():
            if target not in by_id:
                log.warning("alias %r points at unknown model %r", name, target)
                continue
            exact[name] = target
            for key, _ in _entry_keys(name):  # the operator's word beats anything derived
                derived[key] = target
        self._by_id, self._aliases, self._derived = by_id, exact, derived
        self.version = getattr(self, "version", 0) + 1  # lets readers cache what they derive

    def _find(self, name: str) -> str | tuple[str, ...] | None:
        """The id `name` means, or the ids it could mean, or None."""
        target = self._aliases.get(name)
        if target is not None or len(name) > _MAX_NAME:
            return target
        for key in _lookup_keys(name):
            found = self._derived.get(key)
            if found is not None:
                return found
        return None

    def get(self, model_id: str) -> Model | None:
        """Find a model by id, alias or normalised name; None if unknown or ambiguous."""
        model = self._by_id.get(model_id)
        if model is None and isinstance(found := self._find(model_id), str):
            model = self._by_id.get(found)
        return model

    def resolve(self, model_id: str) -> Model:
        """Like `get`, but says why not: UnknownModel with close matches or the candidates."""
        model = self.get(model_id)
        if model is not None:
            return model
        found = self._find(model_id)
        if isinstance(found, tuple):
            raise UnknownModel(model_id, list(found), ambiguous=True)
        # A wrong prefix (`openai/claude-sonnet-4.5`): what the name means without it first.
        hint = self._find(model_id.rpartition("/")[2]) if "/" in model_id else None
        suggested = [hint] if isinstance(hint, str) else list(hint or ())
        names = list(self._by_id) + list(self._aliases)
        close = difflib.get_close_matches(model_id, names, n=5, cutoff=0.5)
        suggested += [self._aliases.get(name, name) for name in close]
        raise UnknownModel(model_id, list(dict.fromkeys(suggested))[:5])

    def models(self) -> list[Model]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
