"""Tokens whose amounts overflow a signed 64-bit msat count: 400 `invalid_cashu_token` on every
payment path, nothing credited, nothing sent to the mint (the real proofs they were forged from
stay spendable)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
from conftest import RunningNode
from satsrouter_dev.mint import TestWallet

from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.tokens import parse_token

MESSAGES = [{"role": "user", "content": "how much does this cost"}]
INT64_MAX = 2**63 - 1

# One proof past any int64; and proofs that each fit as msat but whose sum does not.
OVERFLOWING = {
    "one_huge_proof": [2**63],
    "sum_past_int64": [2**53, 2**53, 2**53],
}


def _v3(data: dict[str, Any]) -> str:
    return "cashuA" + base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


# A well-formed token that was never minted: enough for the parser.
TEMPLATE = _v3(
    {
        "token": [
            {
                "mint": "http://127.0.0.1:1",
                "proofs": [
                    {"id": "00ad268c4d1f5826", "amount": 1, "secret": "s", "C": "02" + "11" * 32}
                ],
            }
        ]
    }
)


def forged(token: str, amounts: list[int]) -> str:
    """A cashuA token with `token`'s first proof repeated at `amounts` (distinct secrets)."""
    body = token[len("cashuA") :]
    data: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    proof = data["token"][0]["proofs"][0]
    proofs = [
        {**proof, "amount": amount, "secret": f"{proof['secret']}{i}"}
        for i, amount in enumerate(amounts)
    ]
    return _v3({**data, "token": [{"mint": data["token"][0]["mint"], "proofs": proofs}]})


@pytest.mark.parametrize("amounts", OVERFLOWING.values(), ids=OVERFLOWING.keys())
def test_parse_refuses_amounts_past_int64_msat(amounts: list[int]) -> None:
    with pytest.raises(EcashError) as info:
        parse_token(forged(TEMPLATE, amounts))
    assert info.value.code == "invalid_cashu_token"


def test_parse_accepts_the_largest_amount_that_fits() -> None:
    fits = INT64_MAX // 1000  # in sat: its msat value is the largest that fits
    assert parse_token(forged(TEMPLATE, [fits])).amount_msat == fits * 1000
    with pytest.raises(EcashError):
        parse_token(forged(TEMPLATE, [fits, 1]))


def _refused(resp: httpx.Response) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_cashu_token", 400)


@pytest.mark.parametrize("amounts", OVERFLOWING.values(), ids=OVERFLOWING.keys())
async def test_overflowing_token_is_400_on_every_payment_path(
    node: RunningNode, user_wallet: TestWallet, amounts: list[int]
) -> None:
    (funding,) = await user_wallet.mint_tokens(10)
    (real,) = await user_wallet.mint_tokens(8, legacy=True)
    token = forged(real, amounts)
    chat = {"model": "test/priced", "messages": MESSAGES}
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = (await http.post("/v1/wallet/create", json={"cashu_token": funding})).json()[
            "api_key"
        ]
        liabilities = await node.node.ledger.total_liabilities()
        bearer = {"Authorization": f"Bearer {token}"}
        sk = {"Authorization": f"Bearer {key}"}
        _refused(await http.post("/v1/chat/completions", json=chat, headers=bearer))
        _refused(await http.get("/v1/balance/info", headers=bearer))
        _refused(await http.post("/v1/chat/completions", json=chat, headers={"X-Cashu": token}))
        _refused(await http.post("/v1/wallet/create", json={"cashu_token": token}))
        _refused(await http.post("/v1/balance/create", json={"initial_balance_token": token}))
        _refused(await http.get("/v1/balance/create", params={"initial_balance_token": token}))
        _refused(await http.post("/v1/wallet/topup", json={"cashu_token": token}, headers=sk))
        _refused(await http.post("/v1/balance/topup", json={"cashu_token": token}, headers=sk))
        _refused(await http.post("/v1/balance/refund", headers={"X-Cashu": token}))
        assert (await http.get("/v1/balance/info", headers=sk)).json()["balance"] == 10_000
    assert await node.node.ledger.total_liabilities() == liabilities
    await node.check_invariants()
    # Nothing reached the mint: the proof the forgery copied is still the user's to spend.
    assert await user_wallet.redeem(real) == 8
