"""Rate limits on the `limits` library: per key (or client IP), per failed login, per key
in flight.

Counters live in a `limits.aio` storage: in this process by default, in Redis when
`REDIS_URL` is set, so that every node sharing that Redis shares the counts.

Fixed windows, not moving ones: a fixed window is one counter per key and limit (one
`INCR` in Redis), where a moving window keeps a timestamp per request — up to 10,000 per
key for the seed's daily limit. The price is that a client may burst up to twice a limit
across a window's edge; for abuse resistance that is fine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

OFF = ("", "off", "none")
Limits = tuple[RateLimitItem, ...]

_OVERRIDES = "SELECT key_hash, rate_limit FROM accounts WHERE rate_limit IS NOT NULL"


def parse_limits(text: str) -> Limits:
    """`60/minute;1000/hour` → its limits, shortest window first; `""`/`off` → none."""
    text = text.strip()
    if text.lower() in OFF:
        return ()
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate limit like '60/minute;1000/hour'") from None
    if not items or any(item.amount < 1 for item in items):
        raise ValueError(f"{text!r} is not a rate limit like '60/minute;1000/hour'")
    return tuple(sorted(items, key=lambda item: item.get_expiry()))


def check_limits(text: str) -> None:
    """A settings check: raise ValueError for text `parse_limits` refuses."""
    parse_limits(text)


def make_storage(redis_url: str) -> Storage:
    """Redis when a URL is given (several nodes share counters), else this process's memory."""
    if not redis_url:
        return MemoryStorage()
    return RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix="satsrouter")


async def close_storage(storage: Storage) -> None:
    """Close a Redis storage's connections (a memory storage holds none)."""
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()


@dataclass(frozen=True, slots=True)
class Verdict:
    """One rate-limit decision, for the tightest window (the one with the least left)."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # when that window starts afresh, epoch seconds

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until the window resets (at least 1)."""
        return max(1, int(self.reset - (time.time() if now is None else now) + 0.999))

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`X-RateLimit-*` (reset in epoch seconds, as GitHub's), raw for the ASGI layer."""
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(int(self.reset + 0.999)).encode()),
        ]


class _Outage:
    """Says (at most once a minute) that the counters' storage failed: limits fail open."""

    def __init__(self) -> None:
        self._said = 0.0

    def __call__(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._said >= 60:
            self._said = now
            log.warning(
                "rate-limit storage failed (%s): %s; not limiting", what, type(exc).__name__
            )


_outage = _Outage()


class RateLimiter:
    """Counts requests per identity against a set of limits (fixed windows)."""

    def __init__(self, storage: Storage, namespace: str = "req") -> None:
        self.storage = storage
        self._namespace = namespace

    async def hit(self, items: Limits, identity: str) -> Verdict | None:
        """Count one request against every limit, shortest window first; None when unlimited.

        Refused as soon as one limit is over: the longer windows are not counted then. A
        storage that fails (Redis down) limits nothing rather than refuse every request.
        """
        if not items:
            return None
        try:
            return await self._hit(items, identity)
        except Exception as exc:
            _outage("counting a request", exc)
            return None

    async def _hit(self, items: Limits, identity: str) -> Verdict:
        worst: tuple[int, RateLimitItem, str] | None = None
        for item in items:
            key = item.key_for(self._namespace, identity)
            # `incr` returns the count: the remaining of every window without a second call.
            left = item.amount - await self.storage.incr(key, item.get_expiry())
            if worst is None or left < worst[0]:
                worst = (left, item, key)
            if left < 0:
                break
        assert worst is not None
        left, item, key = worst
        reset = await self.storage.get_expiry(key)
        return Verdict(left >= 0, item.amount, max(left, 0), reset)


class InFlight:
    """Paid requests running now, per key, in this process (a crash must not leak a slot)."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}
        self.total = 0  # all keys'

    def enter(self, identity: str, cap: int) -> bool:
        """Take a slot for `identity`; False (nothing taken) when it has `cap` running."""
        running = self._running.get(identity, 0)
        if cap > 0 and running >= cap:
            return False
        self._running[identity] = running + 1
        self.total += 1
        return True

    def running(self, identity: str) -> int:
        """How many requests of `identity` run now."""
        return self._running.get(identity, 0)

    def leave(self, identity: str) -> None:
        """Give back a slot `enter` took."""
        running = self._running.get(identity, 0) - 1
        self.total -= 1
        if running > 0:
            self._running[identity] = running
        else:
            self._running.pop(identity, None)


class TooManyAttempts(Exception):
    """Too many failed attempts from one client; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed attempts; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class AttemptLimiter:
    """Failed authentications per client (IP), on the same storage as the request limits.

    Failures only: a right password or key is never counted. A client over the limit is
    remembered here too, so that the paid path refuses it without asking the storage.
    """

    def __init__(
        self, limit: str = "5/minute", storage: Storage | None = None, max_clients: int = 10_000
    ) -> None:
        self.items = parse_limits(limit)
        self._limiter = FixedWindowRateLimiter(storage or MemoryStorage())
        self._max_clients = max_clients
        self._blocked: dict[str, float] = {}  # client → until (epoch seconds)

    @property
    def limit(self) -> int:
        """Failures allowed in the shortest window (0: unlimited)."""
        return self.items[0].amount if self.items else 0

    def blocked(self, client: str) -> float | None:
        """Seconds left for a client known here to be over its limit; None otherwise."""
        until = self._blocked.get(client)
        if until is None:
            return None
        left = until - time.time()
        if left > 0:
            return left
        self._blocked.pop(client, None)
        return None

    async def check(self, client: str) -> None:
        """Raise TooManyAttempts if `client` is over its limit (asks the shared storage)."""
        left = self.blocked(client)
        if left is not None:
            raise TooManyAttempts(left)
        for item in self.items:
            try:
                allowed = await self._limiter.test(item, "auth", client)
                if not allowed:
                    left = await self._block(item, client)
            except Exception as exc:
                _outage("reading failed attempts", exc)
                return
            if not allowed:
                raise TooManyAttempts(left or 0.0)

    async def failed(self, client: str) -> bool:
        """Count one failure for `client`; True when that used up its allowance."""
        over = False
        try:
            for item in self.items:
                await self._limiter.hit(item, "auth", client)
                stats = await self._limiter.get_window_stats(item, "auth", client)
                if stats.remaining <= 0:
                    self._remember(client, stats.reset_time)
                    over = True
        except Exception as exc:
            _outage("counting a failed attempt", exc)
        return over

    async def _block(self, item: RateLimitItem, client: str) -> float:
        stats = await self._limiter.get_window_stats(item, "auth", client)
        self._remember(client, stats.reset_time)
        return max(stats.reset_time - time.time(), 0.0)

    def _remember(self, client: str, until: float) -> None:
        if client not in self._blocked and len(self._blocked) >= self._max_clients:
            # Bounded memory under a spray of addresses: forget the oldest client.
            self._blocked.pop(next(iter(self._blocked)))
        self._blocked[client] = max(until, self._blocked.get(client, 0.0))


class KeyLimits:
    """Per-key overrides of the rate limit (`accounts.rate_limit`), held in memory.

    Read from the database at start and every settings refresh, so the paid path never
    waits for it; the admin's change applies here at once, on other nodes within a refresh.
    """

    def __init__(self, tx: TxRunner) -> None:
        self._tx = tx
        self._by_key: dict[str, Limits] = {}

    def get(self, key_hash: str) -> Limits | None:
        """The override for a key, or None when it has the node's limits."""
        return self._by_key.get(key_hash)

    def set(self, key_hash: str, text: str | None) -> None:
        """Apply one key's override (None: back to the node's limits)."""
        if text is None:
            self._by_key.pop(key_hash, None)
        else:
            self._by_key[key_hash] = parse_limits(text)

    async def refresh(self) -> None:
        """Read every override from the database."""

        def read(tx: Tx) -> list[tuple[str, str]]:
            rows, _ = tx.execute(_OVERRIDES, {})
            return [(str(key_hash), str(text)) for key_hash, text in rows]

        self._by_key = dict(_parsed(await self._tx.read(read)))

    async def run(self, interval: Callable[[], float]) -> None:
        """Re-read the overrides every `interval()` seconds, forever."""
        while True:
            await asyncio.sleep(interval())
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the keys' rate limits failed; retrying")


def _parsed(rows: Iterable[tuple[str, str]]) -> Iterable[tuple[str, Limits]]:
    for key_hash, text in rows:
        try:
            yield key_hash, parse_limits(text)
        except ValueError:
            continue  # refused when stored; an unreadable one keeps the node's limits
