"""Provider health: active checks on an interval plus passive signals from real traffic, and
a circuit breaker per provider.

Statuses, worst first:

- `offline`: the last OFFLINE_AFTER active checks all failed, or the circuit is open;
- `degraded`: the circuit is half-open, or the last check failed (once) or was slower than
  `slow_ms`, or recent real exchanges failed often (at least `min_failures` failures and a
  `degraded_rate` share within `window_seconds`);
- `online`: otherwise, once there is at least one check or exchange to go by;
- `unknown`: nothing observed yet.

The circuit of a provider is `closed` (traffic flows), `open` (none) or `half_open` (one
trial exchange at a time). It opens after `failures` failed exchanges in a row (5xx,
transport error, timeout; a 4xx is an answer and a 429 is counted apart as rate limited)
or when the active checks find the provider offline. `cooldown` seconds after it opened it
is half-open: the next exchange is the trial, whose success closes the circuit and whose
failure opens it again for another cooldown. A circuit the active checks opened is also
closed by a passing check; one that real exchanges opened needs a real exchange, since a
model list that loads says little about completions that fail. While a circuit is not
closed its provider is checked every `cooldown` seconds (if that is sooner than `interval`).

Everything a paid request calls (`record`, `available`, `acquire`, `latency_ms`) is O(1).
"""

from __future__ import annotations

import asyncio
import contextlib
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
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# What opened a circuit; `exchanges` wins over `checks` (see the module's docstring).
BY_EXCHANGES, BY_CHECKS = "exchanges", "checks"
# Outcomes of real exchanges, as kept in the window.
_OK, _FAILED, _RATE_LIMITED = 0, 1, 2
# Weight of the newest exchange in the latency average: about the last ten count.
EWMA_WEIGHT = 0.2


@dataclass
class _State:
    last_checked: float | None = None  # unix time of the last finished check
    latency_ms: float | None = None  # of the last check
    last_check_ok: bool | None = None
    failed_checks: int = 0  # consecutive
    last_error: str | None = None
    check_started: float | None = None  # clock time the last check began
    # (clock time, outcome) of recent real exchanges; bounded so `record` stays O(1).
    outcomes: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=200))
    exchange_latency_ms: float | None = None  # EWMA of successful exchanges
    consecutive_failures: int = 0  # failed exchanges in a row
    circuit: str = CLOSED
    opened_by: str | None = None
    opened_clock: float = 0.0  # clock time the circuit (last) opened
    opened_at: float | None = None  # the same as unix time, published
    trial_until: float | None = None  # clock time a claimed trial's claim lapses


class ProviderHealth:
    """Health and circuit of each provider, from a cheap periodic probe and `record()`ed
    exchanges."""

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
        failures: int = 5,
        cooldown: float = 30.0,
        trial_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probes = dict(probes)
        self._wake = asyncio.Event()
        self._interval = interval
        self._cooldown = cooldown
        self.timeout = min(timeout, interval)
        self.slow_ms = slow_ms
        self.window_seconds = window_seconds
        self.min_failures = min_failures
        self.degraded_rate = degraded_rate
        self.failures = failures
        # A claimed trial that never reports back (its request vanished) frees the slot
        # after this long: the upstream timeout is the longest a live trial waits.
        self.trial_timeout = trial_timeout
        self._clock = clock
        self._states = {name: _State() for name in probes}

    @property
    def interval(self) -> float:
        """Seconds between active checks of a provider whose circuit is closed."""
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = value
        self._wake.set()  # the loop may be asleep for the old interval

    @property
    def cooldown(self) -> float:
        """Seconds an open circuit stays open before it lets a trial through."""
        return self._cooldown

    @cooldown.setter
    def cooldown(self, value: float) -> None:
        self._cooldown = value
        self._wake.set()

    def set_probes(self, probes: dict[str, Probe]) -> None:
        """Providers added or removed at runtime: kept ones keep their state and circuit."""
        self.probes = dict(probes)
        self._states = {name: self._states.get(name) or _State() for name in probes}
        self._wake.set()  # new providers are checked at once

    # --- passive signals and the circuit (the hot path) ------------------------------------

    def record(
        self,
        provider: str,
        ok: bool,
        latency_ms: float | None = None,
        *,
        rate_limited: bool = False,
    ) -> None:
        """One upstream exchange ended: ok (any answer but a 5xx), or failed (5xx, transport,
        timeout); `rate_limited` (a 429, `ok` then ignored) neither opens nor closes the
        circuit. `latency_ms` of a successful exchange feeds `latency_ms()`."""
        state = self._states.get(provider)
        if state is None:  # unknown names are ignored rather than grown without bound
            return
        now = self._clock()
        circuit = self._circuit(state, now)
        if rate_limited:
            state.outcomes.append((now, _RATE_LIMITED))
            if circuit == HALF_OPEN:
                state.trial_until = None  # busy is no verdict: the next trial may go
            return
        state.outcomes.append((now, _OK if ok else _FAILED))
        if ok:
            state.consecutive_failures = 0
            if latency_ms is not None:
                previous = state.exchange_latency_ms
                state.exchange_latency_ms = (
                    latency_ms
                    if previous is None
                    else previous + EWMA_WEIGHT * (latency_ms - previous)
                )
            if circuit == HALF_OPEN:
                self._close(provider, state)
            # Open: an exchange begun before the circuit opened; the cooldown still runs.
            return
        state.consecutive_failures += 1
        if circuit == HALF_OPEN or (
            circuit == CLOSED and state.consecutive_failures >= self.failures
        ):
            self._open(provider, state, now, BY_EXCHANGES)

    def available(self, provider: str) -> bool:
        """True when a request may go to `provider` now: its circuit is closed, or half-open
        with no trial in flight. Only a peek: `acquire` claims the trial."""
        state = self._states.get(provider)
        if state is None:
            return True  # nothing known against it
        now = self._clock()
        circuit = self._circuit(state, now)
        if circuit == CLOSED:
            return True
        return circuit == HALF_OPEN and (state.trial_until is None or now >= state.trial_until)

    def acquire(self, provider: str) -> bool:
        """Like `available`, and a half-open circuit's trial slot is then claimed by the
        caller: `record` (or `release`) gives it back."""
        if not self.available(provider):
            return False
        state = self._states.get(provider)
        if state is not None and state.circuit == HALF_OPEN:
            state.trial_until = self._clock() + self.trial_timeout
        return True

    def release(self, provider: str) -> None:
        """Give back a trial claimed by `acquire` whose request was never sent."""
        state = self._states.get(provider)
        if state is not None and state.circuit == HALF_OPEN:
            state.trial_until = None

    def circuit(self, provider: str) -> str:
        """`closed`, `open` or `half_open` (`closed` for a provider not known)."""
        state = self._states.get(provider)
        return CLOSED if state is None else self._circuit(state, self._clock())

    def circuits(self) -> dict[str, str]:
        """Every provider's circuit (for the metrics)."""
        now = self._clock()
        return {name: self._circuit(state, now) for name, state in self._states.items()}

    def latency_ms(self, provider: str) -> float | None:
        """Typical latency of recent successful exchanges (an EWMA); before any, the last
        active check's; None without either."""
        state = self._states.get(provider)
        if state is None:
            return None
        if state.exchange_latency_ms is not None:
            return state.exchange_latency_ms
        return state.latency_ms

    def _circuit(self, state: _State, now: float) -> str:
        # The open → half-open move happens on time alone, so it is made when looked at.
        if state.circuit == OPEN and now - state.opened_clock >= self._cooldown:
            state.circuit = HALF_OPEN
            state.trial_until = None
        return state.circuit

    def _open(self, provider: str, state: _State, now: float, cause: str) -> None:
        was = state.circuit
        if was == CLOSED or state.opened_by != BY_EXCHANGES:
            state.opened_by = cause
        state.circuit = OPEN
        state.opened_clock = now
        state.opened_at = time.time()
        state.trial_until = None
        if was != OPEN:
            log.warning(
                "circuit of %s opened (%s failing); next trial in %gs",
                provider,
                state.opened_by,
                self._cooldown,
            )
        self._wake.set()  # checks run at the cooldown's pace now

    def _close(self, provider: str, state: _State) -> None:
        state.circuit = CLOSED
        state.opened_by = None
        state.opened_at = None
        state.trial_until = None
        state.consecutive_failures = 0
        log.info("circuit of %s closed", provider)

    # --- active checks ----------------------------------------------------------------------

    async def check(self, provider: str) -> bool:
        """Run one active check of `provider` now; True when it answered in time (False for a
        provider no longer known)."""
        state, probe = self._states.get(provider), self.probes.get(provider)
        if state is None or probe is None:
            return False  # removed by `set_probes` meanwhile
        state.check_started = self._clock()
        started = time.perf_counter()
        try:
            await asyncio.wait_for(probe(), self.timeout)
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
            if state.failed_checks >= OFFLINE_AFTER:
                self._open(provider, state, self._clock(), BY_CHECKS)
        else:
            state.last_check_ok = True
            state.failed_checks = 0
            state.latency_ms = round((time.perf_counter() - started) * 1000, 1)
            state.last_error = None
            if state.circuit != CLOSED and state.opened_by == BY_CHECKS:
                self._close(provider, state)
        state.last_checked = time.time()
        return bool(state.last_check_ok)

    async def check_all(self) -> None:
        """Check every provider concurrently."""
        await asyncio.gather(*(self.check(name) for name in self.probes))

    def _next_check(self, state: _State) -> float:
        """Clock time the provider is due for a check: sooner while its circuit is not
        closed."""
        if state.check_started is None:
            return float("-inf")
        pace = self._interval
        if self._circuit(state, self._clock()) != CLOSED:
            pace = min(pace, self._cooldown)
        return state.check_started + pace

    async def run(self) -> None:
        """Check each provider now, then on its pace (`interval`, or `cooldown` while its
        circuit is not closed), until cancelled."""
        while True:
            self._wake.clear()
            now = self._clock()
            due = [name for name in self.probes if self._next_check(self._states[name]) <= now]
            try:
                await asyncio.gather(*(self.check(name) for name in due))
            except Exception:
                log.exception("health checks failed")
            upcoming = [self._next_check(state) for state in self._states.values()]
            delay = min(upcoming, default=self._clock() + self._interval) - self._clock()
            if delay > 0:
                # Woken early by a setting changed, a circuit opened, a provider added.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    # --- what is published ------------------------------------------------------------------

    def error_rate(self, provider: str) -> float | None:
        """Share of failed exchanges within the window; None without any."""
        failures, _, total = self._recent(provider)
        return round(failures / total, 3) if total else None

    def _recent(self, provider: str) -> tuple[int, int, int]:
        """Failed and rate-limited exchanges within the window, and all of them."""
        state = self._states.get(provider)
        if state is None:
            return 0, 0, 0
        since = self._clock() - self.window_seconds
        while state.outcomes and state.outcomes[0][0] < since:
            state.outcomes.popleft()
        failures = sum(1 for _, outcome in state.outcomes if outcome == _FAILED)
        limited = sum(1 for _, outcome in state.outcomes if outcome == _RATE_LIMITED)
        return failures, limited, len(state.outcomes)

    def status(self, provider: str) -> str:
        """`online`, `degraded`, `offline`, or `unknown` before anything was observed."""
        state = self._states.get(provider)
        if state is None:
            return "unknown"
        circuit = self._circuit(state, self._clock())
        if state.failed_checks >= OFFLINE_AFTER or circuit == OPEN:
            return "offline"
        if circuit == HALF_OPEN:
            return "degraded"
        failures, _, total = self._recent(provider)
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
        """What `/v1/providers` shows: status, last check (unix time) and its latency, error
        rate, the circuit, and the typical latency of real exchanges."""
        state = self._states.get(provider, _State())
        _, limited, _ = self._recent(provider)
        latency = state.exchange_latency_ms
        return {
            "status": self.status(provider),
            "last_checked": int(state.last_checked) if state.last_checked else None,
            "latency_ms": state.latency_ms,
            "error_rate": self.error_rate(provider),
            "last_error": state.last_error,
            "circuit": self.circuit(provider),
            "exchange_latency_ms": None if latency is None else round(latency, 1),
            "consecutive_failures": state.consecutive_failures,
            "rate_limited": limited,
            "opened_at": int(state.opened_at) if state.opened_at is not None else None,
        }


def worse(a: str, b: str) -> str:
    """The worse of two statuses (`offline` > `degraded` > `online` > `unknown`)."""
    return max(a, b, key=STATUS_ORDER.index)
