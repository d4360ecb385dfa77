"""NUT-24 end to end: a wallet reads the 402's payment request, pays exactly that, and is served.

The payment request is decoded with nutshell's own NUT-18 parser (not ours), the token is
minted at the test mint for exactly the amount asked, and every refusal NUT-24 names (another
mint, another unit, too little) is a 400 that leaves the user's token spendable at its mint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cashu.core.base import PaymentRequest
from cashu.core.nuts.nut18 import deserialize
from conftest import NodeFactory, RunningNode, expected_cost, model_entry
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.ecash.tokens import parse_token

MESSAGES = [{"role": "user", "content": "what does it cost?"}]
# 200 completion tokens of test/priced: a reservation that is not a whole number of sats.
BODY = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 200}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def usd_mint() -> Iterator[LocalMint]:
    """A second mint, with keysets in sat and in usd (the fake backend's unit `usd`)."""
    with LocalMint(
        extra_env={
            "MINT_BACKEND_BOLT11_USD": "FakeWallet",
            # nutshell's derivation paths: the second index is the unit (0 sat, 2 usd)
            "MINT_DERIVATION_PATH_LIST": "[\"m/0'/0'/0'\", \"m/0'/2'/0'\"]",
        }
    ) as mint:
        yield mint


async def post(node: RunningNode, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        return await http.post(CHAT, json=body, headers=headers)


async def payment_request(node: RunningNode, body: dict[str, Any]) -> PaymentRequest:
    """What a NUT-24 wallet sees: the 402 and its X-Cashu header, decoded by nutshell."""
    resp = await post(node, body)
    assert resp.status_code == 402
    assert resp.json()["error"]["type"] == "payment_required"
    creq = resp.headers["X-Cashu"]
    assert creq.startswith("creqA")
    return deserialize(creq)


def stream_change(text: str) -> tuple[str, int, int]:
    """The change token, its msat, and the cost, from a chat stream's events."""
    change, change_msat, cost = "", -1, -1
    for line in text.splitlines():
        if not line.startswith("data: {"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            cost = event["usage"]["cost"]["total_msats"]
        if "x_cashu_change" in event:
            change, change_msat = event["x_cashu_change"], event["change_msats"]
    return change, change_msat, cost


def test_the_request_is_cbor_base64url_with_the_nut24_fields() -> None:
    """Our encoder against the NUT-18 wire format, read with a plain CBOR decoder."""
    import base64

    import cbor2

    from satsrouter.ecash.requests import payment_request as encode

    creq = encode(21, "sat", ["http://127.0.0.1:3338", "https://mint.example"])
    assert creq.startswith("creqA") and "+" not in creq and "/" not in creq
    data = creq[5:]
    fields = cbor2.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    # Amount, unit, mints, single use; no transport `t`: the payment comes in band (NUT-24).
    assert fields == {
        "a": 21,
        "u": "sat",
        "m": ["http://127.0.0.1:3338", "https://mint.example"],
        "s": True,
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_pay_exactly_what_the_402_asks_and_get_change(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint, stream: bool
) -> None:
    body = {**BODY, "stream": stream}
    request = await payment_request(node, body)
    assert (request.u, request.m, request.s, request.t, request.nut10) == (
        "sat",
        [local_mint.url],
        True,
        None,
        None,
    )
    amount = request.a
    assert amount is not None and amount > 1

    # One sat less is refused (400, NUT-24), and says the very msat figure the 402 rounded up.
    (short,) = await user_wallet.mint_tokens(amount - 1)
    refused = await post(node, body, **{"X-Cashu": short})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "payment_too_small" and error["code"] == 400
    required = int(error["message"].split("up to ")[1].split(" msat")[0])
    assert -(-required // 1000) == amount and required > (amount - 1) * 1000
    assert "X-Cashu" not in refused.headers  # nothing was taken, so no change either
    assert await user_wallet.redeem(short) == amount - 1

    # Exactly the amount asked: served, charged the usage, the rest back as change.
    (token,) = await user_wallet.mint_tokens(amount)
    resp = await post(node, body, **{"X-Cashu": token})
    assert resp.status_code == 200, resp.text
    if stream:
        change, change_msat, cost = stream_change(resp.text)
        assert resp.text.rstrip().endswith("data: [DONE]")
    else:
        usage = resp.json()["usage"]
        cost = usage["cost"]["total_msats"]
        change = resp.headers["X-Cashu"]
        assert int(resp.headers["X-Routstr-Cost-Msats"]) == cost
        assert cost == expected_cost(
            model_entry("test/priced"), usage["prompt_tokens"], usage["completion_tokens"]
        )
    assert 0 < cost <= required
    rest = amount * 1000 - cost
    if stream:
        assert change_msat == rest // 1000 * 1000
    assert await user_wallet.redeem(change) == rest // 1000

    # The sub-sat rest stays recorded against the token; the refund says so, same change.
    async with httpx.AsyncClient(base_url=node.url) as http:
        again = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
    assert again.status_code == 200
    assert again.json()["token"] == change
    assert again.json()["balance_msat"] == rest % 1000
    await node.check_invariants()


async def test_a_token_from_another_mint_is_refused_and_stays_spendable(
    node: RunningNode, usd_mint: LocalMint, tmp_path: Path
) -> None:
    request = await payment_request(node, BODY)
    assert request.a is not None and usd_mint.url not in (request.m or [])
    elsewhere = await TestWallet.create(usd_mint.url, tmp_path / "elsewhere")
    (token,) = await elsewhere.mint_tokens(request.a)  # the right amount, the wrong mint
    for stream in (False, True):
        resp = await post(node, {**BODY, "stream": stream}, **{"X-Cashu": token})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["type"] == "mint_not_accepted"
        assert request.m is not None and request.m[0] in error["message"]
        assert "X-Cashu" not in resp.headers
    assert await node.node.ledger.total_liabilities() == 0
    assert await elsewhere.redeem(token) == request.a


async def test_a_token_in_another_unit_is_refused_and_stays_spendable(
    node_factory: NodeFactory, local_mint: LocalMint, usd_mint: LocalMint, tmp_path: Path
) -> None:
    node = await node_factory(cashu_mints=[local_mint.url, usd_mint.url])
    request = await payment_request(node, BODY)
    assert (request.u, request.m) == ("sat", [local_mint.url, usd_mint.url])
    assert request.a is not None
    dollars = await TestWallet.create(usd_mint.url, tmp_path / "usd", unit="usd")
    # An accepted mint, enough units (cents are worth more than sats), the wrong unit.
    (token,) = await dollars.mint_tokens(request.a)
    for stream in (False, True):
        resp = await post(node, {**BODY, "stream": stream}, **{"X-Cashu": token})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["type"] == "unit_not_supported" and "'usd'" in error["message"]
        assert "X-Cashu" not in resp.headers
    assert await node.node.ledger.total_liabilities() == 0
    assert await dollars.redeem(token) == request.a


async def test_too_little_is_refused_streamed_too_and_nothing_is_redeemed(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    request = await payment_request(node, {**BODY, "stream": True})
    assert request.a is not None
    (token,) = await user_wallet.mint_tokens(request.a - 1)
    for _ in range(2):  # refused again the same way: a short token is not remembered as dead
        resp = await post(node, {**BODY, "stream": True}, **{"X-Cashu": token})
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "payment_too_small"
        assert "the token is still yours" in resp.json()["error"]["message"]
    # A cheaper request may still use it.
    cheap = await post(node, {**BODY, "max_tokens": 5}, **{"X-Cashu": token})
    assert cheap.status_code == 200, cheap.text
    await node.check_invariants()


async def test_the_mint_fee_leaving_too_little_is_a_400_with_the_rest_as_change(
    node_factory: NodeFactory, fee_mint: LocalMint, tmp_path: Path
) -> None:
    """At a mint with input fees, a token of exactly `a` is worth less once received: 400,
    and what the fee left comes back as change (the 402 cannot know the wallet's proofs)."""
    node = await node_factory(cashu_mints=[fee_mint.url])
    request = await payment_request(node, BODY)
    assert request.a is not None
    user = await TestWallet.create(fee_mint.url, tmp_path / "user")
    (token,) = await user.mint_tokens(request.a)
    proofs = bin(request.a).count("1")
    fee = -(-proofs * 100 // 1000)  # 100 ppk per input proof
    resp = await post(node, BODY, **{"X-Cashu": token})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "payment_too_small"
    assert f"worth {(request.a - fee) * 1000} msat" in error["message"]
    change = resp.headers["X-Cashu"]
    assert parse_token(change).amount == request.a - fee
    assert 0 < await user.redeem(change) <= request.a - fee  # less its own fee at the mint

    # A wallet that adds the mint's fee for the proofs it sends (NUT-02) is served.
    (covered,) = await user.mint_tokens(request.a + 1)
    assert -(-bin(request.a + 1).count("1") * 100 // 1000) == 1
    served = await post(node, BODY, **{"X-Cashu": covered})
    assert served.status_code == 200, served.text
    await node.check_invariants()
