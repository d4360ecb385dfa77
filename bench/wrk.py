"""Plain-request load with wrk: a generated Lua script, one JSON line of results per run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "WRK_RESULT "

# Per-thread counters in response(); done() sums them over threads and prints one JSON line.
_LUA = """
wrk.method = %(method)s
wrk.body = %(body)s
%(headers)s
%(rotate)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) cost = 0; costed = 0; bad = 0; codes = "" end
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad <= 20 then codes = codes .. status .. " " end
  end
  local c = headers["x-routstr-cost-msats"] or headers["X-Routstr-Cost-Msats"]
  if c then cost = cost + tonumber(c); costed = costed + 1 end
end
function done(summary, latency, requests)
  local cost, costed, bad, codes = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    cost = cost + t:get("cost"); costed = costed + t:get("costed"); bad = bad + t:get("bad")
    codes = codes .. t:get("codes")
  end
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"non200":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"timeout":%%d,"p50_us":%%.1f,"p90_us":%%.1f,"p99_us":%%.1f,"p999_us":%%.1f,' ..
    '"max_us":%%.1f,"cost_msat":%%d,"costed":%%d,"codes":"%%s"}\\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, cost, costed, codes))
end
"""


@dataclass(frozen=True, slots=True)
class WrkRun:
    """What one wrk run saw."""

    requests: int  # responses received (any status)
    duration_s: float
    non200: int
    transport_errors: int  # connect, read, write errors and timeouts
    p50_ms: float
    p99_ms: float
    cost_msat: int  # sum of X-Routstr-Cost-Msats over the responses
    costed: int  # responses that carried the header
    non200_codes: tuple[int, ...] = ()  # the first non-200 statuses (up to 20 per thread)
    p90_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


# Several keys: each request takes the next one (per thread), so the load is spread evenly
# over the keys' rows. Without a request() function wrk builds the request once.
_ROTATE = """
local auths = {%s}
local turn = 0
function request()
  turn = turn %% #auths + 1
  wrk.headers["Authorization"] = auths[turn]
  return wrk.format()
end
"""


def _script(
    method: str, body: bytes | None, headers: dict[str, str], rotate_auth: list[str] | None = None
) -> str:
    lines = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
    )
    rotate = ""
    if rotate_auth and len(rotate_auth) > 1:
        rotate = _ROTATE % ", ".join(_lua_string(a) for a in rotate_auth)
    return _LUA % {
        "method": _lua_string(method),
        "body": _lua_string(body.decode()) if body else "nil",
        "headers": lines,
        "rotate": rotate,
        "marker": MARKER,
    }


def run_wrk(
    url: str,
    *,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 30.0,
    rotate_auth: list[str] | None = None,
) -> WrkRun:
    """Closed-loop load: `concurrency` keep-alive connections for `duration_s` seconds.

    `rotate_auth`: Authorization values taken in turn, one per request.
    """
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed: run `make bench` or apt-get install wrk")
    # The script may hold a bearer key: a private file, deleted right after the run.
    fd, path = tempfile.mkstemp(prefix="satsrouter-wrk-", suffix=".lua")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_script(method, body, headers, rotate_auth))
        cmd = [
            binary,
            f"-t{max(1, min(threads, concurrency))}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={int(timeout_s)}s",
            "-s",
            path,
            url,
        ]
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
        )
    finally:
        Path(path).unlink(missing_ok=True)
    for line in out.stdout.splitlines():
        if line.startswith(MARKER):
            return _parse(json.loads(line.removeprefix(MARKER)))
    raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]}")


def _parse(raw: dict[str, Any]) -> WrkRun:
    return WrkRun(
        requests=int(raw["requests"]),
        duration_s=int(raw["duration_us"]) / 1e6,
        non200=int(raw["non200"]),
        transport_errors=sum(int(raw[k]) for k in ("connect", "read", "write", "timeout")),
        p50_ms=float(raw["p50_us"]) / 1000.0,
        p99_ms=float(raw["p99_us"]) / 1000.0,
        cost_msat=int(raw["cost_msat"]),
        costed=int(raw["costed"]),
        non200_codes=tuple(int(c) for c in str(raw.get("codes", "")).split()),
        p90_ms=float(raw["p90_us"]) / 1000.0,
        p999_ms=float(raw["p999_us"]) / 1000.0,
        max_ms=float(raw["max_us"]) / 1000.0,
    )
