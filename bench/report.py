"""The printed table and the `results.jsonl` records."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.load import RunResult, Scenario

REPO = Path(__file__).resolve().parents[1]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _plus(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _added(node: float | None, upstream: float | None) -> float | None:
    return None if node is None or upstream is None else node - upstream


def comparison(upstream: RunResult, node: RunResult) -> dict[str, Any]:
    """node/upstream throughput ratio and the latency the node adds (p50 and TTFB p50)."""
    ratio = node.rps / upstream.rps if upstream.rps > 0 else None
    added_p50 = _added(node.latency_ms(0.5), upstream.latency_ms(0.5))
    added_ttfb = _added(node.ttfb_ms(0.5), upstream.ttfb_ms(0.5))
    return {
        "rps_ratio": None if ratio is None else round(ratio, 3),
        "added_p50_ms": None if added_p50 is None else round(added_p50, 3),
        "added_ttfb_p50_ms": None if added_ttfb is None else round(added_ttfb, 3),
    }


def table(pairs: list[tuple[Scenario, RunResult, RunResult]]) -> str:
    head = (
        f"{'scenario':<12} {'target':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'ttfb p50':>9} {'ttfb p99':>9} {'errors':>7}"
    )
    lines = [head, "-" * len(head)]
    for scenario, upstream, node in pairs:
        for name, run in (("upstream", upstream), ("node", node)):
            label = scenario.label if name == "upstream" else ""
            lines.append(
                f"{label:<12} {name:<9} {run.rps:>9.1f} {_ms(run.latency_ms(0.5)):>8} "
                f"{_ms(run.latency_ms(0.99)):>8} {_ms(run.ttfb_ms(0.5)):>9} "
                f"{_ms(run.ttfb_ms(0.99)):>9} {run.errors:>7}"
            )
        cmp = comparison(upstream, node)
        ratio = "-" if cmp["rps_ratio"] is None else f"{cmp['rps_ratio']:.3f}x"
        lines.append(
            f"{'':<12} {'node/up':<9} {ratio:>9} {_plus(cmp['added_p50_ms']):>8} {'':>8} "
            f"{_plus(cmp['added_ttfb_p50_ms']):>9}"
        )
        kinds = {f"upstream {k}": v for k, v in upstream.error_kinds.items()}
        kinds.update({f"node {k}": v for k, v in node.error_kinds.items()})
        if kinds:
            lines.append(f"{'':<12} errors: " + ", ".join(f"{k} x{v}" for k, v in kinds.items()))
        lines.append("")
    lines.append(
        "node/up: req/s = node throughput / upstream throughput; "
        "p50 and ttfb p50 = ms the node adds"
    )
    return "\n".join(lines)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info(duration_s: float, warmup_s: float) -> dict[str, Any]:
    """What every record of this run shares: commit, date, machine, settings."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": duration_s,
        "warmup_s": warmup_s,
    }


def records(
    info: dict[str, Any],
    pairs: list[tuple[Scenario, RunResult, RunResult]],
    charge: dict[str, Any],
) -> list[dict[str, Any]]:
    return [
        {
            **info,
            "scenario": scenario.id,
            "concurrency": scenario.concurrency,
            "stream": scenario.stream,
            "upstream": upstream.summary(),
            "node": node.summary(),
            **comparison(upstream, node),
            "charge_check": charge,
        }
        for scenario, upstream, node in pairs
    ]


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=False) + "\n")
