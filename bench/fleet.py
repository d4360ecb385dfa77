"""Several nodes on one Postgres: the database, the per-node counts, the comparison table.

`python -m bench --database postgres --nodes 3` starts a throwaway Postgres cluster
(`LocalPostgres`, 127.0.0.1), one database every node shares, three `satsrouter serve`
processes and nginx balancing over them (`bench/nginx.py`); `--fleet` runs the same
scenarios for several such configurations back to back and prints one table comparing them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import statistics
from collections.abc import Iterator
from typing import Any

import aiohttp
from satsrouter_dev.postgres import LocalPostgres
from satsrouter_dev.stack import Stack

from bench.report import Row

DATABASES = ("sqlite", "postgres")
# The comparison: one SQLite node for reference, then one to three nodes on Postgres; one
# Postgres node behind the balancer too, so the balancer's own cost can be told apart.
FLEET_CONFIGS = "sqlite-1,postgres-1,postgres-1-lb,postgres-2,postgres-3"
FLEET_SCENARIOS = "chat-c1,chat-c32,stream-c16,xcashu-c8"
BASELINE = "postgres-1"
REFERENCE = "sqlite-1"
_CONFIG = re.compile(r"(sqlite|postgres)-(\d+)(-lb)?")
# prometheus_client's exposition of the node's paid-request counter, one line per label set
_SERVED = re.compile(rb"^satsrouter_requests_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """One benchmarked setup: the database, how many nodes, whether nginx balances."""

    database: str
    nodes: int
    balancer: bool

    @property
    def id(self) -> str:
        return f"{self.database}-{self.nodes}" + ("-lb" if self.balancer else "")

    @property
    def label(self) -> str:
        db = "SQLite" if self.database == "sqlite" else "PG"
        return f"{self.nodes} {db}" + (" + LB" if self.balancer else "")

    @classmethod
    def parse(cls, text: str) -> Config:
        """`sqlite-1`, `postgres-2` (balanced: more than one node always is), `postgres-1-lb`."""
        found = _CONFIG.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"unknown configuration {text!r} (expected e.g. postgres-2)")
        config = cls(found.group(1), int(found.group(2)), bool(found.group(3)))
        config.check()
        return dataclasses.replace(config, balancer=config.balancer or config.nodes > 1)

    def check(self) -> None:
        """Refuse what cannot share one truth: several nodes each on its own SQLite file."""
        if self.database not in DATABASES:
            raise ValueError(f"database must be one of {', '.join(DATABASES)}")
        if not 1 <= self.nodes <= 16:
            raise ValueError("nodes must be between 1 and 16")
        if self.nodes > 1 and self.database != "postgres":
            raise ValueError(
                f"{self.nodes} nodes need --database postgres: several nodes share one "
                "database, and SQLite is a file of one node's own"
            )


@contextlib.contextmanager
def bench_database(kind: str) -> Iterator[str]:
    """The nodes' `DATABASE_URL` until the block ends: "" for SQLite (each node's own file),
    else one database in a throwaway Postgres cluster on 127.0.0.1, stopped and deleted after.
    """
    if kind == "sqlite":
        yield ""
        return
    with LocalPostgres() as cluster:
        yield cluster.create_database("bench")


async def served(session: aiohttp.ClientSession, stack: Stack, token: str) -> list[int]:
    """Paid requests each node has answered so far (its own `/metrics`, not the balancer's).

    With `--workers` a scrape reaches one worker, whose counter is its own: only the sum
    of one node's workers would be the node's, so the figure is then a lower bound.
    """
    counts = []
    for node in stack.nodes:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{node.url}/metrics", headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{node.url}/metrics: {resp.status}")
            text = await resp.read()
        counts.append(round(sum(float(v) for v in _SERVED.findall(text))))
    return counts


@dataclasses.dataclass(slots=True)
class FleetResult:
    """One configuration's repetitions (empty if it failed to run)."""

    config: Config
    reps: list[list[Row]]
    error: str = ""
    loadavg: list[float] = dataclasses.field(default_factory=list)  # 1 min, before and after


def _summary(result: FleetResult, scenario_id: str) -> dict[str, Any] | None:
    rows = [r for rows in result.reps for r in rows if r.scenario.id == scenario_id]
    if not rows:
        return None
    p50 = [v for r in rows if (v := r.node.latency_ms(0.5)) is not None]
    p99 = [v for r in rows if (v := r.node.latency_ms(0.99)) is not None]
    served_by = [r.served_by_node for r in rows if r.served_by_node is not None]
    return {
        "rps": statistics.fmean(r.node.rps for r in rows),
        "p50": statistics.median(p50) if p50 else None,
        "p99": statistics.median(p99) if p99 else None,
        "errors": sum(r.node.errors for r in rows),
        "money_ok": all(r.check["ok"] for r in rows),
        "served": [sum(s[i] for s in served_by) for i in range(len(served_by[0]))]
        if served_by
        else [],
    }


def fleet_table(results: list[FleetResult], scenario_ids: list[str]) -> str:
    """One line per configuration and scenario: throughput, latency, money, who served,
    and throughput against one Postgres node and against one SQLite node."""
    by_id = {r.config.id: r for r in results}
    head = (
        f"{'config':<14} {'scenario':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'money':>6} {'x 1 PG':>7} {'x SQLite':>8}  served per node"
    )
    lines = [head, "-" * len(head)]
    for scenario_id in scenario_ids:
        base = by_id.get(BASELINE)
        ref = by_id.get(REFERENCE)
        base_s = _summary(base, scenario_id) if base else None
        ref_s = _summary(ref, scenario_id) if ref else None
        for result in results:
            if result.error:
                lines.append(f"{result.config.label:<14} {scenario_id:<12} failed: {result.error}")
                continue
            s = _summary(result, scenario_id)
            if s is None:
                continue
            lines.append(
                f"{result.config.label:<14} {scenario_id:<12} {s['rps']:>8.1f} "
                f"{_ms(s['p50']):>8} {_ms(s['p99']):>8} {s['errors']:>6} "
                f"{'OK' if s['money_ok'] else 'WRONG':>6} {_ratio(s, base_s):>7} "
                f"{_ratio(s, ref_s):>8}  {' / '.join(str(n) for n in s['served']) or '-'}"
            )
        lines.append("")
    loads = [
        f"{r.config.label} {r.loadavg[0]:.1f} -> {r.loadavg[1]:.1f}" for r in results if r.loadavg
    ]
    if loads:
        lines.append("load average (1 min) before -> after each: " + "; ".join(loads))
    lines.append(
        "req/s: mean over repetitions; p50/p99: median over repetitions; x 1 PG, x SQLite: "
        "req/s against one node on Postgres (no balancer) and one on SQLite; served: paid "
        "requests each node answered during the node runs (its /metrics), warm-up included"
    )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(s: dict[str, Any], base: dict[str, Any] | None) -> str:
    if base is None or not base["rps"]:
        return "-"
    return f"{s['rps'] / base['rps']:.2f}"
