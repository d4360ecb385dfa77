"""Provider health: active checks on an interval plus passive signals from real traffic.

Statuses, worst first:

- `offline`: the last OFFLINE_AFTER active checks all failed;
- `degraded`: the last check failed (once) or was slower than `slow_ms`, or recent real
  exchanges failed often (at least `min_failures` failures and a `degraded_rate` share
  within `window_seconds`);
- `online`: otherwise, once there is at least one check or exchange to go by;
- `unknown`: nothing observed yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[Any]]

OFFLINE_AFTER = 2  # consecutive failed checks
STATUS_ORDER = ("unknown", "online", "degraded", "offline")


@dataclass
class _State:
    last_checked: float | None = None  # unix time of the last finished check
    latency_ms: float | None = None
    last_check_ok: bool | None = None
    failed_checks: int = 0  # consecutive
    last_error: str | None = None
    # (monotonic time, ok) of recent real exchanges; bounded so `record` stays O(1).
    outcomes: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=200))


class ProviderHealth:
    """Health of each provider, from a cheap periodic probe and `record()`ed exchanges."""

    def __init__(
        self,
        probes: dict[str, Probe],
        interval: float,
        *,
        timeout: float = 10.0,
        slow_ms: float = 5000.0,
        window_seconds: float = 300.0,
        min_failures: int = 3,
        degraded_rate: float = 0.2,
    ) -> None:
        self.probes = probes
        self.interval = interval
        self.timeout = min(timeout, interval)
        self.slow_ms = slow_ms
        self.window_seconds = window_seconds
        self.min_failures = min_failures
        self.degraded_rate = degraded_rate
        self._states = {name: _State() for name in probes}

    def set_probes(self, probes: dict[str, Probe]) -> None:
        """Providers added or removed: the states of those kept carry on."""
        self.probes = probes
        self._states = {name: self._states.get(name) or _State() for name in probes}

    def record(self, provider: str, ok: bool) -> None:
        """A passive signal: one upstream exchange ended well (ok) or in 5xx/transport/timeout."""
        state = self._states.get(provider)
        if state is not None:  # unknown names are ignored rather than grown without bound
            state.outcomes.append((time.monotonic(), ok))

    async def check(self, provider: str) -> bool:
        """Run one active check of `provider` now; True when it answered in time."""
        state = self._states[provider]
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.probes[provider](), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the probe is a failed check
            state.last_check_ok = False
            state.failed_checks += 1
            state.latency_ms = None
            # Only the kind of failure: it is published, and messages may carry URLs.
            kind = getattr(exc, "kind", None)
            state.last_error = f"{type(exc).__name__}: {kind}" if kind else type(exc).__name__
            log.warning("health check of %s failed: %s", provider, state.last_error)
        else:
            state.last_check_ok = True
            state.failed_checks = 0
            state.latency_ms = round((time.perf_counter() - started) * 1000, 1)
            state.last_error = None
        state.last_checked = time.time()
        return bool(state.last_check_ok)

    async def check_all(self) -> None:
        """Check every provider concurrently."""
        await asyncio.gather(*(self.check(name) for name in self.probes))

    async def run(self) -> None:
        """Check now, then every `interval` seconds, until cancelled."""
        while True:
            try:
                await self.check_all()
            except Exception:
                log.exception("health checks failed")
            await asyncio.sleep(self.interval)

    def available(self, provider: str) -> bool:
        """Whether `provider` is in rotation (not offline)."""
        return self.status(provider) != "offline"

    def latency_ms(self, provider: str) -> float | None:
        """The last active check's latency, if any."""
        state = self._states.get(provider)
        return state.latency_ms if state is not None else None

    def error_rate(self, provider: str) -> float | None:
        """Share of failed exchanges within the window; None without any."""
        failures, total = self._recent(provider)
        return round(failures / total, 3) if total else None

    def _recent(self, provider: str) -> tuple[int, int]:
        state = self._states.get(provider)
        if state is None:
            return 0, 0
        since = time.monotonic() - self.window_seconds
        while state.outcomes and state.outcomes[0][0] < since:
            state.outcomes.popleft()
        failures = sum(1 for _, ok in state.outcomes if not ok)
        return failures, len(state.outcomes)

    def status(self, provider: str) -> str:
        """`online`, `degraded`, `offline`, or `unknown` before anything was observed."""
        state = self._states.get(provider)
        if state is None:
            return "unknown"
        if state.failed_checks >= OFFLINE_AFTER:
            return "offline"
        failures, total = self._recent(provider)
        if state.last_check_ok is False or (
            state.latency_ms is not None and state.latency_ms > self.slow_ms
        ):
            return "degraded"
        if failures >= self.min_failures and failures / total >= self.degraded_rate:
            return "degraded"
        if state.last_check_ok is None and total == 0:
            return "unknown"
        return "online"

    def snapshot(self, provider: str) -> dict[str, Any]:
        """What `/v1/providers` shows: status, last check (unix time), latency, error rate."""
        state = self._states.get(provider, _State())
        return {
            "status": self.status(provider),
            "last_checked": int(state.last_checked) if state.last_checked else None,
            "latency_ms": state.latency_ms,
            "error_rate": self.error_rate(provider),
            "last_error": state.last_error,
        }


def worse(a: str, b: str) -> str:
    """The worse of two statuses (`offline` > `degraded` > `online` > `unknown`)."""
    return max(a, b, key=STATUS_ORDER.index)
