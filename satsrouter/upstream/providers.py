"""Upstream providers as the operator configures them: who to call, how, and under what name.

A provider comes from the environment (`UPSTREAM_*`: the one-provider case), from the
providers file (`PROVIDERS_PATH`) or from the admin API (stored in the database, its key
encrypted). Each is synced, health-checked and called on its own; routing
(`satsrouter.market.routing`) decides which of them serve a public model.

Model ids: a provider's own ids (`gpt-4o-mini` at OpenAI, `claude-sonnet-4-5-20250929` at
Anthropic) become public ids through `model_prefix` (prepended to ids without a `/`) and
`models` (public id -> the provider's id, which wins). The same public id from several
providers makes them candidates for it.

Model lists: `normalise_model_list` turns a provider's `/models` answer into OpenRouter-schema
entries under public ids. Ollama's list (and Anthropic's) carries no prices or context
lengths: the provider's `default_context` and `default_pricing` fill them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

# The node's one provider when nothing else is configured (`UPSTREAM_BASE_URL`'s default).
DEFAULT_UPSTREAM_URL = "https://openrouter.ai/api/v1"

# The APIs a provider may speak. Ollama (and vLLM) serve OpenAI's API; "ollama" says its
# model list carries no prices or context lengths, so the provider's defaults apply.
PROVIDER_DIALECTS = ("openai", "openrouter", "anthropic", "ollama")

# The USD price fields a provider's `default_pricing` may set: the catalogue's own
# (market/catalogue.py PRICE_FIELDS; tests hold the two equal). A misspelt field would
# otherwise be read as a price of 0.
PRICE_FIELDS = (
    "prompt",
    "completion",
    "request",
    "image",
    "web_search",
    "internal_reasoning",
    "input_cache_read",
    "input_cache_write",
    "image_output",
    "audio_second",
)


def dialect_of(url: str) -> str:
    """The API an upstream speaks, guessed from its host (a configured dialect wins)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # not a URL at all (an unclosed "[")
        host = ""
    if host.endswith("anthropic.com"):
        return "anthropic"
    if host.endswith("openrouter.ai"):
        return "openrouter"
    return "openai"


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream provider: where it is, the API it speaks, and how the node treats it."""

    name: str
    base_url: str
    dialect: str = "openai"
    api_key: str = field(default="", repr=False)
    # Multiplies this provider's USD prices instead of PROVIDER_FEE (a model's own fee wins).
    fee: Decimal | None = None
    enabled: bool = True
    # socks5://host:port (socks5h:// resolves names at the proxy, as .onion needs).
    proxy: str = ""
    # Seconds; None takes the node's UPSTREAM_*_TIMEOUT settings.
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    idle_timeout: float | None = None
    model_prefix: str = ""
    models: dict[str, str] = field(default_factory=dict)  # public id -> provider's id
    # Ollama-style lists have no prices or limits: these apply to entries without them.
    default_context: int = 8192
    default_pricing: dict[str, str] = field(default_factory=dict)  # USD per token, by field
    source: str = "environment"  # environment | file | admin

    def public_id(self, upstream_id: str) -> str:
        """The public model id of one of this provider's model ids."""
        for public, own in self.models.items():
            if own == upstream_id:
                return public
        if self.model_prefix and "/" not in upstream_id:
            return self.model_prefix + upstream_id
        return upstream_id

    def upstream_id(self, public_id: str) -> str:
        """The id this provider knows a public model by (what is sent in `model`)."""
        own = self.models.get(public_id)
        if own is not None:
            return own
        if self.model_prefix and public_id.startswith(self.model_prefix):
            return public_id[len(self.model_prefix) :]
        return public_id


def normalise_model_list(config: ProviderConfig, payload: Any) -> list[dict[str, Any]]:
    """A provider's `/models` answer as OpenRouter-schema entries under public ids.

    Each entry keeps its own fields, with `id` the public id and `upstream_id` the
    provider's. An entry without `pricing` is completed from the provider's defaults
    (`default_context`, `default_pricing`, missing price fields "0") when the provider has
    `default_pricing`; otherwise it is left unpriced and the catalogue skips it. Raises
    ValueError for an answer that is not a model list.
    """
    entries = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise ValueError(f"{config.name}: model list must be a list or {{'data': [...]}}")
    # Only with prices the operator set: a model the node cannot price is not sold (an
    # Ollama provider without `default_pricing` lists nothing rather than serving free).
    fill = bool(config.default_pricing)
    result: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            continue
        own = entry["id"]
        out = dict(entry)
        out["id"] = config.public_id(own)
        out["upstream_id"] = own
        if fill and not entry.get("pricing"):
            _fill_defaults(config, out)
        result.append(out)
    return result


def _fill_defaults(config: ProviderConfig, entry: dict[str, Any]) -> None:
    """Complete an entry that says nothing of prices or limits (Ollama's, Anthropic's)."""
    context = entry.get("context_length")
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        context = config.default_context
    entry["context_length"] = context
    entry["pricing"] = {"prompt": "0", "completion": "0", **config.default_pricing}
    top = entry.get("top_provider")
    entry["top_provider"] = {
        "context_length": context,
        "max_completion_tokens": None,
        "is_moderated": False,
        **(top if isinstance(top, dict) else {}),
    }
    entry.setdefault("name", entry.get("display_name") or entry["id"])
    if not isinstance(entry.get("created"), int):
        entry["created"] = _created(entry.get("created_at"))
    entry.setdefault(
        "architecture",
        {"modality": "text->text", "input_modalities": ["text"], "output_modalities": ["text"]},
    )


def _created(value: Any) -> int:
    """Anthropic's `created_at` (RFC 3339) as Unix time; 0 when absent or unreadable."""
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
