"""Msat pricing: exact Decimal math, rounded up per component, max cost bounds."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from satsrouter.billing.pricing import (
    completion_budget,
    max_request_cost,
    model_max_cost,
    msat_prices,
    usage_cost,
)
from satsrouter.billing.quote import PriceBook
from satsrouter.market.catalogue import Catalogue, CatalogueError, Model, parse_models
from satsrouter.market.rates import PinnedRate
from satsrouter.settings import Settings, SettingsError
from satsrouter.usage import (
    UNBOUNDED_TOOL_SEARCHES,
    Usage,
    count_input_images,
    count_prompt_tokens,
    count_tokens,
    estimate_prompt_tokens,
    local_usage,
    reserved_web_searches,
    usage_from_openai,
)


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
    assert exact_in <= cost.input_msats < exact_in + 1  # cached or not, one rounding
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


def test_cache_writes_dearer_than_the_prompt_are_covered_by_the_reservation() -> None:
    # Anthropic prices a cache write at 1.25x the prompt and a cache read at 0.1x.
    m = model("0.000003", "0.000015", input_cache_write="0.00000375", input_cache_read="3e-7")
    prices = msat_prices(m, Decimal(70_000), Decimal("1.05"))
    worst = max_request_cost(prices, m, prompt_bound=333, max_tokens=7)
    assert worst == math.ceil(333 * prices.input_cache_write) + math.ceil(7 * prices.completion)
    # Every split of the prompt between plain, cached and written tokens stays within it, so
    # settle never caps the charge (which undercharged by up to 2 msat per request).
    for cached in range(0, 334, 37):
        for written in range(0, 334 - cached, 41):
            usage = Usage(333, 7, cached_tokens=cached, cache_write_tokens=written)
            assert usage_cost(prices, usage).total_msats <= worst
    assert usage_cost(prices, Usage(333, 7, cache_write_tokens=333)).total_msats == worst


def test_every_choice_gets_the_whole_completion_budget_and_the_prompt_is_reserved_once() -> None:
    m = model(internal_reasoning="0.00004")  # reasoning dearer: reserved at its price
    prices = msat_prices(m, Decimal(100_000), Decimal("1.05"))
    one = max_request_cost(prices, m, 50, 20)
    three = max_request_cost(prices, m, 50, 20, choices=3)
    assert one == math.ceil(50 * 10.5) + 20 * 42
    assert three == math.ceil(50 * 10.5) + 3 * 20 * 42
    assert usage_cost(prices, Usage(50, 60, reasoning_tokens=60)).total_msats == three


def test_a_batch_may_fill_one_context_per_prompt_and_is_not_estimated() -> None:
    m = model()  # context 1000, max completion 100
    prices = msat_prices(m, Decimal(100_000), Decimal("1.05"))

    def must_not_count(context: int) -> int:
        raise AssertionError("the sum of a batch's prompts says nothing of each one's room")

    assert max_request_cost(prices, m, 2500, 20) == math.ceil(1000 * 10.5) + 20 * 21
    batch = max_request_cost(
        prices, m, 2500, 20, prompts=3, choices=3, prompt_estimate=must_not_count
    )
    assert batch == math.ceil(2500 * 10.5) + 3 * 20 * 21
    assert max_request_cost(prices, m, 5000, 20, prompts=3, choices=3) == (
        math.ceil(3000 * 10.5) + 3 * 20 * 21
    )


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
    assert Settings.from_env({"MAX_BODY_BYTES": "1024"}).max_body_bytes == 1024
    with pytest.raises(SettingsError):
        Settings.from_env({"MAX_BODY_BYTES": "0"})


# --- image and web_search components -------------------------------------------------------


def published_charge(sats: dict[str, float], usage: Usage) -> int:
    """What a client computes from `sats_pricing`: units × price × 1000, rounded up per part."""

    def part(units: int, name: str) -> int:
        return math.ceil(units * Decimal(str(sats[name])) * 1000)

    return (
        part(usage.prompt_tokens, "prompt")
        + part(usage.completion_tokens, "completion")
        + part(1, "request")
        + part(usage.images, "image")
        + part(usage.generated_images, "image_output" if sats["image_output"] else "image")
        + part(usage.web_searches, "web_search")
        + part(usage.audio_seconds, "audio_second")
    )


@given(
    prompt=st.integers(0, 200_000),
    completion=st.integers(0, 50_000),
    images=st.integers(0, 50),
    searches=st.integers(0, 20),
    seconds=st.integers(0, 7200),
    made=st.integers(0, 10),
    p=st.decimals(min_value=0, max_value=Decimal("0.001"), places=9),
    c=st.decimals(min_value=0, max_value=Decimal("0.001"), places=9),
    req=st.decimals(min_value=0, max_value=Decimal("0.1"), places=9),
    img=st.decimals(min_value=0, max_value=Decimal("0.1"), places=9),
    web=st.decimals(min_value=0, max_value=Decimal("0.1"), places=9),
    audio=st.decimals(min_value=0, max_value=Decimal("0.01"), places=9),
    img_out=st.sampled_from([Decimal(0), Decimal("0.04"), Decimal("0.000000123")]),
    rate=st.integers(1_000, 1_000_000),
)
def test_published_sats_pricing_times_usage_is_the_charge_for_every_component(
    prompt: int,
    completion: int,
    images: int,
    searches: int,
    seconds: int,
    made: int,
    p: Decimal,
    c: Decimal,
    req: Decimal,
    img: Decimal,
    web: Decimal,
    audio: Decimal,
    img_out: Decimal,
    rate: int,
) -> None:
    m = model(
        str(p),
        str(c),
        request=str(req),
        image=str(img),
        web_search=str(web),
        audio_second=str(audio),
        image_output=str(img_out),
    )
    prices = msat_prices(m, Decimal(rate), Decimal("1.05"))
    usage = Usage(
        prompt,
        completion,
        images=images,
        web_searches=searches,
        audio_seconds=seconds,
        generated_images=made,
    )
    cost = usage_cost(prices, usage)
    assert cost.total_msats == published_charge(prices.as_sats(), usage)
    assert cost.image_msats == math.ceil(images * prices.image) + math.ceil(
        made * (prices.image_output or prices.image)
    )
    assert cost.web_search_msats == math.ceil(searches * prices.web_search)
    assert cost.audio_msats == math.ceil(seconds * prices.audio_second)
    assert cost.as_dict()["total_msats"] == cost.total_msats
    assert {"input_msats", "output_msats", "request_msats", "image_msats", "web_search_msats"} <= (
        set(cost.as_dict())
    )


def test_sats_per_unit_prices_for_images_and_searches() -> None:
    m = Model.from_openrouter(
        {
            "id": "p/sats",
            "context_length": 1000,
            "pricing": {},
            "sats_per_million": {"prompt": 150, "image": 2, "web_search": "0.5"},
        }
    )
    prices = msat_prices(m, Decimal(100_000), Decimal("1.05"))
    assert prices.prompt == Decimal("0.15")  # 150 sats per million tokens, in msat per token
    assert prices.image == 2000 and prices.web_search == 500  # sats per unit, in msat


def test_usage_reports_web_searches() -> None:
    anthropic_style = usage_from_openai(
        {"input_tokens": 10, "output_tokens": 3, "server_tool_use": {"web_search_requests": 2}}
    )
    assert anthropic_style == Usage(10, 3, web_searches=2)
    openrouter = usage_from_openai(
        {"prompt_tokens": 5, "completion_tokens": 1, "server_tool_use": {"web_search_requests": 1}}
    )
    assert openrouter is not None and openrouter.web_searches == 1
    perplexity = usage_from_openai(
        {"prompt_tokens": 5, "completion_tokens": 1, "num_search_queries": 3}
    )
    assert perplexity is not None and perplexity.web_searches == 3
    garbage = usage_from_openai(
        {"prompt_tokens": 5, "completion_tokens": 1, "server_tool_use": {"web_search_requests": -4}}
    )
    assert garbage is not None and garbage.web_searches == 0


def test_count_input_images_in_every_dialect() -> None:
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    }
    responses = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "compare"},
                    {"type": "input_image", "image_url": "https://example.invalid/b.png"},
                ],
            }
        ]
    }
    anthropic = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://x.invalid/c"}},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "A"}}],
                    },
                ],
            }
        ]
    }
    assert count_input_images(chat) == 2
    assert count_input_images(responses) == 1
    assert count_input_images(anthropic) == 2
    assert count_input_images({"messages": [{"role": "user", "content": "no images"}]}) == 0
    deep: dict[str, object] = {"type": "text"}
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = {"content": [deep]}
    assert count_input_images({"messages": [deep]}) == 0


def test_reserved_web_searches() -> None:
    assert reserved_web_searches({"messages": []}) == 0
    assert reserved_web_searches({"plugins": [{"id": "web", "max_results": 3}]}) == 1
    assert reserved_web_searches({"plugins": [{"id": "file-parser"}]}) == 0
    assert reserved_web_searches({"web_search_options": {}}) == 1
    assert reserved_web_searches({"tools": [{"type": "web_search_20250305", "max_uses": 4}]}) == 4
    assert reserved_web_searches({"tools": [{"type": "web_search"}]}) == UNBOUNDED_TOOL_SEARCHES
    assert (
        reserved_web_searches({"tools": [{"type": "web_search_preview"}], "max_tool_calls": 2}) == 2
    )
    assert (
        reserved_web_searches({"tools": [{"type": "openrouter:web_search"}]})
        == UNBOUNDED_TOOL_SEARCHES
    )
    assert reserved_web_searches({"tools": [{"type": "function", "function": {}}]}) == 0


def test_reservation_covers_images_and_searches() -> None:
    m = model(image="0.001", web_search="0.01")
    prices = msat_prices(m, Decimal(100_000), Decimal(1))
    text_only = max_request_cost(prices, m, 50, 20)
    assert text_only == math.ceil(50 * prices.prompt) + 20 * prices.completion
    with_extras = max_request_cost(prices, m, 50, 20, units=Usage(0, 0, images=3, web_searches=2))
    # Images by URL and search results enter the prompt without being in the request bytes,
    # so the prompt side is the whole context then.
    assert with_extras == (
        m.context_length * prices.prompt
        + 20 * prices.completion
        + 3 * prices.image
        + 2 * prices.web_search
    )
    worst = usage_cost(prices, Usage(m.context_length, 20, images=3, web_searches=2))
    assert worst.total_msats <= with_extras
    # The published max_cost includes the default search allowance of a search-priced model.
    assert model_max_cost(prices, m) == max_request_cost(
        prices, m, m.context_length, None, units=Usage(0, 0, web_searches=UNBOUNDED_TOOL_SEARCHES)
    )


# --- RIP-05: completion budget reduced by an estimate of the prompt --------------------------


def test_budget_is_limited_by_the_context_left_after_the_prompt() -> None:
    m = model()  # context 1000, max completion 100
    assert completion_budget(m, None) == 100
    assert completion_budget(m, 40) == 40
    assert completion_budget(m, None, prompt_estimate=940) == 60
    assert completion_budget(m, None, prompt_estimate=5000) == 1  # never below one token


def test_near_the_context_limit_less_completion_is_reserved() -> None:
    m = model()
    prices = msat_prices(m, Decimal(100_000), Decimal("1.05"))
    without = max_request_cost(prices, m, 950, None)
    with_estimate = max_request_cost(prices, m, 950, None, prompt_estimate=lambda _: 940)
    assert without == math.ceil(950 * 10.5) + 100 * 21
    assert with_estimate == math.ceil(950 * 10.5) + 60 * 21
    # An estimate above the byte bound is not believed: bytes bound the prompt.
    assert max_request_cost(prices, m, 950, None, prompt_estimate=lambda _: 10**6) == (
        math.ceil(950 * 10.5) + 50 * 21
    )
    # And the published maximum stays the worst case for any request.
    assert with_estimate <= without <= model_max_cost(prices, m)


def test_a_small_request_is_not_counted_and_keeps_max_tokens() -> None:
    m = model()
    prices = msat_prices(m, Decimal(100_000), Decimal("1.05"))

    def must_not_count(context: int) -> int:
        raise AssertionError("counting a small prompt is wasted work")

    assert max_request_cost(prices, m, 50, 20, prompt_estimate=must_not_count) == (
        math.ceil(50 * 10.5) + 20 * 21
    )
    assert max_request_cost(prices, m, 50, None, prompt_estimate=must_not_count) == (
        math.ceil(50 * 10.5) + 100 * 21
    )


def test_price_book_quote_takes_the_estimate_and_extras() -> None:
    m = model(image="0.001")
    book = PriceBook(Catalogue([m]), PinnedRate(Decimal(100_000)), Decimal(1))
    body = {"model": "p/m", "messages": [{"role": "user", "content": "word " * 1250}]}
    raw = len(str(body))
    plain = book.quote("p/m", raw, None)  # the lead's positional call keeps working
    rip05 = book.quote("p/m", raw, None, prompt_estimate=lambda n: estimate_prompt_tokens(body, n))
    assert rip05.max_cost_msat < plain.max_cost_msat
    two = Usage(0, 0, images=2)
    images = book.quote("p/m", 10, None, units=two)
    assert images.max_cost_msat == max_request_cost(images.prices, m, 10, None, units=two)


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Z", "M")),
    max_size=400,
)


@given(
    texts=st.lists(_TEXT, min_size=1, max_size=6),
    system=_TEXT,
)
# Found by hypothesis: "NIL" is one cl100k token and two o200k ones, so 3/4 of the o200k
# count alone exceeded the cl100k count.
@example(texts=["NIL"], system="NIL")
def test_the_prompt_estimate_never_exceeds_the_real_count(texts: list[str], system: str) -> None:
    import bpe_openai

    body = {
        "messages": [{"role": "system", "content": system}]
        + [{"role": "user", "content": [{"type": "text", "text": t}]} for t in texts]
    }
    estimate = estimate_prompt_tokens(body)
    everything = "".join([system, *texts])
    assert estimate <= count_prompt_tokens(body)  # o200k, with chat overhead
    cl100k = bpe_openai.get_encoding("cl100k_base")
    assert estimate <= sum(len(cl100k.encode(t)) for t in [system, *texts])
    assert estimate <= len(everything.encode())  # and never above the byte bound


def test_prompt_estimate_reads_every_dialect() -> None:
    chat = {"messages": [{"role": "user", "content": "hello there " * 40}]}
    responses = {
        "instructions": "be brief " * 40,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi " * 40}]}],
    }
    anthropic = {
        "system": [{"type": "text", "text": "be brief " * 40}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi " * 40}]}],
    }
    completions = {"prompt": ["once upon a time " * 20, "again " * 20]}
    embeddings = {"input": "some text to embed " * 20}
    for body in (chat, responses, anthropic, completions, embeddings):
        assert estimate_prompt_tokens(body) > 30, body
