"""Upstream providers as the operator configures them: who to call, how, and under what name.

A provider comes from the environment (`UPSTREAM_*`: the one-provider case), from the
providers file (`PROVIDERS_PATH`) or from the admin API (stored in the database, its key
encrypted). Each is synced, health-checked and called on its own; routing
(`satsrouter.market.routing`) decides which of them serve a public model.

Model ids: a provider's own ids (`gpt-4o-mini` at OpenAI, `claude-sonnet-4-5-20250929` at
Anthropic) become public ids through `model_prefix` (prepended to ids without a `/`) and
`models` (public id -> the provider's id, which wins). The same public id from several
providers makes them candidates for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

# The APIs a provider may speak. Ollama (and vLLM) serve OpenAI's API; "ollama" says its
# model list carries no prices or context lengths, so the provider's defaults apply.
PROVIDER_DIALECTS = ("openai", "openrouter", "anthropic", "ollama")


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
