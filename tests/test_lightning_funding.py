"""Lightning funding: invoices that are mint quotes, credited exactly once, across restarts."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import NodeFactory, RunningNode, eventually
from satsrouter_dev.mint import LocalMint
from sqlalchemy import func, select

from satsrouter.lightning.invoices import LightningFunding
from satsrouter.logs import mask_secrets
from satsrouter.store.tables import accounts, journal, lightning_invoices

SLOW = 3600.0  # a watcher interval that never fires within a test


@pytest.fixture(scope="module")
def delayed_mint() -> Iterator[LocalMint]:
    """A mint whose fake backend settles each invoice 3 s after it is issued."""
    mint = LocalMint(extra_env={"FAKEWALLET_DELAY_INCOMING_PAYMENT": "3"})
    mint.start()
    try:
        yield mint
    finally:
        mint.cleanup()


@pytest.fixture(scope="module")
def unpaid_mint() -> Iterator[LocalMint]:
    """A mint whose invoices are never paid and whose quotes expire after 2 s."""
    mint = LocalMint(extra_env={"FAKEWALLET_BRR": "false", "MINT_QUOTE_TTL": "2"})
    mint.start()
    try:
        yield mint
    finally:
        mint.cleanup()


async def create_invoice(
    node: RunningNode, amount: Any, purpose: Any = "create", key: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{node.url}/lightning/invoice",
            json={"amount_sats": amount, "purpose": purpose},
            headers=headers,
        )


async def invoice(node: RunningNode, amount: int, purpose: str = "create", **kw: Any) -> str:
    resp = await create_invoice(node, amount, purpose, **kw)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["bolt11"].startswith("lnbc")
    assert body["amount_sats"] == amount and body["purpose"] == purpose
    assert body["expires_at"] > time.time()
    invoice_id: str = body["invoice_id"]
    return invoice_id


async def status(node: RunningNode, invoice_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{node.url}/lightning/invoice/{invoice_id}/status")
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


async def poll_until_paid(node: RunningNode, invoice_id: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def paid() -> bool:
        result.update(await status(node, invoice_id))
        return bool(result["status"] == "paid")

    await eventually(paid)
    return result


async def invoice_states(node: RunningNode) -> list[str]:
    async with node.node.engine.connect() as conn:
        rows = (await conn.execute(select(lightning_invoices.c.state))).scalars()
        return sorted(rows)


async def credits_of(node: RunningNode, account_id: int) -> list[int]:
    async with node.node.engine.connect() as conn:
        rows = await conn.execute(
            select(journal.c.amount_msat).where(journal.c.account_id == account_id)
        )
        return sorted(rows.scalars())


async def account_count(node: RunningNode) -> int:
    async with node.node.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(accounts))).scalar_one())


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_create_paid_then_polled_returns_the_key_and_credits_once(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(invoice_poll_interval=SLOW)
    held_before = await node.node.wallet.balance()
    invoice_id = await invoice(node, 500)

    paid = await poll_until_paid(node, invoice_id)
    key = paid["api_key"]
    assert key.startswith("sk-") and paid["balance"] == 500_000
    assert (await node.balance(key))["balance"] == 500_000
    # Polling again reports the same key and balance; nothing is credited twice.
    for _ in range(3):
        again = await status(node, invoice_id)
        assert (again["status"], again["api_key"], again["balance"]) == ("paid", key, 500_000)
    assert await node.node.lightning.poll_once() == 0

    account = await node.node.ledger.get_account(key_hash(key))
    assert account is not None and account.mint_url == node.node.wallet.primary_mint
    assert await credits_of(node, account.id) == [500_000]
    assert await node.node.wallet.balance() == held_before + 500
    # Neither the invoice id nor the key is stored in the clear (I8).
    async with node.node.engine.connect() as conn:
        row = (await conn.execute(select(lightning_invoices))).one()
    assert row.id == key_hash(invoice_id) and row.key_hash == key_hash(key)
    assert invoice_id not in str(tuple(row)) and key not in str(tuple(row))
    await node.check_invariants()


async def test_topup_is_credited_by_the_watcher_without_polling(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(invoice_poll_interval=0.1)
    key = (await poll_until_paid(node, await invoice(node, 400)))["api_key"]
    invoice_id = await invoice(node, 250, "topup", key=key)

    async def topped_up() -> bool:
        return bool((await node.balance(key))["balance"] == 650_000)

    await eventually(topped_up)
    assert await invoice_states(node) == ["credited", "credited"]
    await asyncio.sleep(0.5)  # more watcher passes change nothing
    result = await status(node, invoice_id)
    assert result["status"] == "paid" and result["balance"] == 650_000
    assert "api_key" not in result  # a top-up's key is the caller's own
    account = await node.node.ledger.get_account(key_hash(key))
    assert account is not None
    assert await credits_of(node, account.id) == [250_000, 400_000]
    await node.check_invariants()


async def test_invalid_requests_get_the_error_envelope(node_factory: NodeFactory) -> None:
    node = await node_factory(invoice_poll_interval=SLOW)
    for amount in (0, -5, "10", 1.5, True, None, 1_000_001):
        resp = await create_invoice(node, amount)
        assert resp.status_code == 400, amount
        assert resp.json()["error"]["type"] == "invalid_amount"
    resp = await create_invoice(node, 10, "donate")
    assert (resp.status_code, resp.json()["error"]["type"]) == (400, "invalid_purpose")
    resp = await create_invoice(node, 10, "topup")
    assert (resp.status_code, resp.json()["error"]["type"]) == (401, "missing_api_key")
    resp = await create_invoice(node, 10, "topup", key="sk-" + "0" * 48)
    assert (resp.status_code, resp.json()["error"]["type"]) == (401, "invalid_api_key")
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{node.url}/lightning/invoice/nope/status")
    assert (resp.status_code, resp.json()["error"]["type"]) == (404, "invoice_not_found")
    assert await invoice_states(node) == []


async def test_invoice_paid_while_the_node_is_down_is_credited_on_restart(
    node_factory: NodeFactory, delayed_mint: LocalMint
) -> None:
    first = await node_factory(cashu_mints=[delayed_mint.url], invoice_poll_interval=SLOW)
    invoice_id = await invoice(first, 300)
    # Not polled here: asking the fake backend settles the invoice at once, not 3 s later.
    assert await invoice_states(first) == ["pending"]
    async with first.node.engine.connect() as conn:
        quote_id = (await conn.execute(select(lightning_invoices.c.quote_id))).scalar_one()
    await first.stop()

    async def paid_at_mint() -> bool:
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{delayed_mint.url}/v1/mint/quote/bolt11/{quote_id}")
        return bool(resp.json()["state"] == "PAID")

    await eventually(paid_at_mint)

    # The new node's watcher credits it with no client asking.
    second = await node_factory(cashu_mints=[delayed_mint.url], invoice_poll_interval=0.1)

    async def credited() -> bool:
        return await invoice_states(second) == ["credited"]

    await eventually(credited)
    paid = await status(second, invoice_id)
    assert paid["status"] == "paid" and paid["balance"] == 300_000
    assert (await second.balance(paid["api_key"]))["balance"] == 300_000
    assert await second.node.wallet.balance() == 300
    await second.stop()

    third = await node_factory(cashu_mints=[delayed_mint.url], invoice_poll_interval=0.1)
    assert await third.node.lightning.poll_once() == 0
    assert (await status(third, invoice_id))["api_key"] == paid["api_key"]
    assert await account_count(third) == 1
    assert await third.node.ledger.total_liabilities() == 300_000
    await third.check_invariants()


async def test_crash_between_mint_and_credit_heals_on_restart_once(
    node_factory: NodeFactory,
) -> None:
    first = await node_factory(invoice_poll_interval=SLOW)
    held_before = await first.node.wallet.balance()
    first.node.lightning.fail_before_credit = RuntimeError("simulated crash before credit")
    invoice_id = await invoice(first, 200)
    assert (await status(first, invoice_id))["status"] == "pending"
    assert await invoice_states(first) == ["minting"]
    # The node holds the ecash but owes it to nobody yet.
    assert await first.node.wallet.balance() == held_before + 200
    assert await first.node.ledger.total_liabilities() == 0
    await first.stop()

    for _ in range(2):
        again = await node_factory(invoice_poll_interval=0.1)

        async def credited(node: RunningNode = again) -> bool:
            return await invoice_states(node) == ["credited"]

        await eventually(credited)
        paid = await status(again, invoice_id)
        assert paid["balance"] == 200_000
        assert await again.node.wallet.balance() == held_before + 200  # minted once
        assert await again.node.ledger.total_liabilities() == 200_000
        await again.check_invariants()
        await again.stop()


async def test_lost_mint_response_is_restored_not_minted_twice(
    node_factory: NodeFactory,
) -> None:
    first = await node_factory(invoice_poll_interval=SLOW)
    held_before = await first.node.wallet.balance()
    first.node.lightning.minter.fail_after_mint = ConnectionError("response lost")
    invoice_id = await invoice(first, 321)
    assert (await status(first, invoice_id))["status"] == "pending"
    # The mint signed the outputs, but the node never stored the proofs.
    assert await first.node.wallet.balance() == held_before
    await first.stop()

    again = await node_factory(invoice_poll_interval=SLOW)
    paid = await status(again, invoice_id)  # mint refuses to sign again: restore (NUT-09)
    assert paid["status"] == "paid" and paid["balance"] == 321_000
    assert await again.node.wallet.balance() == held_before + 321
    assert await again.node.ledger.total_liabilities() == 321_000
    await again.check_invariants()


async def test_expired_unpaid_invoice_credits_nothing(
    node_factory: NodeFactory, unpaid_mint: LocalMint
) -> None:
    node = await node_factory(cashu_mints=[unpaid_mint.url], invoice_poll_interval=0.1)
    node.node.lightning.expiry_grace = 0.0
    invoice_id = await invoice(node, 100)
    first = await status(node, invoice_id)
    assert first["status"] == "pending" and first["expires_at"] <= time.time() + 3
    assert "api_key" not in first and "balance" not in first

    async def expired() -> bool:
        return bool((await status(node, invoice_id))["status"] == "expired")

    await eventually(expired)
    assert await invoice_states(node) == ["expired"]
    assert (await status(node, invoice_id)).keys() >= {"status", "expires_at"}
    assert await account_count(node) == 0
    assert await node.node.wallet.balance() == 0
    await node.check_invariants()


async def test_concurrent_polls_and_watchers_never_double_credit(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(invoice_poll_interval=0.05)
    held_before = await node.node.wallet.balance()
    amounts = [101, 202, 303]
    ids = [await invoice(node, amount) for amount in amounts]
    # A second funding component on the same database and wallet stands in for another
    # process: it shares none of the in-process locks, only the rows' compare-and-set.
    other = LightningFunding(node.node.tx, node.node.ledger, node.node.wallet)
    polls = [status(node, i) for i in ids for _ in range(10)]
    passes = [other.poll_once() for _ in range(5)] + [node.node.lightning.poll_once()]
    results = await asyncio.gather(*polls, *passes)
    assert sum(r for r in results[len(polls) :] if isinstance(r, int)) <= len(ids)

    for invoice_id, amount in zip(ids, amounts, strict=True):
        paid = await poll_until_paid(node, invoice_id)
        account = await node.node.ledger.get_account(key_hash(paid["api_key"]))
        assert account is not None and account.balance_msat == amount * 1000
        assert await credits_of(node, account.id) == [amount * 1000]
    assert await node.node.wallet.balance() == held_before + sum(amounts)
    assert await node.node.ledger.total_liabilities() == 1000 * sum(amounts)
    await node.check_invariants()


def test_invoice_ids_in_status_paths_are_masked_in_logs() -> None:
    line = "GET /lightning/invoice/FJP7-0L7OKpzIfqScNCm3xrCMcdLOQC_/status 200"
    assert "OKpzIfq" not in mask_secrets(line)
    assert mask_secrets("POST /lightning/invoice 200") == "POST /lightning/invoice 200"


async def test_nodes_sharing_the_database_share_the_wallet_and_credit_once(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    owner = await node_factory(invoice_poll_interval=SLOW)
    other = await node_factory(
        invoice_poll_interval=SLOW,
        data_dir=tmp_path / "other-node",
        database_url=owner.node.settings.effective_database_url,
    )
    invoice_id = await invoice(owner, 150)
    # The quote's key and the wallet live in the shared database: either node can mint it,
    # and the invoice is credited exactly once whoever gets there first.
    polled = await asyncio.gather(
        owner.node.lightning.poll_once(), other.node.lightning.poll_once()
    )
    assert sum(polled) == 1
    assert await invoice_states(owner) == ["credited"]
    paid = await status(owner, invoice_id)
    assert paid["status"] == "paid" and paid["balance"] == 150_000
    assert (await status(other, invoice_id))["api_key"] == paid["api_key"]
    assert await other.node.wallet.balance() == await owner.node.wallet.balance() == 150
    await owner.check_invariants()
