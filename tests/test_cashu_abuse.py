"""Hostile use of Cashu and LNURL: dead-token replays, X-Cashu floods, foreign mints, SSRF.

Mint calls are counted in the local mint's access log (uvicorn's `"POST /v1/swap …" 200`
lines), so what is asserted is what the mint really saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import NodeFactory, RunningNode
from satsrouter_dev.mint import LocalMint, TestWallet, free_port
from sqlalchemy import func, select

from satsrouter.billing.audit import audit
from satsrouter.billing.dead_tokens import DeadTokens
from satsrouter.billing.payments import sha256_hex
from satsrouter.ecash import swap as swap_module
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.mint_gate import MintBusy, MintGate
from satsrouter.errors import ApiError
from satsrouter.lightning.lnurl import LnurlClient, LnurlError, encode_lnurl
from satsrouter.store.tables import journal, redemptions

CHAT = {"model": "test/priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
_ACCESS = re.compile(rb'"(GET|POST) (/v1/[a-z0-9_/]+)[^"]*" (\d{3})')


class MintLog:
    """The calls a local mint answered since `mark()`, read from its access log."""

    def __init__(self, mint: LocalMint) -> None:
        self.path = mint.log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def calls(self) -> list[str]:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read()
        return [f"{m[1].decode()} {m[2].decode()}" for m in _ACCESS.finditer(text)]


async def _chat(http: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=CHAT, headers=headers)


def _code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["type"])


async def _redemption_count(node: RunningNode) -> int:
    async with node.node.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(redemptions))).scalar())


# ---- dead tokens ----


async def test_replayed_spent_token_reaches_the_mint_once(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    (token,) = await user_wallet.mint_tokens(40)
    assert await user_wallet.redeem(token) == 40  # spent at the mint, by its owner
    log = MintLog(local_mint)
    log.mark()
    async with httpx.AsyncClient(base_url=node.url) as http:
        replies = [await _chat(http, **{"X-Cashu": token}) for _ in range(5)]
        replies += [await _chat(http, Authorization=f"Bearer {token}") for _ in range(5)]
        info = await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {token}"})
        create = await http.post("/v1/balance/create", json={"cashu_token": token})
    for resp in [*replies, info, create]:
        assert resp.status_code == 400, resp.text
        assert _code(resp) == "cashu_token_already_spent"
    assert log.calls() == ["POST /v1/swap"]  # the first try; every replay answered from memory
    dead = node.node.billing.dead_tokens
    assert len(dead) == 1 and token not in repr(dead._dead)  # its hash only
    await node.check_invariants()


async def test_token_spent_here_is_dead_for_paying_but_its_change_still_collectable(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    (token,) = await user_wallet.mint_tokens(30)
    async with httpx.AsyncClient(base_url=node.url) as http:
        paid = await _chat(http, **{"X-Cashu": token})
        assert paid.status_code == 200, paid.text
        change = paid.headers["X-Cashu"]
        log = MintLog(local_mint)
        log.mark()
        again = [await _chat(http, **{"X-Cashu": token}) for _ in range(3)]
        as_key = [await _chat(http, Authorization=f"Bearer {token}") for _ in range(3)]
        calls = log.calls()
        refund = await http.post("/v1/balance/refund", headers={"X-Cashu": token})
    assert [r.status_code for r in again + as_key] == [400] * 6
    assert {_code(r) for r in again + as_key} == {"cashu_token_already_spent"}
    assert calls == []  # the database knew; nothing went to the mint
    assert refund.status_code == 200 and refund.json()["token"] == change
    await node.check_invariants()


async def test_same_token_sent_concurrently_is_redeemed_once(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    (token,) = await user_wallet.mint_tokens(30)
    log = MintLog(local_mint)
    log.mark()
    async with httpx.AsyncClient(base_url=node.url) as http:
        replies = await asyncio.gather(*(_chat(http, **{"X-Cashu": token}) for _ in range(8)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(200) == 1, [r.text for r in replies]
    for resp in replies:
        if resp.status_code != 200:
            assert (resp.status_code, _code(resp)) in {
                (409, "redemption_in_progress"),
                (400, "cashu_token_already_spent"),
            }
    assert log.calls().count("POST /v1/swap") <= 2  # the token's swap (+ the change's split)
    await node.check_invariants()


async def test_forged_token_replays_do_not_reach_the_mint_again(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    (real,) = await user_wallet.mint_tokens(16, legacy=True)
    data = json.loads(base64.urlsafe_b64decode(real[len("cashuA") :] + "=="))
    for proof in data["token"][0]["proofs"]:
        proof["secret"] = os.urandom(32).hex()  # the mint's signature, on another secret
        proof.pop("dleq", None)
    forged = "cashuA" + base64.urlsafe_b64encode(json.dumps(data).encode()).decode()
    log = MintLog(local_mint)
    log.mark()
    async with httpx.AsyncClient(base_url=node.url) as http:
        replies = [await _chat(http, **{"X-Cashu": forged}) for _ in range(4)]
    assert [r.status_code for r in replies] == [400] * 4
    assert {_code(r) for r in replies} == {"invalid_cashu_token"}
    assert len(log.calls()) <= 1
    assert await user_wallet.redeem(real) == 16  # the real one was never touched
    await node.check_invariants()


async def test_foreign_mint_token_is_refused_without_contacting_it(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    connections: list[int] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (real,) = await user_wallet.mint_tokens(8, legacy=True)
    data = json.loads(base64.urlsafe_b64decode(real[len("cashuA") :] + "=="))
    data["token"][0]["mint"] = f"http://127.0.0.1:{port}"
    foreign = "cashuA" + base64.urlsafe_b64encode(json.dumps(data).encode()).decode()
    log = MintLog(local_mint)
    log.mark()
    try:
        async with httpx.AsyncClient(base_url=node.url) as http:
            replies = [
                await _chat(http, **{"X-Cashu": foreign}),
                await _chat(http, Authorization=f"Bearer {foreign}"),
                await http.post("/v1/balance/create", json={"cashu_token": foreign}),
                await _chat(http, **{"X-Cashu": foreign}),
            ]
    finally:
        server.close()
        await server.wait_closed()
    assert [r.status_code for r in replies] == [400] * 4
    assert {_code(r) for r in replies} == {"mint_not_accepted"}
    assert connections == [] and log.calls() == []
    assert await _redemption_count(node) == 0
    assert await user_wallet.redeem(real) == 8


async def test_token_whose_outcome_is_unknown_is_not_remembered_as_dead(
    node: RunningNode, user_wallet: TestWallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    (token,) = await user_wallet.mint_tokens(30)

    async def lost(*args: Any) -> Any:
        raise EcashError("mint_unreachable")  # as if the answer never came back

    monkeypatch.setattr(swap_module, "post_swap", lost)
    async with httpx.AsyncClient(base_url=node.url) as http:
        first = await _chat(http, **{"X-Cashu": token})
        assert first.status_code == 503 and _code(first) == "mint_unreachable", first.text
        assert len(node.node.billing.dead_tokens) == 0
        again = await _chat(http, **{"X-Cashu": token})
        assert again.status_code == 409  # its swap may have happened: recovery decides
        monkeypatch.undo()
        await node.node.billing.recover()  # the mint signed nothing: the token is free again
        paid = await _chat(http, **{"X-Cashu": token})
    assert paid.status_code == 200, paid.text
    await node.check_invariants()


def test_dead_tokens_are_bounded_in_age_and_number_and_keep_only_dead_verdicts() -> None:
    now = [0.0]
    dead = DeadTokens(seconds=600, size=3, clock=lambda: now[0])
    spent = ApiError(400, "cashu_token_already_spent", "spent")
    for code, status in (("mint_unreachable", 503), ("mint_busy", 503), ("mint_error", 502)):
        dead.remember("h-" + code, ApiError(status, code, "maybe later"))
    dead.remember("h-pending", ApiError(400, "cashu_token_pending", "pending"))
    dead.remember("h-progress", ApiError(409, "redemption_in_progress", "wait"))
    dead.remember("h-small", ApiError(402, "insufficient_balance", "more"))
    assert len(dead) == 0  # none of those is final
    for i in range(5):
        dead.remember(f"h{i}", spent)
    assert len(dead) == 3
    dead.check("h0")  # the oldest went first: not known any more
    with pytest.raises(ApiError) as caught:
        dead.check("h4")
    assert (caught.value.status, caught.value.code) == (400, "cashu_token_already_spent")
    now[0] = 600.0
    dead.check("h4")  # expired: the next attempt asks again
    assert len(dead) == 2


# ---- bounded mint calls ----


async def test_one_x_cashu_request_makes_at_most_two_mint_calls(
    node: RunningNode, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    tokens = await user_wallet.mint_tokens(25, 4)
    log = MintLog(local_mint)
    async with httpx.AsyncClient(base_url=node.url) as http:
        for token in tokens:
            log.mark()
            resp = await _chat(http, **{"X-Cashu": token})
            assert resp.status_code == 200, resp.text
            calls = log.calls()
            # the token's swap, and a split only when no coins make the change exactly
            assert 1 <= len(calls) <= 2 and set(calls) == {"POST /v1/swap"}, calls
    await node.check_invariants()


async def test_mint_busy_refuses_before_redeeming_and_leaves_the_token(
    node_factory: NodeFactory, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    node = await node_factory(mint_max_concurrency=2, mint_busy_wait=0.3)
    gate = node.node.wallet.gates[local_mint.url]
    (token,) = await user_wallet.mint_tokens(30)
    for _ in range(2):  # the test holds every place at the mint
        await gate.enter(None)
    try:
        async with httpx.AsyncClient(base_url=node.url) as http:
            busy = await _chat(http, **{"X-Cashu": token})
            busy_key = await _chat(http, Authorization=f"Bearer {token}")
    finally:
        gate.leave()
        gate.leave()
    for resp in (busy, busy_key):
        assert resp.status_code == 503, resp.text
        assert _code(resp) == "mint_busy"
        assert int(resp.headers["Retry-After"]) >= 1
    assert await _redemption_count(node) == 0
    assert await node.node.ledger.get_account(sha256_hex(token)) is None
    # not remembered as dead: the same token pays once the mint has room
    async with httpx.AsyncClient(base_url=node.url) as http:
        ok = await _chat(http, **{"X-Cashu": token})
    assert ok.status_code == 200, ok.text
    await node.check_invariants()


async def test_flood_of_x_cashu_requests_stays_within_the_mint_bound(
    node_factory: NodeFactory, user_wallet: TestWallet, local_mint: LocalMint
) -> None:
    rate, concurrency = 5.0, 2
    node = await node_factory(
        mint_calls_per_second=rate, mint_max_concurrency=concurrency, mint_busy_wait=0.5
    )
    tokens = await user_wallet.mint_tokens(20, 100)
    log = MintLog(local_mint)
    log.mark()
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        replies = await asyncio.gather(*(_chat(http, **{"X-Cashu": t}) for t in tokens))
    elapsed = time.monotonic() - started
    calls = log.calls()
    # the bucket holds one second's worth; every call (swaps and change alike) takes from it
    assert len(calls) <= rate + rate * elapsed + 1, (len(calls), elapsed)
    gate = node.node.wallet.gates[local_mint.url]
    assert gate.peak_in_flight <= concurrency
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1
    refused = [t for t, r in zip(tokens, replies, strict=True) if r.status_code == 503]
    for resp in replies:
        if resp.status_code == 503:
            assert _code(resp) == "mint_busy" and "Retry-After" in resp.headers
    await node.check_invariants()
    books = await audit(node.node.tx, node.node.wallet)
    assert books.ok and books.difference_msat == 0, books.report()
    for token in refused:  # untouched: still its owner's
        assert await user_wallet.redeem(token) == 20
    async with node.node.engine.connect() as conn:
        credits = (
            await conn.execute(select(func.count()).where(journal.c.kind == "credit"))
        ).scalar()
    assert credits == statuses.count(200)


async def test_gate_rate_and_priority() -> None:
    gate = MintGate(concurrency=4, per_second=50.0, burst=5)
    started = time.monotonic()
    for _ in range(15):
        await gate.enter(None)
        gate.leave()
    assert time.monotonic() - started >= (15 - 5) / 50 * 0.9
    # New work waits at most its bound; work the node must finish waits as long as it takes.
    for _ in range(4):
        await gate.enter(None)
    with pytest.raises(MintBusy) as busy:
        await gate.enter(0.05)
    assert busy.value.code == "mint_busy" and busy.value.retry_after >= 1
    urgent = asyncio.ensure_future(gate.enter(None))
    new = asyncio.ensure_future(gate.enter(5.0))
    await asyncio.sleep(0.05)
    gate.leave()
    await asyncio.wait_for(urgent, 2)
    assert not new.done()  # the urgent one went first
    gate.leave()
    await asyncio.wait_for(new, 2)


# ---- SSRF: LNURL and Lightning-address targets ----


class PayParamsServer:
    """Answers LNURL-pay parameter requests on 127.0.0.1 (for the test override)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/lnurlp/{user}", self._params)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _params(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        return web.json_response(
            {
                "tag": "payRequest",
                "callback": f"http://127.0.0.1:{self.port}/cb",
                "minSendable": 1000,
                "maxSendable": 10**9,
            }
        )


@pytest_asyncio.fixture
async def params_server() -> AsyncIterator[PayParamsServer]:
    server = PayParamsServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _resolving_to(*answers: list[str]) -> Any:
    """A stand-in for DNS giving each answer in turn (the last one from then on)."""
    seen: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        seen.append(host)
        return answers[min(len(seen), len(answers)) - 1]

    return resolve


PRIVATE_TARGETS = [
    "alice@127.0.0.1",
    "alice@10.1.2.3",
    "alice@192.168.1.1",
    "alice@172.16.0.1",
    "alice@169.254.169.254",
    "alice@100.64.0.1",
    "alice@0.0.0.0",
    "alice@localhost",
    "alice@127.1",  # a host name, resolved to loopback by the system resolver
    "alice@2130706433",  # likewise
    encode_lnurl("https://[::1]/.well-known/lnurlp/alice"),
    encode_lnurl("https://[::ffff:127.0.0.1]/p"),
    encode_lnurl("https://[fe80::1]/p"),
    encode_lnurl("https://[fd00::1]/p"),
]


@pytest.mark.parametrize("target", PRIVATE_TARGETS)
async def test_private_and_local_targets_are_refused(target: str) -> None:
    client = LnurlClient(allow_http=False)
    try:
        for attempt in (client.vet(target), client.params(target)):
            with pytest.raises(LnurlError) as caught:
                await attempt
            assert caught.value.status == 400
            assert caught.value.code == "invalid_lnurl"
            assert "private or local" in caught.value.message
    finally:
        await client.close()


async def test_a_name_resolving_to_a_private_address_is_refused_at_connect() -> None:
    # Public when vetted, loopback when connecting (DNS rebinding): the connection is refused.
    rebinding = _resolving_to(["93.184.216.34"], ["127.0.0.1"])
    client = LnurlClient(allow_http=False, resolver=rebinding)
    try:
        await client.vet("alice@rebind.example")
        with pytest.raises(LnurlError) as caught:
            await client.params("alice@rebind.example")
        assert caught.value.status == 400 and caught.value.code == "invalid_lnurl"
    finally:
        await client.close()


async def test_override_lets_loopback_through_and_pins_the_checked_address(
    params_server: PayParamsServer,
) -> None:
    # "lnurl.test" exists in no DNS: reaching the server proves the connection went to the
    # address that was checked, not to a second lookup.
    client = LnurlClient(allow_http=True, resolver=_resolving_to(["127.0.0.1"]))
    try:
        params = await client.params(f"alice@lnurl.test:{params_server.port}")
        assert params.min_sendable_msat == 1000 and params_server.hits == 1
        direct = LnurlClient(allow_http=True)  # the system resolver, as the tests' nodes use
        params = await direct.params(f"alice@127.0.0.1:{params_server.port}")
        assert params.max_sendable_msat == 10**9 and params_server.hits == 2
        await direct.close()
        # private ranges stay refused even with the override
        for target in ("alice@10.0.0.1", "alice@169.254.169.254", "alice@192.168.0.1"):
            with pytest.raises(LnurlError):
                await client.params(target)
        private_dns = LnurlClient(allow_http=True, resolver=_resolving_to(["10.0.0.7"]))
        with pytest.raises(LnurlError) as caught:
            await private_dns.params("alice@inside.test")
        assert caught.value.code == "invalid_lnurl"
        await private_dns.close()
    finally:
        await client.close()


async def test_node_refuses_private_refund_targets_and_debits_nothing(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (first, second) = await user_wallet.mint_tokens(30, 2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        for target in ("alice@10.0.0.1", "alice@169.254.169.254", "alice@127.1"):
            resp = await http.post(
                "/v1/balance/create", json={"cashu_token": first}, headers={"Refund-LNURL": target}
            )
            assert resp.status_code == 400 and _code(resp) == "invalid_lnurl", resp.text
        assert await _redemption_count(node) == 0  # refused before the token was redeemed
        # A name that resolves to a public address now and to a private one at refund time.
        lnurl = node.node.lightning_refunds.lnurl
        lnurl.resolver = _resolving_to(["93.184.216.34"])
        made = await http.post(
            "/v1/balance/create",
            json={"cashu_token": second},
            headers={"Refund-LNURL": "alice@pay.example"},
        )
        assert made.status_code == 200, made.text
        key = made.json()["api_key"]
        lnurl.resolver = _resolving_to(["169.254.169.254"])
        refund = await http.post("/v1/balance/refund", headers={"Authorization": f"Bearer {key}"})
    assert refund.status_code == 400 and _code(refund) == "invalid_lnurl", refund.text
    assert (await node.balance(key))["balance"] == 30_000
    account = await node.node.ledger.get_account(sha256_hex(key))
    assert account is not None
    async with node.node.engine.connect() as conn:
        kinds = (
            await conn.execute(select(journal.c.kind).where(journal.c.account_id == account.id))
        ).all()
    assert [k for (k,) in kinds] == ["credit"]  # no debit, no undo: nothing moved
    await node.check_invariants()
    assert await user_wallet.redeem(first) == 30
