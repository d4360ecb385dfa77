"""`python -m bench`: the node against its fake upstream, scenario by scenario.

Starts a local mint, nginx (the fast fake upstream), the Python fake upstream (slow
streams) and the node (for failover scenarios also a second node whose first provider, a
fake upstream of its own, fails every other request); funds one `sk-` key per node and
pre-mints X-Cashu tokens; runs each scenario first against the upstream directly (failover:
the plain node), then through the node (wrk for plain requests, an async client for
streams, X-Cashu and failover); checks every charge; measures the node's memory after each
repetition; prints tables and the targets; appends one JSON line per scenario and
repetition to bench/results.jsonl. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson
import uvloop
from satsrouter_dev.fake_upstream import Behaviour
from satsrouter_dev.mint import TestWallet
from satsrouter_dev.stack import Stack, log_tail, node_process, running_stack

from bench.ab import ab_table, baseline_tree, imported_from, python_speed, resolve, summary
from bench.failover import circuit_openings, failover_node
from bench.fleet import (
    FLEET_CONFIGS,
    FLEET_SCENARIOS,
    Config,
    FleetResult,
    bench_database,
    fleet_table,
    served,
)
from bench.load import RunResult, Scenario, request_body
from bench.mintload import access_counts, wallet_outputs
from bench.nginx import SLOW_HEADER, capture_replies, nginx_balancer, nginx_upstream
from bench.report import Row, append_jsonl, records, rss_mb, run_info, table, targets
from bench.scenarios import (
    XSTREAM_MAX_REQUESTS,
    Context,
    balance,
    mint_baseline,
    mint_share,
    mint_swap_pool,
    mint_token_pool,
    node_context,
    run_target,
    scenario_check,
    swap_shape,
    x_cashu_sats,
)

# failover-c1/-c16 add 4 runs of warm-up + duration per repetition (about 1.5 min at the
# defaults) and a second node: worth it, the issue asks for the failover figures.
DEFAULT_SCENARIOS = (
    "chat-c1,chat-c32,models-c32,stream-c1,stream-c16,stream-c16-r500,xcashu-c8,xstream-c1,"
    "failover-c1,failover-c16"
)
RESULTS = Path(__file__).resolve().parent / "results.jsonl"
FUND_SAT = 1_000_000
# The Python fake upstream only answers the xstream scenario (through nginx): 20 chunks,
# 50 ms apart, so a node that buffered would show a first byte after ~1 s.
SLOW_UPSTREAM: Behaviour = {"completion_tokens": 20, "chunk_delay_ms": 50, "latency_ms": 0}
SETTLE_TIMEOUT_S = 10.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--warmup", type=float, default=None, help="seconds discarded (default 1)")
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma list of kind-cN (default {DEFAULT_SCENARIOS}; with --fleet {FLEET_SCENARIOS})",
    )
    p.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: each node its own file; postgres: a throwaway local cluster, one "
        "database shared by every node (default sqlite)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="node processes behind an nginx load balancer (> 1 needs --database postgres)",
    )
    p.add_argument(
        "--balancer",
        action="store_true",
        help="put the load balancer in front of a single node too (always there with --nodes > 1)",
    )
    p.add_argument(
        "--fleet",
        action="store_true",
        help="run the scenarios for each of --configs back to back and compare them",
    )
    p.add_argument(
        "--configs",
        default=FLEET_CONFIGS,
        help=f"with --fleet: comma list of database-N[-lb] (default {FLEET_CONFIGS})",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=200_000,
        help="cap per Python-driven run, warm-up included (default 200000)",
    )
    p.add_argument("--workers", type=int, default=1, help="node worker processes (default 1)")
    p.add_argument(
        "--keys",
        type=int,
        default=1,
        help="sk- keys funded; paid requests take them in turn (default 1: one key's row)",
    )
    p.add_argument("--repeat", type=int, default=2, help="repetitions, RSS after each (default 2)")
    p.add_argument(
        "--xcashu-tokens",
        type=int,
        default=600,
        help="tokens pre-minted per xcashu run; the run ends when they are spent (default 600)",
    )
    p.add_argument(
        "--mint-swaps",
        type=int,
        default=1500,
        help="proofs pre-minted per xcashu run for the mint-direct swap baseline (default 1500)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="COMMIT",
        help="A/B: also run COMMIT's node (checked out beside this tree), scenario by "
        "scenario in turn with this one, and report new / baseline ratios",
    )
    p.add_argument("--quick", action="store_true", help="1 s runs, 0.2 s warm-up, 1 repetition")
    p.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS.name}")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSONL file to append to")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 1.0
    if args.quick and args.repeat == 2:
        args.repeat = 1
    if args.fleet and args.repeat == 2:
        args.repeat = 1  # five configurations: one repetition each unless asked
    if args.scenarios is None:
        args.scenarios = FLEET_SCENARIOS if args.fleet else DEFAULT_SCENARIOS
    try:
        if args.fleet:
            if args.nodes != 1 or args.database != "sqlite" or args.balancer:
                p.error("--fleet takes its configurations from --configs, not --database/--nodes")
            args.config_list = [Config.parse(c) for c in args.configs.split(",") if c.strip()]
            if not args.config_list:
                p.error("no configurations")
        else:
            config = Config(args.database, args.nodes, args.balancer or args.nodes > 1)
            config.check()
            args.config_list = [config]
    except ValueError as exc:
        p.error(str(exc))
    if args.duration <= 0 or args.warmup < 0 or args.max_requests < 1:
        p.error("--duration must be > 0, --warmup >= 0, --max-requests >= 1")
    if (
        args.workers < 1
        or not 1 <= args.keys <= 256
        or not 1 <= args.repeat <= 10
        or min(args.xcashu_tokens, args.mint_swaps) < 0
    ):
        p.error(
            "--workers >= 1, 1 <= --keys <= 256, 1 <= --repeat <= 10, --xcashu-tokens and "
            "--mint-swaps >= 0"
        )
    try:
        args.scenario_list = [Scenario.parse(s) for s in args.scenarios.split(",") if s.strip()]
    except ValueError as exc:
        p.error(str(exc))
    if not args.scenario_list:
        p.error("no scenarios")
    args.baseline_commit = None
    if args.baseline is not None:
        # One node per side, each on its own SQLite file: the two commits' schemas may differ.
        if args.fleet or args.nodes != 1 or args.balancer or args.database != "sqlite":
            p.error("--baseline runs one SQLite node per side (no --fleet/--nodes/--database)")
        if _wants_failover(args):
            p.error("--baseline does not take failover scenarios (they need a third node)")
        try:
            args.baseline_commit = resolve(args.baseline)
        except ValueError as exc:
            p.error(str(exc))
    return args


async def _fund_key(session: aiohttp.ClientSession, stack: Stack, wallet: TestWallet) -> str:
    (token,) = await wallet.mint_tokens(FUND_SAT)
    async with session.post(
        f"{stack.node_url}/v1/wallet/create", json={"cashu_token": token}
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/v1/wallet/create: {resp.status} {await resp.text()}")
        key = (await resp.json()).get("api_key")
    if not isinstance(key, str) or not key.startswith("sk-"):
        raise RuntimeError("/v1/wallet/create returned no sk- key")
    return key


def _wants_failover(args: argparse.Namespace) -> bool:
    return any(s.kind == "failover" for s in args.scenario_list)


async def _price(session: aiohttp.ClientSession, stack: Stack, key: str) -> int:
    """One paid request: what every benchmark chat request costs (same body, same usage)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = f"{stack.node_url}/v1/chat/completions"
    async with session.post(url, data=request_body(False), headers=headers) as resp:
        await resp.read()
        cost = resp.headers.get("X-Routstr-Cost-Msats", "")
    if resp.status != 200 or not cost.isdigit():
        raise RuntimeError(f"probe request: {resp.status}, cost header {cost!r}")
    return int(cost)


async def _settled(ctx: Context) -> dict[str, Any]:
    """The key's balance once no reservation is open (wrk may leave requests in flight)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    while True:
        info = await balance(ctx)
        if int(info["reserved"]) == 0 or loop.time() > deadline:
            return info
        await asyncio.sleep(0.05)


def _tokens_for(scenario: Scenario, args: argparse.Namespace) -> int:
    if not scenario.x_cashu:
        return 0
    return XSTREAM_MAX_REQUESTS if scenario.kind == "xstream" else int(args.xcashu_tokens)


def _tokens_needed(args: argparse.Namespace) -> int:
    sides = 2 if args.baseline_commit else 1
    return sum(_tokens_for(s, args) for s in args.scenario_list) * int(args.repeat) * sides


def _swaps_needed(args: argparse.Namespace) -> int:
    runs = sum(1 for s in args.scenario_list if s.kind == "xcashu") * int(args.repeat)
    return runs * int(args.mint_swaps)


async def _failover_context(ctx: Context, wallet: TestWallet, stack: Stack) -> Context:
    """The failover node's own funded key and price, the rest as the main context."""
    key = await _fund_key(ctx.session, stack, wallet)
    price = await _price(ctx.session, stack, key)
    print(f"failover node {stack.node_url}: one request costs {price} msat", flush=True)
    return dataclasses.replace(
        ctx, stack=stack, key=key, keys=[key], price_msat=price, pids=[stack.node_pid]
    )


async def _baseline_context(ctx: Context, wallet: TestWallet, stack: Stack) -> Context:
    """The baseline node's own funded key and price, the rest as the main context."""
    key = await _fund_key(ctx.session, stack, wallet)
    price = await _price(ctx.session, stack, key)
    print(f"baseline node {stack.node_url}: one request costs {price} msat", flush=True)
    return dataclasses.replace(
        ctx,
        stack=stack,
        key=key,
        keys=[key],
        price_msat=price,
        pids=[stack.node_pid],
        tokens=collections.deque(),
    )


async def _bench(
    stack: Stack,
    args: argparse.Namespace,
    workdir: Path,
    failover: Stack | None = None,
    metrics_token: str = "",
    baseline: Stack | None = None,
) -> list[list[Row]]:
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=3.0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        wallet = await TestWallet.create(stack.mint_url, workdir / "wallet")
        keys = [await _fund_key(session, stack, wallet) for _ in range(args.keys)]
        key = keys[0]
        pool = []
        swap_pool = []
        if (needed := _tokens_needed(args)) > 0:
            sats = await x_cashu_sats(session, stack.node_url)
            print(f"minting {needed} X-Cashu tokens of >= {sats} sat…", flush=True)
            pool = await mint_token_pool(wallet, sats, needed)
            if (swaps := _swaps_needed(args)) > 0:
                print(f"minting {swaps} proofs for the mint-direct swap baseline…", flush=True)
                swap_pool = await mint_swap_pool(wallet, sats, swaps)
        ctx = Context(
            session=session,
            stack=stack,
            key=key,
            keys=keys,
            price_msat=await _price(session, stack, key),
            warmup_s=args.warmup,
            duration_s=args.duration,
            max_requests=args.max_requests,
        )
        funded = f"{key[:7]}…" if len(keys) == 1 else f"{len(keys)} keys"
        print(f"funded {funded}; one request costs {ctx.price_msat} msat", flush=True)
        if failover is not None:
            ctx.failover = await _failover_context(ctx, wallet, failover)
        if baseline is not None:
            ctx.baseline = await _baseline_context(ctx, wallet, baseline)
        print(flush=True)
        reps: list[list[Row]] = []
        for rep in range(args.repeat):
            rows: list[Row] = []
            speed = python_speed()
            print(f"  #{rep + 1} machine: {speed} M Python loop steps/s", flush=True)
            for scenario in args.scenario_list:
                if scenario.x_cashu:
                    take = (
                        XSTREAM_MAX_REQUESTS if scenario.kind == "xstream" else args.xcashu_tokens
                    )
                    ctx.tokens = collections.deque(pool[:take])
                    del pool[:take]
                    if ctx.baseline is not None:
                        ctx.baseline.tokens = collections.deque(pool[:take])
                        del pool[:take]
                runs: dict[str, RunResult] = {}
                balances: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
                mint_log = stack.mint_log or workdir / "mint" / "mint.log"
                node_data = workdir / "node"
                outputs_before = 0
                served_before: list[int] = []
                served_after: list[int] = []
                calls_before = access_counts(mint_log)
                openings_before = circuit_openings(failover.node_log) if failover else 0
                base, main = scenario.targets
                calls_after = calls_before
                for target in _order(scenario, rep, ctx.baseline is not None):
                    print(f"  #{rep + 1} {scenario.label:<12} {target:<9}", end=" ", flush=True)
                    node_ctx = ctx.baseline if target == "baseline" else node_context(ctx, target)
                    before = await _settled(node_ctx) if node_ctx else {}
                    if target == "node":
                        calls_before = access_counts(mint_log)
                        outputs_before = await wallet_outputs(node_data, stack.database_url)
                        served_before = await served(session, stack, metrics_token)
                    if target == "baseline":
                        assert node_ctx is not None
                        run = await run_target(node_ctx, scenario, "node")
                        run.target = "baseline"
                    else:
                        run = await run_target(ctx, scenario, target)
                    if node_ctx:
                        balances[target] = (before, await _settled(node_ctx))
                    if target == "node":
                        served_after = await served(session, stack, metrics_token)
                        calls_after = access_counts(mint_log)
                    cpu = run.cpu_us_per_request()
                    more = f"  {cpu:.0f} us CPU/request" if cpu is not None else ""
                    print(f"{run.rps:>9.1f} req/s  {run.errors} errors{more}", flush=True)
                    runs[target] = run
                main_ctx = node_context(ctx, main)
                assert main_ctx is not None
                check = scenario_check(main_ctx, scenario, runs[base], runs[main], *balances[main])
                if base in balances:
                    # failover: the baseline node's run is paid too, and checked the same way
                    plain = scenario_check(ctx, scenario, runs[base], runs[base], *balances[base])
                    check["baseline"] = plain
                    check["ok"] = check["ok"] and plain["ok"]
                if failover is not None and scenario.kind == "failover":
                    check["circuit_openings"] = (
                        circuit_openings(failover.node_log) - openings_before
                    )
                row = Row(scenario, runs[base], runs[main], check, python_mops=speed)
                if ctx.baseline is not None:
                    row.baseline = runs["baseline"]
                    row.baseline_check = scenario_check(
                        ctx.baseline, scenario, runs[base], runs["baseline"], *balances["baseline"]
                    )
                if served_after:
                    row.served_by_node = [
                        a - b for a, b in zip(served_after, served_before, strict=True)
                    ]
                if scenario.kind == "xcashu":
                    # the mint's requests caused by the node run (settled: none in flight)
                    calls = calls_after - calls_before
                    grown = await wallet_outputs(node_data, stack.database_url) - outputs_before
                    shape = swap_shape(runs["node"].requests, grown, calls)
                    ctx.swap_inputs = swap_pool[: args.mint_swaps]
                    del swap_pool[: args.mint_swaps]
                    print(f"  #{rep + 1} {scenario.label:<12} {'mint':<9}", end=" ", flush=True)
                    direct = await mint_baseline(ctx, shape)
                    print(f"{direct.rps:>9.1f} swaps/s  {direct.errors} errors", flush=True)
                    row.mint = mint_share(runs["node"], direct, dict(calls))
                rows.append(row)
            per_node = [rss_mb(n.pid) for n in stack.nodes] or [rss_mb(stack.node_pid)]
            rss = {pid: mb for tree in per_node for pid, mb in tree.items()}
            each = " + ".join(f"{sum(t.values()):.1f}" for t in per_node)
            more = f" ({each})" if len(per_node) > 1 else ""
            print(f"  node RSS after repetition {rep + 1}: {sum(rss.values()):.1f} MB{more}\n")
            for row in rows:
                row.rss_mb = rss
            reps.append(rows)
    return reps


def _order(scenario: Scenario, rep: int, ab: bool) -> list[str]:
    """The runs of one scenario: the upstream first, then the node; with a baseline both
    nodes, baseline first in odd repetitions and second in even ones (so neither always
    runs right after the upstream)."""
    base, main = scenario.targets
    if not ab:
        return [base, main]
    return [base, "baseline", main] if rep % 2 == 0 else [base, main, "baseline"]


def _node_log_findings(log: Path, which: str = "the node") -> str | None:
    text = log_tail(log, chars=1_000_000)
    bad = [
        line
        for line in text.splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
    ]
    if not bad:
        return None
    return f"{len(bad)} warning/error lines in {which}'s log; last ones:\n" + "\n".join(bad[-10:])


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop measuring, stop every process, exit 130."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


async def _bench_until_signal(
    stack: Stack,
    args: argparse.Namespace,
    workdir: Path,
    failover: Stack | None,
    metrics_token: str,
    baseline: Stack | None = None,
) -> list[list[Row]]:
    """_bench, cancelled by SIGINT/SIGTERM.

    The children share our terminal, so Ctrl-C may stop them before our task is cancelled;
    the errors that causes must read as an interruption, not as a failure.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        signalled = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await _bench(stack, args, workdir, failover, metrics_token, baseline)
    except BaseException as exc:
        if signalled:
            raise Interrupted from exc
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def _baseline_node(
    workdir: Path, stack: Stack, args: argparse.Namespace, settings: dict[str, str]
) -> Iterator[Stack]:
    """The baseline commit checked out under `workdir` and its node running (same mint,
    upstream, settings and interpreter); both removed when the block ends."""
    home = workdir / "baseline"
    home.mkdir(parents=True, exist_ok=True)
    with baseline_tree(args.baseline_commit, workdir) as tree:
        where = imported_from(tree)
        print(f"baseline {args.baseline_commit[:9]}: satsrouter from {where.parent}")
        with node_process(
            home, stack.mint_url, stack.upstream_url, args.workers, settings, source=tree
        ) as node:
            print(f"baseline node {node.url}")
            yield dataclasses.replace(
                stack, node_url=node.url, node_log=node.log, node_pid=node.pid, nodes=(node,)
            )


def _front(fake_url: str) -> contextlib.AbstractContextManager[str]:
    """nginx in front of the Python fake upstream, serving replies captured from it."""
    body = orjson.loads(request_body(False))
    return nginx_upstream(fake_url, capture_replies(fake_url, body))


@dataclasses.dataclass
class Outcome:
    """One configuration's repetitions and what its nodes' logs say."""

    reps: list[list[Row]]
    findings: list[str | None]


def _describe(args: argparse.Namespace, config: Config) -> str:
    nodes = f"{config.nodes} node(s) x {args.workers} worker(s) on {config.database}"
    nodes += f", {args.keys} keys" if args.keys > 1 else ""
    return nodes + (" behind nginx" if config.balancer else "")


def _run_config(args: argparse.Namespace, config: Config) -> Outcome:
    """Start everything for `config`, run every scenario, stop everything (also on errors)."""
    token = secrets.token_hex(16)
    # nginx sends FORWARD_HEADERS' requests to the slow Python fake (xstream); the bench
    # reads each node's /metrics with its token (who served what).
    settings = {"FORWARD_HEADERS": SLOW_HEADER, "METRICS_TOKEN": token}
    with (
        tempfile.TemporaryDirectory(prefix="satsrouter-bench-") as tmp,
        bench_database(config.database) as database_url,
    ):
        workdir = Path(tmp)
        if database_url:
            settings["DATABASE_URL"] = database_url
        with (
            running_stack(
                workdir,
                SLOW_UPSTREAM,
                workers=args.workers,
                front=_front,
                settings=settings,
                nodes=config.nodes,
                balancer=nginx_balancer if config.balancer else None,
            ) as stack,
            contextlib.ExitStack() as extra,
        ):
            urls = ", ".join(n.url for n in stack.nodes)
            print(
                f"mint {stack.mint_url}, nginx {stack.upstream_url}, "
                f"slow fake {stack.fake_url}, node{'s' if len(stack.nodes) > 1 else ''} {urls}"
                + (f" behind nginx {stack.node_url}" if config.balancer else "")
                + (" on Postgres" if database_url else "")
            )
            failover = None
            if _wants_failover(args):
                # canned replies carry SLOW_UPSTREAM's completion tokens: flaky matches
                tokens = int(SLOW_UPSTREAM["completion_tokens"])
                failover = extra.enter_context(
                    failover_node(workdir, stack, tokens, workers=args.workers)
                )
                print(f"failover node {failover.node_url} (flaky fake + nginx)")
            base_stack = None
            if args.baseline_commit:
                base_stack = extra.enter_context(_baseline_node(workdir, stack, args, settings))
            try:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    reps = runner.run(
                        _bench_until_signal(stack, args, workdir, failover, token, base_stack)
                    )
            except Exception as exc:
                if not isinstance(exc, Interrupted):
                    for i, node in enumerate(stack.nodes, 1):
                        print(f"node {i} log (tail):\n" + log_tail(node.log), file=sys.stderr)
                raise
            findings = [
                _node_log_findings(n.log, f"node {i}" if len(stack.nodes) > 1 else "the node")
                for i, n in enumerate(stack.nodes, 1)
            ]
            if failover is not None:
                findings.append(_node_log_findings(failover.node_log, "the failover node"))
            if base_stack is not None:
                findings.append(_node_log_findings(base_stack.node_log, "the baseline node"))
    return Outcome(reps, findings)


def _report(args: argparse.Namespace, info: dict[str, Any], outcome: Outcome) -> bool:
    """Print one configuration's tables, targets and log findings; save its records."""
    reps = outcome.reps
    for rep, rows in enumerate(reps, 1):
        print(f"repetition {rep}/{len(reps)}")
        print(table(rows))
        print()
    verdicts = targets(reps)
    print("\n".join(verdicts.lines))
    for finding in outcome.findings:
        if finding:
            print("\n" + finding)
    if not args.no_save:
        lines = [r for rep, rows in enumerate(reps, 1) for r in records(info, rows, rep)]
        append_jsonl(args.results, lines)
        print(f"\nappended {len(lines)} lines to {args.results}")
    if args.baseline_commit and reps:
        ids = [sc.id for sc in args.scenario_list]
        summaries = {
            sid: summary(
                [
                    (r.baseline, r.node)
                    for rows in reps
                    for r in rows
                    if r.scenario.id == sid and r.baseline is not None
                ]
            )
            for sid in ids
        }
        print("\n" + ab_table(ids, summaries, args.baseline_commit[:9], str(info["commit"])))
    errors = sum(r.upstream.errors + r.node.errors for rows in reps for r in rows)
    errors += sum(r.baseline.errors for rows in reps for r in rows if r.baseline is not None)
    checks_ok = all(r.check["ok"] for rows in reps for r in rows) and all(
        r.baseline_check["ok"] for rows in reps for r in rows if r.baseline_check is not None
    )
    return checks_ok and errors == 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Outside the event loop: Ctrl-C raises KeyboardInterrupt, SIGTERM raises Interrupted.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    configs: list[Config] = args.config_list
    fleet_started = run_info(args.duration, args.warmup)["date"]
    results: list[FleetResult] = []
    all_ok = True
    for n, config in enumerate(configs, 1):
        info = run_info(args.duration, args.warmup)
        info.update(workers=args.workers, database=config.database, nodes=config.nodes)
        info["keys"] = args.keys
        info["balancer"] = config.balancer
        if args.baseline_commit:
            info["baseline_commit"] = args.baseline_commit[:12]
        if args.fleet:
            info["fleet"] = fleet_started  # the records of one comparison share it
        step = f" [{n}/{len(configs)}: {config.label}]" if args.fleet else ""
        print(
            f"satsrouter bench{step} @ {info['commit']}{' (dirty)' if info['dirty'] else ''}, "
            f"{info['machine']['cpus']} CPUs, Python {info['machine']['python']}, "
            f"{_describe(args, config)}; {args.warmup:g} s warm-up + {args.duration:g} s "
            f"per scenario and target, {args.repeat} repetition(s)"
        )
        # The machine may be shared: what else ran is part of the figures.
        load_before = os.getloadavg()[0]
        try:
            outcome = _run_config(args, config)
        except (KeyboardInterrupt, Interrupted):
            print(
                "\ninterrupted; the nodes, nginx, the fake upstreams, the mint (and Postgres) "
                "were stopped"
            )
            return 130
        except Exception as exc:
            if not args.fleet:
                raise
            # One broken configuration should not cost the others' figures.
            print(f"\n{config.label} failed: {type(exc).__name__}: {exc}\n", file=sys.stderr)
            results.append(FleetResult(config, [], f"{type(exc).__name__}: {exc}"[:200]))
            all_ok = False
            continue
        print("stopped the nodes, nginx, the fake upstreams and the mint\n")
        info["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        all_ok = _report(args, info, outcome) and all_ok
        results.append(FleetResult(config, outcome.reps, loadavg=info["loadavg_1min"]))
        print()
    if args.fleet:
        print(
            f"fleet comparison @ {fleet_started}: {args.workers} worker(s) per node, "
            f"{args.warmup:g} s warm-up + {args.duration:g} s per run\n"
        )
        ids = [s.id for s in args.scenario_list]
        print(fleet_table(results, ids))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
