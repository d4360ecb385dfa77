"""One Settings object, read from the environment (Routstr-compatible names).

Each setting is declared once, as a field made by `setting(...)`: its type and default, its
environment variable, the line the README shows for it, and, where plain text will not do,
how the variable is parsed and which values are refused. `Settings.from_env` and the README's
table (`python -m satsrouter.settings --markdown`, held to the README by
tests/test_settings_doc.py) both read these declarations, so there is no second list to keep
in step.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from copy import copy
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from satsrouter import faults
from satsrouter.admin.ratelimit import check_limits
from satsrouter.http.client_ip import check_networks
from satsrouter.logs import LOG_FORMATS
from satsrouter.market.rates import FEEDS, select_feeds
from satsrouter.upstream.client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DIALECTS,
    parse_proxy,
)
from satsrouter.upstream.providers import DEFAULT_UPSTREAM_URL
from satsrouter.upstream.providers import dialect_of as dialect_of

T = TypeVar("T")

# Public relays Routstr nodes and clients use; only written to with `NOSTR_ANNOUNCE`.
DEFAULT_RELAYS = ("wss://relay.damus.io", "wss://nos.lol", "wss://relay.routstr.com")

DECLARED = "satsrouter.setting"  # the key of a field's `Declared` in its metadata


class SettingsError(ValueError):
    """A setting has a value the node cannot run with; `fields` names the settings at fault."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class Declared:
    """What `setting(...)` records about a field: its variable, its docs, its admin side."""

    env: str  # the environment variable
    doc: str  # its meaning, one line (the README's "meaning" column)
    parse: Callable[[str], Any]  # from the variable's stripped, non-empty text
    check: Callable[[Any], None] | None  # raises ValueError(reason) for a value refused
    shown: str  # the default as the README shows it
    kind: str  # the value's type as the admin API names it: one of KINDS
    secret: bool  # never shown: not in `repr`, "[redacted]" in the admin API
    live: bool  # the admin may change it, and a change applies at once (admin/live_settings.py)


def setting(
    default: T,
    *,
    env: str,
    doc: str,
    parse: Callable[[str], T] | None = None,
    check: Callable[[T], None] | None = None,
    shown: str | None = None,
    secret: bool = False,
    kind: str | None = None,
    live: bool = False,
) -> T:
    """A dataclass field declared with its environment variable (text unless `parse` says).

    `shown` replaces the default in the docs where it is derived or a literal would mislead;
    `secret` keeps the value out of `repr` (and so out of logs and tracebacks); `kind` is
    the value's type where the default (None) does not tell it. `live`: the admin API may
    change it and the node applies the change at once; without it the setting comes from the
    environment only.
    """
    declared = Declared(
        env,
        doc,
        parse or _text,
        check,
        _shown(default) if shown is None else shown,
        kind or _kind(default),
        secret,
        live,
    )
    metadata = {DECLARED: declared}
    if isinstance(default, (list, dict)):  # mutable: each Settings gets its own copy
        return field(default_factory=partial(copy, default), repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


# The value types the admin API names (`type` in /admin/api/settings/schema).
KINDS = ("string", "boolean", "integer", "number", "decimal", "list", "object", "path")


def _kind(default: object) -> str:
    """A setting's kind, from its default (a setting whose default is None names its kind)."""
    # bool before int: a bool is an int to isinstance.
    for python_type, kind in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (Decimal, "decimal"),
        (str, "string"),
        (list, "list"),
        (dict, "object"),
        (Path, "path"),
    ):
        if isinstance(default, python_type):
            return kind
    raise TypeError(f"declare the kind of a setting whose default is {default!r}")


# --- parsers: the variable's text (stripped, never empty) → the field's value ----------------


def _text(raw: str) -> str:
    return raw


def _url(raw: str) -> str:
    return raw.rstrip("/")


def _lower(raw: str) -> str:
    return raw.lower()


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a whole number") from None


def _decimal(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{raw!r} is not a number") from None
    if not value.is_finite():  # a NaN would make every later comparison raise
        raise ValueError(f"{raw!r} is not a finite number")
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not one of {', '.join(_TRUE + _FALSE)}")


def _split_list(value: str) -> list[str]:
    return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]


def _header_names(value: str) -> list[str]:
    return [name.lower() for name in _split_list(value)]


def _parse_sources(value: str) -> dict[str, str]:
    """`BTC_USD_SOURCES`: `kraken,coinbase=http://127.0.0.1:8001` → name → base URL."""
    sources: dict[str, str] = {}
    for item in _split_list(value):
        name, _, url = item.partition("=")
        sources[name.strip().lower()] = url.strip()
    return sources


# --- checks: raise ValueError(reason) for a value the node must not run with ------------------


def _positive(value: float | Decimal | None) -> None:
    if value is not None and not value > 0:  # `not >` also refuses a float NaN
        raise ValueError("must be positive")


def _body_limit(value: int) -> None:
    # Below this not even a login or a settings change fits: the admin could not undo it.
    if not value >= 1024:
        raise ValueError("must be at least 1024")


# Client headers that carry this node's credentials or describe this hop: never passed on,
# whatever an operator lists (a key or token would reach the upstream's operator and logs).
NEVER_FORWARDED = frozenset(
    {
        "authorization",
        "x-cashu",
        "x-api-key",
        "cookie",
        "proxy-authorization",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "forwarded",
        "x-forwarded-for",
        "x-real-ip",
    }
)


def _forwardable(names: list[str]) -> None:
    refused = sorted(set(names) & NEVER_FORWARDED)
    if refused:
        raise ValueError(f"never forwarded (credentials or this hop's): {', '.join(refused)}")
    if any(not name or not name.isascii() or " " in name for name in names):
        raise ValueError("not header names")


def _not_negative(value: float) -> None:
    if not value >= 0:
        raise ValueError("must not be negative")


def _some_mint(mints: list[str]) -> None:
    if not mints:
        raise ValueError("must name at least one mint")


def _known_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"must be one of {', '.join(DIALECTS)}")


def _proxy_url(raw: str) -> str:
    parse_proxy(raw)  # its ValueError says what is wrong, never repeating the URL
    return raw


def _proxy(url: str) -> None:
    if url:
        parse_proxy(url)


def _relay_urls(urls: list[str]) -> None:
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("each relay must be a ws:// or wss:// URL")


def _known_sources(sources: dict[str, str]) -> None:
    select_feeds(sources)  # its ValueError names the unknown ones


def _log_level(level: str) -> None:
    if level.upper() not in logging.getLevelNamesMapping():  # as `setup_logging` reads it
        raise ValueError(f"{level!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")


def _log_format(log_format: str) -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"{log_format!r} is not one of {', '.join(LOG_FORMATS)}")


def _fault_step(step: str) -> None:
    if step and step not in faults.STEPS:
        raise ValueError(f"unknown fault step {step!r}; one of: {', '.join(faults.STEPS)}")


def _shown(default: object) -> str:
    """A default as the README's table shows it."""
    if default is None or default == "":
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float):
        return f"`{default:g}`"
    if isinstance(default, Path) and not default.is_absolute():
        return f"`./{default}`"
    if isinstance(default, list):
        return f"`{','.join(default)}`"
    return f"`{default}`"


def provider_name_of(url: str) -> str:
    """A short provider name from an upstream URL: `https://openrouter.ai/api` → `openrouter`."""
    host = urlsplit(url).hostname or ""
    labels = [label for label in host.split(".") if label]
    if len(labels) >= 2 and not host.replace(".", "").isdigit():
        return labels[-2]
    return "upstream"


# Keyword-only: the fields are ordered for the README's table (upstream, money, catalogue,
# requests, the node itself, background work, test-only), not for positional arguments.
@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable about a node. Build it with `Settings.from_env()`."""

    upstream_base_url: str = setting(
        DEFAULT_UPSTREAM_URL,
        env="UPSTREAM_BASE_URL",
        doc="OpenAI-compatible upstream (its `/models` is the catalogue); with "
        "`PROVIDERS_PATH` set, this provider exists only if `UPSTREAM_BASE_URL` or "
        "`UPSTREAM_API_KEY` is set",
        parse=_url,
    )
    upstream_api_key: str = setting(
        "", env="UPSTREAM_API_KEY", doc="the node's key for the upstream", secret=True
    )
    # An LLM may think for minutes, then stream for as long as it likes: the silences are
    # bounded, never the total time. Past any of them the request fails and nothing is charged.
    upstream_connect_timeout: float = setting(
        DEFAULT_CONNECT_TIMEOUT,
        env="UPSTREAM_CONNECT_TIMEOUT",
        doc="seconds to open a connection to the upstream (through `UPSTREAM_PROXY`, if set)",
        parse=_float,
        check=_positive,
        live=True,
    )
    upstream_first_byte_timeout: float | None = setting(
        None,
        env="UPSTREAM_FIRST_BYTE_TIMEOUT",
        doc="seconds from sending a request to the upstream's response headers and, for a "
        "stream, its first bytes (a long answer may think for minutes); past it 504 "
        "`upstream_timeout`",
        parse=_float,
        check=_positive,
        kind="number",
        shown=f"`{DEFAULT_FIRST_BYTE_TIMEOUT:g}`, or `UPSTREAM_TIMEOUT`",
        live=True,
    )
    upstream_idle_timeout: float | None = setting(
        None,
        env="UPSTREAM_IDLE_TIMEOUT",
        doc="longest pause, in seconds, between two chunks of an answer once it flows (streams "
        "and plain bodies); a stream cut by it charges nothing. No limit on the total time",
        parse=_float,
        check=_positive,
        kind="number",
        shown=f"`{DEFAULT_IDLE_TIMEOUT:g}`, or `UPSTREAM_TIMEOUT`",
        live=True,
    )
    upstream_timeout: float | None = setting(
        None,
        env="UPSTREAM_TIMEOUT",
        doc="**deprecated**: the default of `UPSTREAM_FIRST_BYTE_TIMEOUT` and "
        "`UPSTREAM_IDLE_TIMEOUT` when those are not set",
        parse=_float,
        check=_positive,
        kind="number",
        live=True,
    )
    upstream_proxy: str = setting(
        "",
        env="UPSTREAM_PROXY",
        doc="SOCKS5 proxy to reach the upstream through: `socks5://host:port`, or "
        "`socks5h://host:port` to have the proxy resolve names (Tor; `.onion` needs it); "
        "`user:password@` allowed",
        parse=_proxy_url,
        check=_proxy,
        shown="none (direct)",
        secret=True,  # it may carry the proxy's password
    )
    # Derived from the URL in `__post_init__` when left empty.
    upstream_dialect: str = setting(
        "",
        env="UPSTREAM_DIALECT",
        doc="`openai`, `openrouter`, `anthropic` or `ollama`: the API the upstream speaks "
        "(Anthropic gets `x-api-key` and `anthropic-version`; its `/v1/messages` is used "
        "natively; OpenRouter's extensions carry translated thinking and web search; Ollama is "
        "OpenAI's API with a model list without prices)",
        parse=_lower,
        check=_known_dialect,
        shown="`anthropic` for `*.anthropic.com`, `openrouter` for `openrouter.ai`, else `openai`",
    )
    upstream_name: str = setting(
        "",
        env="UPSTREAM_NAME",
        doc="the provider name the upstream is listed under",
        shown="from its host, e.g. `openrouter`",
    )
    providers_path: Path | None = setting(
        None,
        env="PROVIDERS_PATH",
        doc="the providers file (TOML): more upstreams, each with its URL, dialect, key "
        "(from an environment variable), fee, proxy, timeouts and model names, and `routes` "
        '— see "Providers and routing"',
        parse=Path,
        kind="path",
    )
    provider_secret: str = setting(
        "",
        env="PROVIDER_SECRET",
        doc="any long random text: the key that encrypts the providers' API keys the admin API "
        "stores; without it the admin API refuses to store a key",
        shown="none: the admin API stores no provider keys",
        secret=True,
    )
    health_check_interval: float = setting(
        60.0,
        env="HEALTH_CHECK_INTERVAL",
        doc="seconds between active health checks of each provider (a GET of its model list, "
        "latency measured)",
        parse=_float,
        check=_positive,
        live=True,
    )
    circuit_failures: int = setting(
        5,
        env="CIRCUIT_FAILURES",
        doc="failed exchanges in a row (5xx, transport error, timeout; not a 4xx or 429) that "
        "open a provider's circuit; two failed health checks in a row open it too",
        parse=_int,
        check=_positive,
        live=True,
    )
    circuit_cooldown_seconds: float = setting(
        30.0,
        env="CIRCUIT_COOLDOWN_SECONDS",
        doc="seconds an open circuit stays open (its provider checked this often) before one "
        "trial request at a time may close it",
        parse=_float,
        check=_positive,
        live=True,
    )
    cashu_mints: list[str] = setting(
        ["https://mint.minibits.cash/Bitcoin"],
        env="CASHU_MINTS",
        doc="accepted mints, comma separated, first is primary",
        parse=_split_list,
        check=_some_mint,
    )
    # A flood of X-Cashu requests must not become a flood at the mint (per node process).
    mint_max_concurrency: int = setting(
        8,
        env="MINT_MAX_CONCURRENCY",
        doc="most calls this node process has at one mint at once",
        parse=_int,
        check=_positive,
    )
    mint_calls_per_second: float = setting(
        50.0,
        env="MINT_CALLS_PER_SECOND",
        doc="most calls a second this node process makes to one mint (bursts of one second's "
        "worth); 0 leaves the rate unbounded",
        parse=_float,
        check=_not_negative,
    )
    mint_busy_wait: float = setting(
        2.0,
        env="MINT_BUSY_WAIT",
        doc="seconds a token's redemption waits for the mint within those bounds before the "
        "request gets 503 `mint_busy` (with `Retry-After`; the token is left unused)",
        parse=_float,
        check=_not_negative,
    )
    dead_token_cache_seconds: float = setting(
        600.0,
        env="DEAD_TOKEN_CACHE_SECONDS",
        doc="seconds a token found spent, unreadable or from a mint not accepted is answered "
        "from memory, without the mint; 0 turns this off",
        parse=_float,
        check=_not_negative,
    )
    dead_token_cache_size: int = setting(
        10_000,
        env="DEAD_TOKEN_CACHE_SIZE",
        doc="most dead tokens remembered (their hashes) per node process",
        parse=_int,
        check=_positive,
    )
    data_dir: Path = setting(
        Path("./data"),
        env="DATA_DIR",
        doc="the SQLite database (ledger and the node's ecash)",
        parse=Path,
    )
    database_url: str = setting(
        "",
        env="DATABASE_URL",
        doc="SQLAlchemy async URL (e.g. `postgresql+asyncpg://…`)",
        shown="SQLite in `DATA_DIR`",
        secret=True,  # it usually carries the database's password
    )
    btc_usd_price: Decimal | None = setting(
        None,
        env="BTC_USD_PRICE",
        doc="pinned exchange rate; without it the rate is the lowest sane quote of live public "
        "feeds",
        parse=_decimal,
        check=_positive,
        kind="decimal",
    )
    # Empty means every built-in feed; a URL of "" keeps that feed's public one.
    btc_usd_sources: dict[str, str] = setting(
        {},
        env="BTC_USD_SOURCES",
        doc=f"live feeds to use, comma separated: `name` or `name=base_url` ({', '.join(FEEDS)})",
        parse=_parse_sources,
        check=_known_sources,
        shown="all of them, public URLs",
    )
    btc_usd_refresh_seconds: float = setting(
        60.0,
        env="BTC_USD_REFRESH_SECONDS",
        doc="how often the feeds are asked (every 10 s at most while none answers)",
        parse=_float,
        check=_positive,
        live=True,
    )
    btc_usd_max_age_seconds: float = setting(
        600.0,
        env="BTC_USD_MAX_AGE_SECONDS",
        doc="past this age without a fresh price, paid requests get 503 `price_unavailable`",
        parse=_float,
        check=_positive,
        live=True,
    )
    models_path: Path | None = setting(
        None,
        env="MODELS_PATH",
        doc="the operator's models file: add models, override fields and prices (also "
        "`sats_per_million`, per-model `fee`), `disabled` ids, `aliases` — see "
        "`satsrouter/market/overrides.py`",
        parse=Path,
        kind="path",
    )
    models_refresh_seconds: float = setting(
        600.0,
        env="MODELS_REFRESH_SECONDS",
        doc="how often the upstream's model list is re-read (a failure keeps the last good one)",
        parse=_float,
        check=_positive,
        live=True,
    )
    provider_fee: Decimal = setting(
        Decimal("1.05"),
        env="PROVIDER_FEE",
        doc="multiplier on upstream prices",
        parse=_decimal,
        check=_positive,
        live=True,
    )
    max_body_bytes: int = setting(
        8 * 1024 * 1024,
        env="MAX_BODY_BYTES",
        doc="the largest request body, in bytes, any route reads; a larger one gets 413 "
        "`request_too_large` as soon as its `Content-Length` says so, or as it arrives past "
        "the limit (chunked), and its connection is closed; at least 1024",
        parse=_int,
        check=_body_limit,
        live=True,
    )
    max_header_bytes: int = setting(
        32 * 1024,
        env="MAX_HEADER_BYTES",
        doc="the largest request line plus headers, in bytes (an `X-Cashu` token counts); a "
        "larger one gets 431 `request_header_fields_too_large` and its connection is closed; "
        "at least 1024",
        parse=_int,
        check=_body_limit,
    )
    max_header_count: int = setting(
        100,
        env="MAX_HEADER_COUNT",
        doc="the most header fields a request may have; more gets 431 and a closed connection",
        parse=_int,
        check=_positive,
    )
    header_timeout: float = setting(
        10.0,
        env="HEADER_TIMEOUT",
        doc="seconds a connection has to send a request's line and headers, from its opening "
        "(first request) or the request's first byte; a slower one is closed (slow-loris)",
        parse=_float,
        check=_positive,
    )
    keepalive_timeout: float = setting(
        5.0,
        env="KEEPALIVE_TIMEOUT",
        doc="seconds an idle keep-alive connection stays open after a response",
        parse=_float,
        check=_positive,
    )
    max_concurrent_requests: int = setting(
        1000,
        env="MAX_CONCURRENT_REQUESTS",
        doc="requests each node process serves at once (streams count until they end); past "
        "it, 503 `overloaded` with `Retry-After`; 0: no limit",
        parse=_int,
        check=_not_negative,
        live=True,
    )
    drain_timeout: float = setting(
        30.0,
        env="DRAIN_TIMEOUT",
        doc="seconds a stream whose client went away keeps reading the upstream, to learn and "
        "charge what was produced",
        parse=_float,
        check=_not_negative,
        live=True,
    )
    cors_origins: list[str] = setting(
        ["*"],
        env="CORS_ORIGINS",
        doc="origins browsers may call the node from, comma separated",
        parse=_split_list,
        live=True,
    )
    rate_limit: str = setting(
        "60/minute;1000/hour;10000/day",
        env="RATE_LIMIT",
        doc="paid requests allowed per key (per client IP for X-Cashu and unauthenticated "
        "requests), `;`-separated `N/second|minute|hour|day` windows; `off` disables; the admin "
        "may set a key's own (`PATCH /admin/api/keys/{hash_prefix}`); over it: 429 "
        "`rate_limited`, nothing reserved",
        check=check_limits,
        live=True,
    )
    auth_failure_limit: str = setting(
        "10/minute",
        env="AUTH_FAILURE_LIMIT",
        doc="failed authentications (wrong API key or token, wrong admin password or metrics "
        "token) allowed per client IP; past it that IP gets 429 until the window ends; `off` "
        "disables",
        check=check_limits,
        live=True,
    )
    max_concurrent_per_key: int = setting(
        16,
        env="MAX_CONCURRENT_PER_KEY",
        doc="paid requests one key (or client IP) may have in flight on one node process; "
        "past it 429 `too_many_concurrent`; 0 means no cap",
        parse=_int,
        check=_not_negative,
        live=True,
    )
    trusted_proxies: list[str] = setting(
        [],
        env="TRUSTED_PROXIES",
        doc="reverse proxies (IPs or CIDRs, comma separated) whose `X-Forwarded-For` names "
        "the client; from any other peer the socket's address is the client",
        shown="none",
        parse=_split_list,
        check=check_networks,
        live=True,
    )
    forward_headers: list[str] = setting(
        [],
        env="FORWARD_HEADERS",
        doc="more client headers passed on to the upstream (comma separated), besides the "
        "API options `anthropic-version`, `anthropic-beta` and `openai-beta`: e.g. "
        "`HTTP-Referer,X-Title` for OpenRouter's app attribution; credentials never are",
        shown="none",
        parse=_header_names,
        check=_forwardable,
        live=True,
    )
    redis_url: str = setting(
        "",
        env="REDIS_URL",
        doc="Redis for the rate-limit counters (`redis://[:password@]host:port/db`), shared by "
        "every node using it",
        shown="none: counters in each process's memory",
        secret=True,  # it may carry a password
    )
    name: str = setting(
        "satsrouter", env="NAME", doc="the node's name in `/v1/info` and at `/`", live=True
    )
    description: str = setting(
        "An LLM node paid in Cashu ecash",
        env="DESCRIPTION",
        doc="its description in `/v1/info`",
        live=True,
    )
    http_url: str = setting(
        "", env="HTTP_URL", doc="its public URL, shown in `/v1/info`", live=True
    )
    onion_url: str = setting(
        "", env="ONION_URL", doc="its Tor onion URL, shown in `/v1/info`", live=True
    )
    nsec: str = setting(
        "",
        env="NSEC",
        doc="the node's Nostr key, `nsec1…` or hex (its `npub` is shown in `/v1/info`); it "
        "signs the announcement (`NOSTR_ANNOUNCE`)",
        shown="none: with `NOSTR_ANNOUNCE`, one generated on first start and kept in the database",
        secret=True,
    )
    relays: list[str] = setting(
        list(DEFAULT_RELAYS),
        env="RELAYS",
        doc="Nostr relays (`wss://…`, comma separated) the announcement goes to and discovery "
        "reads",
        parse=_split_list,
        check=_relay_urls,
        live=True,
    )
    nostr_announce: bool = setting(
        False,
        env="NOSTR_ANNOUNCE",
        doc="`true`: publish the node's announcement (kind 38421: name, description, "
        "`HTTP_URL`, `ONION_URL`, mints, version) to `RELAYS`, at start, on a change and "
        "every `NOSTR_ANNOUNCE_INTERVAL`",
        parse=_flag,
        live=True,
    )
    nostr_announce_interval: float = setting(
        3600.0,
        env="NOSTR_ANNOUNCE_INTERVAL",
        doc="seconds between re-publications of an unchanged announcement",
        parse=_float,
        check=_positive,
        live=True,
    )
    nostr_discovery: bool = setting(
        False,
        env="NOSTR_DISCOVERY",
        doc="`true`: `GET /v1/providers` also lists other nodes announced on `RELAYS` "
        "(`nodes`), those whose `/v1/info` and `/v1/models` answer",
        parse=_flag,
        live=True,
    )
    nostr_discovery_ttl: float = setting(
        300.0,
        env="NOSTR_DISCOVERY_TTL",
        doc="seconds the discovered nodes and their health checks are kept before the relays "
        "are read and the nodes checked again",
        parse=_float,
        check=_positive,
        live=True,
    )
    admin_password: str = setting(
        "",
        env="ADMIN_PASSWORD",
        doc="the admin password (dashboard at `/admin`, `/admin/api`); it wins over a stored one",
        shown="generated on first start, shown once, stored hashed",
        secret=True,
    )
    admin_session_hours: float = setting(
        24.0,
        env="ADMIN_SESSION_HOURS",
        doc="how long a dashboard login lasts",
        parse=_float,
        check=_positive,
        live=True,
    )
    log_level: str = setting(
        "INFO",
        env="LOG_LEVEL",
        doc="how much the node logs: `DEBUG`, `INFO`, `WARNING` or `ERROR`",
        check=_log_level,
        live=True,
    )
    log_format: str = setting(
        "text",
        env="LOG_FORMAT",
        doc="`text`, or `json`: one JSON object per line (`time`, `level`, `logger`, "
        "`message`, `request_id`, `exception`), secrets masked as in text",
        parse=_lower,
        check=_log_format,
    )
    metrics_token: str = setting(
        "",
        env="METRICS_TOKEN",
        doc="lets Prometheus read `/metrics` with `Authorization: Bearer <token>` (an admin "
        "login always may)",
        shown="none: `/metrics` needs the admin login",
        secret=True,
    )
    metrics_loopback: bool = setting(
        False,
        env="METRICS_LOOPBACK",
        doc="`true`: requests from the loopback address (127.0.0.1, ::1) with no forwarding "
        "header read `/metrics` without credentials; unsafe behind a reverse proxy on the same "
        "host that sets no `X-Forwarded-For`",
        parse=_flag,
    )
    sweep_interval: float = setting(
        10.0,
        env="SWEEP_INTERVAL",
        doc="seconds between passes that take over the work of dead node processes "
        "(reservations, swaps, payouts), each with this process's heartbeat; at most half of "
        "`INSTANCE_DEAD_AFTER`",
        parse=_float,
        check=_positive,
        live=True,
    )
    # Where the process lock cannot be seen: another machine on a shared Postgres.
    instance_dead_after: float = setting(
        30.0,
        env="INSTANCE_DEAD_AFTER",
        doc="seconds without a heartbeat after which another machine's node process counts as "
        "dead (on one machine its lock tells at once)",
        parse=_float,
        check=_positive,
    )
    # Clocks of different machines are compared (store/leases.py): keep it well above skew.
    lease_ttl_seconds: float = setting(
        30.0,
        env="LEASE_TTL_SECONDS",
        doc="seconds a node holds a fleet-wide job (invoice watcher, Lightning payout expiry, "
        "automatic payouts) without renewing; a dead holder's jobs move to another node after "
        "it. Keep it well above clock skew between machines",
        parse=_float,
        check=_positive,
        live=True,
    )
    invoice_poll_interval: float = setting(
        2.0,
        env="INVOICE_POLL_INTERVAL",
        doc="seconds between checks of unpaid Lightning funding invoices",
        parse=_float,
        check=_positive,
        live=True,
    )
    expiry_check_interval: float = setting(
        30.0,
        env="EXPIRY_CHECK_INTERVAL",
        doc="seconds between passes that refund expired keys to their `Refund-LNURL` (and "
        "finish pending Lightning payments)",
        parse=_float,
        check=_positive,
        live=True,
    )
    # Other nodes on the same database apply an admin's change within this time.
    settings_refresh_seconds: float = setting(
        5.0,
        env="SETTINGS_REFRESH_SECONDS",
        doc="seconds between looks for settings another node changed through the admin API",
        parse=_float,
        check=_positive,
        live=True,
    )
    receive_ln_address: str = setting(
        "",
        env="RECEIVE_LN_ADDRESS",
        doc="Lightning address (or LNURL) the node's revenue is paid to automatically once it "
        "reaches `PAYOUT_THRESHOLD_SAT`",
        live=True,
    )
    payout_threshold_sat: int = setting(
        0,
        env="PAYOUT_THRESHOLD_SAT",
        doc="revenue, in sat, at which all of it is paid to `RECEIVE_LN_ADDRESS` (Lightning "
        "fees come out of it); 0 turns automatic payouts off",
        shown="`0` (off)",
        parse=_int,
        check=_not_negative,
        live=True,
    )
    payout_interval: float = setting(
        600.0,
        env="PAYOUT_INTERVAL",
        doc="seconds between checks for an automatic revenue payout",
        parse=_float,
        check=_positive,
        live=True,
    )
    # Tests serve LNURL endpoints on loopback over plain http; real ones must be https.
    lnurl_allow_http: bool = setting(
        False,
        env="LNURL_ALLOW_HTTP",
        doc="**tests only**: allow plain-http LNURL endpoints, and ones on loopback "
        "(127.0.0.0/8, ::1); private, link-local and other non-global addresses stay refused",
        parse=_flag,
    )
    # Tests run every node on 127.0.0.1; announced URLs come from strangers.
    nostr_discovery_allow_loopback: bool = setting(
        False,
        env="NOSTR_DISCOVERY_ALLOW_LOOPBACK",
        doc="**tests only**: let discovery check nodes announced on loopback (127.0.0.0/8, ::1); "
        "private, link-local and other non-global addresses stay refused",
        parse=_flag,
    )
    fault_crash_at: str = setting(
        "",
        env="FAULT_CRASH_AT",
        doc="**tests only**: exit abruptly at this money step (`satsrouter/faults.py` lists them)",
        check=_fault_step,
    )

    def __post_init__(self) -> None:
        if not self.upstream_name:
            object.__setattr__(self, "upstream_name", provider_name_of(self.upstream_base_url))
        if not self.upstream_dialect:
            object.__setattr__(self, "upstream_dialect", dialect_of(self.upstream_base_url))

    @property
    def primary_mint(self) -> str:
        return self.cashu_mints[0]

    @property
    def effective_first_byte_timeout(self) -> float:
        """`UPSTREAM_FIRST_BYTE_TIMEOUT`, else the deprecated `UPSTREAM_TIMEOUT`, else 300."""
        if self.upstream_first_byte_timeout is not None:
            return self.upstream_first_byte_timeout
        if self.upstream_timeout is not None:
            return self.upstream_timeout
        return DEFAULT_FIRST_BYTE_TIMEOUT

    @property
    def effective_idle_timeout(self) -> float:
        """`UPSTREAM_IDLE_TIMEOUT`, else the deprecated `UPSTREAM_TIMEOUT`, else 120."""
        if self.upstream_idle_timeout is not None:
            return self.upstream_idle_timeout
        if self.upstream_timeout is not None:
            return self.upstream_timeout
        return DEFAULT_IDLE_TIMEOUT

    @property
    def upstream_timeouts(self) -> tuple[float, float, float]:
        """Connect, first-byte and idle seconds, as `Upstream.set_timeouts` takes them."""
        return (
            self.upstream_connect_timeout,
            self.effective_first_byte_timeout,
            self.effective_idle_timeout,
        )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'satsrouter.sqlite').resolve()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default `os.environ`); unset names keep defaults."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, declared in declared_settings():
            raw = env.get(declared.env, "").strip()
            if not raw:  # empty counts as unset, as `NAME=` in an env file means
                continue
            try:
                values[name] = declared.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{declared.env}: {exc}", (name,)) from exc
        # Built afresh, not `replace`d on the defaults: `__post_init__` derives the upstream's
        # name and dialect from the URL read here, not from the default URL.
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values that would make the node charge wrongly or not start."""
        for name, declared in declared_settings():
            if declared.check is not None:
                try:
                    declared.check(getattr(self, name))
                except ValueError as exc:
                    raise SettingsError(f"{declared.env}: {exc}", (name,)) from exc
        if not self.btc_usd_refresh_seconds < self.btc_usd_max_age_seconds:
            # Otherwise the price would go stale between two refreshes and pause paid requests.
            raise SettingsError(
                "BTC_USD_REFRESH_SECONDS must be shorter than BTC_USD_MAX_AGE_SECONDS",
                ("btc_usd_refresh_seconds", "btc_usd_max_age_seconds"),
            )
        if self.instance_dead_after < 2 * self.sweep_interval:
            # The heartbeat beats every SWEEP_INTERVAL: slower than that, a live node looks
            # dead to the others on a shared Postgres, and they take over its work.
            raise SettingsError(
                "INSTANCE_DEAD_AFTER must be at least twice SWEEP_INTERVAL (a node beats its "
                "heartbeat every SWEEP_INTERVAL; one heard from less often looks dead)",
                ("instance_dead_after", "sweep_interval"),
            )


def declared_settings() -> list[tuple[str, Declared]]:
    """Each field of `Settings` with its declaration, in declaration order."""
    return [(f.name, f.metadata[DECLARED]) for f in fields(Settings)]


def markdown_table() -> str:
    """The README's settings table, one row per declared setting."""
    rows = ["| variable | meaning | default | admin |", "|---|---|---|---|"]
    rows += [
        f"| `{d.env}` | {d.doc} | {d.shown} | {'live' if d.live else '—'} |"
        for _, d in declared_settings()
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m satsrouter.settings", description="The node's settings."
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the README's table of settings"
    )
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.print_help()
        return 2
    print(markdown_table(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
