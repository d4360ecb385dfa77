"""The bench's A/B mode (`--baseline COMMIT`), CPU per request and the tail quantiles.

The end-to-end test runs `python -m bench --baseline HEAD` for two short scenarios and two
repetitions and reads the records: both nodes' money checks passed, every ratio is there,
CPU per request was measured, and the baseline's worktree is gone afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import _order, _parse_args
from bench.ab import ab_table, ratios, spread, summary
from bench.cpu import cpu_seconds
from bench.load import RunResult, Scenario
from bench.nginx import nginx_binary

REPO = Path(__file__).resolve().parents[1]
RUN_WITHIN_S = 240


def _run(target: str, scenario: str, latencies_ms: list[float], cpu_s: float) -> RunResult:
    run = RunResult(target, Scenario.parse(scenario), elapsed_s=1.0)
    run.latencies_s = [v / 1000 for v in latencies_ms]
    run.requests = len(latencies_ms) + 2
    run.warmup_requests = 2
    run.cpu_s = cpu_s
    return run


def test_ratios_spread_and_tail() -> None:
    base = _run("baseline", "chat-c1", [1.0] * 98 + [10.0, 20.0], cpu_s=0.1)
    new = _run("node", "chat-c1", [1.0] * 98 + [2.0, 3.0], cpu_s=0.08)
    assert base.cpu_us_per_request() == 1000.0  # 0.1 s over the 100 measured requests
    assert new.tail()["max"] == 3.0 and base.tail()["p50"] == 1.0
    r = ratios(base, new)
    assert r["rps"] == 1.0 and r["p50"] == 1.0 and r["cpu"] == 0.8
    assert r["p99"] == round(new.latency_ms(0.99) / base.latency_ms(0.99), 4)  # type: ignore[operator]
    assert spread([1.2, None, 0.8, 1.0]) == {"median": 1.0, "min": 0.8, "max": 1.2}
    assert spread([None]) is None
    s = summary([(base, new), (base, new)])
    assert s["spread"]["cpu"] == {"median": 0.8, "min": 0.8, "max": 0.8}
    assert s["cpu_us_per_request"] == {"baseline": 1000.0, "new": 800.0}
    assert s["tail_ms"]["new"]["max"] == 3.0
    text = ab_table(["chat-c1"], {"chat-c1": s}, "aaaa", "bbbb")
    assert "chat-c1" in text and "0.80 (0.80-0.80)" in text and "p99.9" in text


def test_the_two_nodes_take_turns() -> None:
    chat = Scenario.parse("chat-c1")
    assert _order(chat, 0, ab=False) == ["upstream", "node"]
    assert _order(chat, 0, ab=True) == ["upstream", "baseline", "node"]
    assert _order(chat, 1, ab=True) == ["upstream", "node", "baseline"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--baseline", "no-such-commit-here"],
        ["--baseline", "HEAD", "--nodes", "2", "--database", "postgres"],
        ["--baseline", "HEAD", "--scenarios", "failover-c1"],
    ],
)
def test_bad_baselines_exit_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse_args(argv)
    assert exited.value.code == 2
    assert "--baseline" in capsys.readouterr().err


def test_cpu_seconds_counts_this_process() -> None:
    before = cpu_seconds([os.getpid()])
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_seconds([os.getpid()]) > before


def _worktrees() -> str:
    out = subprocess.run(
        ["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_baseline_and_new_node_run_in_turns_and_both_charge_exactly(tmp_path: Path) -> None:
    assert nginx_binary() and shutil.which("wrk"), "`make bench-tools` installs nginx and wrk"
    results = tmp_path / "results.jsonl"
    argv = ["--baseline", "HEAD", "--scenarios", "chat-c1,stream-c1"]
    argv += ["--duration", "1", "--warmup", "0.2", "--repeat", "2", "--results", str(results)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=RUN_WITHIN_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["repetition"], r["scenario"]) for r in records] == [
        (1, "chat-c1"),
        (1, "stream-c1"),
        (2, "chat-c1"),
        (2, "stream-c1"),
    ]
    for r in records:
        assert len(r["baseline_commit"]) == 12
        for check in (r["charge_check"], r["baseline_check"]):
            assert check["ok"] and check["reserved_after_msat"] == 0
            assert check["spent_msat"] == check["charged_requests"] * check["price_msat"] > 0
        assert set(r["ab_ratios"]) == {"rps", "p50", "p99", "cpu"}
        assert all(v is not None and v > 0 for v in r["ab_ratios"].values()), r["ab_ratios"]
        for side in (r["node"], r["baseline"]):
            assert side["cpu_us_per_request"] > 0
            assert side["runqueue_wait_us_per_request"] >= 0
            assert set(side["tail_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
        assert r["speed"]["upstream_rps"] > 0 and r["speed"]["python_mops"] > 0
    # the baseline ran its own checkout, which is gone again
    assert "baseline-tree/satsrouter" in done.stdout
    assert "A/B:" in done.stdout and "money, baseline: OK" in done.stdout
    assert "baseline-tree" not in _worktrees()
