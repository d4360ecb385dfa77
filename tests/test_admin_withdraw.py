"""The operator's money: the wallet view, revenue withdrawals (Cashu and Lightning), automatic
payouts, and that none of it ever touches the users' balances (issue 16, "Money").

Everything runs against a real mint: revenue comes from real paid requests, withdrawn tokens
are redeemed at the mint, Lightning payments are real melts settled by the fake backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from conftest import ADMIN_PASSWORD, NodeFactory, RunningNode, admin_client, eventually
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet, free_port
from test_lightning_refund import FAKE_FEE_MSAT, RESERVE_MSAT, LnurlServer, external_payee

from satsrouter.billing.audit import audit
from satsrouter.billing.revenue import OPERATOR_KIND

CHAT = {"model": "test/priced", "messages": [{"role": "user", "content": "earn me something"}]}


@pytest_asyncio.fixture(scope="module")
async def payee() -> AsyncIterator[LnurlServer]:
    """A Lightning address whose invoices are quotes at a second mint (external payments)."""
    async with external_payee() as server:
        yield server


async def _funded_key(node: RunningNode, wallet: TestWallet, sats: int) -> str:
    (token,) = await wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/v1/wallet/create", json={"cashu_token": token})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["api_key"])


async def _paid_requests(node: RunningNode, key: str, count: int, tokens: int = 200) -> int:
    """`count` real paid chat requests; the sum of what they were charged, in msat."""
    total = 0
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        for _ in range(count):
            resp = await http.post(
                "/v1/chat/completions",
                json={**CHAT, "max_tokens": 256, "fake": {"completion_tokens": tokens}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 200, resp.text
            total += int(resp.headers["X-Routstr-Cost-Msats"])
    return total


async def _rows(node: RunningNode, sql: str) -> list[tuple[Any, ...]]:
    rows, _ = await node.node.tx.read(lambda tx: tx.execute(sql, {}))
    return rows


async def _books_exact(node: RunningNode) -> None:
    """I1 for every account (operator ones too) and the audit exact to the msat."""
    for account_id, balance, reserved in await _rows(
        node, "SELECT id, balance_msat, reserved_msat FROM accounts"
    ):
        assert balance == await node.node.ledger.journal_sum(account_id)
        assert balance >= reserved >= 0
    checked = await audit(node.node.tx, node.node.wallet)
    assert checked.ok, checked.report()
    assert checked.difference_msat == 0


async def _state(node: RunningNode) -> tuple[list[tuple[Any, ...]], ...]:
    """Every balance, journal row and payout: what a refused withdrawal must not change."""
    return (
        await _rows(node, "SELECT id, balance_msat, reserved_msat FROM accounts ORDER BY id"),
        await _rows(node, "SELECT id, account_id, amount_msat, kind FROM journal ORDER BY id"),
        await _rows(node, "SELECT id, state, amount_msat FROM payouts ORDER BY id"),
    )


async def _wallet(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/admin/api/wallet")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_revenue_is_the_charges_and_comes_out_as_a_token_redeemable_at_the_mint(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    key = await _funded_key(node, user_wallet, 100)
    charged = await _paid_requests(node, key, 3)
    assert charged > 3000
    http = await admin_client(node)
    try:
        view = await _wallet(http)
        assert view["revenue"] == {
            "earned_msat": charged,
            "withdrawn_msat": 0,
            "available_msat": charged,
        }
        assert view["liabilities_msat"] == 100_000 - charged
        assert view["audit"] == {"ok": True, "difference_msat": 0, "unreachable": []}
        (mint,) = view["mints"]
        assert mint == {
            "mint_url": local_mint.url,
            "unit": "sat",
            "held_msat": 100_000,
            "at_mint_msat": 100_000,
            "spent_at_mint_msat": 0,
            "liabilities_msat": 100_000 - charged,
            "payouts_in_flight_msat": 0,
            "surplus_msat": charged,
            "reachable": True,
        }

        amount = charged // 1000
        resp = await http.post("/admin/api/withdraw", json={"amount": amount, "unit": "sat"})
        assert resp.status_code == 200, resp.text
        done = resp.json()
        assert done["method"] == "cashu" and done["token"].startswith("cashu")
        assert (done["amount"], done["unit"], done["mint_url"]) == (amount, "sat", local_mint.url)
        assert done["fee_msat"] == 0
        assert done["available_msat"] == charged - amount * 1000
        assert await user_wallet.redeem(done["token"]) == amount

        view = await _wallet(http)
        assert view["revenue"] == {
            "earned_msat": charged,
            "withdrawn_msat": amount * 1000,
            "available_msat": charged - amount * 1000,
        }
        assert view["liabilities_msat"] == 100_000 - charged  # the user's money untouched
        assert view["mints"][0]["held_msat"] == 100_000 - amount * 1000
        assert view["audit"]["ok"] and view["audit"]["difference_msat"] == 0
        assert (await node.balance(key))["balance"] == 100_000 - charged

        listed = (await http.get("/admin/api/withdrawals")).json()["withdrawals"]
        assert len(listed) == 1
        assert listed[0]["id"] == done["id"]
        assert listed[0]["created_at"] > 0
        assert {k: v for k, v in listed[0].items() if k not in ("id", "created_at")} == {
            "method": "cashu",
            "amount_msat": amount * 1000,
            "unit": "sat",
            "mint_url": local_mint.url,
            "destination": None,
            "state": "issued",
            "fee_msat": 0,
        }
        assert "token" not in listed[0]
    finally:
        await http.aclose()
    # journaled: the move onto the operator's account, then its payout
    (operator_id,) = await _rows(node, f"SELECT id FROM accounts WHERE kind = '{OPERATOR_KIND}'")
    assert await _rows(
        node, f"SELECT kind, amount_msat FROM journal WHERE account_id = {operator_id[0]}"
    ) == [("revenue", amount * 1000), ("payout", -amount * 1000)]
    await _books_exact(node)
    await node.check_invariants()


async def test_more_than_revenue_is_refused_with_the_available_figure_and_nothing_changes(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    key = await _funded_key(node, user_wallet, 100)
    charged = await _paid_requests(node, key, 2)
    before = await _state(node)
    http = await admin_client(node)
    try:
        for amount in (charged // 1000 + 1, 100, 5000):
            resp = await http.post("/admin/api/withdraw", json={"amount": amount, "unit": "sat"})
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert error["type"] == "insufficient_revenue"
            assert error["available_msat"] == charged
            assert f"{charged // 1000} sat available" in error["message"]
        refusals = [
            ({"amount": 0, "unit": "sat"}, "invalid_amount"),
            ({"amount": -1, "unit": "sat"}, "invalid_amount"),
            ({"amount": 1.5, "unit": "sat"}, "invalid_amount"),
            ({"amount": "1", "unit": "sat"}, "invalid_amount"),
            ({"unit": "sat"}, "invalid_amount"),
            ({"amount": 1, "unit": "msat"}, "unsupported_unit"),
            ({"amount": 1, "unit": "usd"}, "unsupported_unit"),
            ({"amount": 1, "mint_url": "http://127.0.0.1:9/other"}, "unknown_mint"),
            ({"amount": 1, "destination": "nobody"}, "invalid_lnurl"),
            ({"amount": 1, "destination": ""}, "invalid_destination"),
        ]
        for body, code in refusals:
            resp = await http.post("/admin/api/withdraw", json=body)
            assert resp.status_code == 400, (body, resp.text)
            assert resp.json()["error"]["type"] == code, body
        assert (await http.get("/admin/api/withdrawals")).json() == {"withdrawals": []}
        assert (await _wallet(http))["revenue"]["available_msat"] == charged
    finally:
        await http.aclose()
    assert await _state(node) == before
    assert (await node.balance(key))["balance"] == 100_000 - charged
    await _books_exact(node)


async def test_withdrawals_never_touch_users_or_x_cashu_and_books_stay_exact(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    key = await _funded_key(node, user_wallet, 60)
    charged = await _paid_requests(node, key, 2)
    # A request paid with X-Cashu: its change goes back, a sub-sat rest stays on its account.
    (token,) = await user_wallet.mint_tokens(30)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as plain:
        resp = await plain.post(
            "/v1/chat/completions",
            json={**CHAT, "max_tokens": 256, "fake": {"completion_tokens": 150}},
            headers={"X-Cashu": token},
        )
    assert resp.status_code == 200, resp.text
    change_sat = await user_wallet.redeem(resp.headers["X-Cashu"])
    cost = int(resp.headers["X-Routstr-Cost-Msats"])
    earned = charged + cost
    xcashu = await _rows(node, "SELECT id, balance_msat FROM accounts WHERE kind = 'xcashu'")
    assert [balance for _, balance in xcashu] == [30_000 - cost - change_sat * 1000]

    http = await admin_client(node)
    try:
        assert (await _wallet(http))["revenue"]["earned_msat"] == earned
        withdrawn = 0
        for amount in (1, 2):
            resp = await http.post("/admin/api/withdraw", json={"amount": amount, "unit": "sat"})
            assert resp.status_code == 200, resp.text
            assert await user_wallet.redeem(resp.json()["token"]) == amount
            withdrawn += amount * 1000
            await _books_exact(node)
        more = await _paid_requests(node, key, 1)
        earned += more
        rest = (earned - withdrawn) // 1000
        resp = await http.post("/admin/api/withdraw", json={"amount": rest})  # unit: sat
        assert resp.status_code == 200, resp.text
        assert await user_wallet.redeem(resp.json()["token"]) == rest
        withdrawn += rest * 1000
        view = await _wallet(http)
        assert view["revenue"] == {
            "earned_msat": earned,
            "withdrawn_msat": withdrawn,
            "available_msat": earned - withdrawn,
        }
        assert 0 <= earned - withdrawn < 1000  # only a sub-sat rest is left
        resp = await http.post("/admin/api/withdraw", json={"amount": 1, "unit": "sat"})
        assert resp.status_code == 400
        assert resp.json()["error"]["available_msat"] == earned - withdrawn
        listed = (await http.get("/admin/api/withdrawals")).json()["withdrawals"]
        assert [w["amount_msat"] for w in listed] == [rest * 1000, 2000, 1000]  # newest first
    finally:
        await http.aclose()
    assert (await node.balance(key))["balance"] == 60_000 - charged - more
    assert await _rows(node, "SELECT id, balance_msat FROM accounts WHERE kind = 'xcashu'") == (
        xcashu
    )
    await _books_exact(node)
    await node.check_invariants()


async def test_concurrent_withdrawals_never_take_more_than_the_revenue(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    key = await _funded_key(node, user_wallet, 100)
    charged = await _paid_requests(node, key, 2)
    amount = charged // 1000
    http = await admin_client(node)
    try:
        answers = await asyncio.gather(
            *(
                http.post("/admin/api/withdraw", json={"amount": amount, "unit": "sat"})
                for _ in range(4)
            )
        )
    finally:
        await http.aclose()
    assert sorted(r.status_code for r in answers) == [200, 400, 400, 400]
    (won,) = [r for r in answers if r.status_code == 200]
    assert await user_wallet.redeem(won.json()["token"]) == amount
    assert (await node.balance(key))["balance"] == 100_000 - charged
    await _books_exact(node)


async def test_concurrent_withdrawals_on_postgres(
    node_factory: NodeFactory, postgres_url: str, user_wallet: TestWallet
) -> None:
    """Postgres runs the two transactions side by side: the row lock serialises them."""
    node = await node_factory(database_url=postgres_url)
    key = await _funded_key(node, user_wallet, 100)
    charged = await _paid_requests(node, key, 2)
    amount = charged // 1000
    answers = await asyncio.gather(
        *(node.node.revenue.withdraw(amount, "sat", node.node.wallet.primary_mint) for _ in "ab"),
        return_exceptions=True,
    )
    won = [a for a in answers if not isinstance(a, BaseException)]
    lost = [a for a in answers if isinstance(a, BaseException)]
    assert len(won) == 1 and len(lost) == 1, answers
    assert getattr(lost[0], "code", None) == "insufficient_revenue"
    assert await user_wallet.redeem(won[0].payout.token or "") == amount
    await _books_exact(node)


async def test_withdraw_over_lightning_to_an_address_and_to_an_invoice(
    node_factory: NodeFactory, user_wallet: TestWallet, payee: LnurlServer
) -> None:
    node = await node_factory(lnurl_allow_http=True, expiry_check_interval=3600.0)
    key = await _funded_key(node, user_wallet, 200)
    charged = await _paid_requests(node, key, 6)
    assert charged > 20_000
    http = await admin_client(node)
    try:
        # To a Lightning address: 10 sat leave revenue, the fee comes out of them.
        resp = await http.post(
            "/admin/api/withdraw",
            json={"amount": 10, "unit": "sat", "destination": payee.address()},
        )
        assert resp.status_code == 200, resp.text
        done = resp.json()
        assert (done["method"], done["token"], done["amount"]) == ("lightning", None, 10)
        assert done["fee_msat"] == FAKE_FEE_MSAT
        assert payee.invoices[-1] == 10_000 - RESERVE_MSAT
        # the reserve the mint did not use stays revenue
        available = charged - 10_000 + (RESERVE_MSAT - FAKE_FEE_MSAT)
        assert done["available_msat"] == available

        # To a bolt11 invoice of 3 sat: 5 sat cover it and the 2-sat reserve.
        quote = await _invoice(payee, 3)
        too_small = await http.post(
            "/admin/api/withdraw",
            json={"amount": 4, "unit": "sat", "destination": quote["request"]},
        )
        assert too_small.status_code == 400, too_small.text
        assert too_small.json()["error"]["type"] == "invoice_exceeds_amount"
        assert (await _wallet(http))["revenue"]["available_msat"] == available
        resp = await http.post(
            "/admin/api/withdraw",
            json={"amount": 5, "unit": "sat", "destination": "lightning:" + quote["request"]},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["fee_msat"] == FAKE_FEE_MSAT
        available -= 3000 + FAKE_FEE_MSAT
        assert resp.json()["available_msat"] == available
        assert await _quote_state(payee, quote["quote"]) == "PAID"

        view = await _wallet(http)
        assert view["revenue"]["available_msat"] == available
        assert view["revenue"]["withdrawn_msat"] == charged - available
        assert view["liabilities_msat"] == 200_000 - charged
        listed = (await http.get("/admin/api/withdrawals")).json()["withdrawals"]
        assert [(w["method"], w["state"], w["amount_msat"], w["fee_msat"]) for w in listed] == [
            ("lightning", "issued", 3000, FAKE_FEE_MSAT),
            ("lightning", "issued", 10_000 - RESERVE_MSAT, FAKE_FEE_MSAT),
        ]
        assert listed[1]["destination"] == payee.address()
        assert listed[0]["destination"] == "lightning:" + quote["request"]
    finally:
        await http.aclose()
    assert (await node.balance(key))["balance"] == 200_000 - charged
    await _books_exact(node)
    await node.check_invariants()


async def _invoice(payee: LnurlServer, sats: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=payee.invoice_mint) as http:
        resp = await http.post("/v1/mint/quote/bolt11", json={"unit": "sat", "amount": sats})
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


async def _quote_state(payee: LnurlServer, quote: str) -> str:
    async with httpx.AsyncClient(base_url=payee.invoice_mint) as http:
        resp = await http.get(f"/v1/mint/quote/bolt11/{quote}")
    resp.raise_for_status()
    return str(resp.json()["state"])


async def test_automatic_payout_sends_revenue_over_the_threshold_to_the_address(
    node_factory: NodeFactory, user_wallet: TestWallet, payee: LnurlServer
) -> None:
    node = await node_factory(
        lnurl_allow_http=True,
        expiry_check_interval=3600.0,
        receive_ln_address=payee.address(),
        payout_threshold_sat=8,
        payout_interval=0.1,
    )
    key = await _funded_key(node, user_wallet, 100)
    charged = await _paid_requests(node, key, 3)
    assert charged > 8000

    async def paid_out() -> bool:
        books = await node.node.revenue.books()
        return books.available < 8000 and not await _rows(
            node, "SELECT id FROM payouts WHERE state = 'pending'"
        )

    await eventually(paid_out)
    withdrawals = await node.node.revenue.withdrawals()
    assert withdrawals and all(w["destination"] == payee.address() for w in withdrawals)
    assert all(w["method"] == "lightning" and w["state"] == "issued" for w in withdrawals)
    sent = sum(w["amount_msat"] + w["fee_msat"] for w in withdrawals)
    books = await node.node.revenue.books()
    assert (books.earned, books.withdrawn) == (charged, sent)
    assert books.available == charged - sent
    assert (await node.balance(key))["balance"] == 100_000 - charged
    await _books_exact(node)


async def test_automatic_payout_waits_for_the_threshold_and_is_off_by_default(
    node_factory: NodeFactory, user_wallet: TestWallet, payee: LnurlServer
) -> None:
    node = await node_factory(lnurl_allow_http=True, receive_ln_address=payee.address())
    assert node.node.settings.payout_threshold_sat == 0  # the loop does nothing
    key = await _funded_key(node, user_wallet, 50)
    charged = await _paid_requests(node, key, 2)
    invoices = len(payee.invoices)
    below = await node.node.revenue.pay_out_above(payee.address(), charged // 1000 + 1)
    assert below is None
    assert len(payee.invoices) == invoices
    assert (await node.node.revenue.books()).available == charged
    assert await node.node.revenue.withdrawals() == []
    await _books_exact(node)


@pytest.mark.parametrize(
    "step", ["payout.after_begin", "split.after_intent", "split.after_swap", "issue.after_record"]
)
async def test_withdrawal_killed_at_each_step_loses_and_creates_nothing(
    tmp_path: Any,
    local_mint: LocalMint,
    upstream: FakeUpstream,
    user_wallet: TestWallet,
    step: str,
) -> None:
    upstream.reset()
    node = KillableNode(tmp_path, local_mint.url, upstream.url, ADMIN_PASSWORD=ADMIN_PASSWORD)
    cookies = {"admin_password": ADMIN_PASSWORD}
    try:
        await node.start()
        async with httpx.AsyncClient(base_url=node.url, timeout=30, cookies=cookies) as http:
            # Funded over Lightning: one 1024-sat proof, so a withdrawal needs a split first.
            made = await http.post("/lightning/invoice", json={"amount_sats": 1024})
            assert made.status_code == 200, made.text
            status = f"/lightning/invoice/{made.json()['invoice_id']}/status"

            async def paid() -> bool:
                return bool((await http.get(status)).json()["status"] == "paid")

            await eventually(paid)
            key = (await http.get(status)).json()["api_key"]
            charged = 0
            for _ in range(3):
                resp = await http.post(
                    "/v1/chat/completions",
                    json={**CHAT, "max_tokens": 256, "fake": {"completion_tokens": 200}},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert resp.status_code == 200, resp.text
                charged += int(resp.headers["X-Routstr-Cost-Msats"])
            await node.stop()
            amount = 7

            async def withdraw() -> httpx.Response:
                return await http.post(
                    "/admin/api/withdraw",
                    json={"amount": amount, "unit": "sat"},
                    headers={"Idempotency-Key": "w-1"},
                )

            await node.start(crash_at=step)
            with pytest.raises(httpx.TransportError):
                await withdraw()
            assert await node.wait_exit() == 137, f"the node did not crash at {step}"
            await node.start()
            resp = await withdraw()  # the same key: the same withdrawal, or a fresh try
            assert resp.status_code == 200, resp.text
            token_out = resp.json()["token"]
            again = await withdraw()
            assert again.json()["token"] == token_out
            view = (await http.get("/admin/api/wallet")).json()
            balance = (
                await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {key}"})
            ).json()
        assert await user_wallet.redeem(token_out) == amount
        assert balance["balance"] == 1_024_000 - charged
        assert view["revenue"] == {
            "earned_msat": charged,
            "withdrawn_msat": amount * 1000,
            "available_msat": charged - amount * 1000,
        }
        assert view["audit"] == {"ok": True, "difference_msat": 0, "unreachable": []}
        node.check_books()
        code, report = await node.audit()
        assert code == 0, report
        assert "difference:          0 msat" in report
    finally:
        await node.stop()


async def test_wallet_view_marks_a_mint_that_does_not_answer(
    node_factory: NodeFactory, local_mint: LocalMint, user_wallet: TestWallet, tmp_path: Any
) -> None:
    with LocalMint() as second:
        node = await node_factory(cashu_mints=[local_mint.url, second.url])
        await _funded_key(node, user_wallet, 20)
        other = await TestWallet.create(second.url, tmp_path / "second-wallet")
        await _funded_key(node, other, 30)
        http = await admin_client(node)
        try:
            view = await _wallet(http)
            assert [(m["mint_url"], m["reachable"]) for m in view["mints"]] == sorted(
                [(local_mint.url, True), (second.url, True)]
            )
            assert view["audit"]["ok"]
        finally:
            await http.aclose()
    # the second mint is gone now
    http = await admin_client(node)
    try:
        view = await _wallet(http)
    finally:
        await http.aclose()
    by_mint = {m["mint_url"]: m for m in view["mints"]}
    assert by_mint[local_mint.url]["reachable"] is True
    assert by_mint[local_mint.url]["at_mint_msat"] == 20_000
    gone = by_mint[second.url]
    assert (gone["reachable"], gone["held_msat"], gone["at_mint_msat"]) == (False, 30_000, 0)
    # what the mint cannot confirm counts as missing until it answers again
    assert view["audit"] == {
        "ok": False,
        "difference_msat": -30_000,
        "unreachable": [second.url],
    }
    assert view["liabilities_msat"] == 50_000


async def test_wallet_view_asks_a_mint_the_node_holds_nothing_at(
    node_factory: NodeFactory, local_mint: LocalMint, user_wallet: TestWallet
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    node = await node_factory(cashu_mints=[local_mint.url, dead])
    await _funded_key(node, user_wallet, 5)
    http = await admin_client(node)
    try:
        view = await _wallet(http)
    finally:
        await http.aclose()
    assert {m["mint_url"]: m["reachable"] for m in view["mints"]} == {
        local_mint.url: True,
        dead: False,
    }
    assert view["audit"]["ok"]  # nothing is held there, so nothing is at risk


@pytest.mark.parametrize(
    ("step", "paid"), [("melt.after_intent", False), ("melt.after_melt", True)]
)
async def test_lightning_withdrawal_killed_during_the_melt(
    tmp_path: Any,
    local_mint: LocalMint,
    upstream: FakeUpstream,
    user_wallet: TestWallet,
    payee: LnurlServer,
    step: str,
    paid: bool,
) -> None:
    upstream.reset()
    node = KillableNode(tmp_path, local_mint.url, upstream.url, ADMIN_PASSWORD=ADMIN_PASSWORD)
    cookies = {"admin_password": ADMIN_PASSWORD}
    (token,) = await user_wallet.mint_tokens(100)
    try:
        await node.start()
        async with httpx.AsyncClient(base_url=node.url, timeout=30, cookies=cookies) as http:
            made = await http.post("/v1/wallet/create", json={"cashu_token": token})
            assert made.status_code == 200, made.text
            key = made.json()["api_key"]
            charged = 0
            for _ in range(3):
                resp = await http.post(
                    "/v1/chat/completions",
                    json={**CHAT, "max_tokens": 256, "fake": {"completion_tokens": 200}},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert resp.status_code == 200, resp.text
                charged += int(resp.headers["X-Routstr-Cost-Msats"])
            await node.stop()
            await node.start(crash_at=step)
            with pytest.raises(httpx.TransportError):
                await http.post(
                    "/admin/api/withdraw",
                    json={"amount": 10, "unit": "sat", "destination": payee.address()},
                )
            assert await node.wait_exit() == 137, f"the node did not crash at {step}"
            await node.start()  # the dead predecessor's melt is settled from the mint's answer
            view = (await http.get("/admin/api/wallet")).json()
            listed = (await http.get("/admin/api/withdrawals")).json()["withdrawals"]
            balance = (
                await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {key}"})
            ).json()
        assert balance["balance"] == 100_000 - charged
        if paid:
            ((sent, fee),) = [(w["amount_msat"], w["fee_msat"]) for w in listed]
            assert listed[0]["state"] == "issued"
            assert 0 < sent and sent + fee <= 10_000
            withdrawn = sent + fee
        else:
            assert listed == []  # undone: the revenue is available again
            withdrawn = 0
        assert view["revenue"] == {
            "earned_msat": charged,
            "withdrawn_msat": withdrawn,
            "available_msat": charged - withdrawn,
        }
        assert view["audit"] == {"ok": True, "difference_msat": 0, "unreachable": []}
        node.check_books()
        code, report = await node.audit()
        assert code == 0, report
    finally:
        await node.stop()
