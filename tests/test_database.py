"""The money database: a node on Postgres end to end."""

from __future__ import annotations

import httpx
import openai
from conftest import NodeFactory, expected_cost, model_entry
from sqlalchemy import func, select

from satsrouter.store.tables import journal
from satsrouter.testing.mint import TestWallet

MESSAGES = [{"role": "user", "content": "paid on postgres"}]


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
