"""`python -m bench`: the node against its fake upstream, scenario by scenario.

Starts a local mint, the fake upstream and the node; funds one `sk-` key; runs each
scenario first against the upstream directly, then through the node; prints a table;
checks that the key was charged exactly what the responses reported; appends one
JSON line per scenario to bench/results.jsonl. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import uvloop

from bench.load import RunResult, Scenario, run_scenario
from bench.report import append_jsonl, records, run_info, table
from satsrouter.testing.fake_upstream import Behaviour
from satsrouter.testing.mint import TestWallet
from satsrouter.testing.stack import Stack, log_tail, running_stack

DEFAULT_SCENARIOS = "chat-c1,chat-c32,stream-c1,stream-c16"
RESULTS = Path(__file__).resolve().parent / "results.jsonl"
FUND_SAT = 200_000
UPSTREAM_DEFAULTS: Behaviour = {"completion_tokens": 20, "chunk_delay_ms": 0, "latency_ms": 0}

Pairs = list[tuple[Scenario, RunResult, RunResult]]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration", type=float, default=None, help="seconds measured per scenario (default 5)"
    )
    p.add_argument("--warmup", type=float, default=None, help="seconds discarded (default 1)")
    p.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma list of kind-cN, kind chat|stream (default {DEFAULT_SCENARIOS})",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=200_000,
        help="cap on requests per scenario and target, warm-up included (default 200000)",
    )
    p.add_argument("--quick", action="store_true", help="1 s per scenario, 0.2 s warm-up")
    p.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS.name}")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSONL file to append to")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 1.0
    if args.duration <= 0 or args.warmup < 0 or args.max_requests < 1:
        p.error("--duration must be > 0, --warmup >= 0, --max-requests >= 1")
    try:
        args.scenario_list = [Scenario.parse(s) for s in args.scenarios.split(",") if s.strip()]
    except ValueError as exc:
        p.error(str(exc))
    if not args.scenario_list:
        p.error("no scenarios")
    return args


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    if resp.status != 200:
        raise RuntimeError(f"{resp.method} {resp.url.path}: {resp.status} {await resp.text()}")
    data = await resp.json()
    if not isinstance(data, dict):
        raise RuntimeError(f"{resp.method} {resp.url.path}: not a JSON object")
    return data


async def _balance(session: aiohttp.ClientSession, node_url: str, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.get(f"{node_url}/v1/balance/info", headers=headers) as resp:
        return await _json(resp)


async def _fund_key(session: aiohttp.ClientSession, stack: Stack, workdir: Path) -> str:
    wallet = await TestWallet.create(stack.mint_url, workdir / "wallet")
    (token,) = await wallet.mint_tokens(FUND_SAT)
    async with session.post(
        f"{stack.node_url}/v1/wallet/create", json={"cashu_token": token}
    ) as resp:
        key = (await _json(resp)).get("api_key")
    if not isinstance(key, str) or not key.startswith("sk-"):
        raise RuntimeError(f"/v1/wallet/create returned no sk- key: {key!r}")
    return key


def _charge_check(
    before: dict[str, Any], after: dict[str, Any], node_runs: list[RunResult]
) -> dict[str, Any]:
    spent = int(before["balance"]) - int(after["balance"])
    reported = sum(r.reported_cost_msat for r in node_runs)
    reserved = int(after["reserved"])
    check: dict[str, Any] = {
        "balance_before_msat": int(before["balance"]),
        "balance_after_msat": int(after["balance"]),
        "spent_msat": spent,
        "reported_msat": reported,
        "reserved_after_msat": reserved,
        "node_requests": sum(r.requests for r in node_runs),
        "costed_requests": sum(r.costed_requests for r in node_runs),
        "ok": spent == reported and reserved == 0,
    }
    if "total_requests" in before and "total_requests" in after:
        check["total_requests_delta"] = int(after["total_requests"]) - int(before["total_requests"])
    return check


async def _bench(
    stack: Stack, args: argparse.Namespace, workdir: Path
) -> tuple[Pairs, dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=3.0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        key = await _fund_key(session, stack, workdir)
        before = await _balance(session, stack.node_url, key)
        print(f"funded {key[:7]}… with {before['balance']} msat\n", flush=True)
        pairs: Pairs = []
        for scenario in args.scenario_list:
            runs: list[RunResult] = []
            for target, base_url, api_key in (
                ("upstream", stack.upstream_url, None),
                ("node", f"{stack.node_url}/v1", key),
            ):
                print(f"  {scenario.label:<12} {target:<9}", end=" ", flush=True)
                run = await run_scenario(
                    session,
                    target=target,
                    base_url=base_url,
                    api_key=api_key,
                    scenario=scenario,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                    max_requests=args.max_requests,
                )
                print(f"{run.rps:>9.1f} req/s  {run.errors} errors", flush=True)
                runs.append(run)
            pairs.append((scenario, runs[0], runs[1]))
        after = await _balance(session, stack.node_url, key)
    return pairs, _charge_check(before, after, [node for _, _, node in pairs])


def _print_charge(check: dict[str, Any]) -> None:
    verdict = "OK" if check["ok"] else "MISMATCH"
    print(
        f"charge check: {verdict}: balance {check['balance_before_msat']} -> "
        f"{check['balance_after_msat']} msat, spent {check['spent_msat']} msat, "
        f"responses reported {check['reported_msat']} msat over "
        f"{check['costed_requests']}/{check['node_requests']} paid requests, "
        f"reserved at the end {check['reserved_after_msat']} msat"
    )
    if "total_requests_delta" in check:
        print(f"              the key's total_requests grew by {check['total_requests_delta']}")


def _node_log_findings(log: Path) -> str | None:
    text = log_tail(log, chars=1_000_000)
    bad = [
        line
        for line in text.splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
    ]
    if not bad:
        return None
    return f"{len(bad)} warning/error lines in the node log; last ones:\n" + "\n".join(bad[-10:])


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop measuring, stop every process, exit 130."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


async def _bench_until_signal(
    stack: Stack, args: argparse.Namespace, workdir: Path
) -> tuple[Pairs, dict[str, Any]]:
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
        return await _bench(stack, args, workdir)
    except BaseException as exc:
        if signalled:
            raise Interrupted from exc
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Outside the event loop: Ctrl-C raises KeyboardInterrupt, SIGTERM raises Interrupted.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    info = run_info(args.duration, args.warmup)
    print(
        f"satsrouter bench @ {info['commit']}{' (dirty)' if info['dirty'] else ''}, "
        f"{info['machine']['cpus']} CPUs, Python {info['machine']['python']}; "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per scenario and target"
    )
    with tempfile.TemporaryDirectory(prefix="satsrouter-bench-") as tmp:
        workdir = Path(tmp)
        try:
            with running_stack(workdir, UPSTREAM_DEFAULTS) as stack:
                print(
                    f"mint {stack.mint_url}, upstream {stack.upstream_url}, node {stack.node_url}"
                )
                try:
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        pairs, check = runner.run(_bench_until_signal(stack, args, workdir))
                except Exception as exc:
                    if not isinstance(exc, Interrupted):
                        print("node log (tail):\n" + log_tail(stack.node_log), file=sys.stderr)
                    raise
                findings = _node_log_findings(stack.node_log)
        except (KeyboardInterrupt, Interrupted):
            print("\ninterrupted; the node, the fake upstream and the mint were stopped")
            return 130
    print("stopped the node, the fake upstream and the mint\n")
    print(table(pairs))
    print()
    _print_charge(check)
    if findings:
        print("\n" + findings)
    if not args.no_save:
        append_jsonl(args.results, records(info, pairs, check))
        print(f"\nappended {len(pairs)} lines to {args.results}")
    errors = sum(up.errors + node.errors for _, up, node in pairs)
    return 0 if check["ok"] and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
