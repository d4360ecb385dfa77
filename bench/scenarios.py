"""One scenario against the upstream directly and through the node, with its money checks."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
from typing import Any

import aiohttp
from satsrouter_dev.mint import TestWallet
from satsrouter_dev.stack import Stack

from bench.cpu import cpu_seconds, runqueue_wait_seconds
from bench.load import RunResult, Scenario, request_body, run_scenario, token_msat
from bench.mintload import SwapRun, run_swaps, swap_inputs
from bench.nginx import SLOW_HEADER, SLOW_VALUE
from bench.wrk import WrkRun, run_wrk

XSTREAM_MAX_REQUESTS = 5  # each takes the slow upstream's ~1 s
_NEEDS_SATS = re.compile(r"worth at least (\d+) sat")


@dataclasses.dataclass
class Context:
    """What every scenario needs: the running stack, the funded key, the token pool."""

    session: aiohttp.ClientSession
    stack: Stack
    key: str
    price_msat: int  # what one benchmark chat request costs
    warmup_s: float
    duration_s: float
    max_requests: int
    # every funded key (`--keys`), `key` first; requests take them in turn, checks sum them
    keys: list[str] = dataclasses.field(default_factory=list)
    tokens: collections.deque[tuple[str, int]] = dataclasses.field(
        default_factory=collections.deque
    )
    # one fresh proof per entry, for the mint-direct swap baseline of xcashu scenarios
    swap_inputs: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)
    # the failover node (two providers, the first flaky) with its own funded key
    failover: Context | None = None
    # `--baseline`: the baseline commit's node, its own funded key and token pool
    baseline: Context | None = None
    # the processes whose CPU a node run is charged (every node's supervisor; workers are
    # found as their children); empty: the stack's nodes
    pids: list[int] = dataclasses.field(default_factory=list)

    def all_keys(self) -> list[str]:
        return self.keys or [self.key]

    def next_token(self) -> tuple[str, int] | None:
        return self.tokens.popleft() if self.tokens else None

    def node_pids(self) -> list[int]:
        return self.pids or [n.pid for n in self.stack.nodes] or [self.stack.node_pid]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of this context's node processes, and their run-queue wait."""
        pids = self.node_pids()
        return cpu_seconds(pids), runqueue_wait_seconds(pids)


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async with session.get(url, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {await resp.text()}")
        data = await resp.json()
    if not isinstance(data, dict):
        raise RuntimeError(f"GET {url}: not a JSON object")
    return data


async def balance(ctx: Context) -> dict[str, Any]:
    """The key's `balance/info`; with several keys their balance, reserved and
    total_requests summed (each key's own figures under `keys`)."""
    url = f"{ctx.stack.node_url}/v1/balance/info"
    infos = [
        await get_json(ctx.session, url, {"Authorization": f"Bearer {key}"})
        for key in ctx.all_keys()
    ]
    if len(infos) == 1:
        return infos[0]
    fields = ("balance", "reserved", "total_requests")
    return {f: sum(int(i.get(f, 0)) for i in infos) for f in fields} | {"keys": infos}


async def x_cashu_sats(session: aiohttp.ClientSession, node_url: str) -> int:
    """What an X-Cashu token must be worth for the benchmark request (from the 402)."""
    body = request_body(False)
    async with session.post(f"{node_url}/v1/chat/completions", data=body) as resp:
        text = await resp.text()
    found = _NEEDS_SATS.search(text)
    if resp.status != 402 or found is None:
        raise RuntimeError(f"expected a 402 naming the X-Cashu amount, got {resp.status}: {text}")
    return int(found.group(1))


async def mint_token_pool(wallet: TestWallet, sats: int, count: int) -> list[tuple[str, int]]:
    """`count` fresh tokens of at least `sats` each: one proof each (a power of two)."""
    amount = 1 << max(0, (sats - 1).bit_length())
    tokens = await wallet.mint_tokens(amount, count) if count else []
    return [(t, token_msat(t)) for t in tokens]


async def mint_swap_pool(wallet: TestWallet, sats: int, count: int) -> list[list[dict[str, Any]]]:
    """`count` one-proof swap inputs of the X-Cashu tokens' size, for the mint baseline."""
    amount = 1 << max(0, (sats - 1).bit_length())
    tokens = await wallet.mint_tokens(amount, count, legacy=True) if count else []
    return swap_inputs(tokens)


async def mint_baseline(ctx: Context, shape: tuple[int, int]) -> SwapRun:
    """The mint alone: swaps/s straight from a client, shaped (inputs, outputs) as the node's.

    One at a time, as the node sends them: concurrent swaps only collide in nutshell's
    database (it retries after 100 ms and more) and make it slower.
    """
    inputs, outputs = shape
    return await run_swaps(
        ctx.session,
        ctx.stack.mint_url,
        ctx.swap_inputs,
        concurrency=1,
        warmup_s=ctx.warmup_s,
        duration_s=ctx.duration_s,
        inputs_per_swap=inputs,
        outputs_per_swap=outputs,
    )


def swap_shape(requests: int, outputs: int, calls: dict[str, int]) -> tuple[int, int]:
    """The node's mean inputs and outputs per swap in a run (at least 1 each).

    Each X-Cashu request brings one proof, so inputs per swap are requests per swap; the
    outputs come from the node wallet's counters' growth.
    """
    swaps = calls.get("POST /v1/swap 200", 0)
    if not swaps:
        return 1, 1
    return max(1, round(requests / swaps)), max(1, round(outputs / swaps))


def mint_share(node: RunResult, direct: SwapRun, calls: dict[str, int]) -> dict[str, Any]:
    """How much of the mint's capacity the node's X-Cashu run used.

    `calls` are the mint requests the node run caused (by `METHOD /path status`). The mint
    bound is what the node could reach if the mint's swaps were the only cost.
    """
    swaps = calls.get("POST /v1/swap 200", 0)
    per_request = swaps / node.requests if node.requests else None
    bound = direct.rps / per_request if per_request else None
    return {
        "direct": direct.summary(),
        "node_mint_calls": calls,
        "node_swaps": swaps,
        "node_requests": node.requests,
        "swaps_per_request": None if per_request is None else round(per_request, 3),
        "mint_bound_rps": None if bound is None else round(bound, 1),
        "node_vs_mint_bound": None if not bound else round(node.rps / bound, 3),
    }


def _wrk_result(target: str, scenario: Scenario, warm: WrkRun | None, run: WrkRun) -> RunResult:
    result = RunResult(target, scenario)
    for part in (warm, run):
        if part is None:
            continue
        result.requests += part.requests
        result.errors += part.non200 + part.transport_errors
        if part.non200:
            # by status where wrk kept it (the first 20 per run), the rest as plain non-200
            for code in part.non200_codes:
                result.error_kinds[f"http {code}"] += 1
            if rest := part.non200 - len(part.non200_codes):
                result.error_kinds["non-200"] += rest
        if part.transport_errors:
            result.error_kinds["transport"] += part.transport_errors
        result.reported_cost_msat += part.cost_msat
        result.costed_requests += part.costed
    result.warmup_requests = warm.requests if warm else 0
    result.elapsed_s = run.duration_s
    result.wrk_ok = run.requests - run.non200
    quantiles = {0.5: run.p50_ms, 0.9: run.p90_ms, 0.99: run.p99_ms, 0.999: run.p999_ms}
    quantiles[1.0] = run.max_ms
    result.wrk_quantiles_ms = {q: v for q, v in quantiles.items() if v is not None}
    return result


def _wrk(ctx: Context, scenario: Scenario, target: str, base_url: str, paid: bool) -> RunResult:
    if scenario.kind == "models":
        url, method, body = f"{base_url}/models", "GET", None
        headers: dict[str, str] = {}
    else:
        url, method, body = f"{base_url}/chat/completions", "POST", request_body(False)
        headers = {"Content-Type": "application/json"}
        if paid:
            headers["Authorization"] = f"Bearer {ctx.key}"
    rotate = [f"Bearer {key}" for key in ctx.all_keys()] if paid else None

    def run(seconds: float) -> WrkRun:
        return run_wrk(
            url,
            method=method,
            body=body,
            headers=headers,
            concurrency=scenario.concurrency,
            duration_s=seconds,
            rotate_auth=rotate,
        )

    warm = run(ctx.warmup_s) if ctx.warmup_s > 0 else None
    cpu_from = ctx.cpu() if target != "upstream" else None
    measured = run(ctx.duration_s)
    result = _wrk_result(target, scenario, warm, measured)
    if cpu_from is not None:
        cpu_to = ctx.cpu()
        result.cpu_s = cpu_to[0] - cpu_from[0]
        result.wait_s = cpu_to[1] - cpu_from[1]
    missing = (result.requests - result.errors) - result.costed_requests
    if paid and missing > 0:
        result.errors += missing
        result.error_kinds["no cost header"] += missing
    return result


async def _python(ctx: Context, scenario: Scenario, target: str, base_url: str) -> RunResult:
    node = target == "node"
    extra = {SLOW_HEADER: SLOW_VALUE} if scenario.kind == "xstream" else None
    cap = XSTREAM_MAX_REQUESTS if scenario.kind == "xstream" else ctx.max_requests
    return await run_scenario(
        ctx.session,
        target=target,
        base_url=base_url,
        api_key=ctx.all_keys() if node and not scenario.x_cashu else None,
        scenario=scenario,
        warmup_s=0.0 if scenario.kind == "xstream" else ctx.warmup_s,
        duration_s=ctx.duration_s,
        max_requests=cap,
        extra_headers=extra,
        next_token=ctx.next_token if node and scenario.x_cashu else None,
        cpu=ctx.cpu if node else None,
    )


def node_context(ctx: Context, target: str) -> Context | None:
    """The node (and key) a target's requests go to; None for the upstream itself."""
    if target == "upstream":
        return None
    if target == "failover":
        if ctx.failover is None:
            raise RuntimeError("a failover scenario needs the failover node")
        return ctx.failover
    return ctx  # "node", and "plain": the one-provider node as the failover baseline


async def run_target(ctx: Context, scenario: Scenario, target: str) -> RunResult:
    if scenario.kind == "failover":
        # Both runs the same: paid chat with the Python client, which reads the provider.
        node = node_context(ctx, target)
        assert node is not None
        return await run_scenario(
            ctx.session,
            target=target,
            base_url=f"{node.stack.node_url}/v1",
            api_key=node.key,
            scenario=scenario,
            warmup_s=ctx.warmup_s,
            duration_s=ctx.duration_s,
            max_requests=ctx.max_requests,
            cpu=node.cpu,
        )
    base_url = ctx.stack.upstream_url if target == "upstream" else f"{ctx.stack.node_url}/v1"
    if scenario.uses_wrk:
        paid = target == "node" and scenario.kind == "chat"
        return await asyncio.to_thread(_wrk, ctx, scenario, target, base_url, paid)
    return await _python(ctx, scenario, target, base_url)


def scenario_check(
    ctx: Context,
    scenario: Scenario,
    upstream: RunResult,
    node: RunResult,
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    """The money check of one node run: what the key lost, what responses reported."""
    spent = int(before["balance"]) - int(after["balance"])
    handled = int(after.get("total_requests", 0)) - int(before.get("total_requests", 0))
    check: dict[str, Any] = {
        "spent_msat": spent,
        "reported_msat": node.reported_cost_msat,
        "costed_requests": node.costed_requests,
        "charged_requests": handled,
        "price_msat": ctx.price_msat,
        "reserved_after_msat": int(after["reserved"]),
    }
    if "keys" in after and "keys" in before:
        # several keys: how the requests spread over them (each key's own charge count)
        check["charged_per_key"] = [
            int(a.get("total_requests", 0)) - int(b.get("total_requests", 0))
            for b, a in zip(before["keys"], after["keys"], strict=True)
        ]
    ok = check["reserved_after_msat"] == 0
    if scenario.x_cashu:
        # The key pays nothing; every token's value minus its change is within a sat of
        # the cost (checked per request as an error kind), and summed here.
        check["x_cashu_kept_msat"] = node.kept_msat
        ok = ok and spent == 0 and node.reported_cost_msat == node.costed_requests * ctx.price_msat
    elif scenario.kind == "models":
        ok = ok and spent == 0
    else:
        # Every request the node handled cost exactly one price, and so did every response
        # the client saw. wrk drops requests still in flight when its time is up: the node
        # still charged those (the answer was delivered to a closed socket), so handled may
        # exceed costed by at most the concurrency per wrk run (warm-up and measured). The
        # Python client drains: equal there.
        abandoned = handled - node.costed_requests
        runs = 2 if ctx.warmup_s > 0 else 1
        limit = scenario.concurrency * runs if scenario.uses_wrk else 0
        check["abandoned_by_client"] = abandoned
        ok = (
            ok
            and spent == handled * ctx.price_msat
            and node.reported_cost_msat == node.costed_requests * ctx.price_msat
            and 0 <= abandoned <= limit
        )
    check["ok"] = ok
    return check
