"""One Settings object, read from the environment (Routstr-compatible names)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from satsrouter.market.rates import select_feeds
from satsrouter.upstream.client import DIALECTS


class SettingsError(ValueError):
    """A setting has a value the node cannot run with."""


def _split_list(value: str) -> list[str]:
    return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]


def _parse_sources(value: str) -> dict[str, str]:
    """`BTC_USD_SOURCES`: `kraken,coinbase=http://127.0.0.1:8001` → name → base URL."""
    sources: dict[str, str] = {}
    for item in _split_list(value):
        name, _, url = item.partition("=")
        sources[name.strip().lower()] = url.strip()
    return sources


def provider_name_of(url: str) -> str:
    """A short provider name from an upstream URL: `https://openrouter.ai/api` → `openrouter`."""
    host = urlsplit(url).hostname or ""
    labels = [label for label in host.split(".") if label]
    if len(labels) >= 2 and not host.replace(".", "").isdigit():
        return labels[-2]
    return "upstream"


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a node. Build it with `Settings.from_env()`."""

    upstream_base_url: str = "https://openrouter.ai/api/v1"
    upstream_api_key: str = field(default="", repr=False)
    upstream_timeout: float = 120.0
    upstream_name: str = ""  # the provider name it is listed under (default: from the URL)
    # The API the upstream speaks: "openai" or "anthropic" (default: anthropic.com → anthropic).
    upstream_dialect: str = ""
    models_refresh_seconds: float = 600.0
    # Seconds between active health checks of each provider (a GET of its model list).
    health_check_interval: float = 60.0
    cashu_mints: list[str] = field(default_factory=lambda: ["https://mint.minibits.cash/Bitcoin"])
    data_dir: Path = Path("./data")
    database_url: str = ""
    btc_usd_price: Decimal | None = None
    # Live BTC/USD feeds, used unless BTC_USD_PRICE pins the rate: name -> base URL ("" keeps
    # the public URL). Empty means every built-in feed (satsrouter.market.rates.FEEDS).
    btc_usd_sources: dict[str, str] = field(default_factory=dict)
    btc_usd_refresh_seconds: float = 60.0
    # A live price older than this pauses paid requests (503) rather than charge from it.
    btc_usd_max_age_seconds: float = 600.0
    models_path: Path | None = None
    provider_fee: Decimal = Decimal("1.05")
    name: str = "satsrouter"
    description: str = "An LLM node paid in Cashu ecash"
    http_url: str = ""
    onion_url: str = ""
    nsec: str = field(default="", repr=False)
    log_level: str = "INFO"
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    # How long a disconnected stream may keep reading the upstream to learn its usage (I5).
    drain_timeout: float = 30.0
    # A node instance whose heartbeat is older than this is considered dead, where its
    # process lock cannot be seen (another machine on a shared Postgres).
    instance_dead_after: float = 30.0
    # How often the sweeper looks for work of dead instances (reservations, swaps, payouts).
    sweep_interval: float = 10.0
    # Fault injection for crash tests: exit abruptly at this money step (satsrouter.faults).
    fault_crash_at: str = ""
    # The largest request body any route reads; past it, 413 (satsrouter.http.body_limit).
    max_body_bytes: int = 8 * 1024 * 1024
    # Lightning: how often unpaid funding invoices and expired keys are checked.
    invoice_poll_interval: float = 2.0
    expiry_check_interval: float = 30.0
    # LNURL endpoints must be https; tests serve them on loopback over plain http.
    lnurl_allow_http: bool = False

    def __post_init__(self) -> None:
        if not self.upstream_name:
            object.__setattr__(self, "upstream_name", provider_name_of(self.upstream_base_url))
        if not self.upstream_dialect:
            host = urlsplit(self.upstream_base_url).hostname or ""
            dialect = (
                "anthropic"
                if host.endswith("anthropic.com")
                else "openrouter"
                if host.endswith("openrouter.ai")
                else "openai"
            )
            object.__setattr__(self, "upstream_dialect", dialect)

    @property
    def primary_mint(self) -> str:
        return self.cashu_mints[0]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'satsrouter.sqlite').resolve()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default `os.environ`); unset names keep defaults."""
        env = os.environ if env is None else env
        kw: dict[str, object] = {}

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        try:
            if (v := get("UPSTREAM_BASE_URL")) is not None:
                kw["upstream_base_url"] = v.rstrip("/")
            if (v := get("UPSTREAM_API_KEY")) is not None:
                kw["upstream_api_key"] = v
            if (v := get("UPSTREAM_NAME")) is not None:
                kw["upstream_name"] = v
            if (v := get("UPSTREAM_DIALECT")) is not None:
                kw["upstream_dialect"] = v.lower()
            if (v := get("MODELS_REFRESH_SECONDS")) is not None:
                kw["models_refresh_seconds"] = float(v)
            if (v := get("HEALTH_CHECK_INTERVAL")) is not None:
                kw["health_check_interval"] = float(v)
            if (v := get("UPSTREAM_TIMEOUT")) is not None:
                kw["upstream_timeout"] = float(v)
            if (v := get("CASHU_MINTS")) is not None:
                kw["cashu_mints"] = _split_list(v)
            if (v := get("DATA_DIR")) is not None:
                kw["data_dir"] = Path(v)
            if (v := get("DATABASE_URL")) is not None:
                kw["database_url"] = v
            if (v := get("BTC_USD_PRICE")) is not None:
                kw["btc_usd_price"] = Decimal(v)
            if (v := get("BTC_USD_SOURCES")) is not None:
                kw["btc_usd_sources"] = _parse_sources(v)
            if (v := get("BTC_USD_REFRESH_SECONDS")) is not None:
                kw["btc_usd_refresh_seconds"] = float(v)
            if (v := get("BTC_USD_MAX_AGE_SECONDS")) is not None:
                kw["btc_usd_max_age_seconds"] = float(v)
            if (v := get("MODELS_PATH")) is not None:
                kw["models_path"] = Path(v)
            if (v := get("PROVIDER_FEE")) is not None:
                kw["provider_fee"] = Decimal(v)
            for name in ("NAME", "DESCRIPTION", "HTTP_URL", "ONION_URL", "LOG_LEVEL", "NSEC"):
                if (v := get(name)) is not None:
                    kw[name.lower()] = v
            if (v := get("LNURL_ALLOW_HTTP")) is not None:
                kw["lnurl_allow_http"] = v.lower() in ("1", "true", "yes")
            if (v := get("INSTANCE_DEAD_AFTER")) is not None:
                kw["instance_dead_after"] = float(v)
            if (v := get("SWEEP_INTERVAL")) is not None:
                kw["sweep_interval"] = float(v)
            if (v := get("FAULT_CRASH_AT")) is not None:
                kw["fault_crash_at"] = v
            if (v := get("CORS_ORIGINS")) is not None:
                kw["cors_origins"] = _split_list(v)
            if (v := get("MAX_BODY_BYTES")) is not None:
                kw["max_body_bytes"] = int(v)
        except (ArithmeticError, ValueError) as exc:
            raise SettingsError(f"invalid setting: {exc}") from exc

        # Built afresh, not `replace`d on the defaults: `__post_init__` derives the upstream's
        # name and dialect from the URL read here, not from the default URL.
        settings = cls(**kw)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values that would make the node charge wrongly or not start."""
        if not self.cashu_mints:
            raise SettingsError("CASHU_MINTS must name at least one mint")
        if self.provider_fee <= 0:
            raise SettingsError("PROVIDER_FEE must be positive")
        if self.btc_usd_price is not None and self.btc_usd_price <= 0:
            raise SettingsError("BTC_USD_PRICE must be positive")
        if not 0 < self.btc_usd_refresh_seconds < self.btc_usd_max_age_seconds:
            # Otherwise the price would go stale between two refreshes and pause paid requests.
            raise SettingsError(
                "BTC_USD_REFRESH_SECONDS must be positive and shorter than BTC_USD_MAX_AGE_SECONDS"
            )
        try:
            select_feeds(self.btc_usd_sources)
        except ValueError as exc:
            raise SettingsError(f"BTC_USD_SOURCES: {exc}") from exc
        if self.upstream_timeout <= 0:
            raise SettingsError("UPSTREAM_TIMEOUT must be positive")
        if self.upstream_dialect not in DIALECTS:
            raise SettingsError("UPSTREAM_DIALECT must be `openai`, `openrouter` or `anthropic`")
        if not (self.sweep_interval > 0 and self.instance_dead_after > 0):
            raise SettingsError("SWEEP_INTERVAL and INSTANCE_DEAD_AFTER must be positive")
        if not self.health_check_interval > 0:
            raise SettingsError("HEALTH_CHECK_INTERVAL must be positive")
        if self.max_body_bytes <= 0:
            raise SettingsError("MAX_BODY_BYTES must be positive")
