"""A closed-loop async load generator: `concurrency` workers, each one request at a time.

Used for what wrk cannot do: streams (time to first byte, [DONE], the usage chunk) and
X-Cashu payments (a fresh token per request, the change checked against the cost).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

MODEL = "openai/gpt-4o-mini"
PROMPT = "Say hello to the benchmark."
COST_HEADER = "X-Routstr-Cost-Msats"
PROVIDER_HEADER = "X-Routstr-Provider"
KINDS = ("chat", "stream", "models", "xcashu", "xstream", "failover")


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """One workload: non-streaming or streaming chat at a fixed concurrency."""

    # one of KINDS; xcashu/xstream pay with X-Cashu, xstream via the slow upstream; failover
    # is chat through a second node whose first provider fails every other request
    kind: str
    concurrency: int
    rate: int = 0  # requests/s offered in total (Python client only); 0: closed loop, no pacing

    @property
    def id(self) -> str:
        return f"{self.kind}-c{self.concurrency}" + (f"-r{self.rate}" if self.rate else "")

    @property
    def label(self) -> str:
        return f"{self.kind} c={self.concurrency}" + (f" @{self.rate}/s" if self.rate else "")

    @property
    def stream(self) -> bool:
        return self.kind in ("stream", "xstream")

    @property
    def x_cashu(self) -> bool:
        return self.kind in ("xcashu", "xstream")

    @property
    def uses_wrk(self) -> bool:
        return self.kind in ("chat", "models")

    @property
    def targets(self) -> tuple[str, str]:
        """The two runs compared: the baseline first, then the run the row is about.

        failover compares the node with two providers (the first flaky) against the plain
        one-provider node, same client, same concurrency; the others compare the node
        against its upstream.
        """
        return ("plain", "failover") if self.kind == "failover" else ("upstream", "node")

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """`chat-c32`, `stream-c1`, `stream-c16-r400` (paced at 400/s), or `chat c=32`."""
        norm = text.strip().replace(" c=", "-c").replace(" @", "-r").removesuffix("/s")
        kind, sep, rest = norm.partition("-c")
        conc, rsep, rate = rest.partition("-r")
        ok = kind in KINDS and sep and conc.isdigit() and int(conc) >= 1
        ok = ok and (not rsep or (rate.isdigit() and int(rate) >= 1))
        if not ok:
            raise ValueError(
                f"unknown scenario {text!r} (expected kind-cN or kind-cN-rR, kind one of "
                f"{', '.join(KINDS)})"
            )
        scenario = cls(kind, int(conc), int(rate) if rsep else 0)
        if scenario.rate and scenario.uses_wrk:
            raise ValueError(f"{text!r}: -rR (pacing) needs a Python-driven kind, not {kind}")
        return scenario


def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one request came to: an error kind (None if fine) and the cost it reported."""

    error: str | None
    cost_msat: int | None = None
    ttfb_s: float | None = None
    kept_msat: int | None = None  # X-Cashu: token value - change
    provider: str | None = None  # X-Routstr-Provider of the reply, if any


@dataclasses.dataclass(slots=True)
class RunResult:
    """One scenario against one target; timings are for the measured window only."""

    target: str
    scenario: Scenario
    elapsed_s: float = 0.0
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    ttfbs_s: list[float] = dataclasses.field(default_factory=list)
    requests: int = 0  # all issued, warm-up included
    warmup_requests: int = 0
    errors: int = 0  # all, warm-up included
    error_kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    reported_cost_msat: int = 0  # sum over every request, warm-up included
    costed_requests: int = 0
    kept_msat: int = 0  # X-Cashu: sum of token value - change
    # wrk reports counts and percentiles, not samples:
    wrk_ok: int | None = None
    wrk_quantiles_ms: dict[float, float] = dataclasses.field(default_factory=dict)
    # measured successful requests by the provider that served them (X-Routstr-Provider)
    provider_latencies_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # the node's processes' user + system CPU seconds over the measured window (None: not
    # measured, e.g. the upstream itself)
    cpu_s: float | None = None
    wait_s: float | None = None  # their threads' time runnable but waiting for a CPU

    @property
    def ok(self) -> int:
        return self.wrk_ok if self.wrk_ok is not None else len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        if q in self.wrk_quantiles_ms:
            return self.wrk_quantiles_ms[q]
        return percentile_ms(self.latencies_s, q)

    def ttfb_ms(self, q: float) -> float | None:
        return percentile_ms(self.ttfbs_s, q)

    @property
    def measured_requests(self) -> int:
        """Requests issued in the measured window (any outcome)."""
        return self.requests - self.warmup_requests

    def cpu_us_per_request(self) -> float | None:
        """The node's CPU (user + system) per request of the measured window, in µs."""
        if self.cpu_s is None or self.measured_requests <= 0:
            return None
        return self.cpu_s * 1e6 / self.measured_requests

    def wait_us_per_request(self) -> float | None:
        """The node's threads' run-queue wait per measured request, in µs."""
        if self.wait_s is None or self.measured_requests <= 0:
            return None
        return self.wait_s * 1e6 / self.measured_requests

    def tail(self) -> dict[str, float | None]:
        """Latency distribution (ms): p50, p90, p99, p99.9, max."""
        return {name: _round(self.latency_ms(q)) for name, q in TAIL}

    def summary(self) -> dict[str, Any]:
        return {
            "requests_per_s": round(self.rps, 1),
            "p50_ms": _round(self.latency_ms(0.50)),
            "p99_ms": _round(self.latency_ms(0.99)),
            "ttfb_p50_ms": _round(self.ttfb_ms(0.50)),
            "ttfb_p99_ms": _round(self.ttfb_ms(0.99)),
            "tail_ms": self.tail(),
            "cpu_s": _round(self.cpu_s),
            "cpu_us_per_request": _round(self.cpu_us_per_request()),
            "runqueue_wait_us_per_request": _round(self.wait_us_per_request()),
            "measured_ok": self.ok,
            "measured_s": round(self.elapsed_s, 3),
            "requests": self.requests,
            "warmup_requests": self.warmup_requests,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "reported_cost_msat": self.reported_cost_msat,
            "costed_requests": self.costed_requests,
            "load": "wrk" if self.wrk_ok is not None else "python",
            **({"providers": self.providers()} if self.provider_latencies_s else {}),
        }

    def providers(self) -> dict[str, dict[str, Any]]:
        """Per provider that served measured requests: count, share, p50/p99 (ms)."""
        total = sum(len(v) for v in self.provider_latencies_s.values())
        return {
            name: {
                "requests": len(samples),
                "share": round(len(samples) / total, 4) if total else None,
                "p50_ms": _round(percentile_ms(samples, 0.5)),
                "p99_ms": _round(percentile_ms(samples, 0.99)),
            }
            for name, samples in sorted(self.provider_latencies_s.items())
        }


# the quantiles a tail is read at (1.0: the slowest request)
TAIL = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def percentile_ms(samples_s: list[float], q: float) -> float | None:
    """The q-quantile in ms, linear interpolation between closest ranks; None if no samples."""
    if not samples_s:
        return None
    ordered = sorted(samples_s)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return (ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)) * 1000.0


def _cost_of(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def token_msat(token: str) -> int:
    """A Cashu token's value in msat (cashuA or cashuB, unit sat or msat)."""
    from cashu.core.base import TokenV3, TokenV4

    v4 = token.startswith("cashuB")
    parsed = TokenV4.deserialize(token) if v4 else TokenV3.deserialize(token)
    amount = int(parsed.amount)
    return amount if str(parsed.unit) in ("msat", "Unit.msat") else amount * 1000


def _x_cashu_outcome(paid_msat: int, change: str | None, cost: int | None) -> Outcome:
    """The change must give back everything above the cost, less under one sat of rounding."""
    kept = paid_msat - (token_msat(change) if change else 0)
    if cost is None:
        return Outcome("no cost", None, kept_msat=kept)
    if not 0 <= kept - cost < 1000:
        return Outcome("x-cashu change mismatch", cost, kept_msat=kept)
    return Outcome(None, cost, kept_msat=kept)


async def _chat(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    paid: bool,
    paid_msat: int | None = None,
) -> Outcome:
    async with session.post(url, data=body, headers=headers) as resp:
        raw = await resp.read()
        cost = _cost_of(resp.headers.get(COST_HEADER))
        provider = resp.headers.get(PROVIDER_HEADER)
        if resp.status != 200:
            return Outcome(f"http {resp.status}", cost, provider=provider)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Outcome("invalid json", cost)
        if not isinstance(data, dict) or not data.get("choices"):
            return Outcome("no choices", cost)
        if paid_msat is not None:
            return _x_cashu_outcome(paid_msat, resp.headers.get("X-Cashu"), cost)
        if paid and cost is None:
            return Outcome("no cost header", None, provider=provider)
        return Outcome(None, cost, provider=provider)


async def _stream(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    paid: bool,
    t0: float,
    paid_msat: int | None = None,
) -> Outcome:
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            return Outcome(f"http {resp.status}", _cost_of(resp.headers.get(COST_HEADER)))
        ttfb: float | None = None
        buf = bytearray()
        async for chunk in resp.content.iter_any():
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            buf += chunk
    outcome = _check_stream(bytes(buf), paid, ttfb)
    if paid_msat is None or outcome.error is not None:
        return outcome
    # The change token rides in an SSE event of its own near the end of the stream.
    change = _TOKEN.search(bytes(buf))
    checked = _x_cashu_outcome(
        paid_msat, change.group(0).decode() if change else None, outcome.cost_msat
    )
    return dataclasses.replace(checked, ttfb_s=ttfb)


_TOKEN = re.compile(rb"cashu[AB][A-Za-z0-9_\-+/=]+")


def _check_stream(raw: bytes, paid: bool, ttfb: float | None) -> Outcome:
    events = [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events or events[-1].strip() != b"data: [DONE]":
        return Outcome("stream without [DONE]", None, ttfb)
    usage: dict[str, Any] | None = None
    cost: int | None = None
    failed = False
    for event in events[:-1]:
        if b'"usage":{' not in event and b'"error"' not in event:
            continue  # content chunks: skip the JSON parse
        data = orjson.loads(event.removeprefix(b"data: "))
        if isinstance(data, dict) and data.get("error"):
            failed = True
        elif isinstance(data, dict) and isinstance(data.get("usage"), dict):
            usage = data["usage"]
            if isinstance(usage.get("cost"), dict):
                cost = _cost_of(usage["cost"].get("total_msats"))
    if failed:
        return Outcome("error event in stream", cost, ttfb)
    if usage is None:
        return Outcome("stream without usage", cost, ttfb)
    if paid and cost is None:
        return Outcome("usage without cost", None, ttfb)
    return Outcome(None, cost, ttfb)


async def run_scenario(
    session: aiohttp.ClientSession,
    *,
    target: str,
    base_url: str,
    api_key: str | list[str] | None,
    scenario: Scenario,
    warmup_s: float,
    duration_s: float,
    max_requests: int,
    timeout_s: float = 30.0,
    extra_headers: dict[str, str] | None = None,
    next_token: Callable[[], tuple[str, int] | None] | None = None,
    cpu: Callable[[], tuple[float, float]] | None = None,
) -> RunResult:
    """Drive `scenario` against `{base_url}/chat/completions` for warm-up + duration.

    Requests started during the warm-up are issued and billed but not timed. No new
    request starts after the deadline, once `max_requests` (warm-up included) were
    issued, or once `next_token` (a fresh X-Cashu token and its msat value per request)
    runs dry; the measured window ends when the last in-flight request finishes.
    With `scenario.rate`, request i is not sent before start + i / rate (at most
    `concurrency` in flight): the offered load, not the server, sets the pace, and a
    request's time starts at its send, so queueing in the client is not counted.
    `cpu` (the node's CPU seconds so far, and its run-queue wait) is read when the measured
    window opens and after the last request: `result.cpu_s`, `result.wait_s`.
    """
    url = f"{base_url}/chat/completions"
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    if scenario.stream:
        headers["Accept"] = "text/event-stream"  # also what picks nginx's canned stream
    paid = api_key is not None or next_token is not None
    # Several keys: request i uses key i mod n (the load spread evenly over their rows).
    keys = [api_key] if isinstance(api_key, str) else list(api_key or ())
    per_key = [{**headers, "Authorization": f"Bearer {key}"} for key in keys] or [headers]
    body = request_body(scenario.stream)
    result = RunResult(target, scenario)
    start = time.perf_counter()
    measure_from = start + warmup_s
    deadline = measure_from + duration_s
    last_done = measure_from
    interval = 1.0 / scenario.rate if scenario.rate else 0.0
    next_send = start

    async def one(t0: float, token: tuple[str, int] | None, n: int) -> Outcome:
        hdrs, value = per_key[n % len(per_key)], None
        if token is not None:
            hdrs, value = {**headers, "X-Cashu": token[0]}, token[1]
        if scenario.stream:
            return await _stream(session, url, hdrs, body, paid, t0, value)
        return await _chat(session, url, hdrs, body, paid, value)

    async def worker() -> None:
        nonlocal last_done, next_send
        while True:
            if interval:
                # claim the next slot of the schedule, then wait for it
                slot, next_send = next_send, next_send + interval
                if (wait := slot - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
            t0 = time.perf_counter()
            if t0 >= deadline or result.requests >= max_requests:
                return
            token = next_token() if next_token is not None else None
            if next_token is not None and token is None:
                return
            n = result.requests
            result.requests += 1
            measured = t0 >= measure_from
            if not measured:
                result.warmup_requests += 1
            try:
                async with asyncio.timeout(timeout_s):
                    outcome = await one(t0, token, n)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                outcome = Outcome(type(exc).__name__)
            t1 = time.perf_counter()
            if outcome.cost_msat is not None:
                result.reported_cost_msat += outcome.cost_msat
                result.costed_requests += 1
            if outcome.kept_msat is not None:
                result.kept_msat += outcome.kept_msat
            if outcome.error is not None:
                result.errors += 1
                result.error_kinds[outcome.error] += 1
            elif measured:
                result.latencies_s.append(t1 - t0)
                if outcome.ttfb_s is not None:
                    result.ttfbs_s.append(outcome.ttfb_s)
                if outcome.provider is not None:
                    result.provider_latencies_s.setdefault(outcome.provider, []).append(t1 - t0)
                last_done = max(last_done, t1)

    cpu_from: list[tuple[float, float]] = []
    if cpu is not None:
        if warmup_s > 0:
            asyncio.get_running_loop().call_later(warmup_s, lambda: cpu_from.append(cpu()))
        else:
            cpu_from.append(cpu())
    await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
    result.elapsed_s = last_done - measure_from
    if cpu is not None and cpu_from:
        cpu_to = cpu()
        result.cpu_s = cpu_to[0] - cpu_from[0][0]
        result.wait_s = cpu_to[1] - cpu_from[0][1]
    return result
