"""A/B in one run (`--baseline COMMIT`): the baseline commit's node beside the working tree's.

The baseline is checked out with `git worktree add --detach` into the bench's temporary
directory and run with the same interpreter and dependencies (its own `satsrouter` package
first on `sys.path`); the worktree is removed when the run ends. Both nodes share the mint
and the upstreams and take turns scenario by scenario, so the machine's drift and other
load touch both alike; each figure is reported as the ratio new ÷ baseline per
repetition, then as the median and the min–max over repetitions.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.load import TAIL, RunResult

REPO = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 120.0

# (label, figure): each compared as new ÷ baseline (req/s: > 1 is better; the rest: < 1)
METRICS: tuple[tuple[str, str], ...] = (
    ("req/s", "rps"),
    ("p50", "p50"),
    ("p99", "p99"),
    ("cpu/req", "cpu"),
)


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def resolve(commit: str) -> str:
    """The full hash of `commit` (any name git knows); ValueError if it is none."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except RuntimeError as exc:
        raise ValueError(f"--baseline {commit!r}: not a commit here") from exc


@contextlib.contextmanager
def baseline_tree(commit: str, parent: Path) -> Iterator[Path]:
    """A detached worktree of `commit` under `parent`, removed (and pruned) afterwards."""
    tree = parent / "baseline-tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree
    finally:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            _git("worktree", "remove", "--force", str(tree))
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            _git("worktree", "prune")


def imported_from(tree: Path) -> Path:
    """Where `python -m satsrouter` run as the baseline node imports the package from.

    Run as node_process runs it (cwd and PYTHONPATH the tree); RuntimeError unless that is
    the tree's own package: otherwise both sides would measure the same code.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    code = "import satsrouter; print(satsrouter.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    where = Path(out.stdout.strip() or "/nonexistent").resolve()
    if out.returncode != 0 or not where.is_relative_to(tree.resolve()):
        raise RuntimeError(f"the baseline imports satsrouter from {where}, not {tree}")
    return where


def python_speed(rounds: int = 3) -> float:
    """The machine's speed for plain Python: millions of loop steps per second, best of
    `rounds` (about 0.1 s): rows from different days and boxes can be read against it."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i & 7
        best = min(best, time.perf_counter() - t0)
    return round(0.3 / best, 2)


def _figure(run: RunResult, name: str) -> float | None:
    if name == "rps":
        return run.rps if run.ok else None
    if name == "cpu":
        return run.cpu_us_per_request()
    q = 0.5 if name == "p50" else 0.99
    # streams: what the client waits for first is the first byte
    value = run.ttfb_ms(q) if run.scenario.stream else run.latency_ms(q)
    return value


def ratios(base: RunResult, new: RunResult) -> dict[str, float | None]:
    """new ÷ baseline for each metric of one repetition (None where either is missing)."""
    out: dict[str, float | None] = {}
    for _, name in METRICS:
        b, n = _figure(base, name), _figure(new, name)
        out[name] = round(n / b, 4) if b and n is not None else None
    return out


def spread(values: list[float | None]) -> dict[str, float] | None:
    """Median, min and max of the ratios present; None if there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {
        "median": round(statistics.median(present), 4),
        "min": round(min(present), 4),
        "max": round(max(present), 4),
    }


def tail_median(runs: list[RunResult]) -> dict[str, float | None]:
    """Each tail quantile's median over repetitions (ms; streams: time to the first byte)."""
    out: dict[str, float | None] = {}
    for label, q in TAIL:
        values = [
            v
            for r in runs
            if (v := (r.ttfb_ms(q) if r.scenario.stream else r.latency_ms(q))) is not None
        ]
        out[label] = round(statistics.median(values), 3) if values else None
    return out


def summary(pairs: list[tuple[RunResult, RunResult]]) -> dict[str, Any]:
    """One scenario over repetitions: per-repetition ratios and their spread, both tails,
    both sides' CPU per request."""
    per_rep = [ratios(b, n) for b, n in pairs]
    cpu_b = [c for b, _ in pairs if (c := b.cpu_us_per_request()) is not None]
    cpu_n = [c for _, n in pairs if (c := n.cpu_us_per_request()) is not None]
    wait_b = [w for b, _ in pairs if (w := b.wait_us_per_request()) is not None]
    wait_n = [w for _, n in pairs if (w := n.wait_us_per_request()) is not None]
    return {
        "ratios": per_rep,
        "spread": {name: spread([r[name] for r in per_rep]) for _, name in METRICS},
        "tail_ms": {
            "baseline": tail_median([b for b, _ in pairs]),
            "new": tail_median([n for _, n in pairs]),
        },
        "cpu_us_per_request": {
            "baseline": round(statistics.median(cpu_b), 1) if cpu_b else None,
            "new": round(statistics.median(cpu_n), 1) if cpu_n else None,
        },
        # how much other work stood in the way: the machine's share of the noise
        "runqueue_wait_us_per_request": {
            "baseline": round(statistics.median(wait_b), 1) if wait_b else None,
            "new": round(statistics.median(wait_n), 1) if wait_n else None,
        },
    }


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def ab_table(
    scenarios: list[str], summaries: dict[str, dict[str, Any]], base: str, new: str
) -> str:
    """The comparison: ratios new ÷ baseline (median, min-max over repetitions), each side's
    CPU per request and latency distribution."""
    head = (
        f"{'scenario':<16} {'req/s':>18} {'p50':>18} {'p99':>18} {'cpu/req':>18} "
        f"{'cpu us base/new':>16} {'wait us base/new':>17}"
    )
    lines = [f"A/B: {new} / baseline {base} (median, min-max over repetitions)", head]
    lines.append("-" * len(head))
    tails = []
    for sid in scenarios:
        s = summaries.get(sid)
        if s is None:
            continue
        sp = s["spread"]
        cpu = s["cpu_us_per_request"]
        cpus = f"{_ms(cpu['baseline'])}/{_ms(cpu['new'])}"
        wait = s["runqueue_wait_us_per_request"]
        waits = f"{_ms(wait['baseline'])}/{_ms(wait['new'])}"
        lines.append(
            f"{sid:<16} {_cell(sp['rps']):>18} {_cell(sp['p50']):>18} {_cell(sp['p99']):>18} "
            f"{_cell(sp['cpu']):>18} {cpus:>16} {waits:>17}"
        )
        for side in ("baseline", "new"):
            t = s["tail_ms"][side]
            tails.append(
                f"{sid:<16} {side:<9} " + "  ".join(f"{label} {_ms(t[label])}" for label, _ in TAIL)
            )
    lines.append("")
    lines.append("latency (streams: first byte), ms, median over repetitions:")
    lines.extend(tails)
    return "\n".join(lines)
