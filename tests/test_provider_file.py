"""The providers file, the environment's provider, merging the sources, model lists.

No node here: the file is parsed from text, the admin's rows are plain values.
"""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from satsrouter.admin.providers import (
    OVERRIDE,
    PROVIDER,
    ProviderRow,
    Sources,
    encrypt_key,
    env_provider,
    merge,
)
from satsrouter.market.catalogue import PRICE_FIELDS as CATALOGUE_PRICE_FIELDS
from satsrouter.market.catalogue import CatalogueError, Model, parse_models
from satsrouter.settings import Settings
from satsrouter.upstream.client import DIALECTS, OPENAI_DIALECTS
from satsrouter.upstream.provider_file import (
    ProviderConfigError,
    ProvidersFile,
    load_providers_file,
    validate_provider,
)
from satsrouter.upstream.providers import (
    PRICE_FIELDS,
    PROVIDER_DIALECTS,
    ProviderConfig,
    normalise_model_list,
)

FULL = """
[[provider]]
name = "openrouter"
base_url = "https://openrouter.ai/api/v1/"
api_key_env = "TEST_OPENROUTER_KEY"
fee = "1.1"
enabled = true
proxy = "socks5h://127.0.0.1:9050"
connect_timeout = 10
first_byte_timeout = 120.5
idle_timeout = 60
model_prefix = "openai/"
models = { "anthropic/claude-sonnet-4.5" = "claude-sonnet-4-5-20250929" }
default_context = 16384
default_pricing = { prompt = "0.000001", completion = 0.000002 }

[[provider]]
name = "claude"
base_url = "https://api.anthropic.com/v1"
api_key_env = "TEST_ANTHROPIC_KEY"

[[provider]]
name = "local_llama-1"
base_url = "http://127.0.0.1:11434/v1"
dialect = "Ollama"
enabled = false

[routes]
"openai/gpt-4o-mini" = ["openrouter", "local_llama-1"]
"""
ENV = {"TEST_OPENROUTER_KEY": "sk-or-test", "TEST_ANTHROPIC_KEY": " sk-ant-test "}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ProvidersFile:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return load_providers_file(path, ENV if env is None else env)


def test_a_full_file_is_read(tmp_path: Path) -> None:
    loaded = load(tmp_path, FULL)
    openrouter, claude, local = loaded.providers
    assert openrouter == ProviderConfig(
        name="openrouter",
        base_url="https://openrouter.ai/api/v1",
        dialect="openrouter",  # from the URL
        api_key="sk-or-test",
        fee=Decimal("1.1"),
        enabled=True,
        proxy="socks5h://127.0.0.1:9050",
        connect_timeout=10.0,
        first_byte_timeout=120.5,
        idle_timeout=60.0,
        model_prefix="openai/",
        models={"anthropic/claude-sonnet-4.5": "claude-sonnet-4-5-20250929"},
        default_context=16384,
        default_pricing={"prompt": "0.000001", "completion": "0.000002"},
        source="file",
    )
    assert claude.dialect == "anthropic" and claude.api_key == "sk-ant-test"
    assert claude.fee is None and claude.connect_timeout is None and claude.enabled
    assert (local.dialect, local.enabled, local.api_key) == ("ollama", False, "")
    assert loaded.routes == {"openai/gpt-4o-mini": ["openrouter", "local_llama-1"]}
    # The key stays out of every repr (and so out of logs and tracebacks).
    assert "sk-or-test" not in repr(loaded)


def test_an_empty_file_configures_nothing(tmp_path: Path) -> None:
    assert load(tmp_path, "") == ProvidersFile([], {})


def test_a_key_in_the_file_is_taken_with_a_warning_that_never_shows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = '[[provider]]\nname = "a"\nbase_url = "https://a.example"\napi_key = "sk-in-file"\n'
    with caplog.at_level(logging.WARNING):
        (provider,) = load(tmp_path, text).providers
    assert provider.api_key == "sk-in-file"
    assert "api_key_env" in caplog.text and "'a'" in caplog.text
    assert "sk-in-file" not in caplog.text


ONE = '[[provider]]\nname = "p"\nbase_url = "https://p.example/v1"\n'


@pytest.mark.parametrize(
    ("extra", "provider", "field", "reason"),
    [
        ('colour = "blue"\n', "p", "colour", "unknown field"),
        ('api_key_env = "TEST_UNSET_VARIABLE"\n', "p", "api_key_env", "TEST_UNSET_VARIABLE"),
        ('api_key_env = "TEST_EMPTY"\n', "p", "api_key_env", "not set"),
        ('api_key_env = "X"\napi_key = "k"\n', "p", "api_key", "not both"),
        ("api_key = 5\n", "p", "api_key", "text"),
        ('dialect = "grpc"\n', "p", "dialect", "one of openai"),
        ('fee = "-1"\n', "p", "fee", "above 0"),
        ("fee = 0\n", "p", "fee", "above 0"),
        ('fee = "lots"\n', "p", "fee", "not a number"),
        ('fee = "NaN"\n', "p", "fee", "finite"),
        ("fee = true\n", "p", "fee", "number"),
        ("connect_timeout = -1\n", "p", "connect_timeout", "above 0"),
        ("first_byte_timeout = 0\n", "p", "first_byte_timeout", "above 0"),
        ('idle_timeout = "soon"\n', "p", "idle_timeout", "not a number"),
        ('enabled = "yes"\n', "p", "enabled", "true or false"),
        ('proxy = "ftp://proxy:21"\n', "p", "proxy", "socks5"),
        ('proxy = "socks5h://[::1"\n', "p", "proxy", "socks5"),
        ("models = { a = 1 }\n", "p", "models", "ids"),
        ('models = { "" = "b" }\n', "p", "models", "ids"),
        ("default_context = 0\n", "p", "default_context", "1 to"),
        ("default_context = 1.5\n", "p", "default_context", "whole number"),
        ('default_pricing = { promt = "0.1" }\n', "p", "default_pricing", "promt"),
        ('default_pricing = { prompt = "-0.1" }\n', "p", "default_pricing.prompt", "negative"),
        ('default_pricing = "cheap"\n', "p", "default_pricing", "table"),
        ('source = "admin"\n', "p", "source", "unknown field"),
    ],
)
def test_each_wrong_field_is_refused_naming_provider_and_field(
    tmp_path: Path, extra: str, provider: str, field: str, reason: str
) -> None:
    with pytest.raises(ProviderConfigError) as caught:
        load(tmp_path, ONE + extra, {**ENV, "TEST_EMPTY": "  "})
    message = str(caught.value)
    assert f"provider {provider!r}" in message and field in message and reason in message
    assert str(tmp_path / "providers.toml") in message
    assert caught.value.provider == provider and caught.value.field == field


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[[provider]]\nbase_url = "https://a.example"\n', "has no name"),
        ('[[provider]]\nname = "Bad Name"\nbase_url = "https://a.example"\n', "provider name"),
        ('[[provider]]\nname = "a"\n', "base_url: must be text (required)"),
        ('[[provider]]\nname = "a"\nbase_url = "a.example"\n', "not an http(s) URL"),
        ('[[provider]]\nname = "a"\nbase_url = "ftp://a.example"\n', "not an http(s) URL"),
        (ONE + ONE, "'p': name: defined twice"),
        ('provider = "p"\n', "array of tables"),
        ("[provider]\nname = 'p'\n", "array of tables"),
        ("[mystery]\nx = 1\n", "unknown key mystery"),
        ('[routes]\n"m" = []\n', "routes.m: must be a non-empty list"),
        ('[routes]\n"m" = "p"\n', "routes.m: must be a non-empty list"),
        ('[routes]\n"m" = ["p", "p"]\n', "twice"),
        ('[routes]\n"m" = ["Not A Name"]\n', "not a provider name"),
        ("routes = 3\n", "routes: must be a table"),
        ("[[provider]\n", "not valid TOML"),
    ],
)
def test_a_wrong_file_is_refused_saying_why(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ProviderConfigError, match=r".*") as caught:
        load(tmp_path, text)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProviderConfigError, match="cannot be read"):
        load_providers_file(tmp_path / "nowhere.toml", {})


def test_validate_provider_checks_a_built_config() -> None:
    good = ProviderConfig(name="a", base_url="https://a.example")
    validate_provider(good)
    for bad, field in [
        (dataclasses.replace(good, name="A"), "name"),
        (dataclasses.replace(good, base_url="nowhere"), "base_url"),
        (dataclasses.replace(good, dialect="soap"), "dialect"),
        (dataclasses.replace(good, fee=Decimal("-0.5")), "fee"),
        (dataclasses.replace(good, idle_timeout=float("nan")), "idle_timeout"),
        (dataclasses.replace(good, default_context=-5), "default_context"),
    ]:
        with pytest.raises(ProviderConfigError, match=field):
            validate_provider(bad)


# --- the environment's provider -------------------------------------------------------------


def test_the_environment_provider_is_the_one_provider_case() -> None:
    settings = Settings.from_env({"UPSTREAM_API_KEY": "sk-or"})
    provider = env_provider(settings)
    assert provider == ProviderConfig(
        name="openrouter",
        base_url="https://openrouter.ai/api/v1",
        dialect="openrouter",
        api_key="sk-or",
        source="environment",
    )
    named = env_provider(
        Settings.from_env(
            {"UPSTREAM_BASE_URL": "http://127.0.0.1:11434/v1", "UPSTREAM_DIALECT": "ollama"}
        )
    )
    assert named is not None and (named.name, named.dialect) == ("upstream", "ollama")


def test_a_providers_file_drops_the_default_provider_unless_it_is_asked_for() -> None:
    with_file = {"PROVIDERS_PATH": "/etc/satsrouter/providers.toml"}
    assert env_provider(Settings.from_env(with_file)) is None
    keyed = env_provider(Settings.from_env({**with_file, "UPSTREAM_API_KEY": "sk"}))
    assert keyed is not None and keyed.name == "openrouter"
    other = env_provider(
        Settings.from_env({**with_file, "UPSTREAM_BASE_URL": "https://api.openai.com/v1"})
    )
    assert other is not None and (other.name, other.api_key) == ("openai", "")


def test_settings_accept_ollama_and_the_client_speaks_openai_to_it() -> None:
    assert set(PROVIDER_DIALECTS) == set(DIALECTS)
    assert "ollama" in OPENAI_DIALECTS
    assert Settings.from_env({"UPSTREAM_DIALECT": "Ollama"}).upstream_dialect == "ollama"


def test_price_fields_are_the_catalogues() -> None:
    assert PRICE_FIELDS == CATALOGUE_PRICE_FIELDS


# --- merging the sources --------------------------------------------------------------------

SECRET = "a test provider secret"


def sources() -> Sources:
    """The environment's provider and one of the file's, with the file's routes."""
    env = ProviderConfig(name="upstream", base_url="http://127.0.0.1:9/v1", api_key="env-key")
    file_a = ProviderConfig(
        name="a", base_url="https://a.example", api_key="file-key", source="file"
    )
    return Sources({env.name: env, file_a.name: file_a}, {"m": ["a"]})


def test_admin_rows_replace_or_lie_over_the_sources() -> None:
    rows = [
        ProviderRow("a", OVERRIDE, {"enabled": False, "fee": "1.5"}, None),
        ProviderRow(
            "mine",
            PROVIDER,
            {"base_url": "http://127.0.0.1:11434/v1", "dialect": "ollama"},
            encrypt_key(SECRET, "admin-key"),
        ),
        ProviderRow("upstream", OVERRIDE, {}, encrypt_key(SECRET, "new-env-key")),
    ]
    merged = merge(sources(), rows, SECRET)
    assert list(merged) == ["upstream", "a", "mine"]
    a = merged["a"]
    assert (a.config.enabled, a.config.fee, a.config.api_key) == (False, Decimal("1.5"), "file-key")
    assert a.config.source == "file" and a.overrides == ("enabled", "fee")
    mine = merged["mine"].config
    assert (mine.source, mine.dialect, mine.api_key, mine.enabled) == (
        "admin",
        "ollama",
        "admin-key",
        True,
    )
    up = merged["upstream"]
    assert (up.config.api_key, up.config.source, up.overrides) == (
        "new-env-key",
        "environment",
        ("api_key",),
    )


def test_a_key_that_cannot_be_read_disables_its_provider(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [
        ProviderRow("mine", PROVIDER, {"base_url": "https://m.example"}, encrypt_key(SECRET, "k"))
    ]
    for secret in ("", "another secret"):
        with caplog.at_level(logging.ERROR):
            mine = merge(sources(), rows, secret)["mine"].config
        assert (mine.enabled, mine.api_key) == (False, "")
        assert "PROVIDER_SECRET" in caplog.text


def test_rows_no_longer_valid_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        ProviderRow("gone", OVERRIDE, {"enabled": False}, None),  # its file provider removed
        ProviderRow("bad", PROVIDER, {"base_url": "nowhere"}, None),
    ]
    with caplog.at_level(logging.ERROR):
        merged = merge(sources(), rows, SECRET)
    assert list(merged) == ["upstream", "a"]
    assert "'gone'" in caplog.text and "'bad'" in caplog.text


# --- model lists ----------------------------------------------------------------------------

OLLAMA = ProviderConfig(
    name="local",
    base_url="http://127.0.0.1:11434/v1",
    dialect="ollama",
    model_prefix="local/",
    models={"meta/llama-3.1-8b": "llama3.1:8b"},
    default_context=32768,
    default_pricing={"prompt": "0.0000001"},
)
OLLAMA_LIST = {
    "object": "list",
    "data": [
        {"id": "llama3.1:8b", "object": "model", "created": 1721000000, "owned_by": "library"},
        {"id": "qwen2.5:7b", "object": "model", "created": 1722000000, "owned_by": "library"},
        {"object": "model"},  # no id: skipped
        "junk",
    ],
}


def test_an_ollama_list_gets_public_ids_prices_and_limits() -> None:
    entries = normalise_model_list(OLLAMA, OLLAMA_LIST)
    assert [(e["id"], e["upstream_id"]) for e in entries] == [
        ("meta/llama-3.1-8b", "llama3.1:8b"),
        ("local/qwen2.5:7b", "qwen2.5:7b"),
    ]
    first = entries[0]
    assert first["context_length"] == 32768
    assert first["pricing"] == {"prompt": "0.0000001", "completion": "0"}
    assert first["top_provider"] == {
        "context_length": 32768,
        "max_completion_tokens": None,
        "is_moderated": False,
    }
    assert first["created"] == 1721000000 and first["name"] == "meta/llama-3.1-8b"
    # What the catalogue makes of it: priced, limited, under the public id.
    (model, _) = parse_models({"data": entries}, "local")
    assert model.id == "meta/llama-3.1-8b" and model.context_length == 32768
    assert model.pricing["prompt"] == Decimal("0.0000001") and model.pricing["completion"] == 0


def test_an_ollama_list_without_default_pricing_is_not_sold() -> None:
    # Nothing to price it by: left unpriced, so the catalogue skips it (never served free).
    unpriced = dataclasses.replace(OLLAMA, default_pricing={})
    (entry, _) = normalise_model_list(unpriced, OLLAMA_LIST["data"])  # a bare list is accepted
    assert "pricing" not in entry and entry["upstream_id"] == "llama3.1:8b"
    with pytest.raises(CatalogueError):
        Model.from_openrouter(entry, "ollama")


ANTHROPIC_LIST = {
    "data": [
        {
            "id": "claude-sonnet-4-5-20250929",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
            "type": "model",
        }
    ],
    "has_more": False,
}


def test_an_anthropic_list_is_priced_only_with_default_pricing() -> None:
    claude = ProviderConfig(
        name="claude",
        base_url="https://api.anthropic.com/v1",
        dialect="anthropic",
        model_prefix="anthropic/",
    )
    (bare,) = normalise_model_list(claude, ANTHROPIC_LIST)
    assert bare == {
        **ANTHROPIC_LIST["data"][0],
        "id": "anthropic/claude-sonnet-4-5-20250929",
        "upstream_id": "claude-sonnet-4-5-20250929",
    }
    assert parse_models([bare]) == []  # unpriced: the catalogue skips it
    priced = dataclasses.replace(
        claude, default_pricing={"prompt": "0.000003", "completion": "0.000015"}
    )
    (entry,) = normalise_model_list(priced, ANTHROPIC_LIST)
    assert entry["name"] == "Claude Sonnet 4.5"
    assert entry["created"] == 1759104000
    assert entry["pricing"] == {"prompt": "0.000003", "completion": "0.000015"}
    assert entry["context_length"] == 8192  # the default default_context


def test_openrouter_entries_keep_their_own_fields() -> None:
    provider = ProviderConfig(
        name="or",
        base_url="https://openrouter.ai/api/v1",
        dialect="openrouter",
        default_pricing={"prompt": "1", "completion": "1"},
    )
    priced: dict[str, Any] = {
        "id": "openai/gpt-4o-mini",
        "context_length": 128000,
        "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
    }
    unpriced = {"id": "openai/gpt-x", "context_length": 4096}
    first, second = normalise_model_list(provider, {"data": [priced, unpriced]})
    assert first == {**priced, "upstream_id": "openai/gpt-4o-mini"}
    assert second["pricing"] == {"prompt": "1", "completion": "1"}
    assert second["context_length"] == 4096  # its own kept
    # Without default_pricing an unpriced entry is left as it is.
    plain = dataclasses.replace(provider, default_pricing={})
    assert normalise_model_list(plain, [unpriced]) == [{**unpriced, "upstream_id": "openai/gpt-x"}]


def test_a_model_list_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="model list"):
        normalise_model_list(OLLAMA, {"error": "nope"})
