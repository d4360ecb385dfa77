"""Refunds to a Lightning address (LNURL-pay) by melting the node's ecash, and key expiry.

The LNURL-pay server runs on 127.0.0.1; its invoices are mint quotes at a real test mint,
so the node's melt is a real NUT-05 payment settled by the mints' fake Lightning backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import NodeFactory, RunningNode
from satsrouter_dev.mint import LocalMint, TestWallet, free_port
from sqlalchemy import select, update

from satsrouter.billing.payments import sha256_hex
from satsrouter.billing.payouts import PayoutConflict
from satsrouter.errors import ApiError
from satsrouter.lightning.lnurl import LnurlClient, LnurlError, encode_lnurl
from satsrouter.lightning.refunds import RefundPending, expiry_payout_id
from satsrouter.store.tables import accounts, journal, payouts

# The FakeWallet backend quotes max(2 sat, 1%) as fee reserve and charges 1 sat when it pays.
RESERVE_MSAT = 2000
FAKE_FEE_MSAT = 1000


class LnurlServer:
    """A LNURL-pay service on loopback whose invoices are mint quotes at `invoice_mint`.

    Users: `alice` takes 1 sat .. 1M sat; `small` at most 5 sat; `big` at least 1M sat;
    `liar` returns invoices for 1 sat more than asked; `moved` answers with a redirect.
    """

    def __init__(self, invoice_mint: str) -> None:
        self.invoice_mint = invoice_mint
        self.port = free_port()
        self.invoices: list[int] = []  # amounts (msat) of the invoices handed out
        self._runner: web.AppRunner | None = None
        self._http = httpx.AsyncClient(base_url=invoice_mint)

    def address(self, user: str = "alice") -> str:
        return f"{user}@127.0.0.1:{self.port}"

    def lnurl(self, user: str = "alice") -> str:
        return encode_lnurl(f"http://127.0.0.1:{self.port}/.well-known/lnurlp/{user}")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/lnurlp/{user}", self._params)
        app.router.add_get("/callback/{user}", self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._http.aclose()

    async def _params(self, request: web.Request) -> web.StreamResponse:
        user = request.match_info["user"]
        if user == "moved":
            raise web.HTTPFound(f"http://127.0.0.1:{self.port}/.well-known/lnurlp/alice")
        low, high = {"small": (1000, 5000), "big": (1_000_000, 10**9)}.get(user, (1000, 10**9))
        return web.json_response(
            {
                "tag": "payRequest",
                "callback": f"http://127.0.0.1:{self.port}/callback/{user}?k=secret",
                "minSendable": low,
                "maxSendable": high,
                "metadata": '[["text/plain","test"]]',
            }
        )

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        amount_msat = int(request.query["amount"])
        sats = math.ceil(amount_msat / 1000) + (1 if request.match_info["user"] == "liar" else 0)
        resp = await self._http.post("/v1/mint/quote/bolt11", json={"unit": "sat", "amount": sats})
        resp.raise_for_status()
        self.invoices.append(amount_msat)
        return web.json_response({"pr": resp.json()["request"], "routes": []})


@contextlib.asynccontextmanager
async def external_payee() -> AsyncIterator[LnurlServer]:
    """A Lightning address whose invoices are quotes at a mint of its own (external payments)."""
    with LocalMint() as mint:
        server = LnurlServer(mint.url)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@pytest_asyncio.fixture(scope="module")
async def lnurl_server() -> AsyncIterator[LnurlServer]:
    """Invoices from a second mint: external Lightning payments for the node's mint."""
    async with external_payee() as server:
        yield server


def _mint(**env: str) -> Iterator[LocalMint]:
    with LocalMint(extra_env=env) as mint:
        yield mint


@pytest.fixture(scope="module")
def failing_mint() -> Iterator[LocalMint]:
    """Every outgoing payment fails, and a status check agrees."""
    yield from _mint(FAKEWALLET_PAY_INVOICE_STATE="FAILED", FAKEWALLET_PAYMENT_STATE="FAILED")


@pytest.fixture(scope="module")
def pending_mint() -> Iterator[LocalMint]:
    """Outgoing payments stay pending, and turn out paid when the mint checks later."""
    yield from _mint(FAKEWALLET_PAY_INVOICE_STATE="PENDING")


@pytest.fixture(scope="module")
def pending_then_failed_mint() -> Iterator[LocalMint]:
    """Outgoing payments stay pending, and turn out failed when the mint checks later."""
    yield from _mint(FAKEWALLET_PAY_INVOICE_STATE="PENDING", FAKEWALLET_PAYMENT_STATE="FAILED")


async def _lnurl_node(node_factory: NodeFactory, mint: LocalMint | None = None) -> RunningNode:
    overrides: dict[str, Any] = {"lnurl_allow_http": True, "expiry_check_interval": 3600.0}
    if mint is not None:
        overrides["cashu_mints"] = [mint.url]
    return await node_factory(**overrides)


async def _funded(node: RunningNode, wallet: TestWallet, sats: int) -> tuple[str, int]:
    """A new sk- key holding `sats` (through the API), and its account id."""
    (token,) = await wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/v1/wallet/create", json={"cashu_token": token})
    resp.raise_for_status()
    key = str(resp.json()["api_key"])
    account = await node.node.ledger.get_account(sha256_hex(key))
    assert account is not None
    return key, account.id


async def _payout_row(node: RunningNode, payout_id: str) -> Any:
    async with node.node.engine.connect() as conn:
        return (await conn.execute(select(payouts).where(payouts.c.id == payout_id))).first()


async def _journal_kinds(node: RunningNode, account_id: int) -> list[tuple[str, int]]:
    async with node.node.engine.connect() as conn:
        rows = await conn.execute(
            select(journal.c.kind, journal.c.amount_msat)
            .where(journal.c.account_id == account_id)
            .order_by(journal.c.id)
        )
        return [(str(k), int(a)) for k, a in rows]


async def _wallet_at(mint: LocalMint, tmp_path: Path) -> TestWallet:
    return await TestWallet.create(mint.url, tmp_path / "user-at-test-mint")


# ---- success, idempotency ----


async def test_refund_to_lightning_address_pays_and_charges_amount_plus_fee(
    node_factory: NodeFactory,
    user_wallet: TestWallet,
    lnurl_server: LnurlServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await _lnurl_node(node_factory)
    key, account_id = await _funded(node, user_wallet, 50)
    held_before = await node.node.wallet.balance()

    payout = await node.node.lightning_refunds.refund(
        account_id, "refund-1", 20_000, lnurl_server.address()
    )

    # 20 sat debited; the invoice is for 20 sat less the 2 sat reserve; 1 sat reserve unused
    assert payout.method == "lightning"
    assert payout.amount_msat == 20_000 - RESERVE_MSAT
    assert payout.fee_msat == FAKE_FEE_MSAT
    assert payout.detail  # the preimage
    assert lnurl_server.invoices[-1] == 18_000
    assert (await node.balance(key))["balance"] == 50_000 - payout.amount_msat - payout.fee_msat
    row = await _payout_row(node, "refund-1")
    assert row.state == "issued" and row.method == "lightning"
    assert row.destination == lnurl_server.address()
    assert (row.amount_msat, row.fee_msat) == (payout.amount_msat, payout.fee_msat)
    assert await _journal_kinds(node, account_id) == [
        ("credit", 50_000),
        ("payout", -20_000),
        ("fee_return", RESERVE_MSAT - FAKE_FEE_MSAT),
    ]
    # the node spent the invoice + the fee, and kept the change
    assert await node.node.wallet.balance() == held_before - 19
    await node.check_invariants()
    # the callback's query (which may carry a secret) never reaches the logs: httpx logs
    # only warnings (satsrouter.logs.QUIET_LOGGERS)
    assert "/callback/alice" not in caplog.text and "k=secret" not in caplog.text


async def test_replayed_payout_id_returns_the_same_payout_without_paying_again(
    node_factory: NodeFactory, user_wallet: TestWallet, lnurl_server: LnurlServer
) -> None:
    node = await _lnurl_node(node_factory)
    key, account_id = await _funded(node, user_wallet, 30)
    refunds = node.node.lightning_refunds

    first = await refunds.refund(account_id, "same-id", 10_000, lnurl_server.lnurl())
    invoices = len(lnurl_server.invoices)
    balance = (await node.balance(key))["balance"]
    again = await refunds.refund(account_id, "same-id", 10_000, lnurl_server.lnurl())

    assert again == first
    assert len(lnurl_server.invoices) == invoices  # no new invoice, so no second melt
    assert (await node.balance(key))["balance"] == balance
    await node.check_invariants()


async def test_refund_of_the_whole_balance_sends_it_less_the_fee(
    node_factory: NodeFactory, user_wallet: TestWallet, lnurl_server: LnurlServer
) -> None:
    node = await _lnurl_node(node_factory)
    key, account_id = await _funded(node, user_wallet, 12)
    payout = await node.node.lightning_refunds.refund(
        account_id, "all", None, lnurl_server.address()
    )
    assert (payout.amount_msat, payout.fee_msat) == (10_000, FAKE_FEE_MSAT)
    # only the unused part of the fee reserve is left
    assert (await node.balance(key))["balance"] == RESERVE_MSAT - FAKE_FEE_MSAT
    await node.check_invariants()


# ---- refusals leave the balance intact ----


@pytest.mark.parametrize(
    ("user", "amount_msat", "code"),
    [
        ("small", 20_000, "lnurl_amount_out_of_range"),  # above maxSendable
        ("big", 20_000, "lnurl_amount_out_of_range"),  # below minSendable
        ("liar", 20_000, "lnurl_error"),  # invoice for another amount
        ("moved", 20_000, "lnurl_error"),  # redirects are not followed
    ],
)
async def test_unpayable_destination_is_a_clear_error_and_balance_stays(
    node_factory: NodeFactory,
    user_wallet: TestWallet,
    lnurl_server: LnurlServer,
    user: str,
    amount_msat: int,
    code: str,
) -> None:
    node = await _lnurl_node(node_factory)
    key, account_id = await _funded(node, user_wallet, 30)
    with pytest.raises(LnurlError) as caught:
        await node.node.lightning_refunds.refund(
            account_id, f"bad-{user}", amount_msat, lnurl_server.address(user)
        )
    assert caught.value.code == code
    if code == "lnurl_amount_out_of_range":
        assert "msat" in caught.value.message and "between" in caught.value.message
    assert (await node.balance(key))["balance"] == 30_000
    assert await _payout_row(node, f"bad-{user}") is None
    await node.check_invariants()


async def test_destination_must_be_an_address_or_lnurl_and_https() -> None:
    strict = LnurlClient(allow_http=False)
    assert strict.url_of("Alice@Example.com") == "https://example.com/.well-known/lnurlp/alice"
    assert strict.url_of("lightning:" + encode_lnurl("https://example.com/p?q=1")) == (
        "https://example.com/p?q=1"
    )
    for bad in (
        "not an address",
        "alice@127.0.0.1:8080",  # private address
        encode_lnurl("http://example.com/p"),  # plain http
        encode_lnurl("https://10.0.0.1/p"),
        "lnurl1qqqqqqqq",  # broken checksum
    ):
        with pytest.raises(LnurlError) as caught:
            strict.url_of(bad)
        assert caught.value.code == "invalid_lnurl"
        assert caught.value.status == 400


# ---- failed and pending melts ----


async def test_failed_melt_leaves_balance_and_node_ecash_intact(
    node_factory: NodeFactory,
    failing_mint: LocalMint,
    lnurl_server: LnurlServer,
    tmp_path: Path,
) -> None:
    node = await _lnurl_node(node_factory, failing_mint)
    wallet = await _wallet_at(failing_mint, tmp_path)
    key, account_id = await _funded(node, wallet, 40)
    held = await node.node.wallet.balance()

    with pytest.raises(ApiError) as caught:
        await node.node.lightning_refunds.refund(
            account_id, "fails", 20_000, lnurl_server.address()
        )

    assert caught.value.code == "lightning_payment_failed"
    assert (await node.balance(key))["balance"] == 40_000
    assert await _payout_row(node, "fails") is None  # the same id may be retried
    assert await node.node.wallet.balance() == held  # the proofs are spendable again
    await node.check_invariants()


async def test_pending_melt_stays_pending_then_reconciles_as_paid(
    node_factory: NodeFactory, pending_mint: LocalMint, lnurl_server: LnurlServer, tmp_path: Path
) -> None:
    node = await _lnurl_node(node_factory, pending_mint)
    wallet = await _wallet_at(pending_mint, tmp_path)
    key, account_id = await _funded(node, wallet, 40)
    refunds = node.node.lightning_refunds

    with pytest.raises(RefundPending):
        await refunds.refund(account_id, "slow", 20_000, lnurl_server.address())
    row = await _payout_row(node, "slow")
    assert row.state == "pending" and row.detail  # the melt ticket
    assert (await node.balance(key))["balance"] == 20_000  # debited while in flight
    with pytest.raises(PayoutConflict):
        await refunds.refund(account_id, "slow", 20_000, lnurl_server.address())
    assert await refunds.reconcile() == 0  # too young for the default grace period
    await node.check_invariants()

    assert await refunds.reconcile(min_age=0) == 1

    row = await _payout_row(node, "slow")
    assert row.state == "issued"
    # paid after a status check that reports no routing fee: the whole reserve comes back
    assert (row.amount_msat, row.fee_msat) == (18_000, 0)
    assert (await node.balance(key))["balance"] == 40_000 - 18_000
    payout = await refunds.refund(account_id, "slow", 20_000, lnurl_server.address())
    assert (payout.amount_msat, payout.fee_msat) == (18_000, 0)
    assert await refunds.reconcile(min_age=0) == 0
    await node.check_invariants()


async def test_melt_timeout_is_an_unknown_outcome_settled_from_the_quote_state(
    node_factory: NodeFactory, lnurl_server: LnurlServer, tmp_path: Path
) -> None:
    # pays after 2 s; asked meanwhile, the backend says "pending"
    gen = _mint(FAKEWALLET_DELAY_OUTGOING_PAYMENT="2", FAKEWALLET_PAYMENT_STATE="PENDING")
    slow_mint = next(gen)
    try:
        node = await _lnurl_node(node_factory, slow_mint)
        wallet = await _wallet_at(slow_mint, tmp_path)
        key, account_id = await _funded(node, wallet, 40)
        refunds = node.node.lightning_refunds
        refunds.melter.timeout = 0.3

        with pytest.raises(RefundPending):
            await refunds.refund(account_id, "timed-out", 20_000, lnurl_server.address())
        assert (await node.balance(key))["balance"] == 20_000
        # the mint is still paying: nothing is decided, nothing credited back
        assert await refunds.reconcile(min_age=0) == 0
        assert (await _payout_row(node, "timed-out")).state == "pending"
        await node.check_invariants()
        await asyncio.sleep(2.5)

        assert await refunds.reconcile(min_age=0) == 1

        row = await _payout_row(node, "timed-out")
        assert row.state == "issued"
        # the change for the unused reserve is re-derived from the ticket and kept
        assert (row.amount_msat, row.fee_msat) == (18_000, FAKE_FEE_MSAT)
        assert (await node.balance(key))["balance"] == 40_000 - 19_000
        await node.check_invariants()
    finally:
        gen.close()


async def test_pending_melt_that_fails_later_is_credited_back(
    node_factory: NodeFactory,
    pending_then_failed_mint: LocalMint,
    lnurl_server: LnurlServer,
    tmp_path: Path,
) -> None:
    node = await _lnurl_node(node_factory, pending_then_failed_mint)
    wallet = await _wallet_at(pending_then_failed_mint, tmp_path)
    key, account_id = await _funded(node, wallet, 40)
    held = await node.node.wallet.balance()
    refunds = node.node.lightning_refunds

    with pytest.raises(RefundPending):
        await refunds.refund(account_id, "doomed", 20_000, lnurl_server.address())
    assert (await node.balance(key))["balance"] == 20_000

    assert await refunds.reconcile(min_age=0) == 1

    assert await _payout_row(node, "doomed") is None
    assert (await node.balance(key))["balance"] == 40_000
    assert await node.node.wallet.balance() == held
    await node.check_invariants()


async def test_pending_payout_is_reconciled_when_the_node_restarts(
    node_factory: NodeFactory,
    pending_mint: LocalMint,
    lnurl_server: LnurlServer,
    tmp_path: Path,
) -> None:
    node = await _lnurl_node(node_factory, pending_mint)
    wallet = await _wallet_at(pending_mint, tmp_path)
    key, account_id = await _funded(node, wallet, 40)
    with pytest.raises(RefundPending):
        await node.node.lightning_refunds.refund(
            account_id, "across-restart", 10_000, lnurl_server.address()
        )
    await node.stop()
    # make the payout old enough for the start-up reconciliation to take it
    async with node.node.engine.begin() as conn:
        await conn.execute(update(payouts).values(updated_at=time.time() - 3600))
    settings = node.node.settings
    restarted = await node_factory(**{f: getattr(settings, f) for f in ("cashu_mints",)})
    row = await _payout_row(restarted, "across-restart")
    assert row.state == "issued"
    assert (await restarted.balance(key))["balance"] == 40_000 - 8_000
    await restarted.check_invariants()


# ---- key expiry ----


async def test_expired_key_is_refunded_once_by_the_node_and_unexpired_key_is_not(
    node_factory: NodeFactory, user_wallet: TestWallet, lnurl_server: LnurlServer
) -> None:
    node = await node_factory(lnurl_allow_http=True, expiry_check_interval=0.1)
    expired_key, expired = await _funded(node, user_wallet, 25)
    live_key, live = await _funded(node, user_wallet, 25)
    now = time.time()
    async with node.node.engine.begin() as conn:
        for account_id, expires_at in ((expired, now - 1), (live, now + 3600)):
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(refund_lnurl=lnurl_server.address(), expires_at=expires_at)
            )

    for _ in range(100):
        row = await _payout_row(node, expiry_payout_id(expired))
        if row is not None and row.state == "issued":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the expiry refund did not happen")
    invoices = len(lnurl_server.invoices)
    await asyncio.sleep(0.5)  # several more expiry passes

    assert len(lnurl_server.invoices) == invoices
    assert (row.amount_msat, row.fee_msat) == (25_000 - RESERVE_MSAT, FAKE_FEE_MSAT)
    # what is left is the unused part of the fee reserve
    assert (await node.balance(expired_key))["balance"] == RESERVE_MSAT - FAKE_FEE_MSAT
    assert (await node.balance(live_key))["balance"] == 25_000
    assert await _payout_row(node, expiry_payout_id(live)) is None
    assert await node.node.lightning_refunds.expire_once() == 0
    await node.check_invariants()


async def test_key_created_with_refund_lnurl_withdraws_over_lightning_via_http(
    node_factory: NodeFactory, user_wallet: TestWallet, lnurl_server: LnurlServer
) -> None:
    node = await _lnurl_node(node_factory)
    (token,) = await user_wallet.mint_tokens(40)
    async with httpx.AsyncClient(base_url=node.url) as http:
        bad = await http.post(
            "/v1/wallet/create",
            json={"cashu_token": token},
            headers={"Refund-LNURL": "not an address"},
        )
        assert bad.status_code == 400
        created = await http.post(
            "/v1/balance/create",
            json={"initial_balance_token": token},
            headers={"Refund-LNURL": lnurl_server.address()},
        )
        assert created.status_code == 200, created.text
        key = created.json()["api_key"]
        assert created.json()["refund_address"] == lnurl_server.address()
        auth = {"Authorization": f"Bearer {key}"}
        invoices_before = len(lnurl_server.invoices)
        out = await http.post("/v1/balance/refund", json={"amount": 10}, headers=auth)
        assert out.status_code == 200, out.text
        body = out.json()
        assert body["method"] == "lightning" and body["recipient"] == lnurl_server.address()
        invoices_after_first = len(lnurl_server.invoices)
        again = await http.post("/v1/balance/refund", json={"amount": 10}, headers=auth)
        assert len(lnurl_server.invoices) == invoices_after_first  # nothing asked again
        assert again.json()["amount_msat"] == body["amount_msat"]  # replay: paid once
        info = (await http.get("/v1/balance/info", headers=auth)).json()
    assert info["balance"] == 40_000 - body["amount_msat"] - body["fee_msat"]
    assert lnurl_server.invoices[invoices_before:][-1] == body["amount_msat"]
    await node.check_invariants()
