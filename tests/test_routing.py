"""Several providers behind one public model: ranking, failover before the first byte, and
who is charged what (issue 18).

Three fake upstreams serve the same catalogue; the node's providers come from a providers
file, or are set on the running node. Prices differ by provider fee, so the charge shows
which provider served.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import pytest_asyncio
from conftest import (
    BTC_USD,
    FEE,
    TEST_MODELS,
    NodeFactory,
    RunningNode,
    eventually,
    model_entry,
)
from satsrouter_dev.fake_upstream import FakeUpstream, default_models
from satsrouter_dev.mint import TestWallet, free_port

from satsrouter.upstream.providers import DEFAULT_UPSTREAM_URL, ProviderConfig

MODEL = "test/priced"
QUESTION = [{"role": "user", "content": "Say hello"}]
CHEAP, DEAR = Decimal("1.05"), Decimal("2.1")  # provider fees: who served shows in the charge


def cost(fee: Decimal, prompt: int, completion: int) -> int:
    """What `MODEL` costs at a provider with this fee (each component rounded up once)."""
    pricing = model_entry(MODEL)["pricing"]

    def per_token(usd: str) -> Decimal:
        return Decimal(usd) * fee * Decimal(100_000_000_000) / BTC_USD

    return math.ceil(prompt * per_token(pricing["prompt"])) + math.ceil(
        completion * per_token(pricing["completion"])
    )


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[dict[str, FakeUpstream]]:
    """Three upstreams serving the same models: two OpenAI-dialect, one Anthropic."""
    models = default_models() + TEST_MODELS
    made = {
        "alpha": FakeUpstream(models=models),
        "beta": FakeUpstream(models=models),
        "claude": FakeUpstream(api_key="anthropic-secret", models=models, dialect="anthropic"),
    }
    for fake in made.values():
        await fake.start()
    try:
        yield made
    finally:
        for fake in made.values():
            await fake.stop()


def provider(name: str, url: str, fee: Decimal, **extra: Any) -> ProviderConfig:
    return ProviderConfig(name=name, base_url=url, fee=fee, **extra)


async def routed_node(
    node_factory: NodeFactory,
    providers: list[ProviderConfig],
    routes: dict[str, list[str]] | None = None,
    **settings: Any,
) -> RunningNode:
    running = await node_factory(**settings)
    running.node.set_providers(providers, routes or {})
    assert await running.node.catalogue_sync.refresh()
    return running


async def node_from_file(
    node_factory: NodeFactory,
    folder: Path,
    providers: list[ProviderConfig],
    routes: dict[str, list[str]] | None = None,
    **settings: Any,
) -> RunningNode:
    """A node started with these providers in its providers file (`PROVIDERS_PATH`), and no
    environment provider."""
    lines: list[str] = []
    for p in providers:
        lines += ["[[provider]]", f'name = "{p.name}"', f'base_url = "{p.base_url}"']
        lines.append(f'dialect = "{p.dialect}"')
        if p.api_key:
            lines.append(f'api_key = "{p.api_key}"')
        if p.fee is not None:
            lines.append(f'fee = "{p.fee}"')
    if routes:
        lines.append("[routes]")
        for model, names in routes.items():
            quoted = ", ".join(f'"{n}"' for n in names)
            lines.append(f'"{model}" = [{quoted}]')
    path = folder / "providers.toml"
    path.write_text("\n".join(lines) + "\n")
    return await node_factory(
        providers_path=path,
        upstream_base_url=DEFAULT_UPSTREAM_URL,
        upstream_api_key="",
        **settings,
    )


async def funded_key(running: RunningNode, wallet: TestWallet, sats: int = 200) -> str:
    (token,) = await wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        resp = await http.post("/wallet/create", json={"cashu_token": token})
    assert resp.status_code == 200, resp.text
    key: str = resp.json()["api_key"]
    return key


async def chat(running: RunningNode, key: str, **extra: Any) -> httpx.Response:
    """One chat request for `MODEL` paid by `key`; `extra` adds or replaces body fields."""
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 20, **extra}
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        headers = {"Authorization": f"Bearer {key}"}
        return await http.post("/chat/completions", headers=headers, json=body)


async def spent(running: RunningNode, key: str, sats: int = 200) -> int:
    info = await running.balance(key)
    assert info["reserved"] == 0
    return sats * 1000 - int(info["balance"])


def dead_url() -> str:
    """An upstream nobody listens on: connection refused at once."""
    return f"http://127.0.0.1:{free_port()}/v1"


async def test_down_and_slow_providers_are_passed_over_for_the_healthy_one(
    node_factory: NodeFactory,
    fakes: dict[str, FakeUpstream],
    user_wallet: TestWallet,
    tmp_path: Path,
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    alpha.configure(latency_ms=30_000)  # slow: past the node's timeout before its first byte
    running = await node_from_file(
        node_factory,
        tmp_path,
        [
            provider("down", dead_url(), CHEAP),
            provider("slow", alpha.url, CHEAP),
            provider("healthy", beta.url, DEAR),
        ],
        {MODEL: ["down", "slow", "healthy"]},
        upstream_timeout=1.0,
    )
    # One public model, published at the dearest route's price: the most a client can pay.
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        listed = (await http.get(f"/models/{MODEL}")).json()
    dear_prompt = cost(DEAR, 1, 0)
    assert math.ceil(listed["sats_pricing"]["prompt"] * 1000) == dear_prompt
    assert listed["provider"] in ("down", "slow", "healthy")

    key = await funded_key(running, user_wallet)
    client = openai.AsyncOpenAI(base_url=running.api, api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=20
    )
    reply = raw.parse()
    assert raw.headers["x-routstr-provider"] == "healthy"
    usage = reply.usage
    assert usage is not None
    charged = cost(DEAR, usage.prompt_tokens, usage.completion_tokens)
    assert int(raw.headers["x-routstr-cost-msats"]) == charged
    assert await spent(running, key) == charged  # once, at the serving provider's price
    assert (alpha.stats["chat_requests"], beta.stats["chat_requests"]) == (1, 1)
    await client.close()
    await running.check_invariants()


async def test_the_cheapest_provider_serves_first_and_is_charged_its_own_price(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    running = await routed_node(
        node_factory, [provider("dear", alpha.url, DEAR), provider("cheap", beta.url, CHEAP)]
    )
    key = await funded_key(running, user_wallet)
    resp = await chat(running, key)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routstr-provider"] == "cheap"
    usage = resp.json()["usage"]
    charged = cost(CHEAP, usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["cost"]["total_msats"] == charged == await spent(running, key)
    assert (alpha.stats["chat_requests"], beta.stats["chat_requests"]) == (0, 1)
    # The reservation was the dearest route's, the charge the cheaper one's: the rest is back.
    assert charged < cost(DEAR, usage["prompt_tokens"], usage["completion_tokens"])
    await running.check_invariants()


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_anthropic_provider_takes_over_from_a_failing_openai_one(
    node_factory: NodeFactory,
    fakes: dict[str, FakeUpstream],
    user_wallet: TestWallet,
    streamed: bool,
    tmp_path: Path,
) -> None:
    alpha, claude = fakes["alpha"], fakes["claude"]
    alpha.configure(fail="500")
    running = await node_from_file(
        node_factory,
        tmp_path,
        [
            provider("alpha", alpha.url, CHEAP),
            provider("claude", claude.url, DEAR, dialect="anthropic", api_key="anthropic-secret"),
        ],
        {MODEL: ["alpha", "claude"]},
    )
    key = await funded_key(running, user_wallet)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=key, max_retries=0)
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 20, "messages": QUESTION}
    if streamed:
        async with client.messages.stream(**request) as stream:
            message = await stream.get_final_message()
        served = stream.response.headers["x-routstr-provider"]
    else:
        raw = await client.messages.with_raw_response.create(**request)
        message = raw.parse()
        served = raw.headers["x-routstr-provider"]
    assert served == "claude"
    assert message.content[0].type == "text" and message.content[0].text
    charged = cost(DEAR, message.usage.input_tokens, message.usage.output_tokens)
    assert await spent(running, key) == charged
    assert alpha.stats["requests"] - alpha.stats["paths"].get("/v1/models", 0) == 1
    assert claude.stats["last_path"] == "/v1/messages"
    await client.close()
    await running.check_invariants()


async def test_a_client_error_is_not_retried_and_costs_nothing(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    alpha.configure(fail="400")
    running = await routed_node(
        node_factory,
        [provider("alpha", alpha.url, CHEAP), provider("beta", beta.url, CHEAP)],
        {MODEL: ["alpha", "beta"]},
    )
    key = await funded_key(running, user_wallet)
    resp = await chat(running, key)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "upstream_rejected"
    assert beta.stats["chat_requests"] == 0
    assert await spent(running, key) == 0
    await running.check_invariants()


async def test_a_stream_that_breaks_after_bytes_were_sent_is_not_retried(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    alpha.configure(fail="drop_midstream", fail_after_chunks=2)
    running = await routed_node(
        node_factory,
        [provider("alpha", alpha.url, CHEAP), provider("beta", beta.url, CHEAP)],
        {MODEL: ["alpha", "beta"]},
    )
    key = await funded_key(running, user_wallet)
    client = openai.AsyncOpenAI(base_url=running.api, api_key=key, max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=20, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received  # the client had bytes from alpha: too late to move to beta
    assert beta.stats["chat_requests"] == 0
    # The upstream failed while the client listened: nothing is charged for it (I4).
    assert await spent(running, key) == 0
    await client.close()
    await running.check_invariants()


async def test_when_every_provider_is_rate_limited_the_client_gets_429_and_pays_nothing(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    alpha.configure(fail="429")
    beta.configure(fail="429")
    running = await routed_node(
        node_factory, [provider("alpha", alpha.url, CHEAP), provider("beta", beta.url, DEAR)]
    )
    key = await funded_key(running, user_wallet)
    resp = await chat(running, key)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "1"  # the upstreams' own
    assert resp.json()["error"]["type"] == "rate_limited_upstream"
    assert (alpha.stats["chat_requests"], beta.stats["chat_requests"]) == (1, 1)
    assert await spent(running, key) == 0
    # One busy, one not: served, by the one that was not.
    beta.reset()
    resp = await chat(running, key)
    assert resp.status_code == 200 and resp.headers["x-routstr-provider"] == "beta"
    await running.check_invariants()


async def test_fee_and_model_ids_per_provider(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    # A provider that knows the model by another id: the public id maps to its own.
    alpha = fakes["alpha"]
    entry = {**model_entry(MODEL), "id": "priced-v2"}
    alpha.set_models([entry])
    running = await routed_node(
        node_factory,
        [provider("alpha", alpha.url, FEE, models={MODEL: "priced-v2"})],
    )
    key = await funded_key(running, user_wallet)
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        assert (await http.get(f"/models/{MODEL}")).status_code == 200
    resp = await chat(running, key)
    assert resp.status_code == 200, resp.text
    assert alpha.stats["last_request"]["model"] == "priced-v2"
    await running.check_invariants()


async def test_the_request_may_steer_routing_the_openrouter_way(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    running = await routed_node(
        node_factory, [provider("alpha", alpha.url, CHEAP), provider("beta", beta.url, DEAR)]
    )
    key = await funded_key(running, user_wallet)

    async def ask(**extra: Any) -> httpx.Response:
        return await chat(running, key, **extra)

    # `order` beats price; the names are this node's, in any case.
    resp = await ask(provider={"order": ["BETA"]})
    assert resp.status_code == 200 and resp.headers["x-routstr-provider"] == "beta"
    # Neither plain OpenAI upstream is sent OpenRouter's routing fields.
    assert "provider" not in beta.stats["last_request"]
    assert (await ask(provider={"ignore": ["alpha"]})).headers["x-routstr-provider"] == "beta"
    assert (await ask(provider={"only": ["alpha"]})).headers["x-routstr-provider"] == "alpha"
    # Names this node does not have are meant for an OpenRouter upstream: nothing filtered.
    assert (await ask(provider={"only": ["Anthropic"]})).headers["x-routstr-provider"] == "alpha"
    refused = await ask(provider={"only": ["alpha"], "ignore": ["alpha"]})
    assert refused.status_code == 400 and "provider" in refused.json()["error"]["message"]
    assert (await ask(provider={"sort": "cheapest"})).status_code == 400

    # No fallbacks allowed: the first route's failure is the answer.
    alpha.configure(fail="500")
    failed = await ask(provider={"allow_fallbacks": False})
    assert failed.status_code == 502 and beta.stats["chat_requests"] == 2
    assert (await ask()).headers["x-routstr-provider"] == "beta"
    await running.check_invariants()


async def test_fallback_models_are_tried_in_turn_and_reserved_for(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    # alpha serves only test/priced, and fails; beta serves only test/flat.
    alpha.set_models([model_entry(MODEL)])
    beta.set_models([model_entry("test/flat")])
    alpha.configure(fail="503")
    running = await routed_node(
        node_factory, [provider("alpha", alpha.url, FEE), provider("beta", beta.url, FEE)]
    )
    key = await funded_key(running, user_wallet)
    resp = await chat(running, key, models=["test/flat"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routstr-provider"] == "beta"
    sent = beta.stats["last_request"]
    assert sent["model"] == "test/flat" and "models" not in sent
    usage = resp.json()["usage"]
    # Charged as the model that served: test/flat prices completion only.
    flat = model_entry("test/flat")
    charged = math.ceil(
        usage["completion_tokens"]
        * Decimal(flat["pricing"]["completion"])
        * FEE
        * Decimal(100_000_000_000)
        / BTC_USD
    )
    assert usage["cost"]["total_msats"] == charged == await spent(running, key)
    assert (await chat(running, key, models="test/flat")).status_code == 400
    await running.check_invariants()


async def test_a_provider_down_at_start_joins_when_it_comes_up(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    port = free_port()
    late_url = f"http://127.0.0.1:{port}/v1"
    # The node's only provider is down when it starts: it starts anyway, serving nothing.
    running = await node_factory(upstream_base_url=late_url, upstream_name="late")
    assert len(running.node.catalogue) == 0
    beta = fakes["beta"]
    beta.set_models([model_entry("test/flat")])
    running.node.set_providers(
        [provider("late", late_url, FEE), provider("beta", beta.url, FEE)], {}
    )
    assert await running.node.catalogue_sync.refresh()
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        assert (await http.get("/models/test/flat")).json()["providers"] == ["beta"]
        assert (await http.get(f"/models/{MODEL}")).status_code == 404
        status = (await http.get("/providers/late")).json()
        assert status["status"] == "offline" and status["models"] == []
        # It comes up: the next sync adds its models, beside the others'.
        late = FakeUpstream(port=port, models=[model_entry(MODEL), model_entry("test/flat")])
        await late.start()
        try:
            assert await running.node.catalogue_sync.refresh()
            assert (await http.get("/models/test/flat")).json()["providers"] == ["late", "beta"]
            resp = await chat(running, await funded_key(running, user_wallet))
            assert resp.status_code == 200 and resp.headers["x-routstr-provider"] == "late"
        finally:
            await late.stop()
    await running.check_invariants()


async def test_a_failing_provider_leaves_rotation_and_is_probed_back_in(
    node_factory: NodeFactory, fakes: dict[str, FakeUpstream], user_wallet: TestWallet
) -> None:
    alpha, beta = fakes["alpha"], fakes["beta"]
    alpha.configure(fail="500")
    running = await routed_node(
        node_factory,
        [provider("alpha", alpha.url, CHEAP), provider("beta", beta.url, CHEAP)],
        {MODEL: ["alpha", "beta"]},
        circuit_failures=2,
        circuit_cooldown_seconds=1.0,
    )
    key = await funded_key(running, user_wallet)
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:

        async def served_by() -> str:
            resp = await chat(running, key)
            assert resp.status_code == 200, resp.text  # the client never sees alpha fail
            return resp.headers["x-routstr-provider"]

        async def circuit(name: str) -> str:
            shown: str = (await http.get(f"/providers/{name}")).json()["circuit"]
            return shown

        assert [await served_by(), await served_by()] == ["beta", "beta"]
        assert alpha.stats["chat_requests"] == 2
        assert await circuit("alpha") == "open"
        assert (await http.get("/providers/alpha")).json()["status"] == "offline"
        # Out of rotation: beta serves without alpha being asked first.
        assert await served_by() == "beta" and alpha.stats["chat_requests"] == 2

        # Recovered: after the cooldown a trial request goes to alpha and closes the circuit.
        alpha.reset()

        async def alpha_back() -> bool:
            return await circuit("alpha") == "half_open"

        await eventually(alpha_back)
        assert await served_by() == "alpha"
        assert await circuit("alpha") == "closed"
        assert await served_by() == "alpha"
    await running.check_invariants()
