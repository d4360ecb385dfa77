"""The catalogue: upstream models, the operator's file, aliases, published == charged."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
from conftest import NodeFactory, RunningNode
from hypothesis import given, settings
from hypothesis import strategies as st
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.billing.pricing import usage_cost
from satsrouter.usage import Usage

MODELS_FILE: dict[str, Any] = {
    "models": [
        # Override a price and the context of an upstream model.
        {
            "id": "openai/gpt-4o",
            "pricing": {"prompt": "0.000005", "image": "0.001", "web_search": "0.01"},
            "context_length": 64000,
        },
        # A model only the file knows, priced in sats per million tokens.
        {
            "id": "local/sats-model",
            "name": "Sats-priced",
            "context_length": 2048,
            "top_provider": {"max_completion_tokens": 100},
            "pricing": {"prompt": "0", "completion": "0"},
            "sats_per_million": {"prompt": 150, "completion": 600, "image": 2, "web_search": 5},
        },
        # Its own fee instead of PROVIDER_FEE.
        {"id": "test/cheap", "fee": "2"},
        # A second "gpt-4o-mini" from another vendor makes the short name ambiguous.
        {
            "id": "other/gpt-4o-mini",
            "context_length": 1000,
            "pricing": {"prompt": "0.000001", "completion": "0.000001"},
        },
    ],
    "disabled": ["anthropic/claude-3.5-sonnet"],
    "aliases": {"sonnet": "anthropic/claude-3.5-sonnet", "cheapo": "test/cheap"},
}


async def file_node(
    node_factory: NodeFactory, upstream: FakeUpstream, tmp_path: Path
) -> RunningNode:
    upstream.reset()
    path = tmp_path / "models.json"
    path.write_text(json.dumps(MODELS_FILE))
    return await node_factory(models_path=path)


async def test_file_overrides_adds_disables_and_aliases(
    node_factory: NodeFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    node = await file_node(node_factory, upstream, tmp_path)
    api = openai.AsyncOpenAI(base_url=node.api, api_key="none", max_retries=0)
    ids = {m.id for m in (await api.models.list()).data}
    assert "local/sats-model" in ids and "openai/gpt-4o-mini" in ids
    assert "anthropic/claude-3.5-sonnet" not in ids
    gpt4o = await api.models.retrieve("openai/gpt-4o")
    extra = gpt4o.model_extra or {}
    assert extra["context_length"] == 64000
    # 0.000005 USD × 1.05 fee, published as the price charged
    assert Decimal(extra["pricing"]["prompt"]) == Decimal("0.00000525")
    assert extra["pricing"]["completion"] == "0.0000105"  # upstream's 0.00001 × 1.05
    sats = (await api.models.retrieve("local/sats-model")).model_extra or {}
    assert (
        sats["sats_pricing"]["prompt"] == 0.00015 and sats["sats_pricing"]["completion"] == 0.0006
    )
    # Per-unit prices in the models file are sats per image / per search.
    assert sats["sats_pricing"]["image"] == 2 and sats["sats_pricing"]["web_search"] == 5
    assert Decimal(extra["pricing"]["web_search"]) == Decimal("0.0105")
    cheap = (await api.models.retrieve("test/cheap")).model_extra or {}
    # fee 2 instead of 1.05: 0.0000001 USD × 2 × 1e8 sat/BTC ÷ 100000 USD/BTC
    assert cheap["sats_pricing"]["prompt"] == 0.0002

    async with httpx.AsyncClient(base_url=node.url) as http:

        async def chat(model: str) -> httpx.Response:
            return await http.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": "Bearer sk-none"},
            )

        assert (await chat("gpt-4o")).status_code == 401  # resolved; then the key is unknown
        assert (await chat("cheapo")).status_code == 401
        disabled = await chat("sonnet")
        assert disabled.status_code == 404
        ambiguous = await chat("gpt-4o-mini")
        assert ambiguous.status_code == 400
        assert ambiguous.json()["error"]["type"] == "ambiguous_model"
        assert "openai/gpt-4o-mini" in ambiguous.json()["error"]["message"]
        assert "other/gpt-4o-mini" in ambiguous.json()["error"]["message"]
        unknown = await chat("openai/gpt-4o-mni")
        assert unknown.status_code == 404
        assert "openai/gpt-4o-mini" in unknown.json()["error"]["message"]
        missing = await http.get("/v1/models/nope/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "model_not_found"


async def test_sync_failure_keeps_the_last_good_catalogue(
    node_factory: NodeFactory, upstream: FakeUpstream
) -> None:
    upstream.reset()
    node = await node_factory()
    before = len(node.node.catalogue)
    assert before >= 4
    node.node.upstream.base_url = "http://127.0.0.1:9/v1"  # the upstream goes away
    assert await node.node.catalogue_sync.refresh()
    assert len(node.node.catalogue) == before
    async with httpx.AsyncClient(base_url=node.url) as http:
        info = (await http.get("/v1/info")).json()
        providers = (await http.get("/v1/providers")).json()["providers"]
    assert info["catalogue"]["stale"] is True and info["models"] == before
    assert providers[0]["status"] == "degraded"


async def test_catalog_providers_and_info(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        catalog = (await http.get("/v1/models/catalog")).json()
        providers = (await http.get("/v1/providers")).json()
        detail = (await http.get("/v1/providers/upstream")).json()
        unknown = await http.get("/v1/providers/nope")
        info = (await http.get("/v1/info")).json()
    text = catalog["text"]
    assert text[0]["provider"] == "upstream" and text[0]["configured"] is True
    assert {m["id"] for m in text[0]["models"]} >= {"openai/gpt-4o", "test/priced"}
    (listed,) = providers["providers"]
    assert listed["name"] == "upstream" and listed["status"] == "online"
    assert "openai/gpt-4o" in listed["models"]
    assert {"chat/completions", "responses", "messages", "images/generations"} <= set(
        listed["endpoints"]
    )
    assert {"last_checked", "latency_ms", "error_rate"} <= set(listed)
    assert {
        "name",
        "display_name",
        "description",
        "models",
        "endpoints",
        "features",
        "status",
    } <= set(detail)
    priced = next(m for m in detail["models"] if m["id"] == "test/priced")
    assert priced["context_window"] == 4096 and priced["pricing"]["prompt"]
    assert unknown.status_code == 404
    # Passive signals: upstream exchanges that failed make the provider degraded.
    await node.node.health.check("upstream")
    for _ in range(3):
        node.node.health.record("upstream", False)
    async with httpx.AsyncClient(base_url=node.url) as http:
        degraded = (await http.get("/v1/providers/upstream")).json()
    assert degraded["status"] == "degraded" and degraded["error_rate"] == 1.0
    assert degraded["last_checked"] and degraded["latency_ms"] is not None
    assert info["mints"] == node.node.settings.cashu_mints and info["version"]
    assert info["models"] == len(node.node.catalogue)
    assert info["exchange_rate"]["usd_per_btc"] == "100000"


async def test_published_prices_match_charges_end_to_end(
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    tmp_path: Path,
    user_wallet: TestWallet,
) -> None:
    node = await file_node(node_factory, upstream, tmp_path)
    async with httpx.AsyncClient(base_url=node.url) as http:
        listing = (await http.get("/v1/models")).json()["data"]
    published = {entry["id"]: entry for entry in listing}

    @settings(max_examples=300, deadline=None)
    @given(
        model_id=st.sampled_from(sorted(published)),
        prompt=st.integers(0, 100_000),
        completion=st.integers(0, 20_000),
        images=st.integers(0, 20),
        searches=st.integers(0, 10),
    )
    def published_price_times_usage_is_the_charge(
        model_id: str, prompt: int, completion: int, images: int, searches: int
    ) -> None:
        prices = node.node.prices.prices(node.node.catalogue.resolve(model_id))
        usage = Usage(prompt, completion, images=images, web_searches=searches)
        charged = usage_cost(prices, usage).total_msats
        sats = published[model_id]["sats_pricing"]
        expected = (
            math.ceil(Decimal(str(sats["prompt"])) * 1000 * prompt)
            + math.ceil(Decimal(str(sats["completion"])) * 1000 * completion)
            + math.ceil(Decimal(str(sats["request"])) * 1000)
            + math.ceil(Decimal(str(sats["image"])) * 1000 * images)
            + math.ceil(Decimal(str(sats["web_search"])) * 1000 * searches)
        )
        assert charged == expected
        # No request within the model's limits reserves more than the published max_cost.
        model = node.node.catalogue.resolve(model_id)
        bound = min(prompt, model.context_length)
        quote = node.node.prices.quote(model_id, bound, completion or None)
        assert quote.max_cost_msat <= published[model_id]["max_cost"] * 1000

    published_price_times_usage_is_the_charge()
    # And a real paid request is charged exactly the published price × its usage.
    (token,) = await user_wallet.mint_tokens(50)
    for model_id in ("local/sats-model", "test/cheap", "openai/gpt-4o"):
        reply = await openai.AsyncOpenAI(
            base_url=node.api, api_key=token, max_retries=0
        ).chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "price check please"}],
            max_tokens=7,
        )
        assert reply.usage is not None
        sats = published[model_id]["sats_pricing"]
        expected = math.ceil(
            Decimal(str(sats["prompt"])) * 1000 * reply.usage.prompt_tokens
        ) + math.ceil(Decimal(str(sats["completion"])) * 1000 * reply.usage.completion_tokens)
        assert (reply.usage.model_extra or {})["cost"]["total_msats"] == expected
