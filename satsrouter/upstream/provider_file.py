"""The providers file (`PROVIDERS_PATH`): the operator's upstreams, in TOML.

```toml
[[provider]]
name = "openrouter"                   # required, [a-z0-9_-]+, unique
base_url = "https://openrouter.ai/api/v1"
dialect = "openrouter"                # openai | openrouter | anthropic | ollama (or from URL)
api_key_env = "OPENROUTER_KEY"        # the key is read from this environment variable
fee = "1.1"                           # optional, > 0: replaces PROVIDER_FEE for this provider
enabled = true
proxy = "socks5h://127.0.0.1:9050"    # optional
connect_timeout = 10                  # optional seconds (also first_byte_timeout, idle_timeout)
model_prefix = "openai/"              # prepended to the provider's ids without a "/"
models = { "anthropic/claude-sonnet-4.5" = "claude-sonnet-4-5-20250929" }  # public -> own
default_context = 8192                # for model lists without limits (Ollama)
default_pricing = { prompt = "0.000001", completion = "0.000002" }  # USD per token

[routes]
"openai/gpt-4o-mini" = ["openai", "openrouter"]   # the order to try for one public model
```

Keys stay out of the file: `api_key_env` names the variable that holds one (unset or
empty is an error). `api_key = "..."` is accepted, with a warning. Anything else wrong
(an unknown key, a bad URL or dialect, a duplicate name, a timeout or fee not above zero)
raises `ProviderConfigError` naming the provider and the field.

`provider_from_fields` and `validate_provider` are the same checks for the admin API.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from satsrouter.upstream.providers import (
    PRICE_FIELDS,
    PROVIDER_DIALECTS,
    ProviderConfig,
    dialect_of,
)

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9_-]{1,64}")
PROXY_SCHEMES = ("socks5", "socks5h", "socks4", "socks4a", "http", "https")
MAX_CONTEXT = 1_000_000_000  # tokens: far past any model's, and it fits any integer column
TIMEOUTS = ("connect_timeout", "first_byte_timeout", "idle_timeout")
# What a provider's settings may say, besides its key (the file: `api_key_env` or
# `api_key`; the admin API: `api_key`).
FIELDS = (
    "name",
    "base_url",
    "dialect",
    "fee",
    "enabled",
    "proxy",
    *TIMEOUTS,
    "model_prefix",
    "models",
    "default_context",
    "default_pricing",
)


class ProviderConfigError(ValueError):
    """A provider's configuration refused; the message names the provider and the field."""

    def __init__(self, message: str, provider: str = "", field: str = "") -> None:
        where = ": ".join(
            part for part in (f"provider {provider!r}" if provider else "", field) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.provider = provider
        self.field = field


@dataclass(frozen=True)
class ProvidersFile:
    """What a providers file configures: its providers, and the routes for public models."""

    providers: list[ProviderConfig] = field(default_factory=list)
    routes: dict[str, list[str]] = field(default_factory=dict)


def load_providers_file(
    path: Path | str, environ: Mapping[str, str] | None = None
) -> ProvidersFile:
    """Read and check the providers file; keys from `environ` (default `os.environ`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProviderConfigError(
            f"providers file {path}: cannot be read ({exc.strerror})"
        ) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProviderConfigError(f"providers file {path}: not valid TOML ({exc})") from exc
    try:
        return parse_providers(data, os.environ if environ is None else environ)
    except ProviderConfigError as exc:
        raise ProviderConfigError(
            f"providers file {path}: {exc}", exc.provider, exc.field
        ) from None


def parse_providers(data: Mapping[str, Any], environ: Mapping[str, str]) -> ProvidersFile:
    """The providers file's content (parsed TOML) → its providers and routes, checked."""
    unknown = sorted(set(data) - {"provider", "routes"})
    if unknown:
        raise ProviderConfigError(
            f"unknown {'keys' if len(unknown) > 1 else 'key'} {', '.join(unknown)} "
            "(a file has [[provider]] tables and one [routes] table)"
        )
    tables = data.get("provider", [])
    if not isinstance(tables, list):
        raise ProviderConfigError("providers are [[provider]] tables (an array of tables)")
    providers: list[ProviderConfig] = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ProviderConfigError(f"[[provider]] number {index + 1} is not a table")
        config = _file_provider(table, environ, index)
        if any(p.name == config.name for p in providers):
            raise ProviderConfigError("defined twice", config.name, "name")
        providers.append(config)
    return ProvidersFile(providers, parse_routes(data.get("routes", {})))


def _file_provider(table: dict[str, Any], environ: Mapping[str, str], index: int) -> ProviderConfig:
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ProviderConfigError(f"[[provider]] number {index + 1} has no name", field="name")
    fields = dict(table)
    key_env = fields.pop("api_key_env", None)
    key = fields.pop("api_key", None)
    if key_env is not None and key is not None:
        raise ProviderConfigError("give api_key_env or api_key, not both", name, "api_key")
    api_key = ""
    if key_env is not None:
        if not isinstance(key_env, str) or not key_env:
            raise ProviderConfigError("must name an environment variable", name, "api_key_env")
        api_key = environ.get(key_env, "").strip()
        if not api_key:
            raise ProviderConfigError(
                f"the environment variable {key_env} is not set", name, "api_key_env"
            )
    elif key is not None:
        if not isinstance(key, str):
            raise ProviderConfigError("must be text", name, "api_key")
        api_key = key
        if key:
            # The name only, never the key.
            log.warning(
                "providers file: provider %r has its api_key in the file; prefer api_key_env",
                name,
            )
    return provider_from_fields(fields, source="file", api_key=api_key)


def parse_routes(value: Any) -> dict[str, list[str]]:
    """`{public model id: [provider names]}`, checked (names well formed, none twice)."""
    if not isinstance(value, dict):
        raise ProviderConfigError("must be a table of model id = [provider names]", field="routes")
    routes: dict[str, list[str]] = {}
    for model, names in value.items():
        where = f"routes.{model}"
        if not model:
            raise ProviderConfigError("an empty model id", field="routes")
        if not isinstance(names, list) or not names:
            raise ProviderConfigError("must be a non-empty list of provider names", field=where)
        for name in names:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise ProviderConfigError(f"{name!r} is not a provider name", field=where)
        if len(set(names)) != len(names):
            raise ProviderConfigError("names a provider twice", field=where)
        routes[str(model)] = list(names)
    return routes


def provider_from_fields(
    fields: Mapping[str, Any], *, source: str, api_key: str = ""
) -> ProviderConfig:
    """A provider from its settings as the file or the admin API gives them, checked.

    `fields` are `FIELDS` (no key, no source); text or numbers are accepted where a number
    is meant (`fee = "1.1"` or `1.1`). Raises ProviderConfigError naming the field.
    """
    name = fields.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ProviderConfigError(
            f"{name!r} is not a provider name ([a-z0-9_-], 1 to 64)", field="name"
        )
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ProviderConfigError(
            f"unknown field{'s' if len(unknown) > 1 else ''}", name, ", ".join(unknown)
        )
    base_url = _text(fields, name, "base_url", required=True).rstrip("/")
    values: dict[str, Any] = {
        "name": name,
        "base_url": base_url,
        "source": source,
        "api_key": api_key,
    }
    values["dialect"] = _text(fields, name, "dialect").lower() or dialect_of(base_url)
    if "fee" in fields and fields["fee"] is not None:
        values["fee"] = _decimal(fields["fee"], name, "fee")
    if "enabled" in fields:
        if not isinstance(fields["enabled"], bool):
            raise ProviderConfigError("must be true or false", name, "enabled")
        values["enabled"] = fields["enabled"]
    values["proxy"] = _text(fields, name, "proxy")
    for timeout in TIMEOUTS:
        if fields.get(timeout) is not None:
            values[timeout] = _number(fields[timeout], name, timeout)
    values["model_prefix"] = _text(fields, name, "model_prefix")
    if "models" in fields:
        values["models"] = _models(fields["models"], name)
    if "default_context" in fields:
        context = fields["default_context"]
        if not isinstance(context, int) or isinstance(context, bool):
            raise ProviderConfigError("must be a whole number of tokens", name, "default_context")
        values["default_context"] = context
    if "default_pricing" in fields:
        values["default_pricing"] = _pricing(fields["default_pricing"], name)
    config = ProviderConfig(**values)
    validate_provider(config)
    return config


def validate_provider(config: ProviderConfig) -> None:
    """Refuse a provider the node cannot call or price correctly (ProviderConfigError)."""
    name = config.name
    if not NAME.fullmatch(name):
        raise ProviderConfigError(
            f"{name!r} is not a provider name ([a-z0-9_-], 1 to 64)", field="name"
        )
    url = _split(config.base_url)
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise ProviderConfigError(f"{config.base_url!r} is not an http(s) URL", name, "base_url")
    if config.dialect not in PROVIDER_DIALECTS:
        raise ProviderConfigError(f"must be one of {', '.join(PROVIDER_DIALECTS)}", name, "dialect")
    if config.fee is not None and not (config.fee.is_finite() and config.fee > 0):
        raise ProviderConfigError("must be a number above 0", name, "fee")
    if config.proxy:
        proxy = _split(config.proxy)
        if proxy is None or proxy.scheme not in PROXY_SCHEMES or not proxy.hostname:
            raise ProviderConfigError(
                f"must be a URL of one of {', '.join(PROXY_SCHEMES)}", name, "proxy"
            )
    for timeout in TIMEOUTS:
        seconds = getattr(config, timeout)
        if seconds is not None and not 0 < seconds < float("inf"):  # NaN fails too
            raise ProviderConfigError("must be a number of seconds above 0", name, timeout)
    if not 0 < config.default_context <= MAX_CONTEXT:
        raise ProviderConfigError(f"must be 1 to {MAX_CONTEXT} tokens", name, "default_context")
    for field_name, price in config.default_pricing.items():
        if field_name not in PRICE_FIELDS:
            raise ProviderConfigError(
                f"unknown price field {field_name!r} (one of {', '.join(PRICE_FIELDS)})",
                name,
                "default_pricing",
            )
        _price(price, name, f"default_pricing.{field_name}")
    for public, own in config.models.items():
        if not public or not own:
            raise ProviderConfigError("maps public model ids to the provider's ids", name, "models")


def provider_fields(config: ProviderConfig) -> dict[str, Any]:
    """A provider's settings as JSON values (no key, no source): what the admin API stores
    and shows."""
    return {
        "name": config.name,
        "base_url": config.base_url,
        "dialect": config.dialect,
        "fee": None if config.fee is None else str(config.fee),
        "enabled": config.enabled,
        "proxy": config.proxy,
        "connect_timeout": config.connect_timeout,
        "first_byte_timeout": config.first_byte_timeout,
        "idle_timeout": config.idle_timeout,
        "model_prefix": config.model_prefix,
        "models": dict(config.models),
        "default_context": config.default_context,
        "default_pricing": dict(config.default_pricing),
    }


def _split(url: str) -> SplitResult | None:
    """`url` taken apart, or None when it is not one (urlsplit raises for some)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return None
    return parts


# --- field parsers ---------------------------------------------------------------------------


def _text(fields: Mapping[str, Any], provider: str, name: str, required: bool = False) -> str:
    value = fields.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProviderConfigError(
            "must be text" + (" (required)" if required else ""), provider, name
        )
    return value.strip()


def _decimal(value: Any, provider: str, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProviderConfigError("must be a number (or its text)", provider, name)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ProviderConfigError(f"{value!r} is not a number", provider, name) from None
    if not number.is_finite():
        raise ProviderConfigError(f"{value!r} is not a finite number", provider, name)
    return number


def _number(value: Any, provider: str, name: str) -> float:
    return float(_decimal(value, provider, name))


def _price(value: Any, provider: str, name: str) -> str:
    price = _decimal(value, provider, name)
    if price < 0:
        raise ProviderConfigError("must not be negative", provider, name)
    return str(value).strip() if isinstance(value, str) else str(price)


def _pricing(value: Any, provider: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ProviderConfigError(
            "must be a table of price field = USD per token", provider, "default_pricing"
        )
    return {
        str(key): _price(price, provider, f"default_pricing.{key}") for key, price in value.items()
    }


def _models(value: Any, provider: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProviderConfigError(
            "must map public model ids to the provider's ids (text)", provider, "models"
        )
    return dict(value)
