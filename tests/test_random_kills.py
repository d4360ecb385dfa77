"""Mixed paid traffic with the node SIGKILLed at random moments, ten times: nothing is lost.

Clients stream and don't, pay with keys and with X-Cashu, top up and withdraw, while the
node is killed from outside wherever it happens to be. After the last restart every
payout a client can ask for again is collected, and then:

- every key's balance equals its journal, nothing is reserved, no wallet operation pends;
- every token a client holds (change, withdrawals) redeems at the mint, and together they
  are exactly the payouts the journal recorded;
- every token the clients sent is either spent at the mint and credited, or still theirs
  (it redeems), and what the node took is exactly what it credited;
- `satsrouter wallet audit` finds ecash held == liabilities + revenue, to the msat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field

import httpx
from killable import KillableNode
from satsrouter_dev.mint import TestWallet

from satsrouter.ecash.tokens import parse_token

KILLS = 10
KEY_SATS = 400
XCASHU_SATS = 60
TOPUP_SATS = 20
WITHDRAW_SATS = 3
# Per round: bounded in count (each client's operations) and in time (the kill comes first).
OPS_PER_CLIENT = 40
CHAT = {"model": "test/priced", "messages": [{"role": "user", "content": "count to three"}]}


@dataclass
class Ledgerbook:
    """What the clients sent and received, to be checked against the mint and the node."""

    sent: list[str] = field(default_factory=list)  # tokens handed to the node
    x_cashu: list[str] = field(default_factory=list)  # of those, the X-Cashu ones
    received: set[str] = field(default_factory=set)  # tokens the node handed back
    withdrawals: list[tuple[str, str]] = field(default_factory=list)  # (key, idempotency id)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _withdraw(http: httpx.AsyncClient, book: Ledgerbook, key: str, idem: str) -> None:
    """A withdrawal under `idem`; asked again, the same payout (or a fresh one if undone)."""
    resp = await http.post(
        "/v1/wallet/withdraw",
        json={"amount": WITHDRAW_SATS},
        headers={**_bearer(key), "Idempotency-Key": idem},
    )
    if resp.status_code == 200 and resp.json().get("token"):
        book.received.add(resp.json()["token"])


async def _client(
    http: httpx.AsyncClient,
    rng: random.Random,
    book: Ledgerbook,
    keys: list[str],
    tokens: list[str],
    round_: int,
    worker: int,
) -> None:
    """Random paid operations until the node dies (a transport error) or the count is done."""
    for i in range(OPS_PER_CLIENT):
        key = rng.choice(keys)
        op = rng.choice(("chat", "stream", "xcashu", "topup", "withdraw"))
        if op in ("xcashu", "topup") and not tokens:
            op = "chat"
        if op == "chat":
            await http.post("/v1/chat/completions", json=CHAT, headers=_bearer(key))
        elif op == "stream":
            body = {**CHAT, "stream": True}
            async with http.stream(
                "POST", "/v1/chat/completions", json=body, headers=_bearer(key)
            ) as resp:
                async for _ in resp.aiter_lines():
                    pass
        elif op == "xcashu":
            token = tokens.pop()
            book.sent.append(token)
            book.x_cashu.append(token)
            resp = await http.post("/v1/chat/completions", json=CHAT, headers={"X-Cashu": token})
            if "X-Cashu" in resp.headers:
                book.received.add(resp.headers["X-Cashu"])
        elif op == "topup":
            token = tokens.pop()
            book.sent.append(token)
            await http.post("/v1/wallet/topup", json={"cashu_token": token}, headers=_bearer(key))
        else:
            idem = f"w-{round_}-{worker}-{i}"
            book.withdrawals.append((key, idem))
            await _withdraw(http, book, key, idem)


async def test_random_kills_under_mixed_paid_traffic_lose_nothing(
    killable: KillableNode, user_wallet: TestWallet
) -> None:
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    book = Ledgerbook()
    key_tokens = await user_wallet.mint_tokens(KEY_SATS, 3)
    tokens = await user_wallet.mint_tokens(XCASHU_SATS, 5 * KILLS)
    tokens += await user_wallet.mint_tokens(TOPUP_SATS, 3 * KILLS)
    rng.shuffle(tokens)
    await killable.start()
    async with httpx.AsyncClient(base_url=killable.url, timeout=30) as http:
        keys = []
        for token in key_tokens:
            made = await http.post("/v1/wallet/create", json={"cashu_token": token})
            assert made.status_code == 200, made.text
            keys.append(made.json()["api_key"])
            book.sent.append(token)
        for round_ in range(KILLS):
            if round_:
                await killable.start()
            clients = [
                asyncio.create_task(_client(http, rng, book, keys, tokens, round_, w))
                for w in range(4)
            ]
            # the kill lands anywhere in the traffic: mid-swap, mid-stream, mid-payout...
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            killable.kill()
            for task in clients:
                with contextlib.suppress(httpx.HTTPError):
                    await task
        await killable.start()
        # Collect every payout a client can ask for again: X-Cashu change, withdrawals.
        for token in book.x_cashu:
            resp = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
            assert resp.status_code in (200, 404), (seed, resp.text)
            if resp.status_code == 200 and resp.json().get("token"):
                book.received.add(resp.json()["token"])
        for key, idem in book.withdrawals:
            await _withdraw(http, book, key, idem)
    await killable.stop()
    # the traffic was real: tokens went in and came out in every way
    assert len(book.sent) > 3 + KILLS and book.received and book.withdrawals, seed

    killable.check_books()
    payouts = killable.query(
        "SELECT coalesce(-sum(amount_msat), 0) FROM journal WHERE kind IN ('payout', 'payout_undo')"
    )[0][0]
    redeemed = [await user_wallet.redeem(token) for token in sorted(book.received)]
    assert sum(redeemed) * 1000 == payouts, seed
    # A token the node did not take is still the client's; what it took, it credited.
    taken = 0
    for token in book.sent:
        try:
            await user_wallet.redeem(token)
        except Exception:
            taken += parse_token(token).amount
    (credited,) = killable.query(
        "SELECT coalesce(sum(amount_msat), 0) FROM journal WHERE kind = 'credit'"
    )[0]
    assert taken * 1000 == credited, seed
    code, report = await killable.audit()
    assert code == 0, f"seed {seed}:\n{report}"
