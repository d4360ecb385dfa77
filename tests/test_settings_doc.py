"""Settings: each declared once, read from the environment, and documented in the README.

The README's settings table is generated from the declarations
(`python -m satsrouter.settings --markdown`); the test holds the README to it, so the docs
and the code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from satsrouter.settings import (
    DECLARED,
    Settings,
    SettingsError,
    declared_settings,
    main,
    markdown_table,
)

README = Path(__file__).resolve().parent.parent / "README.md"

# One non-default value per variable: the raw text and the field's value read from it.
EVERY_VARIABLE: dict[str, tuple[str, Any]] = {
    "UPSTREAM_BASE_URL": ("https://api.anthropic.com/v1/", "https://api.anthropic.com/v1"),
    "UPSTREAM_API_KEY": ("sk-ant-test", "sk-ant-test"),
    "UPSTREAM_CONNECT_TIMEOUT": ("2.5", 2.5),
    "UPSTREAM_FIRST_BYTE_TIMEOUT": ("600", 600.0),
    "UPSTREAM_IDLE_TIMEOUT": ("45", 45.0),
    "UPSTREAM_TIMEOUT": ("7.5", 7.5),
    "UPSTREAM_PROXY": (
        "socks5h://tor:secret@127.0.0.1:9050",
        "socks5h://tor:secret@127.0.0.1:9050",
    ),
    "UPSTREAM_DIALECT": ("OpenAI", "openai"),
    "UPSTREAM_NAME": ("claude", "claude"),
    "PROVIDERS_PATH": ("/etc/satsrouter/providers.toml", Path("/etc/satsrouter/providers.toml")),
    "PROVIDER_SECRET": ("provider-secret-text", "provider-secret-text"),
    "HEALTH_CHECK_INTERVAL": ("5", 5.0),
    "CIRCUIT_FAILURES": ("3", 3),
    "CIRCUIT_COOLDOWN_SECONDS": ("1.5", 1.5),
    "CASHU_MINTS": ("http://m1/, http://m2", ["http://m1", "http://m2"]),
    "MINT_MAX_CONCURRENCY": ("3", 3),
    "MINT_CALLS_PER_SECOND": ("12.5", 12.5),
    "MINT_BUSY_WAIT": ("0.5", 0.5),
    "DEAD_TOKEN_CACHE_SECONDS": ("60", 60.0),
    "DEAD_TOKEN_CACHE_SIZE": ("100", 100),
    "DATA_DIR": ("/srv/node", Path("/srv/node")),
    "DATABASE_URL": ("postgresql+asyncpg://u:pw@db/x", "postgresql+asyncpg://u:pw@db/x"),
    "BTC_USD_PRICE": ("95000.5", Decimal("95000.5")),
    "BTC_USD_SOURCES": (
        "Kraken, coinbase=http://127.0.0.1:8001/",
        {"kraken": "", "coinbase": "http://127.0.0.1:8001"},
    ),
    "BTC_USD_REFRESH_SECONDS": ("30", 30.0),
    "BTC_USD_MAX_AGE_SECONDS": ("300", 300.0),
    "MODELS_PATH": ("/etc/satsrouter/models.json", Path("/etc/satsrouter/models.json")),
    "MODELS_REFRESH_SECONDS": ("120", 120.0),
    "PROVIDER_FEE": ("1.2", Decimal("1.2")),
    "MAX_BODY_BYTES": ("1024", 1024),
    "MAX_HEADER_BYTES": ("4096", 4096),
    "MAX_HEADER_COUNT": ("20", 20),
    "HEADER_TIMEOUT": ("2.5", 2.5),
    "KEEPALIVE_TIMEOUT": ("30", 30.0),
    "MAX_CONCURRENT_REQUESTS": ("0", 0),
    "DRAIN_TIMEOUT": ("0", 0.0),
    "CORS_ORIGINS": (
        "https://a.example, https://b.example/",
        ["https://a.example", "https://b.example"],
    ),
    "RATE_LIMIT": ("120/minute;5000/day", "120/minute;5000/day"),
    "AUTH_FAILURE_LIMIT": ("off", "off"),
    "MAX_CONCURRENT_PER_KEY": ("4", 4),
    "FORWARD_HEADERS": ("HTTP-Referer, X-Title", ["http-referer", "x-title"]),
    "TRUSTED_PROXIES": ("10.0.0.1, 192.168.0.0/16", ["10.0.0.1", "192.168.0.0/16"]),
    "REDIS_URL": ("redis://:pw@127.0.0.1:6379/0", "redis://:pw@127.0.0.1:6379/0"),
    "NAME": ("my node", "my node"),
    "DESCRIPTION": ("fast and cheap", "fast and cheap"),
    "HTTP_URL": ("https://node.example", "https://node.example"),
    "ONION_URL": ("http://abc.onion", "http://abc.onion"),
    "NSEC": ("nsec1test", "nsec1test"),
    "RELAYS": (
        "wss://relay.example/, ws://127.0.0.1:7000",
        ["wss://relay.example", "ws://127.0.0.1:7000"],
    ),
    "NOSTR_ANNOUNCE": ("on", True),
    "NOSTR_ANNOUNCE_INTERVAL": ("600", 600.0),
    "NOSTR_DISCOVERY": ("true", True),
    "NOSTR_DISCOVERY_TTL": ("60", 60.0),
    "NOSTR_DISCOVERY_ALLOW_LOOPBACK": ("yes", True),
    "ADMIN_PASSWORD": ("hunter2-but-longer", "hunter2-but-longer"),
    "ADMIN_SESSION_HOURS": ("8", 8.0),
    "LOG_LEVEL": ("debug", "debug"),
    "LOG_FORMAT": ("JSON", "json"),
    "METRICS_TOKEN": ("prometheus-scrape-token", "prometheus-scrape-token"),
    "METRICS_LOOPBACK": ("yes", True),
    "SWEEP_INTERVAL": ("0.5", 0.5),
    "INSTANCE_DEAD_AFTER": ("90", 90.0),
    "LEASE_TTL_SECONDS": ("12", 12.0),
    "INVOICE_POLL_INTERVAL": ("0.2", 0.2),
    "EXPIRY_CHECK_INTERVAL": ("3600", 3600.0),
    "SETTINGS_REFRESH_SECONDS": ("0.5", 0.5),
    "RECEIVE_LN_ADDRESS": ("me@example.com", "me@example.com"),
    "PAYOUT_THRESHOLD_SAT": ("5000", 5000),
    "PAYOUT_INTERVAL": ("60", 60.0),
    "LNURL_ALLOW_HTTP": ("TRUE", True),
    "FAULT_CRASH_AT": ("melt.after_melt", "melt.after_melt"),
}

# Values the node must refuse, each with the variable its error names.
INVALID = [
    ("UPSTREAM_TIMEOUT", "soon"),
    ("UPSTREAM_TIMEOUT", "0"),
    ("UPSTREAM_CONNECT_TIMEOUT", "0"),
    ("UPSTREAM_FIRST_BYTE_TIMEOUT", "-5"),
    ("UPSTREAM_IDLE_TIMEOUT", "nan"),
    ("UPSTREAM_PROXY", "http://127.0.0.1:8080"),
    ("UPSTREAM_PROXY", "socks4://127.0.0.1:1080"),
    ("UPSTREAM_PROXY", "socks5://127.0.0.1"),
    ("UPSTREAM_PROXY", "127.0.0.1:9050"),
    ("UPSTREAM_DIALECT", "grpc"),
    ("HEALTH_CHECK_INTERVAL", "-1"),
    ("CIRCUIT_FAILURES", "0"),
    ("CIRCUIT_FAILURES", "2.5"),
    ("CIRCUIT_COOLDOWN_SECONDS", "0"),
    ("CASHU_MINTS", " , "),
    ("MINT_MAX_CONCURRENCY", "0"),
    ("MINT_CALLS_PER_SECOND", "-1"),
    ("MINT_BUSY_WAIT", "-1"),
    ("DEAD_TOKEN_CACHE_SECONDS", "-1"),
    ("DEAD_TOKEN_CACHE_SIZE", "0"),
    ("BTC_USD_PRICE", "lots"),
    ("RELAYS", "https://relay.example"),
    ("RELAYS", "wss://"),
    ("NOSTR_ANNOUNCE_INTERVAL", "0"),
    ("NOSTR_DISCOVERY_TTL", "-1"),
    ("BTC_USD_PRICE", "NaN"),
    ("BTC_USD_PRICE", "0"),
    ("BTC_USD_SOURCES", "kraken,mtgox=http://x"),
    ("BTC_USD_REFRESH_SECONDS", "0"),
    ("BTC_USD_MAX_AGE_SECONDS", "-600"),
    ("MODELS_REFRESH_SECONDS", "0"),
    ("PROVIDER_FEE", "-1"),
    ("PROVIDER_FEE", "1,05"),
    ("MAX_BODY_BYTES", "1.5"),
    ("MAX_BODY_BYTES", "0"),
    ("MAX_BODY_BYTES", "1023"),
    ("MAX_HEADER_BYTES", "1023"),
    ("MAX_HEADER_COUNT", "0"),
    ("HEADER_TIMEOUT", "0"),
    ("KEEPALIVE_TIMEOUT", "-1"),
    ("MAX_CONCURRENT_REQUESTS", "-1"),
    ("DRAIN_TIMEOUT", "-1"),
    ("RATE_LIMIT", "sixty a minute"),
    ("RATE_LIMIT", "0/minute"),
    ("AUTH_FAILURE_LIMIT", "10 per fortnight"),
    ("MAX_CONCURRENT_PER_KEY", "-1"),
    ("FORWARD_HEADERS", "X-Title, Authorization"),
    ("TRUSTED_PROXIES", "10.0.0.1,proxy.example"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
    ("METRICS_LOOPBACK", "local"),
    ("ADMIN_SESSION_HOURS", "0"),
    ("SWEEP_INTERVAL", "0"),
    ("INSTANCE_DEAD_AFTER", "nan"),
    ("LEASE_TTL_SECONDS", "0"),
    ("INVOICE_POLL_INTERVAL", "0"),
    ("EXPIRY_CHECK_INTERVAL", "0"),
    ("SETTINGS_REFRESH_SECONDS", "0"),
    ("PAYOUT_THRESHOLD_SAT", "-1"),
    ("PAYOUT_THRESHOLD_SAT", "1.5"),
    ("PAYOUT_INTERVAL", "0"),
    ("LNURL_ALLOW_HTTP", "maybe"),
    ("FAULT_CRASH_AT", "nowhere"),
]


def _readme_table() -> list[str]:
    """The table under "Running a node": its lines from the header to the first non-row."""
    lines = README.read_text().splitlines()
    start = lines.index("## Running a node")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| variable |"))
    end = next(i for i in range(header, len(lines)) if not lines[i].startswith("|"))
    return lines[header:end]


def test_every_field_is_declared_once() -> None:
    declared = [f.metadata.get(DECLARED) for f in dataclasses.fields(Settings)]
    assert None not in declared
    envs = [d.env for _, d in declared_settings()]
    assert len(envs) == len(set(envs))
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", env) for env in envs)


def test_readme_documents_exactly_the_declared_settings() -> None:
    documented = {
        name
        for row in _readme_table()[2:]
        for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])
    }
    declared = {d.env for _, d in declared_settings()}
    assert declared - documented == set(), "declared but not in the README's table"
    assert documented - declared == set(), "in the README's table but not read by the node"


def test_readme_table_is_the_generated_one() -> None:
    """Meanings and defaults too: regenerate with `python -m satsrouter.settings --markdown`."""
    readme = "\n".join(_readme_table()) + "\n"
    assert readme == markdown_table(), "paste `python -m satsrouter.settings --markdown`"


def test_markdown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()


def test_from_env_reads_every_declared_variable() -> None:
    assert set(EVERY_VARIABLE) == {d.env for _, d in declared_settings()}
    settings = Settings.from_env({env: raw for env, (raw, _) in EVERY_VARIABLE.items()})
    defaults = Settings()
    for name, declared in declared_settings():
        expected = EVERY_VARIABLE[declared.env][1]
        assert getattr(settings, name) == expected, declared.env
        assert getattr(defaults, name) != expected, f"{declared.env}: pick a non-default value"


def test_blank_or_missing_variables_keep_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env({env: "  " for env in EVERY_VARIABLE}) == Settings()
    monkeypatch.setenv("NAME", "from os.environ")
    assert Settings.from_env().name == "from os.environ"


@pytest.mark.parametrize(("env", "raw"), INVALID)
def test_an_invalid_value_is_refused_naming_its_variable(env: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{env}\b"):
        Settings.from_env({env: raw})


def test_every_checked_setting_has_an_invalid_case() -> None:
    checked = {d.env for _, d in declared_settings() if d.check is not None}
    assert checked - {env for env, _ in INVALID} == set()


def test_the_price_cannot_go_stale_between_two_refreshes() -> None:
    with pytest.raises(SettingsError, match="BTC_USD_MAX_AGE_SECONDS"):
        Settings.from_env({"BTC_USD_REFRESH_SECONDS": "60", "BTC_USD_MAX_AGE_SECONDS": "60"})


def test_a_heartbeat_slower_than_half_the_death_threshold_is_refused() -> None:
    # Beating every 20 s against a 30 s threshold, one late beat makes a live node look dead.
    with pytest.raises(SettingsError, match="INSTANCE_DEAD_AFTER must be at least twice") as e:
        Settings.from_env({"SWEEP_INTERVAL": "20"})
    assert set(e.value.fields) == {"instance_dead_after", "sweep_interval"}
    assert Settings.from_env({"SWEEP_INTERVAL": "15"}).sweep_interval == 15.0
    assert Settings.from_env({"SWEEP_INTERVAL": "20", "INSTANCE_DEAD_AFTER": "40"})


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env({env: raw for env, (raw, _) in EVERY_VARIABLE.items()})
    for secret in ("sk-ant-test", "nsec1test", ":pw@", "provider-secret-text", "tor:secret"):
        assert secret not in repr(settings)


def test_keyword_construction_and_replace() -> None:
    a = Settings(cashu_mints=["http://m"], data_dir=Path("/tmp/n"), provider_fee=Decimal(2))
    b = dataclasses.replace(a, max_body_bytes=10)
    assert (b.primary_mint, b.provider_fee, b.max_body_bytes) == ("http://m", 2, 10)
    assert Settings().cashu_mints is not Settings().cashu_mints  # no shared mutable default


def test_upstream_name_and_dialect_follow_the_url_read_from_the_environment() -> None:
    s = Settings.from_env({"UPSTREAM_BASE_URL": "https://api.anthropic.com/v1"})
    assert (s.upstream_name, s.upstream_dialect) == ("anthropic", "anthropic")
    s = Settings.from_env({"UPSTREAM_BASE_URL": "http://127.0.0.1:9000/v1"})
    assert (s.upstream_name, s.upstream_dialect) == ("upstream", "openai")
    s = Settings.from_env({})
    assert (s.upstream_name, s.upstream_dialect) == ("openrouter", "openrouter")
    s = Settings.from_env({"UPSTREAM_BASE_URL": "http://x.example/v1", "UPSTREAM_NAME": "mine"})
    assert (s.upstream_name, s.upstream_dialect) == ("mine", "openai")


def test_upstream_timeout_is_the_default_of_first_byte_and_idle() -> None:
    """The deprecated UPSTREAM_TIMEOUT fills in what the new settings leave unset."""
    assert Settings().upstream_timeouts == (10.0, 300.0, 120.0)
    old = Settings.from_env({"UPSTREAM_TIMEOUT": "30"})
    assert old.upstream_timeouts == (10.0, 30.0, 30.0)
    both = Settings.from_env(
        {"UPSTREAM_TIMEOUT": "30", "UPSTREAM_IDLE_TIMEOUT": "5", "UPSTREAM_CONNECT_TIMEOUT": "2"}
    )
    assert both.upstream_timeouts == (2.0, 30.0, 5.0)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@127.0.0.1:8080",
        "socks4://user:hunter2@127.0.0.1:1080",
        "socks5://user:hunter2@127.0.0.1",
        "socks5://user:hunter2@127.0.0.1:9050/path",
    ],
)
def test_a_refused_proxy_is_explained_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"UPSTREAM_PROXY": url})
    message = str(refused.value)
    assert message.startswith("UPSTREAM_PROXY: ")
    assert "socks5://host:port or socks5h://host:port" in message
    assert "hunter2" not in message
