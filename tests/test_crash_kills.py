"""Kill the node at each money step, restart it, and check conservation at the mint (I6, I7).

Each test arms the node's fault injection (`FAULT_CRASH_AT`) at one named step, makes the
request that reaches it, sees the process exit there, restarts the node on the same data
and checks: the user is credited exactly once or their token is theirs to spend again,
every change token the client can collect redeems at the mint, and `satsrouter wallet
audit` finds the ecash held at the mint equal to balances + revenue, to the msat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from killable import KillableNode
from satsrouter_dev.mint import TestWallet
from test_lightning_refund import LnurlServer, external_payee

CHAT = {"model": "test/priced", "messages": [{"role": "user", "content": "hi"}]}
CRASHED = 137


async def _crash(node: KillableNode, step: str, request: Any) -> None:
    """Start armed at `step`, send the request (it must break), see the process exit there."""
    await node.start(crash_at=step)
    with pytest.raises(httpx.TransportError):
        await request()
    assert await node.wait_exit() == CRASHED, f"the node did not crash at {step}"
    assert f"exiting at {step}" in node.log.read_text()
    await node.start()


async def _audit_ok(node: KillableNode) -> None:
    node.check_books()
    code, report = await node.audit()
    assert code == 0, report
    assert "difference:          0 msat" in report


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("step", "swapped"),
    [
        ("redeem.after_intent", False),
        ("receive.after_intent", False),
        ("receive.after_swap", True),
        ("receive.after_store", True),
    ],
)
async def test_token_as_key_killed_during_redemption(
    killable: KillableNode, user_wallet: TestWallet, step: str, swapped: bool
) -> None:
    (token,) = await user_wallet.mint_tokens(50)
    async with httpx.AsyncClient(base_url=killable.url, timeout=30) as http:

        async def use_token() -> Any:
            return await http.get("/v1/balance/info", headers=_bearer(token))

        await _crash(killable, step, use_token)
        # Recovery at start: the swap was restored from the mint, or never happened and
        # the token's intent is forgotten (it is still the user's, and still works).
        states = killable.query("SELECT state FROM redemptions")
        assert states == ([("credited",)] if swapped else [])
        assert killable.query("SELECT state FROM wallet_ops") in ([], [("done",)], [("undone",)])
        info = (await use_token()).json()
        assert info["balance"] == 50_000
        again = (await use_token()).json()
        assert again["balance"] == 50_000  # credited once
        resp = await http.post("/v1/chat/completions", json=CHAT, headers=_bearer(token))
        assert resp.status_code == 200, resp.text
    await _audit_ok(killable)


@pytest.mark.parametrize(
    "step",
    [
        "redeem.after_intent",
        "receive.after_intent",
        "receive.after_swap",
        "receive.after_store",
        "payout.after_begin",
        "issue.after_record",
    ],
)
async def test_x_cashu_killed_at_each_step_loses_nothing(
    killable: KillableNode, user_wallet: TestWallet, step: str
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    async with httpx.AsyncClient(base_url=killable.url, timeout=30) as http:

        async def pay() -> httpx.Response:
            return await http.post("/v1/chat/completions", json=CHAT, headers={"X-Cashu": token})

        await _crash(killable, step, pay)
        refund = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
        if refund.status_code == 404:
            # The token never reached the mint: it is still the user's to pay with.
            resp = await pay()
            assert resp.status_code == 200, resp.text
            change = resp.headers["X-Cashu"]
        else:
            assert refund.status_code == 200, refund.text
            change = refund.json()["token"]
            # asking again gives the same token, never a second one
            again = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
            assert again.json()["token"] == change
    # what the node kept: the charge, and any sub-sat remainder it could not pay out
    kept = killable.query("SELECT amount_msat FROM journal WHERE kind IN ('charge', 'rounding')")
    charged = -sum(amount for (amount,) in kept)
    (left,) = killable.query("SELECT coalesce(sum(balance_msat), 0) FROM accounts")[0]
    redeemed = await user_wallet.redeem(change)
    assert redeemed * 1000 + charged + left == 100_000
    await _audit_ok(killable)


@pytest.mark.parametrize(
    "step",
    [
        "mint.after_outputs",
        "mint.after_mint",
        "payout.after_begin",
        "split.after_intent",
        "split.after_swap",
        "issue.after_record",
    ],
)
async def test_lightning_funding_and_withdraw_killed_at_each_step(
    killable: KillableNode, user_wallet: TestWallet, step: str
) -> None:
    """One 1024-sat proof from a Lightning invoice; a 1000-sat withdrawal needs a split."""
    await killable.start(crash_at=step if step.startswith("mint.") else "")
    async with httpx.AsyncClient(base_url=killable.url, timeout=30) as http:
        made = await http.post("/lightning/invoice", json={"amount_sats": 1024})
        assert made.status_code == 200, made.text
        invoice_id = made.json()["invoice_id"]

        async def status() -> httpx.Response:
            return await http.get(f"/lightning/invoice/{invoice_id}/status")

        if step.startswith("mint."):
            # the watcher or this poll reaches the step; either way the process dies
            try:
                for _ in range(600):  # a paid quote is minted at the first look
                    if (await status()).json()["status"] == "paid":
                        break
                    await asyncio.sleep(0.05)
            except httpx.TransportError:
                pass
            assert await killable.wait_exit() == CRASHED
            await killable.start(crash_at="")
        paid = (await status()).json()
        assert paid["status"] == "paid", paid
        key = paid["api_key"]
        assert paid["balance"] == 1_024_000

        async def withdraw() -> httpx.Response:
            return await http.post(
                "/v1/wallet/withdraw",
                json={"amount": 1000},
                headers={**_bearer(key), "Idempotency-Key": "w-1"},
            )

        if step.startswith("mint."):
            resp = await withdraw()
        else:
            await killable.stop()
            await _crash(killable, step, withdraw)
            resp = await withdraw()  # the same id: the same payout, or a fresh try
        assert resp.status_code == 200, resp.text
        token = resp.json()["token"]
        assert (await withdraw()).json()["token"] == token
        balance = (await http.get("/v1/balance/info", headers=_bearer(key))).json()
    assert await user_wallet.redeem(token) == 1000
    assert balance["balance"] == 24_000
    await _audit_ok(killable)


@pytest_asyncio.fixture(scope="module")
async def payee() -> AsyncIterator[LnurlServer]:
    """A Lightning address whose invoices are quotes at a second mint (external payments)."""
    async with external_payee() as server:
        yield server


@pytest.mark.parametrize(
    ("step", "paid"), [("melt.after_intent", False), ("melt.after_melt", True)]
)
async def test_lightning_refund_killed_during_the_melt(
    killable: KillableNode,
    user_wallet: TestWallet,
    payee: LnurlServer,
    step: str,
    paid: bool,
) -> None:
    (token,) = await user_wallet.mint_tokens(200)
    await killable.start()
    async with httpx.AsyncClient(base_url=killable.url, timeout=30) as http:
        made = await http.post(
            "/v1/wallet/create",
            json={"cashu_token": token},
            headers={"Refund-LNURL": payee.address()},
        )
        assert made.status_code == 200, made.text
        key = made.json()["api_key"]
        await killable.stop()

        async def withdraw() -> httpx.Response:
            return await http.post(
                "/v1/wallet/withdraw",
                json={"amount": 100},
                headers={**_bearer(key), "Idempotency-Key": "ln-1"},
            )

        await _crash(killable, step, withdraw)
        # The dead predecessor's payout was settled at start from the mint's answer.
        info = (await http.get("/v1/balance/info", headers=_bearer(key))).json()
    if paid:
        (state, sent, fee) = killable.query("SELECT state, amount_msat, fee_msat FROM payouts")[0]
        assert state == "issued"
        assert 0 < sent and sent + fee <= 100_000  # the mint's fee comes out of the debit
        assert info["balance"] == 200_000 - sent - fee
    else:
        assert killable.query("SELECT state FROM payouts") == []  # undone: may be retried
        assert info["balance"] == 200_000
    await _audit_ok(killable)


async def test_a_restarted_node_releases_its_dead_predecessors_reservations_at_start(
    killable: KillableNode, user_wallet: TestWallet
) -> None:
    # Only the start can release them: the sweeper's first pass comes long after (the
    # slowest the heartbeat may beat; on Postgres the predecessor must look dead soon).
    dead_after = float(killable.env.get("INSTANCE_DEAD_AFTER", "30"))
    killable.env["SWEEP_INTERVAL"] = str(dead_after / 2)
    (token,) = await user_wallet.mint_tokens(100)
    await killable.start()
    async with httpx.AsyncClient(base_url=killable.url, timeout=30) as http:
        key = (await http.post("/v1/wallet/create", json={"cashu_token": token})).json()["api_key"]
        slow = {**CHAT, "fake": {"latency_ms": 60_000}}  # the upstream holds it
        pending = asyncio.create_task(
            http.post("/v1/chat/completions", json=slow, headers=_bearer(key))
        )
        for _ in range(600):
            if killable.query("SELECT 1 FROM reservations WHERE state = 'active'"):
                break
            await asyncio.sleep(0.05)
        assert killable.query("SELECT sum(reserved_msat) FROM accounts")[0][0] > 0
        killable.kill()
        with pytest.raises(httpx.TransportError):
            await pending
        await killable.start()
        # ready means recovered: nothing is held for the request that died with its node
        assert killable.query("SELECT state FROM reservations") == [("released",)]
        info = (await http.get("/v1/balance/info", headers=_bearer(key))).json()
    assert info["reserved"] == 0 and info["balance"] == 100_000
    await _audit_ok(killable)
