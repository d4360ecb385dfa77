"""The money database: a node on Postgres end to end, and commits that survive a crash."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio
from conftest import NodeFactory, RunningNode, expected_cost, model_entry
from satsrouter_dev.mint import TestWallet
from satsrouter_dev.postgres import LocalPostgres
from sqlalchemy import func, select
from test_lightning_funding import invoice, poll_until_paid
from test_lightning_refund import LnurlServer, external_payee

from satsrouter.node import Node
from satsrouter.settings import Settings
from satsrouter.store.engine import NotDurableError
from satsrouter.store.tables import journal
from satsrouter.store.tx import Tx

MESSAGES = [{"role": "user", "content": "paid on postgres"}]
SQLITE_NORMAL, SQLITE_FULL = 1, 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_paid_requests_on_postgres(
    node_factory: NodeFactory, postgres_url: str, user_wallet: TestWallet
) -> None:
    node = await node_factory(database_url=postgres_url)
    assert node.node.engine.dialect.name == "postgresql"
    token, for_key = await user_wallet.mint_tokens(100, count=2)
    api = openai.AsyncOpenAI(base_url=node.api, api_key=token, max_retries=0)
    reply = await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=8)
    assert reply.usage is not None
    cost = expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )
    assert (await node.balance(token))["balance"] == 100_000 - cost
    # A key funded by a token, a stream on it, and its balance paid back out.
    async with httpx.AsyncClient(base_url=node.url) as http:
        key = (await http.post("/v1/wallet/create", json={"cashu_token": for_key})).json()[
            "api_key"
        ]
    keyed = openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)
    async for _ in await keyed.chat.completions.create(
        model="test/priced", messages=MESSAGES, max_tokens=3, stream=True
    ):
        pass
    left = (await node.balance(key))["balance"]
    assert 0 < left < 100_000
    async with httpx.AsyncClient(base_url=node.url) as http:
        paid = await http.post("/v1/wallet/withdraw", headers={"Authorization": f"Bearer {key}"})
    assert paid.status_code == 200, paid.text
    assert await user_wallet.redeem(paid.json()["token"]) == left // 1000
    await node.check_invariants()
    async with node.node.engine.connect() as conn:  # the journal is in Postgres
        assert (await conn.execute(select(func.count()).select_from(journal))).scalar_one() > 4


async def test_a_postgres_restart_costs_at_most_the_requests_on_dead_connections(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    """Connections are not pinged before use (store/engine.py): after a restart the first
    transactions on dead connections fail before they do anything, then the pool is new."""
    with LocalPostgres() as cluster:
        node = await node_factory(database_url=cluster.create_database("restarted"))
        (token,) = await user_wallet.mint_tokens(100)
        async with httpx.AsyncClient(base_url=node.url) as http:
            key = (await http.post("/v1/wallet/create", json={"cashu_token": token})).json()[
                "api_key"
            ]
        api = openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)

        async def ask() -> int | None:
            """The charge of one paid request; None if it failed."""
            try:
                raw = await api.chat.completions.with_raw_response.create(
                    model="test/priced", messages=MESSAGES, max_tokens=4
                )
            except openai.APIStatusError as exc:
                assert exc.status_code == 500, exc
                return None
            return int(raw.headers["X-Routstr-Cost-Msats"])

        charges = [await ask() for _ in range(3)]
        cluster.restart()
        charges += [await ask() for _ in range(6)]
        failed = [i for i, c in enumerate(charges) if c is None]
        # At most the requests that found a dead connection, right after the restart.
        assert all(i >= 3 for i in failed) and len(failed) <= 2, charges
        assert charges[-3:].count(None) == 0
        spent = sum(c for c in charges if c is not None)
        assert (await node.balance(key))["balance"] == 100_000 - spent
        await node.check_invariants()
        await node.stop()


@pytest_asyncio.fixture(scope="module")
async def payee() -> AsyncIterator[LnurlServer]:
    """A Lightning address whose invoices are quotes at a second mint (external payments)."""
    async with external_payee() as server:
        yield server


async def test_lightning_and_key_management_on_postgres(
    node_factory: NodeFactory, postgres_url: str, user_wallet: TestWallet, payee: LnurlServer
) -> None:
    """The money that moves beside the paid path runs on Postgres too: Lightning funding and
    top-up, child keys and their history, Lightning withdrawals (replayed) and key expiry."""
    node = await node_factory(
        database_url=postgres_url,
        lnurl_allow_http=True,
        invoice_poll_interval=3600.0,
        expiry_check_interval=3600.0,
    )
    key = (await poll_until_paid(node, await invoice(node, 300)))["api_key"]
    await poll_until_paid(node, await invoice(node, 100, "topup", key=key))
    (token,) = await user_wallet.mint_tokens(50)
    async with httpx.AsyncClient(base_url=node.url) as http:
        made = await http.post(
            "/v1/balance/child-key",
            headers=_auth(key),
            json={"count": 1, "balance_limit": 50_000, "balance_limit_reset": "daily"},
        )
        assert made.status_code == 200, made.text
        (child,) = made.json()["api_keys"]
        api = openai.AsyncOpenAI(base_url=node.api, api_key=child, max_retries=0)
        await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=4)
        charged = (await http.get("/v1/balance/history", headers=_auth(child))).json()["entries"]
        assert [e["kind"] for e in charged] == ["charge"]
        entries = (await http.get("/v1/balance/history", headers=_auth(key))).json()["entries"]
        assert [e["kind"] for e in entries] == ["charge", "credit", "credit"]
        older = await http.get(
            "/v1/balance/history", headers=_auth(key), params={"before": entries[0]["id"]}
        )
        assert older.json()["entries"] == entries[1:]
        # A key that pays out to a Lightning address, and is refunded there at expiry.
        created = await http.post(
            "/v1/wallet/create",
            json={"cashu_token": token},
            headers={"Refund-LNURL": payee.address(), "Key-Expiry-Time": str(time.time() + 1)},
        )
        assert created.status_code == 200, created.text
        expiring = created.json()["api_key"]
        paid = await http.post("/v1/wallet/withdraw", json={"amount": 10}, headers=_auth(expiring))
        assert paid.status_code == 200 and paid.json()["method"] == "lightning", paid.text
        again = await http.post("/v1/wallet/withdraw", json={"amount": 10}, headers=_auth(expiring))
        assert again.json() == paid.json()  # a replay: the same payout, nothing paid twice
    await asyncio.sleep(max(0.0, created.json()["expires_at"] - time.time()) + 0.1)
    assert await node.node.lightning_refunds.expire_once() == 1
    assert await node.node.lightning_refunds.expire_once() == 0
    # Paid out but what the mint's fee reserve left over (it stays on the key).
    assert (await node.balance(expiring))["balance"] < 5000
    await node.check_invariants()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_node_refuses_postgres_that_may_lose_commits(
    node_settings: Settings, postgres: LocalPostgres
) -> None:
    url = postgres.create_database("sync_commit_off")
    postgres.psql("ALTER DATABASE sync_commit_off SET synchronous_commit = off")
    node = Node(dataclasses.replace(node_settings, database_url=url))
    try:
        with pytest.raises(NotDurableError, match="synchronous_commit=off"):
            await node.start()
    finally:
        await node.stop()
    postgres.psql("ALTER DATABASE sync_commit_off SET synchronous_commit = local")
    node = Node(dataclasses.replace(node_settings, database_url=url))
    try:
        await node.start()  # local still flushes before the commit returns
    finally:
        await node.stop()


@pytest.mark.sqlite_only("how the node makes SQLite commits durable")
async def test_sqlite_syncs_every_commit_that_records_ecash_or_lets_value_leave(
    node: RunningNode,
) -> None:
    async with node.node.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one() == SQLITE_FULL

    def synchronous(tx: Tx) -> int:
        rows, _ = tx.execute("PRAGMA synchronous", {})
        return int(rows[0][0])

    # the wallet's writes (proofs, operations, payouts handed over) are all durable...
    assert await node.node.wallet.tx.run(synchronous) == SQLITE_FULL
    assert await node.node.tx.run(synchronous, durable=True) == SQLITE_FULL
    # ...the hot path's reserve and bearer settle are not: a power loss can take back at
    # most the last charges, never a payout (a durable commit syncs every one before it)
    assert await node.node.tx.run(synchronous) == SQLITE_NORMAL


async def test_postgres_flushes_every_commit_that_records_ecash_or_lets_value_leave(
    node_factory: NodeFactory, postgres_url: str
) -> None:
    running = await node_factory(database_url=postgres_url)

    def synchronous_commit(tx: Tx) -> str:
        rows, _ = tx.execute("SHOW synchronous_commit", {})
        return str(rows[0][0])

    # As on SQLite: the wallet's writes and every durable transaction wait for the WAL flush...
    assert await running.node.wallet.tx.run(synchronous_commit) == "on"
    assert await running.node.tx.run(synchronous_commit, durable=True) == "on"
    # ...the hot path's reserve and bearer settle do not (the sessions start so, and a
    # durable transaction's setting ends with it).
    assert await running.node.tx.run(synchronous_commit) == "off"
    assert await running.node.tx.run(synchronous_commit, durable=True) == "on"
    assert await running.node.tx.run(synchronous_commit) == "off"
