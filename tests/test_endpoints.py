"""Models listing, keys and balance endpoints of the proxy core."""

from __future__ import annotations

import httpx
import openai
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.mint import TestWallet


async def test_models_list_has_prices_in_usd_and_sats(node: RunningNode) -> None:
    api = openai.AsyncOpenAI(base_url=node.api, api_key="none", max_retries=0)
    models = {m.id: m for m in (await api.models.list()).data}
    priced = models["test/priced"].model_extra or {}
    assert priced["pricing"]["prompt"] == "0.0000105"  # USD per token, fee included
    assert priced["sats_pricing"]["prompt"] == 0.0105
    assert priced["sats_pricing"]["completion"] == 0.021
    assert priced["max_cost"] == (4096 * 10.5 + 256 * 21) / 1000
    assert priced["context_length"] == 4096


async def test_sk_key_from_token_pays_and_reports_balance(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(40)
    async with httpx.AsyncClient(base_url=node.url) as http:
        created = (
            await http.post("/v1/balance/create", json={"initial_balance_token": token})
        ).json()
        key = created["api_key"]
        assert created["balance"] == 40_000 and created["unit"] == "sat"
        reply = await openai.AsyncOpenAI(
            base_url=node.api, api_key=key, max_retries=0
        ).chat.completions.create(
            model="test/priced", messages=[{"role": "user", "content": "a b c"}], max_tokens=4
        )
        assert reply.usage is not None
        cost = expected_cost(
            model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
        )
        for path in ("/v1/balance/info", "/v1/wallet/balance"):
            for header in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
                info = (await http.get(path, headers=header)).json()
                assert info["balance_msat"] == 40_000 - cost
                assert info["reserved"] == 0 and info["total_requests"] == 1
        # The token itself cannot be used again: it became the key's balance.
        again = await http.post("/v1/wallet/create", json={"cashu_token": token})
        assert again.status_code == 400
        assert again.json()["error"]["type"] == "cashu_token_already_spent"
        missing = await http.get("/v1/balance/info")
        assert missing.status_code == 401
    await node.check_invariants()


async def test_every_response_has_a_request_id_and_errors_use_the_envelope(
    node: RunningNode,
) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        for resp in (
            await http.get("/v1/models"),
            await http.get("/nope"),
            await http.post("/v1/chat/completions", content=b"{not json"),
        ):
            assert resp.headers["x-request-id"]
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_json"
