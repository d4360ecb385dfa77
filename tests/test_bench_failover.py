"""The bench's failover scenario: parsing, its providers file, the per-provider figures."""

from __future__ import annotations

import pytest

from bench.failover import FLAKY, STEADY, flaky_behaviour, providers_toml
from bench.load import MODEL, RunResult, Scenario
from bench.report import comparison
from satsrouter.upstream.provider_file import parse_providers


def test_failover_scenarios_parse() -> None:
    for text in ("failover-c16", "failover c=16"):
        s = Scenario.parse(text)
        assert (s.kind, s.concurrency, s.rate) == ("failover", 16, 0)
        assert s.id == "failover-c16" and s.label == "failover c=16"
        assert s.targets == ("plain", "failover")
        assert not s.uses_wrk and not s.stream and not s.x_cashu
    # Python-driven, so it may be paced
    assert Scenario.parse("failover-c16-r500").rate == 500
    assert Scenario.parse("chat-c32").targets == ("upstream", "node")
    with pytest.raises(ValueError, match="failover"):
        Scenario.parse("failvoer-c1")  # the message lists the kinds, failover among them


def test_providers_file_puts_flaky_first() -> None:
    import tomllib

    text = providers_toml("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
    parsed = parse_providers(tomllib.loads(text), {})
    assert [(p.name, p.base_url, p.dialect) for p in parsed.providers] == [
        (FLAKY, "http://127.0.0.1:1/v1", "openai"),
        (STEADY, "http://127.0.0.1:2/v1", "openai"),
    ]
    assert parsed.routes == {MODEL: [FLAKY, STEADY]}
    behaviour = flaky_behaviour(20)
    assert (behaviour["fail"], behaviour["fail_every"]) == ("500", 2)


def _run(target: str, latencies_ms: dict[str, list[float]]) -> RunResult:
    run = RunResult(target, Scenario.parse("failover-c1"), elapsed_s=1.0)
    for name, values in latencies_ms.items():
        run.provider_latencies_s[name] = [v / 1000 for v in values]
        run.latencies_s += [v / 1000 for v in values]
    return run


def test_provider_shares_and_added_latency() -> None:
    plain = _run("plain", {"steady": [1.0, 1.0, 2.0, 2.0]})
    failover = _run("failover", {FLAKY: [1.0, 3.0], STEADY: [2.0, 2.0, 4.0, 4.0]})
    shares = failover.providers()
    assert shares[FLAKY] == {"requests": 2, "share": 0.3333, "p50_ms": 2.0, "p99_ms": 2.98}
    assert shares[STEADY]["requests"] == 4 and shares[STEADY]["p50_ms"] == 3.0
    assert failover.summary()["providers"] == shares
    cmp = comparison(plain, failover)
    # p50 2.5 vs 1.5 ms; p99 4.0 vs 2.0 ms; 6 vs 4 requests in the same second
    assert cmp["added_p50_ms"] == 1.0
    assert cmp["added_p99_ms"] == 2.0
    assert cmp["rps_ratio"] == 1.5
    chat = Scenario.parse("chat-c1")
    assert "added_p99_ms" not in comparison(RunResult("upstream", chat), RunResult("node", chat))
