"""Shared fixtures: a real mint, the fake upstream, and nodes running in-process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import databases
import httpx
import pytest
import pytest_asyncio
import uvicorn
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream, default_models
from satsrouter_dev.mint import LocalMint, free_port

from satsrouter.app import create_app
from satsrouter.http.connections import connection_options
from satsrouter.node import Node
from satsrouter.settings import Settings

pytest_plugins = ["conftest_ecash", "conftest_pg", "conftest_redis"]

BTC_USD = Decimal(100_000)
FEE = Decimal("1.05")
# The admin password of the nodes the `node_settings` fixture makes.
ADMIN_PASSWORD = "admin-test-password"


def _test_model(
    model_id: str,
    name: str,
    pricing: dict[str, str],
    *,
    context: int = 4096,
    max_completion: int = 256,
    inputs: tuple[str, ...] = ("text",),
    outputs: tuple[str, ...] = ("text",),
    parameters: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One model entry in the OpenRouter schema."""
    return {
        "id": model_id,
        "name": name,
        "created": 1700000000,
        "context_length": context,
        "architecture": {
            "input_modalities": list(inputs),
            "output_modalities": list(outputs),
            "tokenizer": "GPT",
            "instruct_type": None,
        },
        "pricing": pricing,
        "top_provider": {
            "context_length": context,
            "max_completion_tokens": max_completion,
            "is_moderated": False,
        },
        "supported_parameters": list(parameters),
        **extra,
    }


# Models with prices large enough that costs are many msat (easy to assert exactly).
TEST_MODELS: list[dict[str, Any]] = [
    _test_model(
        "test/priced",
        "Priced test model",
        {
            "prompt": "0.00001",
            "completion": "0.00002",
            "request": "0",
            "image": "0",
            "web_search": "0",
            "internal_reasoning": "0",
        },
        parameters=("max_tokens", "stream"),
    ),
    # Completion-only price: the reservation does not depend on the request's size.
    _test_model(
        "test/flat",
        "Flat test model",
        {"prompt": "0", "completion": "0.0000238", "request": "0"},
        parameters=("max_tokens", "stream"),
    ),
    # Image generation: 10500 msat per image made, plus tokens when the upstream reports
    # gpt-image usage (or the prompt, counted locally, when it does not).
    _test_model(
        "test/image",
        "Image test model",
        {"prompt": "0.00001", "completion": "0.00002", "request": "0", "image": "0.01"},
        max_completion=1024,
        outputs=("image",),
    ),
    # Audio transcription priced per request only (2100 msat), whatever the upload's length.
    _test_model(
        "test/whisper",
        "Whisper test model",
        {"prompt": "0", "completion": "0", "request": "0.002"},
        inputs=("audio",),
    ),
    # Audio transcription priced per second of audio (105 msat a second).
    _test_model(
        "test/whisper-seconds",
        "Per-second whisper test model",
        {"prompt": "0", "completion": "0", "request": "0", "audio_second": "0.0001"},
        inputs=("audio",),
    ),
    # Priced per generated image by size and quality (dall-e style), nothing per token.
    _test_model(
        "test/dalle",
        "Sized image test model",
        {"prompt": "0", "completion": "0", "image_output": "0.02"},
        context=4000,
        max_completion=1000,
        outputs=("image",),
        image_pricing={"1024x1024/hd": "0.08", "1024x1024": "0.04", "1792x1024": "0.12"},
    ),
]


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, every: float = 0.1
) -> None:
    """Poll `check` every `every` seconds until it holds; fail the test after `within`."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(every)


def msat_per_token(usd: str) -> Decimal:
    """What the node charges per token for a USD-per-token price, in msat (exact)."""
    return Decimal(usd) * FEE * Decimal(100_000_000_000) / BTC_USD


def expected_cost(model: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> int:
    """The exact msat cost of a usage: each component rounded up."""
    import math

    pricing = model["pricing"]
    return math.ceil(prompt_tokens * msat_per_token(pricing["prompt"])) + math.ceil(
        completion_tokens * msat_per_token(pricing["completion"])
    )


def model_entry(model_id: str) -> dict[str, Any]:
    return next(m for m in default_models() + TEST_MODELS if m["id"] == model_id)


@pytest_asyncio.fixture(scope="session")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(models=default_models() + TEST_MODELS)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture(scope="session")
async def anthropic_upstream() -> AsyncIterator[FakeUpstream]:
    """A fake upstream speaking only the Anthropic Messages dialect (x-api-key auth)."""
    fake = FakeUpstream(
        api_key="upstream-secret", models=default_models() + TEST_MODELS, dialect="anthropic"
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@dataclass
class RunningNode:
    """A node served by uvicorn on a loopback port, in the test's event loop."""

    node: Node
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def api(self) -> str:
        return self.url + "/v1"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)

    async def balance(self, key: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            resp = await http.get(
                f"{self.url}/v1/balance/info", headers={"Authorization": f"Bearer {key}"}
            )
            resp.raise_for_status()
            result: dict[str, Any] = resp.json()
            return result

    async def check_invariants(self) -> None:
        """I1 for every account, nothing left reserved, ecash held >= liabilities."""
        from sqlalchemy import select

        from satsrouter.store.tables import accounts

        async with self.node.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(accounts.c.id, accounts.c.balance_msat, accounts.c.reserved_msat)
                )
            ).all()
        for account_id, balance, reserved in rows:
            assert balance == await self.node.ledger.journal_sum(account_id)
            assert balance >= 0
            assert reserved == 0, f"account {account_id} still has {reserved} msat reserved"
        held_msat = 1000 * await self.node.wallet.balance()
        assert held_msat >= await self.node.ledger.total_liabilities()


async def start_node(settings: Settings, *, access_log: bool = False) -> RunningNode:
    """Serve a node on a free loopback port (uvicorn's access log only if asked)."""
    node = Node(settings)
    app = create_app(node=node)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        access_log=access_log,
        **connection_options(settings),  # the header limits and timeouts `serve` has
        proxy_headers=False,  # as `satsrouter serve`: TRUSTED_PROXIES alone reads XFF
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(600):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("node did not start")
    return RunningNode(node, f"http://127.0.0.1:{port}", server, task)


NodeFactory = Callable[..., Awaitable[RunningNode]]


def pytest_report_header() -> str:
    """Say which database the nodes run on (SATSROUTER_TEST_DATABASE)."""
    return f"nodes' database: {databases.MODE} (SATSROUTER_TEST_DATABASE)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On Postgres, skip the tests about SQLite itself (`sqlite_only`) and leave the `fleet`
    tests, which start their own Postgres whatever the run's database, to the SQLite run."""
    if not databases.ON_POSTGRES:
        return
    # Deselected, not skipped: `make test` runs both halves, so they still run once there.
    twice = [item for item in items if item.get_closest_marker("fleet") is not None]
    if twice:
        config.hook.pytest_deselected(items=twice)
        items[:] = [item for item in items if item.get_closest_marker("fleet") is None]
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {why}"))


@pytest.fixture
def node_settings(local_mint: LocalMint, upstream: FakeUpstream, tmp_path: Path) -> Settings:
    """A node's settings: the test mint and upstream, data in tmp_path (and the run's database)."""
    return Settings(
        upstream_base_url=upstream.url,
        upstream_api_key="upstream-secret",
        upstream_timeout=3.0,
        cashu_mints=[local_mint.url],
        data_dir=tmp_path / "node",
        database_url=databases.database_url_for(tmp_path / "node"),
        btc_usd_price=BTC_USD,
        provider_fee=FEE,
        drain_timeout=5.0,
        admin_password=ADMIN_PASSWORD,
        # Tests send many requests per key: no request limits unless a test asks for them.
        rate_limit="off",
        max_concurrent_per_key=0,
    )


async def admin_client(running: RunningNode) -> httpx.AsyncClient:
    """An HTTP client logged in to a node's admin API (its session cookie set); close it."""
    http = httpx.AsyncClient(base_url=running.url)
    resp = await http.post("/admin/api/login", json={"password": ADMIN_PASSWORD})
    assert resp.status_code == 200, resp.text
    return http


@pytest_asyncio.fixture
async def node_factory(node_settings: Settings) -> AsyncIterator[NodeFactory]:
    """Start nodes (stopped at the end of the test); keyword arguments override settings."""
    started: list[RunningNode] = []

    async def make(**overrides: Any) -> RunningNode:
        if "data_dir" in overrides and "database_url" not in overrides:
            # Another data directory is another node's data: on Postgres, its own database.
            overrides["database_url"] = databases.database_url_for(overrides["data_dir"])
        running = await start_node(replace(node_settings, **overrides))
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in started:
            if not running.task.done():
                await running.stop()


@pytest_asyncio.fixture
async def node(node_factory: NodeFactory, upstream: FakeUpstream) -> RunningNode:
    upstream.reset()
    return await node_factory()


@pytest_asyncio.fixture
async def killable(
    local_mint: LocalMint, upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[KillableNode]:
    """A node in a child process, to crash, kill and restart on the same data."""
    upstream.reset()
    node = KillableNode(tmp_path, local_mint.url, upstream.url)
    try:
        yield node
    finally:
        await node.stop()


@pytest_asyncio.fixture
async def anthropic_node(
    node_factory: NodeFactory, anthropic_upstream: FakeUpstream
) -> RunningNode:
    """A node whose one upstream speaks the Anthropic dialect (native /v1/messages)."""
    anthropic_upstream.reset()
    return await node_factory(
        upstream_base_url=anthropic_upstream.url, upstream_dialect="anthropic"
    )
