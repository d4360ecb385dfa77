"""How hard the node may press one mint: calls at once and calls per second, per process.

Every HTTP call to a mint passes a `MintGate`: a concurrency bound and a token bucket. Work
the node must finish (a change token owed, a payout, recovery) waits as long as it takes and
goes first. New work — redeeming a token a request just brought — waits at most
`bounded_wait(seconds)` and is then refused with `mint_busy` *before* anything is sent, so
the mint did nothing and the token is still its owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar

from satsrouter.ecash.errors import EcashError

# How long new work may wait for the mint in this context; None: as long as it takes.
_WAIT: ContextVar[float | None] = ContextVar("satsrouter_mint_wait", default=None)


@contextlib.contextmanager
def bounded_wait(seconds: float) -> Iterator[None]:
    """Calls to a mint made in this context (and tasks it starts) wait at most `seconds`."""
    token = _WAIT.set(max(seconds, 0.0))
    try:
        yield
    finally:
        _WAIT.reset(token)


def current_wait() -> float | None:
    """The bound this context puts on waiting for a mint (None: none)."""
    return _WAIT.get()


class MintBusy(EcashError):
    """Refused before sending: the mint is at this node's bound; try again after a while."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("mint_busy")
        self.retry_after = max(1, math.ceil(retry_after))


class MintGate:
    """At most `concurrency` calls at once and `per_second` calls a second (0: unbounded).

    The bucket holds up to `burst` calls (default: one second's worth), so over any window
    of T seconds the mint sees at most burst + per_second × T calls from this process.
    """

    def __init__(
        self,
        concurrency: int = 8,
        per_second: float = 0.0,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.per_second = max(0.0, per_second)
        self.burst = max(1.0, burst if burst is not None else self.per_second)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._in_flight = 0
        self._urgent_waiting = 0
        self._changed = asyncio.Event()
        self.peak_in_flight = 0  # the most calls seen at once (tests, metrics)
        self.calls = 0
        self.refused = 0

    @contextlib.asynccontextmanager
    async def call(self, wait: float | None = None) -> AsyncIterator[None]:
        """Hold one call's place; `wait` bounds the wait (None: the context's bound)."""
        await self.enter(current_wait() if wait is None else wait)
        try:
            yield
        finally:
            self.leave()

    async def enter(self, wait: float | None) -> None:
        """Take a place for one call; MintBusy if `wait` (seconds) passes first."""
        urgent = wait is None
        deadline = None if wait is None else self._clock() + wait
        if urgent:
            self._urgent_waiting += 1
        try:
            while True:
                now = self._clock()
                self._refill(now)
                free = self._in_flight < self.concurrency
                if free and self._tokens >= 1 and (urgent or not self._urgent_waiting):
                    if self.per_second:
                        self._tokens -= 1
                    self._in_flight += 1
                    self.calls += 1
                    self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                    return
                pause = None
                if free and self._tokens < 1:
                    pause = (1 - self._tokens) / self.per_second
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        self.refused += 1
                        raise MintBusy(self._retry_after())
                    pause = left if pause is None else min(pause, left)
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), pause)
        finally:
            if urgent:
                self._urgent_waiting -= 1
                self._wake()  # new work may have been holding back for this one

    def leave(self) -> None:
        """Give the place back (the call has its answer, or failed)."""
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _refill(self, now: float) -> None:
        if not self.per_second:
            self._tokens = self.burst
            return
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now

    def _retry_after(self) -> float:
        if not self.per_second:
            return 1.0
        return max(1.0, (1 - self._tokens) / self.per_second)
