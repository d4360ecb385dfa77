"""The circuit breaker of each provider (market/health.py): the state machine on an injected
clock, the check loop's pace while a circuit is open, and a real node whose upstream fails
paid requests until its circuit opens, then recovers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from conftest import NodeFactory, eventually
from prometheus_client.parser import text_string_to_metric_families
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.market.health import Probe, ProviderHealth

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "are you there"}]
METRICS_TOKEN = "circuit-scrape-token"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Probes:
    """Probes that pass or fail as the test says, counting their calls."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}

    def probe(self, name: str) -> Probe:
        async def run() -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.failing:
                raise ConnectionError("down")

        return run


def make(
    clock: Clock, probes: Probes | None = None, names: tuple[str, ...] = ("a",), **kw: Any
) -> ProviderHealth:
    probes = probes or Probes()
    kw.setdefault("failures", 3)
    kw.setdefault("cooldown", 30.0)
    return ProviderHealth(
        {name: probes.probe(name) for name in names}, interval=60.0, clock=clock, **kw
    )


def test_opens_after_the_failures_in_a_row_and_a_success_resets_the_run() -> None:
    clock = Clock()
    health = make(clock)
    health.record("a", False)
    health.record("a", False)
    health.record("a", True)  # breaks the run
    health.record("a", False)
    health.record("a", False)
    assert health.circuit("a") == "closed" and health.available("a")
    assert health.snapshot("a")["consecutive_failures"] == 2
    assert health.snapshot("a")["opened_at"] is None
    before = int(time.time())
    health.record("a", False)  # the third in a row
    assert health.circuit("a") == "open"
    assert not health.available("a") and not health.acquire("a")
    assert health.status("a") == "offline"
    snap = health.snapshot("a")
    assert snap["circuit"] == "open" and snap["consecutive_failures"] == 3
    assert before <= snap["opened_at"] <= int(time.time())
    assert health.circuits() == {"a": "open"}
    # Outcomes of exchanges begun before it opened change nothing until the cooldown ends.
    health.record("a", True)
    health.record("a", False)
    clock.advance(29.9)
    assert health.circuit("a") == "open"


def test_answers_4xx_and_429_do_not_open_it() -> None:
    clock = Clock()
    health = make(clock)
    for _ in range(10):
        health.record("a", True)  # a 4xx: the provider answered
    for _ in range(10):
        health.record("a", False, rate_limited=True)  # a 429: busy; `ok` is ignored
    assert health.circuit("a") == "closed"
    snap = health.snapshot("a")
    assert snap["rate_limited"] == 10 and snap["consecutive_failures"] == 0
    assert snap["error_rate"] == 0.0 and snap["status"] == "online"
    # A 429 neither breaks a run of failures nor lengthens it.
    health.record("a", False)
    health.record("a", False)
    health.record("a", True, rate_limited=True)
    assert health.circuit("a") == "closed"
    health.record("a", False)
    assert health.circuit("a") == "open"
    assert health.snapshot("a")["rate_limited"] == 11


def test_half_open_lets_one_trial_through_and_its_success_closes() -> None:
    clock = Clock()
    health = make(clock)
    for _ in range(3):
        health.record("a", False)
    clock.advance(30.0)
    assert health.circuit("a") == "half_open" and health.status("a") == "degraded"
    assert health.snapshot("a")["opened_at"] is not None
    assert health.available("a") and health.available("a")  # a peek claims nothing
    assert health.acquire("a")  # the trial
    assert not health.available("a") and not health.acquire("a")  # one at a time
    health.record("a", True, 250.0)
    assert health.circuit("a") == "closed" and health.available("a")
    snap = health.snapshot("a")
    assert snap["opened_at"] is None and snap["consecutive_failures"] == 0
    assert snap["exchange_latency_ms"] == 250.0
    assert health.acquire("a") and health.acquire("a")  # closed: no limit


def test_a_failed_trial_reopens_for_a_whole_cooldown() -> None:
    clock = Clock()
    health = make(clock)
    for _ in range(3):
        health.record("a", False)
    first = health.snapshot("a")["opened_at"]
    clock.advance(30.0)
    assert health.acquire("a")
    health.record("a", False)
    assert health.circuit("a") == "open" and not health.available("a")
    assert health.snapshot("a")["opened_at"] >= first
    clock.advance(29.0)
    assert health.circuit("a") == "open"
    clock.advance(1.0)
    assert health.circuit("a") == "half_open" and health.acquire("a")


def test_a_trial_slot_comes_back_by_release_by_429_or_after_the_trial_timeout() -> None:
    clock = Clock()
    health = make(clock, trial_timeout=120.0)
    for _ in range(3):
        health.record("a", False)
    clock.advance(30.0)
    assert health.acquire("a") and not health.available("a")
    health.release("a")  # the request was never sent
    assert health.acquire("a") and not health.available("a")
    health.record("a", True, rate_limited=True)  # busy is no verdict
    assert health.circuit("a") == "half_open" and health.acquire("a")
    clock.advance(119.0)
    assert not health.available("a")
    clock.advance(1.0)  # the claim lapsed: its request never reported back
    assert health.available("a") and health.acquire("a")


async def test_checks_finding_it_offline_open_it_and_a_passing_check_closes_it() -> None:
    clock = Clock()
    probes = Probes()
    health = make(clock, probes)
    probes.failing.add("a")
    assert not await health.check("a")
    assert health.circuit("a") == "closed" and health.status("a") == "degraded"
    assert not await health.check("a")  # OFFLINE_AFTER failed checks
    assert health.circuit("a") == "open" and health.status("a") == "offline"
    clock.advance(30.0)
    assert not await health.check("a")  # still failing: open again for a cooldown
    assert health.circuit("a") == "open"
    probes.failing.clear()
    assert await health.check("a")
    assert health.circuit("a") == "closed" and health.status("a") == "online"


async def test_a_circuit_real_exchanges_opened_needs_a_real_exchange_to_close() -> None:
    clock = Clock()
    health = make(clock)
    for _ in range(3):
        health.record("a", False)
    assert await health.check("a")  # the model list loads; completions may still fail
    clock.advance(30.0)
    assert await health.check("a")
    assert health.circuit("a") == "half_open"
    # Checks failing meanwhile do not make it any easier to close.
    probes = Probes()
    probes.failing.add("a")
    health.set_probes({"a": probes.probe("a")})
    await health.check("a")
    await health.check("a")
    assert health.circuit("a") == "open"
    probes.failing.clear()
    assert await health.check("a")
    assert health.circuit("a") == "open"
    clock.advance(30.0)
    health.record("a", True)
    assert health.circuit("a") == "closed"


async def test_latency_is_a_moving_average_of_successful_exchanges() -> None:
    clock = Clock()
    health = make(clock)
    assert health.latency_ms("a") is None and health.latency_ms("nobody") is None
    assert await health.check("a")
    checked = health.snapshot("a")["latency_ms"]
    assert checked is not None and health.latency_ms("a") == checked  # until exchanges
    health.record("a", True, 100.0)
    assert health.latency_ms("a") == 100.0
    health.record("a", True, 200.0)
    assert health.latency_ms("a") == pytest.approx(120.0)
    health.record("a", False, 9000.0)  # a failure's time says nothing of a good answer
    health.record("a", True, rate_limited=True)
    health.record("a", True)  # no time given
    assert health.latency_ms("a") == pytest.approx(120.0)
    health.record("a", True, 100.0)
    assert health.snapshot("a")["exchange_latency_ms"] == 116.0


def test_set_probes_keeps_the_states_of_kept_providers() -> None:
    clock = Clock()
    probes = Probes()
    health = make(clock, probes, names=("a", "b"))
    for _ in range(3):
        health.record("a", False)
    health.record("b", False)
    health.record("b", True, 80.0)
    health.set_probes({"a": probes.probe("a"), "c": probes.probe("c")})
    assert health.circuit("a") == "open"  # kept, state and all
    assert health.snapshot("a")["consecutive_failures"] == 3
    assert health.status("c") == "unknown" and health.circuit("c") == "closed"
    assert health.available("c")
    assert health.status("b") == "unknown" and health.latency_ms("b") is None  # removed
    health.record("b", False)  # ignored rather than grown without bound
    assert health.circuits() == {"a": "open", "c": "closed"}
    assert health.available("nobody") and health.circuit("nobody") == "closed"


def test_settings_apply_at_once() -> None:
    clock = Clock()
    health = make(clock)
    health.failures = 1
    health.record("a", False)
    assert health.circuit("a") == "open"
    health.cooldown = 5.0
    clock.advance(5.0)
    assert health.circuit("a") == "half_open"


async def test_checks_run_at_the_cooldown_pace_while_a_circuit_is_open() -> None:
    probes = Probes()
    health = ProviderHealth(
        {"a": probes.probe("a"), "b": probes.probe("b")}, interval=60.0, cooldown=0.05, failures=1
    )
    task = asyncio.create_task(health.run())
    try:

        async def checked(name: str, times: int) -> bool:
            return probes.calls.get(name, 0) >= times

        await eventually(lambda: checked("a", 1), within=5)  # first checks right away
        await eventually(lambda: checked("b", 1), within=5)
        health.record("a", False)  # opens; wakes the loop
        await eventually(lambda: checked("a", 4), within=5)
        assert probes.calls["b"] == 1  # closed: still on the 60 s interval
        health.set_probes({**health.probes, "c": probes.probe("c")})
        await eventually(lambda: checked("c", 1), within=5)  # a new provider: checked at once
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_real_node_opens_the_circuit_and_closes_it_on_recovery(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(
        circuit_failures=3, circuit_cooldown_seconds=1.0, metrics_token=METRICS_TOKEN
    )
    name = node.node.settings.upstream_name
    (token,) = await user_wallet.mint_tokens(100)
    assert (await node.balance(token))["balance"] == 100_000
    body = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 5}

    async with httpx.AsyncClient(
        base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:

        async def provider() -> dict[str, Any]:
            resp = await http.get(f"/v1/providers/{name}")
            assert resp.status_code == 200, resp.text
            result: dict[str, Any] = resp.json()
            return result

        async def circuit_gauge() -> float:
            resp = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            for family in text_string_to_metric_families(resp.text):
                for sample in family.samples:
                    if sample.name == "satsrouter_provider_circuit_open":
                        if sample.labels == {"provider": name}:
                            return sample.value
            raise AssertionError("no satsrouter_provider_circuit_open sample")

        assert (await provider())["circuit"] == "closed"
        assert await circuit_gauge() == 0
        upstream.configure(fail="500")
        try:
            for failed in range(1, 4):
                resp = await http.post(CHAT, json=body)
                assert resp.status_code == 502, resp.text
                shown = await provider()
                assert shown["consecutive_failures"] == failed
                assert shown["circuit"] == ("open" if failed == 3 else "closed")
        finally:
            upstream.reset()
        shown = await provider()
        assert shown["status"] == "offline" and shown["error_rate"] == 1.0
        assert shown["opened_at"] is not None and abs(shown["opened_at"] - time.time()) < 60
        assert shown["rate_limited"] == 0 and "exchange_latency_ms" in shown
        (listed,) = [
            p for p in (await http.get("/v1/providers")).json()["providers"] if p["name"] == name
        ]
        assert listed["circuit"] == "open" and listed["status"] == "offline"
        assert await circuit_gauge() == 1
        assert (await node.balance(token))["balance"] == 100_000  # failures cost nothing

        # The upstream is back; once the cooldown has passed the next request is the trial.
        async def half_open() -> bool:
            return (await provider())["circuit"] == "half_open"

        await eventually(half_open, within=10)
        assert (await provider())["status"] == "degraded"
        resp = await http.post(CHAT, json=body)
        assert resp.status_code == 200, resp.text
        cost = int(resp.headers["x-routstr-cost-msats"])
        shown = await provider()
        assert shown["circuit"] == "closed" and shown["opened_at"] is None
        assert shown["consecutive_failures"] == 0 and shown["status"] != "offline"
        assert await circuit_gauge() == 0
    assert (await node.balance(token))["balance"] == 100_000 - cost
