"""Msat pricing: exact Decimal math, rounded up per component, max cost bounds."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from satsrouter.billing.metering import Usage, count_tokens, local_usage, usage_from_openai
from satsrouter.billing.pricing import (
    max_request_cost,
    model_max_cost,
    msat_prices,
    usage_cost,
)
from satsrouter.market.catalogue import Catalogue, CatalogueError, Model, parse_models
from satsrouter.settings import Settings, SettingsError


def model(prompt: str = "0.00001", completion: str = "0.00002", **extra: str) -> Model:
    return Model.from_openrouter(
        {
            "id": "p/m",
            "context_length": 1000,
            "top_provider": {"max_completion_tokens": 100},
            "pricing": {"prompt": prompt, "completion": completion, **extra},
        }
    )


def test_msat_conversion_is_exact() -> None:
    prices = msat_prices(model(), Decimal(100_000), Decimal("1.05"))
    # 0.00001 USD/token × 1.05 × 1e11 msat/BTC ÷ 100000 USD/BTC = 10.5 msat/token
    assert prices.prompt == Decimal("10.5")
    assert prices.completion == Decimal("21")
    cost = usage_cost(prices, Usage(3, 2))
    assert cost.input_msats == 32 and cost.output_msats == 42 and cost.total_msats == 74


@given(
    prompt=st.integers(0, 200_000),
    completion=st.integers(0, 50_000),
    cached=st.integers(0, 200_000),
    p=st.decimals(min_value=0, max_value=Decimal("0.001"), places=9),
    c=st.decimals(min_value=0, max_value=Decimal("0.001"), places=9),
    rate=st.integers(1_000, 1_000_000),
)
def test_cost_rounds_up_by_less_than_one_msat_per_component(
    prompt: int, completion: int, cached: int, p: Decimal, c: Decimal, rate: int
) -> None:
    m = model(str(p), str(c))
    prices = msat_prices(m, Decimal(rate), Decimal("1.05"))
    cached = min(cached, prompt)
    cost = usage_cost(prices, Usage(prompt, completion, cached_tokens=cached))
    exact_in = prompt * prices.prompt
    exact_out = completion * prices.completion
    assert exact_in <= cost.input_msats < exact_in + 2  # two input components, each ceil
    assert exact_out <= cost.output_msats < exact_out + 1
    assert cost.total_msats == cost.input_msats + cost.output_msats + cost.request_msats


def test_max_cost_covers_any_usage_within_limits() -> None:
    m = model()
    prices = msat_prices(m, Decimal(100_000), Decimal("1.05"))
    worst = max_request_cost(prices, m, prompt_bound=50, max_tokens=20)
    assert worst == math.ceil(50 * 10.5) + 20 * 21
    assert usage_cost(prices, Usage(50, 20)).total_msats <= worst
    # Without max_tokens the model's own completion limit bounds it; never above the model max.
    assert max_request_cost(prices, m, 50, None) == math.ceil(50 * 10.5) + 100 * 21
    assert max_request_cost(prices, m, 10**9, 10**9) == model_max_cost(prices, m)


def test_reasoning_priced_separately_when_the_model_says_so() -> None:
    m = model(internal_reasoning="0.00004")
    prices = msat_prices(m, Decimal(100_000), Decimal(1))
    cost = usage_cost(prices, Usage(0, 10, reasoning_tokens=4))
    assert cost.output_msats == 6 * 20 + 4 * 40


def test_usage_parsing_and_local_count() -> None:
    u = usage_from_openai(
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}
    )
    assert u == Usage(10, 5, cached_tokens=4)
    assert usage_from_openai(None) is None
    assert usage_from_openai({"prompt_tokens": 0, "completion_tokens": 0}) is None
    assert count_tokens("hello world") == 2
    local = local_usage({"messages": [{"role": "user", "content": "hello world"}]}, "hi there")
    assert local.prompt_tokens == 6 and local.completion_tokens == 2 and local.source == "local"


def test_catalogue_aliases_and_bad_prices() -> None:
    models = parse_models(
        {
            "data": [
                {"id": "a/x", "context_length": 10, "pricing": {"prompt": "1", "completion": "1"}},
                {"id": "b/x", "context_length": 10, "pricing": {"prompt": "1", "completion": "1"}},
                {"id": "a/y", "context_length": 10, "pricing": {"prompt": "1", "completion": "1"}},
                {"id": "bad/var", "context_length": 10, "pricing": {"prompt": "-1"}},
            ]
        }
    )
    catalogue = Catalogue(models)
    assert len(catalogue) == 3  # the variable-priced model cannot be charged correctly
    assert catalogue.get("y") is not None and catalogue.get("y").id == "a/y"  # type: ignore[union-attr]
    assert catalogue.get("x") is None  # ambiguous: a/x or b/x
    with pytest.raises(CatalogueError):
        model(prompt="abc")


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "UPSTREAM_BASE_URL": "http://u/v1/",
            "CASHU_MINTS": "http://m1/, http://m2",
            "BTC_USD_PRICE": "90000",
            "PROVIDER_FEE": "1.1",
            "UPSTREAM_TIMEOUT": "30",
            "DATA_DIR": "/tmp/x",
        }
    )
    assert s.upstream_base_url == "http://u/v1"
    assert s.cashu_mints == ["http://m1", "http://m2"] and s.primary_mint == "http://m1"
    assert s.btc_usd_price == Decimal(90000) and s.provider_fee == Decimal("1.1")
    assert s.effective_database_url.startswith("sqlite+aiosqlite:////tmp/x/")
    with pytest.raises(SettingsError):
        Settings.from_env({"PROVIDER_FEE": "-1"})
    with pytest.raises(SettingsError):
        Settings.from_env({"BTC_USD_PRICE": "lots"})
    assert "secret" not in repr(Settings.from_env({"UPSTREAM_API_KEY": "secret"}))
