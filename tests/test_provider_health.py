"""Provider health: active checks against a local upstream that fails and recovers, and
passive signals from real exchanges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from satsrouter.market.health import ProviderHealth, worse
from satsrouter.upstream.client import Upstream


@dataclass
class Flaky:
    """A `/models` endpoint that answers 200, 503, or slowly, as the test says."""

    status: int = 200
    delay: float = 0.0
    hits: int = 0

    async def models(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(
            status=self.status, body=orjson.dumps({"data": []}), content_type="application/json"
        )


@pytest_asyncio.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, Upstream]]:
    state = Flaky()
    app = web.Application()
    app.router.add_get("/v1/models", state.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream = Upstream(f"http://127.0.0.1:{port}/v1", "", timeout=5.0)
    try:
        yield state, upstream
    finally:
        await upstream.close()
        await runner.cleanup()


def health_of(
    upstream: Upstream, slow_ms: float = 5000.0, timeout: float = 10.0, window: float = 300.0
) -> ProviderHealth:
    async def probe() -> object:
        return await upstream.get_json("/models")

    return ProviderHealth(
        {"up": probe}, interval=60.0, slow_ms=slow_ms, timeout=timeout, window_seconds=window
    )


async def test_failing_checks_go_degraded_then_offline_and_recover(
    flaky: tuple[Flaky, Upstream],
) -> None:
    server, upstream = flaky
    health = health_of(upstream)
    assert health.status("up") == "unknown"
    assert await health.check("up")
    snap = health.snapshot("up")
    assert snap["status"] == "online" and snap["latency_ms"] is not None
    assert snap["last_checked"] is not None and snap["error_rate"] is None

    server.status = 503
    assert not await health.check("up")
    assert health.status("up") == "degraded"  # one failed check
    await health.check_all()
    assert health.status("up") == "offline"  # two in a row
    assert health.snapshot("up")["latency_ms"] is None
    assert health.snapshot("up")["last_error"] == "UpstreamFailure: transport"  # no URL

    server.status = 200
    assert await health.check("up")
    assert health.status("up") == "online"
    assert health.snapshot("up")["last_error"] is None


async def test_an_unreachable_or_slow_provider(flaky: tuple[Flaky, Upstream]) -> None:
    server, upstream = flaky
    health = health_of(upstream, slow_ms=50.0, timeout=0.5)
    server.delay = 0.1
    assert await health.check("up")
    assert health.status("up") == "degraded"  # answered, but slower than slow_ms
    server.delay = 2.0  # past the check's own timeout: a failed check
    assert not await health.check("up")
    assert health.snapshot("up")["last_error"] == "TimeoutError"
    server.delay = 0.0
    assert await health.check("up") and health.status("up") == "online"

    gone = Upstream("http://127.0.0.1:9/v1", "", timeout=1.0)
    try:
        down = health_of(gone)
        await down.check("up")
        await down.check("up")
        assert down.status("up") == "offline"
        assert down.snapshot("up")["last_error"] == "UpstreamFailure: transport"
    finally:
        await gone.close()


async def test_passive_failures_degrade_and_age_out(flaky: tuple[Flaky, Upstream]) -> None:
    _, upstream = flaky
    health = health_of(upstream, window=0.3)
    health.record("up", True)
    assert health.status("up") == "online"  # real traffic is enough to say so
    health.record("up", False)
    health.record("up", False)
    assert health.status("up") == "online"  # two failures: below min_failures
    health.record("up", False)
    assert health.status("up") == "degraded"
    assert health.error_rate("up") == pytest.approx(0.75)
    for _ in range(20):
        health.record("up", True)
    assert health.status("up") == "online"  # 3 of 24 is under the 20% rate
    health.record("nobody", False)  # unknown providers are ignored
    assert health.status("nobody") == "unknown"
    await asyncio.sleep(0.35)
    assert health.error_rate("up") is None  # the window moved on


async def test_run_checks_on_the_interval_until_cancelled(flaky: tuple[Flaky, Upstream]) -> None:
    server, upstream = flaky

    async def probe() -> object:
        return await upstream.get_json("/models")

    health = ProviderHealth({"up": probe}, interval=0.05)
    task = asyncio.create_task(health.run())
    try:
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.hits >= 3 and health.status("up") == "online"


def test_worse() -> None:
    assert worse("online", "degraded") == "degraded"
    assert worse("offline", "degraded") == "offline"
    assert worse("unknown", "online") == "online"
