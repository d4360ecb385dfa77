"""The operator's models file (`MODELS_PATH`): add models, override fields and prices,
disable models, define aliases.

Accepted shapes:

- a `/v1/models` document (`{"data": [...]}` or a bare list): each entry is added, or merged
  into the upstream model with the same id;
- an object with any of `"models"` (entries as above), `"disabled"` (ids), `"aliases"`
  (`{"short-name": "provider/model"}`).

An entry may carry `"enabled": false` (disable), `"fee"` (this model's price multiplier
instead of `PROVIDER_FEE`) and `"sats_per_million"` (`{"prompt": 150, "completion": 600}`:
prices in sats per million tokens, but in sats per unit for `request`/`image`/`web_search`,
e.g. `{"image": 2}` is 2 sats per image; they replace the USD prices and are not multiplied
by any fee).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from satsrouter.market.catalogue import CatalogueError

_MERGED_OBJECTS = ("pricing", "top_provider", "architecture", "sats_per_million")


@dataclass
class ModelOverrides:
    """What the models file says, ready to apply to an upstream's model list."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)

    def apply(self, upstream: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upstream entries with the file's entries merged in, minus disabled ones."""
        merged = {entry["id"]: dict(entry) for entry in upstream if isinstance(entry, dict)}
        for model_id, override in self.entries.items():
            base = merged.get(model_id, {})
            combined = {**base, **override}
            for name in _MERGED_OBJECTS:
                if isinstance(base.get(name), dict) and isinstance(override.get(name), dict):
                    combined[name] = {**base[name], **override[name]}
            merged[model_id] = combined
        return [
            entry
            for model_id, entry in merged.items()
            if model_id not in self.disabled and entry.get("enabled", True) is not False
        ]


def parse_overrides(payload: Any) -> ModelOverrides:
    """Read the models file's JSON; raises CatalogueError when its shape is wrong."""
    if isinstance(payload, list) or (isinstance(payload, dict) and "data" in payload):
        payload = {"models": payload if isinstance(payload, list) else payload["data"]}
    if not isinstance(payload, dict):
        raise CatalogueError("the models file must be a list or an object")
    entries = payload.get("models", [])
    disabled = payload.get("disabled", [])
    aliases = payload.get("aliases", {})
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries
    ):
        raise CatalogueError("`models` must be a list of objects with an `id`")
    if not isinstance(disabled, list) or not all(isinstance(d, str) for d in disabled):
        raise CatalogueError("`disabled` must be a list of model ids")
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise CatalogueError("`aliases` must map names to model ids")
    return ModelOverrides({e["id"]: e for e in entries}, set(disabled), dict(aliases))


def load_overrides(path: Path) -> ModelOverrides:
    """The models file at `path`."""
    try:
        return parse_overrides(orjson.loads(path.read_bytes()))
    except orjson.JSONDecodeError as exc:
        raise CatalogueError(f"{path}: not valid JSON ({exc})") from exc
