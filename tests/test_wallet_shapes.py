"""Wallet answers have the seed's fields and units on the seed's paths, Routstr's on its own.

The seed documents `POST /v1/wallet/create`, `GET /v1/wallet/balance`, `POST
/v1/wallet/topup` and `POST /v1/wallet/withdraw` in sats (`"currency": "sat"`); Routstr's
node answers `/v1/balance/*` in msat. Both carry every field, each amount with its exact
`_msat` twin.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.mint import TestWallet

# The fields of the seed's example answers (seeds/001, "Wallet Management").
SEED_CREATE = {"api_key", "balance", "mint", "unit"}
SEED_BALANCE = {"balance", "currency", "reserved"}
SEED_TOPUP = {"balance", "amount_added", "currency"}
SEED_WITHDRAW = {"cashu_token", "amount", "mint"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def ok(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def spend(node: RunningNode, key: str) -> int:
    reply = await openai.AsyncOpenAI(
        base_url=node.api, api_key=key, max_retries=0
    ).chat.completions.create(
        model="test/priced", messages=[{"role": "user", "content": "shape"}], max_tokens=2
    )
    assert reply.usage is not None
    return expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )


async def test_seed_paths_answer_in_the_seeds_fields_and_sats(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    first, second = await user_wallet.mint_tokens(10, count=2)
    mint = node.node.settings.cashu_mints[0]
    async with httpx.AsyncClient(base_url=node.url) as http:
        created = await ok(await http.post("/v1/wallet/create", json={"cashu_token": first}))
        assert SEED_CREATE <= created.keys()
        assert (created["balance"], created["unit"], created["mint"]) == (10, "sat", mint)
        assert created["balance_msat"] == 10_000 and created["currency"] == "sat"
        key = created["api_key"]

        info = await ok(await http.get("/v1/wallet/balance", headers=auth(key)))
        assert SEED_BALANCE <= info.keys()
        assert (info["balance"], info["currency"], info["reserved"]) == (10, "sat", 0)
        assert info["balance_msat"] == info["available_msat"] == 10_000

        top = await ok(
            await http.post("/v1/wallet/topup", json={"cashu_token": second}, headers=auth(key))
        )
        assert SEED_TOPUP <= top.keys()
        assert (top["balance"], top["amount_added"], top["currency"]) == (20, 10, "sat")
        # Fields clients of this node (and of Routstr's /v1/wallet/topup) already read.
        assert top["added"] == 10 and top["msats"] == top["amount_added_msat"] == 10_000

        cost = await spend(node, key)
        left = 20_000 - cost
        info = await ok(await http.get("/v1/wallet/balance", headers=auth(key)))
        assert info["balance"] == left // 1000 and info["balance_msat"] == left
        assert info["total_spent"] == cost // 1000 and info["total_spent_msat"] == cost

        out = await ok(
            await http.post("/v1/wallet/withdraw", json={"amount": 5}, headers=auth(key))
        )
        assert SEED_WITHDRAW <= out.keys()
        assert (out["amount"], out["mint"], out["currency"]) == (5, mint, "sat")
        assert out["cashu_token"] == out["token"] and out["amount_msat"] == 5000
        assert out["balance"] == (left - 5000) // 1000 and out["balance_msat"] == left - 5000
    assert await user_wallet.redeem(out["cashu_token"]) == 5
    await node.check_invariants()


async def test_routstr_paths_answer_in_msat(node: RunningNode, user_wallet: TestWallet) -> None:
    first, second = await user_wallet.mint_tokens(10, count=2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        created = await ok(
            await http.post("/v1/balance/create", json={"initial_balance_token": first})
        )
        assert created["balance"] == created["balance_msat"] == 10_000
        assert created["currency"] == "msat" and created["unit"] == "sat"
        key = created["api_key"]

        info = await ok(await http.get("/v1/balance/info", headers=auth(key)))
        assert (info["balance"], info["reserved"], info["currency"]) == (10_000, 0, "msat")
        assert info["unit"] == info["token_unit"] == "sat"

        top = await ok(
            await http.post("/v1/balance/topup", json={"cashu_token": second}, headers=auth(key))
        )
        assert top["msats"] == top["amount_added"] == top["added"] == 10_000
        assert top["balance"] == 20_000 and top["currency"] == "msat"

        out = await ok(await http.post("/v1/balance/refund", headers=auth(key)))
        assert out["sats"] == 20 and out["msats"] == out["amount"] == out["amount_msat"] == 20_000
        assert out["token"] == out["cashu_token"] and out["balance"] == 0
        assert out["currency"] == "msat"
    assert await user_wallet.redeem(out["token"]) == 20
    await node.check_invariants()
