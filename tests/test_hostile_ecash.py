"""Forged and malformed ecash never moves money, and never burns the wallet's counters."""

from __future__ import annotations

import base64
import json
import os

import databases
import httpx
import pytest
from conftest import RunningNode
from satsrouter_dev.mint import TestWallet

from satsrouter.ecash.tokens import parse_token

CHAT = {"model": "test/priced", "messages": [{"role": "user", "content": "hi"}]}


def _v3(mint: str, proofs: list[dict[str, object]]) -> str:
    body = {"token": [{"mint": mint, "proofs": proofs}], "unit": "sat"}
    return "cashuA" + base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


def _forge(real: str, n: int) -> list[str]:
    """Tokens in the real one's keyset with fresh secrets: valid points, wrong signatures."""
    parsed = parse_token(real)
    proof = parsed.proofs[0]
    return [
        _v3(
            parsed.mint,
            [
                {
                    "id": proof.id,
                    "amount": proof.amount,
                    "secret": os.urandom(32).hex(),
                    "C": proof.C,
                }
            ],
        )
        for _ in range(n)
    ]


def _counters(node: RunningNode) -> list[tuple[str, int]]:
    url = node.node.settings.effective_database_url
    return sorted(databases.rows(url, "SELECT id, counter FROM wallet_keysets"))


async def test_forged_proofs_get_400_and_burn_no_counters(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (real,) = await user_wallet.mint_tokens(64)
    forged = _forge(real, 10)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        # one genuine receive first, so the wallet's counters are in use
        made = await http.post("/v1/wallet/create", json={"cashu_token": real})
        assert made.status_code == 200, made.text
        before = _counters(node)
        for i, token in enumerate(forged):
            if i % 3 == 0:
                resp = await http.post(
                    "/v1/chat/completions", json=CHAT, headers={"X-Cashu": token}
                )
            elif i % 3 == 1:
                resp = await http.post(
                    "/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {token}"},
                )
            else:
                resp = await http.post("/v1/wallet/create", json={"cashu_token": token})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["type"] == "invalid_cashu_token", resp.text
        # the same forged token again: still a clear 400 (nothing was recorded against it)
        again = await http.post("/v1/wallet/create", json={"cashu_token": forged[2]})
        assert again.status_code == 400
        assert again.json()["error"]["type"] == "invalid_cashu_token"
    assert _counters(node) == before
    assert await node.node.ledger.total_liabilities() == 64_000
    await node.check_invariants()


@pytest.mark.parametrize("amount", [2**63, 2**64 + 1, 10**30], ids=["2^63", "2^64+1", "10^30"])
async def test_overflowing_amounts_get_400_and_nothing_is_credited(
    node: RunningNode, user_wallet: TestWallet, amount: int
) -> None:
    (real,) = await user_wallet.mint_tokens(8)
    proof = parse_token(real).proofs[0]
    token = _v3(
        parse_token(real).mint,
        [{"id": proof.id, "amount": amount, "secret": proof.secret, "C": proof.C}],
    )
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        for resp in (
            await http.post("/v1/chat/completions", json=CHAT, headers={"X-Cashu": token}),
            await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {token}"}),
            await http.post("/v1/wallet/create", json={"cashu_token": token}),
        ):
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["type"] == "invalid_cashu_token"
    assert await node.node.ledger.total_liabilities() == 0
    await node.check_invariants()
