"""Object-level authorization (OWASP API1): a key reaches its own money and nothing else.

Nothing in the public API names an account by id: every balance route takes the key (or the
token) itself. What could still cross between users is an identifier a client chooses or
learns: an `Idempotency-Key`, a child key, a Lightning invoice id. Each is tried here.
"""

from __future__ import annotations

from typing import Any

import httpx
from conftest import RunningNode, eventually
from satsrouter_dev.mint import TestWallet


async def funded_key(http: httpx.AsyncClient, wallet: TestWallet, sats: int) -> str:
    (token,) = await wallet.mint_tokens(sats)
    made = await http.post("/v1/wallet/create", json={"cashu_token": token})
    assert made.status_code == 200, made.text
    key: str = made.json()["api_key"]
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def withdraw(
    http: httpx.AsyncClient, key: str, amount: int, idempotency: str
) -> dict[str, Any]:
    resp = await http.post(
        "/v1/wallet/withdraw",
        json={"amount": amount},
        headers={**bearer(key), "Idempotency-Key": idempotency},
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_an_idempotency_key_reused_by_another_user_pays_only_their_own_money(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        alice = await funded_key(http, user_wallet, 50)
        bob = await funded_key(http, user_wallet, 80)
        paid_alice = await withdraw(http, alice, 5, "shared-id")
        # Bob picks the same Idempotency-Key: he gets a withdrawal of his own, not Alice's
        # token back (payout ids are scoped to the account).
        paid_bob = await withdraw(http, bob, 7, "shared-id")
        assert paid_bob["token"] != paid_alice["token"]
        assert await user_wallet.redeem(paid_alice["token"]) == 5
        assert await user_wallet.redeem(paid_bob["token"]) == 7
        assert (await node.balance(alice))["balance"] == 45_000
        assert (await node.balance(bob))["balance"] == 73_000
        # Replays still return each user's own payout, and move nothing again.
        assert (await withdraw(http, alice, 5, "shared-id"))["token"] == paid_alice["token"]
        assert (await withdraw(http, bob, 7, "shared-id"))["token"] == paid_bob["token"]
        assert (await node.balance(bob))["balance"] == 73_000
    await node.check_invariants()


async def test_a_child_key_spends_within_its_limit_but_never_takes_the_parents_money(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        parent = await funded_key(http, user_wallet, 60)
        made = await http.post(
            "/v1/wallet/child-key", json={"count": 1, "balance_limit": 1000}, headers=bearer(parent)
        )
        assert made.status_code == 200, made.text
        (child,) = made.json()["api_keys"]
        for path, body in (
            ("/v1/wallet/withdraw", {}),
            ("/v1/wallet/withdraw", {"amount": 1}),
            ("/v1/wallet/child-key", {"count": 1}),
        ):
            resp = await http.post(path, json=body, headers=bearer(child))
            assert resp.status_code == 403, (path, resp.text)
            assert resp.json()["error"]["type"] == "child_key_not_allowed"
        assert (await node.balance(parent))["balance"] == 60_000
    await node.check_invariants()


async def test_a_lightning_topup_invoice_reveals_no_key_and_ids_cannot_be_guessed(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = await funded_key(http, user_wallet, 10)
        made = await http.post(
            "/lightning/invoice", json={"amount_sats": 20, "purpose": "topup"}, headers=bearer(key)
        )
        assert made.status_code == 200, made.text
        invoice_id = made.json()["invoice_id"]
        assert len(invoice_id) >= 32  # a capability: whoever holds it sees the status

        async def paid() -> bool:
            resp = await http.get(f"/lightning/invoice/{invoice_id}/status")
            return bool(resp.json()["status"] == "paid")

        await eventually(paid)
        status = (await http.get(f"/lightning/invoice/{invoice_id}/status")).json()
        # Whoever learns a top-up invoice's id does not learn the key it funded.
        assert key not in str(status) and "api_key" not in status
        # A neighbouring or made-up id is simply unknown.
        for guess in (invoice_id[:-1] + ("0" if invoice_id[-1] != "0" else "1"), "1", "x" * 43):
            resp = await http.get(f"/lightning/invoice/{guess}/status")
            assert resp.status_code == 404, resp.text
        assert (await node.balance(key))["balance"] == 30_000
    await node.check_invariants()


async def test_another_key_cannot_read_or_refund_a_token_it_does_not_hold(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        alice = await funded_key(http, user_wallet, 30)
        bob = await funded_key(http, user_wallet, 30)
        history = (await http.get("/v1/wallet/history", headers=bearer(bob))).json()
        # Bob's history is Bob's: one credit, nothing of Alice's.
        assert [e["amount_msat"] for e in history["entries"]] == [30_000]
        # A made-up or truncated key is unknown, never someone else's account.
        for wrong in (alice[:-1], alice + "0", "sk-" + "0" * 48):
            resp = await http.get("/v1/balance/info", headers=bearer(wrong))
            assert resp.status_code == 401, resp.text
    await node.check_invariants()
