"""Refunds that tell the truth: sub-sat remainders stay, concurrent refunds agree (issue 13).

Every test checks conservation per key, to the msat: what was paid in equals what was
charged, plus what was refunded, plus what is left on the key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx
import openai
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.mint import TestWallet
from sqlalchemy import func, select, update

from satsrouter.billing.payments import Credentials
from satsrouter.store.tables import accounts, journal, payouts

MESSAGES = [{"role": "user", "content": "refund test"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(http: httpx.AsyncClient, token: str) -> str:
    resp = await http.post("/v1/balance/create", json={"initial_balance_token": token})
    assert resp.status_code == 200, resp.text
    key: str = resp.json()["api_key"]
    return key


async def spend(node: RunningNode, key: str, model: str = "test/priced") -> int:
    """One paid request on `key`; returns its exact cost in msat."""
    reply = await openai.AsyncOpenAI(
        base_url=node.api, api_key=key, max_retries=0
    ).chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
    assert reply.usage is not None
    return expected_cost(
        model_entry(model), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )


async def pay_with_x_cashu(
    node: RunningNode, token: str, max_tokens: int
) -> tuple[int, str | None]:
    """One request paid with `token` in X-Cashu: its cost in msat, and the change token."""
    raw = await openai.AsyncOpenAI(
        base_url=node.api, api_key="unused", max_retries=0, default_headers={"X-Cashu": token}
    ).chat.completions.with_raw_response.create(
        model="test/priced",
        messages=MESSAGES,
        max_tokens=max_tokens,  # type: ignore[arg-type]
    )
    return int(raw.headers["X-Routstr-Cost-Msats"]), raw.headers.get("X-Cashu")


async def payout_rows(node: RunningNode) -> int:
    async with node.node.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(payouts))).scalar_one())


async def journal_kinds(node: RunningNode) -> set[str]:
    async with node.node.engine.connect() as conn:
        return set((await conn.execute(select(journal.c.kind).distinct())).scalars())


async def assert_conserved(
    node: RunningNode, key: str, paid_in_msat: int, refunded_msat: int
) -> dict[str, Any]:
    """Paid in == charged + refunded + left, to the msat; returns the key's info."""
    info = await node.balance(key)
    assert paid_in_msat == info["total_spent"] + refunded_msat + info["balance"]
    assert "rounding" not in await journal_kinds(node)
    await node.check_invariants()
    return info


async def test_refund_below_one_sat_is_refused_and_the_msat_stay_spendable(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(1)
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await new_key(http, token)
        cost = await spend(node, key)
        left = 1000 - cost
        assert 0 < left < 1000
        for path in ("/v1/balance/refund", "/v1/wallet/withdraw"):
            resp = await http.post(path, headers=auth(key))
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert error["type"] == "nothing_to_refund" and error["code"] == 400
            assert f"{left} msat" in error["message"] and "1 sat" in error["message"]
        assert (await node.balance(key))["balance"] == left
        # Still the user's: it pays for another request (one that fits in less than a sat).
        cost += await spend(node, key, model="test/flat")
    info = await assert_conserved(node, key, 1000, 0)
    assert info["total_spent"] == cost
    assert await payout_rows(node) == 0


async def test_refund_pays_whole_sats_and_leaves_the_rest_on_the_key(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(10)
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await new_key(http, token)
        cost = await spend(node, key)
        left = 10_000 - cost
        assert left % 1000, "the test needs a sub-sat remainder"
        resp = await http.post("/v1/balance/refund", headers=auth(key))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["amount_msat"] == left - left % 1000
        assert body["balance"] == left % 1000
        refunded = await user_wallet.redeem(body["token"]) * 1000
        assert refunded == body["amount_msat"]
        # Asked again: the same token (a replay), and the remainder is still there.
        again = await http.post("/v1/balance/refund", headers=auth(key))
        assert again.status_code == 200 and again.json()["token"] == body["token"]
    info = await assert_conserved(node, key, 10_000, refunded)
    assert info["balance"] == left % 1000


async def test_ten_concurrent_refunds_issue_one_token(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(20)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        key = await new_key(http, token)
        await spend(node, key)  # leaves a sub-sat remainder: late refunds see < 1 sat

        async def refund() -> httpx.Response:
            return await http.post("/v1/balance/refund", headers=auth(key))

        answers = await asyncio.gather(*(refund() for _ in range(10)))
        # Once it has settled, every repeat answers with the one token too.
        answers += await asyncio.gather(*(refund() for _ in range(10)))
    tokens = {a.json()["token"] for a in answers if a.status_code == 200}
    assert len(tokens) == 1, [a.json() for a in answers]
    for answer in answers:
        assert answer.status_code in (200, 409), answer.text
        if answer.status_code == 409:
            assert answer.json()["error"]["type"] == "conflict"
    assert all(a.status_code == 200 for a in answers[10:])
    async with node.node.engine.connect() as conn:
        rows = (await conn.execute(select(payouts.c.amount_msat, payouts.c.state))).all()
    assert len(rows) == 1 and rows[0][1] == "issued"
    refunded = await user_wallet.redeem(tokens.pop()) * 1000
    assert refunded == rows[0][0]
    await assert_conserved(node, key, 20_000, refunded)


async def test_x_cashu_change_below_one_sat_stays_and_the_refund_says_so(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(1)
    cost, change = await pay_with_x_cashu(node, token, max_tokens=1)
    assert change is None  # no change token below 1 sat
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "nothing_to_refund"
    assert f"{1000 - cost} msat" in error["message"]
    # The remainder stays recorded against the token (a liability), not the node's revenue.
    async with node.node.engine.connect() as conn:
        balance = (
            await conn.execute(select(accounts.c.balance_msat).where(accounts.c.kind == "xcashu"))
        ).scalar_one()
    assert balance == 1000 - cost
    assert "rounding" not in await journal_kinds(node)
    await node.check_invariants()


async def test_x_cashu_refund_tells_what_stays_behind(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(30)
    cost, change = await pay_with_x_cashu(node, token, max_tokens=2)
    assert change is not None
    left = 30_000 - cost
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token"] == change and body["amount_msat"] == left - left % 1000
    assert body["balance"] == left % 1000
    refunded = await user_wallet.redeem(change) * 1000
    assert 30_000 == cost + refunded + body["balance"]
    await node.check_invariants()


async def test_ten_concurrent_x_cashu_refunds_issue_one_token(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(10)
    # A paid request whose change was not issued (as when issuing it failed): settled only.
    quote = dataclasses.replace(node.node.prices.quote("test/priced", 10, 10), max_cost_msat=3000)
    charge = await node.node.billing.begin(Credentials(x_cashu=token), quote, "r1")
    await charge.settle(2345)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:

        async def refund() -> httpx.Response:
            return await http.post("/v1/balance/refund", headers={"X-Cashu": token})

        answers = await asyncio.gather(*(refund() for _ in range(10)))
        answers.append(await refund())
    tokens = {a.json()["token"] for a in answers if a.status_code == 200}
    assert len(tokens) == 1 and answers[-1].status_code == 200, [a.json() for a in answers]
    assert all(a.status_code in (200, 409) for a in answers), [a.json() for a in answers]
    assert answers[-1].json()["balance"] == 655  # (10_000 - 2345) % 1000 stays
    assert await payout_rows(node) == 1
    assert await user_wallet.redeem(tokens.pop()) == 7
    await node.check_invariants()


async def test_expired_key_below_one_sat_is_not_refunded_and_keeps_its_msat(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(1)
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await new_key(http, token)
    left = 1000 - await spend(node, key)
    async with node.node.engine.begin() as conn:
        await conn.execute(
            update(accounts)
            .where(accounts.c.kind == "key")
            .values(refund_lnurl="user@example.invalid", expires_at=time.time() - 1)
        )
    # Not due: no Lightning payment can carry it (and nothing is written off).
    assert await node.node.lightning_refunds.expire_once() == 0
    assert (await node.balance(key))["balance"] == left
    assert await payout_rows(node) == 0
    await assert_conserved(node, key, 1000, 0)
