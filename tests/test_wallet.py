"""Funding and withdrawing with Cashu, through both path families (seed and Routstr)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from sqlalchemy import update

from satsrouter.store.tables import accounts

MESSAGES = [{"role": "user", "content": "wallet test"}]
FAMILIES = {
    "seed": {
        "create": "/v1/wallet/create",
        "info": "/v1/wallet/balance",
        "topup": "/v1/wallet/topup",
        "withdraw": "/v1/wallet/withdraw",
        "token_field": "cashu_token",
    },
    "routstr": {
        "create": "/v1/balance/create",
        "info": "/v1/balance/info",
        "topup": "/v1/balance/topup",
        "withdraw": "/v1/balance/refund",
        "token_field": "initial_balance_token",
    },
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(http: httpx.AsyncClient, token: str, family: str = "seed") -> str:
    paths = FAMILIES[family]
    resp = await http.post(paths["create"], json={paths["token_field"]: token})
    assert resp.status_code == 200, resp.text
    key: str = resp.json()["api_key"]
    return key


async def chat(node: RunningNode, key: str, max_tokens: int = 4) -> int:
    """One paid request; returns its exact cost."""
    reply = await openai.AsyncOpenAI(
        base_url=node.api, api_key=key, max_retries=0
    ).chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=max_tokens)
    assert reply.usage is not None
    return expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )


@pytest.mark.parametrize("family", ["seed", "routstr"])
async def test_create_topup_spend_withdraw(
    node: RunningNode, user_wallet: TestWallet, family: str
) -> None:
    paths = FAMILIES[family]
    per = 1000 if family == "seed" else 1  # msat per unit of plain amounts (the seed's sats)
    first, second = await user_wallet.mint_tokens(30, count=2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        created = (await http.post(paths["create"], json={paths["token_field"]: first})).json()
        key = created["api_key"]
        assert key.startswith("sk-") and created["balance"] == 30_000 // per
        assert created["mint"] == node.node.settings.cashu_mints[0] and created["unit"] == "sat"

        top = await http.post(paths["topup"], json={"cashu_token": second}, headers=auth(key))
        assert top.status_code == 200, top.text
        assert top.json()["balance"] == 60_000 // per and top.json()["added"] == 30_000 // per

        cost = await chat(node, key)
        info = (await http.get(paths["info"], headers=auth(key))).json()
        assert info["balance_msat"] == 60_000 - cost
        assert info["total_spent_msat"] == cost and info["total_requests"] == 1

        out = await http.post(paths["withdraw"], json={"amount": 20}, headers=auth(key))
        assert out.status_code == 200, out.text
        assert out.json()["amount_msat"] == 20_000
        assert await user_wallet.redeem(out.json()["token"]) == 20
        rest = (await http.post(paths["withdraw"], headers=auth(key))).json()
        left = 40_000 - cost
        assert rest["amount_msat"] == left - left % 1000
        assert await user_wallet.redeem(rest["token"]) == left // 1000
        # The sub-sat rest cannot be paid as a token: it stays on the key.
        info = (await http.get(paths["info"], headers=auth(key))).json()
        assert info["balance_msat"] == left % 1000
    await node.check_invariants()


async def test_create_with_query_form_and_topup_query_form(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    first, second = await user_wallet.mint_tokens(5, count=2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        created = await http.get("/v1/balance/create", params={"initial_balance_token": first})
        key = created.json()["api_key"]
        top = await http.post(
            "/v1/balance/topup", params={"cashu_token": second}, headers=auth(key)
        )
        assert top.json()["balance"] == 10_000


async def test_withdraw_replayed_returns_the_same_token(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(25)
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await create_key(http, token)
        first = (await http.post("/v1/wallet/withdraw", headers=auth(key))).json()
        again = (await http.post("/v1/wallet/withdraw", headers=auth(key))).json()
        assert first["token"] == again["token"] and first["amount_msat"] == 25_000
        # With an explicit Idempotency-Key as well.
        (more,) = await user_wallet.mint_tokens(10)
        await http.post("/v1/wallet/topup", json={"cashu_token": more}, headers=auth(key))
        headers = {**auth(key), "Idempotency-Key": "withdraw-42"}
        one = await http.post("/v1/wallet/withdraw", json={"amount": 4}, headers=headers)
        two = await http.post("/v1/wallet/withdraw", json={"amount": 4}, headers=headers)
        assert one.json()["token"] == two.json()["token"]
        assert (await http.get("/v1/wallet/balance", headers=auth(key))).json()["balance"] == 6
    assert await user_wallet.redeem(first["token"]) == 25
    assert await user_wallet.redeem(one.json()["token"]) == 4
    await node.check_invariants()


async def test_history_lists_every_movement(node: RunningNode, user_wallet: TestWallet) -> None:
    first, second = await user_wallet.mint_tokens(20, count=2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await create_key(http, first)
        await http.post("/v1/wallet/topup", json={"cashu_token": second}, headers=auth(key))
        cost = await chat(node, key)
        await http.post("/v1/wallet/withdraw", json={"amount": 5}, headers=auth(key))
        entries = (await http.get("/v1/balance/history", headers=auth(key))).json()["entries"]
    kinds = [e["kind"] for e in entries]
    assert kinds == ["payout", "charge", "credit", "credit"]
    assert [e["amount_msat"] for e in entries] == [-5000, -cost, 20_000, 20_000]
    assert entries[1]["request_id"] and all(e["created_at"] > 0 for e in entries)


async def test_topup_refuses_other_units_spent_tokens_and_child_keys(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    first, second = await user_wallet.mint_tokens(10, count=2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await create_key(http, first)
        ok = await http.post("/v1/wallet/topup", json={"cashu_token": second}, headers=auth(key))
        assert ok.status_code == 200
        again = await http.post("/v1/wallet/topup", json={"cashu_token": second}, headers=auth(key))
        assert again.status_code == 400
        assert again.json()["error"]["type"] == "cashu_token_already_spent"
        unknown = await http.post(
            "/v1/wallet/topup", json={"cashu_token": second}, headers=auth("sk-nope")
        )
        assert unknown.status_code == 401
        child = (await http.post("/v1/balance/child-key", headers=auth(key))).json()
        refused = await http.post("/v1/wallet/withdraw", headers=auth(child["api_keys"][0]))
        assert refused.status_code == 403
        assert (await http.get("/v1/wallet/balance", headers=auth(key))).json()["balance"] == 20


async def test_refund_races_topups_and_paid_requests(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    tokens = await user_wallet.mint_tokens(20, count=9)
    upstream.configure(latency_ms=30)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        key = await create_key(http, tokens[0])

        async def topup(token: str) -> int:
            r = await http.post("/v1/wallet/topup", json={"cashu_token": token}, headers=auth(key))
            return r.status_code

        async def refund(amount: int) -> tuple[int, Any]:
            r = await http.post(
                "/v1/wallet/withdraw",
                json={"amount": amount},
                headers={**auth(key), "Idempotency-Key": f"r{amount}"},
            )
            return r.status_code, r.json()

        async def paid() -> int:
            try:
                await chat(node, key, max_tokens=3)
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

        ops: list[Any] = [topup(t) for t in tokens[1:]]
        ops += [refund(a) for a in (3, 5, 7, 11, 13, 17)]
        ops += [paid() for _ in range(6)]
        results = await asyncio.gather(*ops)

    paid_out = 0
    for result in results:
        if isinstance(result, tuple):
            status, body = result
            assert status in (200, 409), body
            if status == 200:
                assert await user_wallet.redeem(body["token"]) * 1000 == body["amount_msat"]
                paid_out += body["amount_msat"]
        else:
            assert result in (200, 402, 409)
    info = await node.balance(key)
    assert info["reserved"] == 0
    spent = info["total_spent"]
    assert info["balance"] == 180_000 - paid_out - spent
    await node.check_invariants()


async def test_child_keys_spend_the_parent_within_a_limit_that_resets(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(50)
    async with httpx.AsyncClient(base_url=node.url) as http:
        parent = await create_key(http, token)
        made = await http.post(
            "/v1/balance/child-key",
            headers=auth(parent),
            json={"count": 2, "balance_limit": 3000, "balance_limit_reset": "daily"},
        )
        assert made.status_code == 200, made.text
        child, other = made.json()["api_keys"]
        spent = 0
        while True:
            try:
                spent += await chat(node, child, max_tokens=4)
            except openai.APIStatusError as exc:
                assert exc.status_code == 402
                assert exc.body["type"] == "spend_limit_reached"  # type: ignore[index]
                break
        assert 0 < spent <= 3000
        child_info = (await http.get("/v1/balance/info", headers=auth(child))).json()
        assert child_info["is_child"] and child_info["period_spent"] == spent
        parent_info = (await http.get("/v1/balance/info", headers=auth(parent))).json()
        assert parent_info["balance"] == 50_000 - spent
        # The sibling has its own limit.
        sibling_cost = await chat(node, other)
        # A new day: the limit is fresh again.
        async with node.node.engine.begin() as conn:
            await conn.execute(
                update(accounts)
                .where(accounts.c.parent_id.is_not(None))
                .values(period_start=time.time() - 3 * 86400)
            )
        spent += await chat(node, child)
        parent_info = (await http.get("/v1/balance/info", headers=auth(parent))).json()
        assert parent_info["balance"] == 50_000 - spent - sibling_cost
        history = (await http.get("/v1/balance/history", headers=auth(child))).json()
        assert len(history["entries"]) >= 2
    await node.check_invariants()


async def test_child_key_without_limit_and_expired_child(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(10)
    async with httpx.AsyncClient(base_url=node.url) as http:
        parent = await create_key(http, token)
        (free,) = (await http.post("/v1/balance/child-key", headers=auth(parent))).json()[
            "api_keys"
        ]
        (old,) = (
            await http.post(
                "/v1/balance/child-key",
                headers=auth(parent),
                json={"validity_date": time.time() + 0.5},
            )
        ).json()["api_keys"]
        assert await chat(node, free) > 0
        await asyncio.sleep(0.6)
        with pytest.raises(openai.AuthenticationError):
            await chat(node, old)
        bad = await http.post(
            "/v1/balance/child-key",
            headers=auth(parent),
            json={"balance_limit_reset": "hourly", "balance_limit": 5},
        )
        assert bad.status_code == 400
