"""The mint on its own: swaps/s straight from a client, and the swaps a node run caused.

The X-Cashu target says throughput is "bounded by the mint's swap time". To check that, the
bench drives `POST /v1/swap` on the same local mint with no node in between (pre-minted
proofs, blinded outputs built here, nothing unblinded or stored), and counts the swaps the
node made during its run in the mint's access log. The baseline's swaps are shaped as the
node's were: as many inputs (requests per swap) and outputs (read from the node wallet's
derivation counters), because a swap's cost at the mint grows with both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import percentile_ms
from satsrouter.ecash._cashu import UNCOMPRESSED as _AS_THE_NODE_ASKS

# uvicorn's access log line: `127.0.0.1:5678 - "POST /v1/swap HTTP/1.1" 200 OK`
_ACCESS = re.compile(rb'"(GET|POST) (/v1/[a-z0-9_/]+)[^"]*" (\d{3})')


@dataclasses.dataclass(slots=True)
class SwapRun:
    """Swaps driven straight at the mint; timings cover the measured window only."""

    concurrency: int
    inputs_per_swap: int = 1
    outputs_per_swap: int = 1
    elapsed_s: float = 0.0
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    swaps: int = 0  # all issued, warm-up included
    errors: int = 0
    error_kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        return percentile_ms(self.latencies_s, q)

    def summary(self) -> dict[str, Any]:
        p50, p99 = self.latency_ms(0.5), self.latency_ms(0.99)
        return {
            "concurrency": self.concurrency,
            "inputs_per_swap": self.inputs_per_swap,
            "outputs_per_swap": self.outputs_per_swap,
            "swaps_per_s": round(self.rps, 1),
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "measured_ok": len(self.latencies_s),
            "measured_s": round(self.elapsed_s, 3),
            "swaps": self.swaps,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
        }


def swap_inputs(tokens: list[str]) -> list[list[dict[str, Any]]]:
    """Each token's proofs as `/v1/swap` inputs (cashuA tokens carry the full keyset ids)."""
    from cashu.core.base import TokenV3

    out: list[list[dict[str, Any]]] = []
    for token in tokens:
        if not token.startswith("cashuA"):
            raise ValueError("swap_inputs needs cashuA tokens (mint them with legacy=True)")
        out.append([p.to_dict() for p in TokenV3.deserialize(token).proofs])
    return out


def output_amounts(amount: int, count: int) -> list[int]:
    """`amount` in powers of two, as few as possible, then halved (largest first) to `count`.

    The mint's work grows with the outputs it signs, so the baseline asks for as many as the
    node's own swaps did (a node refilling small coins splits a 16-sat token into 5).
    """
    parts = [1 << bit for bit in range(amount.bit_length()) if amount >> bit & 1]
    while len(parts) < count and max(parts) > 1:
        parts.sort()
        half = parts.pop() // 2
        parts += [half, half]
    return sorted(parts)


def _outputs(amount: int, keyset_id: str, count: int) -> list[dict[str, Any]]:
    """Blinded outputs for `amount` in `count` powers of two (see `output_amounts`)."""
    from cashu.core.crypto.b_dhke import step1_alice

    outs = []
    for part in output_amounts(amount, count):
        blinded, _ = step1_alice(secrets.token_hex(32))
        outs.append({"amount": part, "id": keyset_id, "B_": blinded.format().hex()})
    return outs


async def wallet_outputs(data_dir: Path, database_url: str = "") -> int:
    """Outputs the node's wallet has ever asked a mint to sign (its derivation counters).

    On Postgres (`database_url`) the fleet's one shared wallet; else the node's SQLite file.
    """
    query = "SELECT coalesce(sum(counter), 0) FROM wallet_keysets"
    if database_url:
        import asyncpg

        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            total = await conn.fetchval(query)
        finally:
            await conn.close()
        return int(total)
    path = data_dir / "satsrouter.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (total,) = db.execute(query).fetchone()
    return int(total)


async def run_swaps(
    session: aiohttp.ClientSession,
    mint_url: str,
    inputs: list[list[dict[str, Any]]],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    inputs_per_swap: int = 1,
    outputs_per_swap: int = 1,
    timeout_s: float = 30.0,
) -> SwapRun:
    """Closed loop: `concurrency` workers, each swapping its next unspent inputs at the mint.

    No swap starts after the deadline or once `inputs` are used up (consumed from the list).
    """
    url = f"{mint_url.rstrip('/')}/v1/swap"
    result = SwapRun(concurrency, inputs_per_swap, outputs_per_swap)
    start = time.perf_counter()
    measure_from = start + warmup_s
    deadline = measure_from + duration_s
    last_done = measure_from

    async def worker() -> None:
        nonlocal last_done
        while len(inputs) >= inputs_per_swap:
            proofs = [p for _ in range(inputs_per_swap) for p in inputs.pop()]
            # Built before the clock starts: the client's EC work is not the mint's time.
            body = {
                "inputs": proofs,
                "outputs": _outputs(
                    sum(int(p["amount"]) for p in proofs), proofs[0]["id"], outputs_per_swap
                ),
            }
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            result.swaps += 1
            error: str | None = None
            try:
                async with asyncio.timeout(timeout_s):
                    async with session.post(url, json=body, headers=_AS_THE_NODE_ASKS) as resp:
                        data = await resp.json(content_type=None)
                if resp.status != 200:
                    error = f"http {resp.status}"
                elif len(data.get("signatures", ())) != len(body["outputs"]):
                    error = "wrong number of signatures"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = type(exc).__name__
            t1 = time.perf_counter()
            if error is not None:
                result.errors += 1
                result.error_kinds[error] += 1
            elif t0 >= measure_from:
                result.latencies_s.append(t1 - t0)
                last_done = max(last_done, t1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = last_done - measure_from
    return result


def access_counts(log: Path) -> collections.Counter[str]:
    """Requests the mint answered so far, by `METHOD /path status` (from its access log)."""
    try:
        text = log.read_bytes()
    except OSError:
        return collections.Counter()
    return collections.Counter(
        f"{m.group(1).decode()} {m.group(2).decode()} {m.group(3).decode()}"
        for m in _ACCESS.finditer(text)
    )


def swaps_between(before: collections.Counter[str], after: collections.Counter[str]) -> int:
    """Successful swaps the mint answered between two `access_counts` readings."""
    return after["POST /v1/swap 200"] - before["POST /v1/swap 200"]
