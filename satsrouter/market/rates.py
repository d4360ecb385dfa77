"""The BTC/USD exchange rate: pinned by the operator, or combined from live public feeds.

Reading the rate is a cheap in-memory read (it happens on every paid request); fetching
happens in a background loop (`LiveRate.run`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

# A quote further than this from the median of all quotes is a broken or manipulated feed.
OUTLIER_TOLERANCE = Decimal("0.10")
# While there is no fresh price, try again at least this often, whatever the interval.
RETRY_SECONDS = 10.0
# The feeds' answers are a few hundred bytes to a few KB; anything huge is not a ticker.
MAX_BODY_BYTES = 256 * 1024


class RateUnavailable(Exception):
    """No trustworthy BTC/USD price is known right now."""


class RateSource(Protocol):
    """Anything that can tell the current USD price of one bitcoin."""

    def usd_per_btc(self) -> Decimal:
        """The price to charge with now; raises RateUnavailable when there is none."""
        ...


class PinnedRate:
    """A rate fixed by the operator (`BTC_USD_PRICE`)."""

    def __init__(self, usd_per_btc: Decimal) -> None:
        if usd_per_btc <= 0:
            raise ValueError("BTC/USD price must be positive")
        self._price = usd_per_btc

    def usd_per_btc(self) -> Decimal:
        return self._price

    def status(self) -> dict[str, Any]:
        return {"source": "pinned", "usd_per_btc": str(self._price), "stale": False}


# ---------------------------------------------------------------- public price feeds


def _price(value: Any) -> Decimal:
    # Feeds send prices as JSON strings or numbers; numbers are parsed as Decimal (see
    # `_fetch`), never float, so "97123.45" stays exactly that.
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"not a price: {value!r}")
    return Decimal(value)


def _coinbase(doc: Any) -> Decimal:
    return _price(doc["data"]["amount"])


def _kraken(doc: Any) -> Decimal:
    if doc.get("error"):
        raise ValueError("; ".join(map(str, doc["error"])))
    result = doc["result"]
    # Kraken answers under its own pair name ("XXBTZUSD"), not the one asked for.
    ticker = result["XXBTZUSD"] if "XXBTZUSD" in result else next(iter(result.values()))
    return _price(ticker["c"][0])  # "c" = last trade [price, volume]


def _binance(doc: Any) -> Decimal:
    return _price(doc["price"])


def _bitstamp(doc: Any) -> Decimal:
    return _price(doc["last"])


def _coingecko(doc: Any) -> Decimal:
    return _price(doc["bitcoin"]["usd"])


def _blockchain(doc: Any) -> Decimal:
    return _price(doc["USD"]["last"])


@dataclass(frozen=True)
class Feed:
    """One public price API: its name, base URL, ticker path, and how to read its JSON."""

    name: str
    base_url: str
    path: str
    parse: Callable[[Any], Decimal]

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path


FEEDS: dict[str, Feed] = {
    feed.name: feed
    for feed in (
        Feed("coinbase", "https://api.coinbase.com", "/v2/prices/BTC-USD/spot", _coinbase),
        Feed("kraken", "https://api.kraken.com", "/0/public/Ticker?pair=XBTUSD", _kraken),
        Feed("bitstamp", "https://www.bitstamp.net", "/api/v2/ticker/btcusd/", _bitstamp),
        # Binance quotes USDT, not USD. A small drift only matters if it makes Binance the
        # lowest quote (users pay slightly more, the node never less); a de-peg is an outlier.
        Feed("binance", "https://api.binance.com", "/api/v3/ticker/price?symbol=BTCUSDT", _binance),
        Feed(
            "coingecko",
            "https://api.coingecko.com",
            "/api/v3/simple/price?ids=bitcoin&vs_currencies=usd",
            _coingecko,
        ),
        Feed("blockchain", "https://blockchain.info", "/ticker", _blockchain),
    )
}


def select_feeds(sources: Mapping[str, str]) -> list[Feed]:
    """The feeds `BTC_USD_SOURCES` asks for: name → base URL ("" keeps the public one).

    Empty means every built-in feed at its public URL. An unknown name is a ValueError.
    """
    if not sources:
        return list(FEEDS.values())
    unknown = sorted(set(sources) - set(FEEDS))
    if unknown:
        raise ValueError(
            f"unknown BTC/USD source(s) {', '.join(unknown)}; known: {', '.join(FEEDS)}"
        )
    return [
        Feed(name, url or FEEDS[name].base_url, FEEDS[name].path, FEEDS[name].parse)
        for name, url in sources.items()
    ]


def drop_outliers(quotes: Mapping[str, Decimal]) -> tuple[dict[str, Decimal], dict[str, str]]:
    """Split quotes into (kept, rejected name → why).

    A quote more than OUTLIER_TOLERANCE from the median of all quotes is dropped. That needs
    at least three quotes: with two that disagree nobody can tell which one is wrong, so
    both are kept and the lowest wins (the node overcharges rather than undercharges).
    """
    if len(quotes) < 3:
        return dict(quotes), {}
    median = statistics.median(quotes.values())
    kept: dict[str, Decimal] = {}
    rejected: dict[str, str] = {}
    for name, price in quotes.items():
        if abs(price - median) > median * OUTLIER_TOLERANCE:
            rejected[name] = f"ignored: {price} is more than {OUTLIER_TOLERANCE:%} from {median}"
        else:
            kept[name] = price
    return kept, rejected


@dataclass
class _Reading:
    """What one feed said last time it was asked."""

    usd_per_btc: Decimal | None = None
    error: str | None = None
    at: float | None = None  # clock() of the last answer, good or bad


class LiveRate:
    """BTC/USD from several feeds at once: the lowest sane quote, refreshed in the background.

    The lowest price means the most sats per dollar, so the node never undercharges. A price
    older than `max_age` seconds is refused (RateUnavailable → 503) rather than charged from.
    """

    def __init__(
        self,
        feeds: Sequence[Feed],
        max_age: float,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not feeds:
            raise ValueError("LiveRate needs at least one feed")
        self.feeds = list(feeds)
        self.max_age = max_age
        self.timeout = timeout
        self._clock = clock
        self._price: Decimal | None = None
        self._updated: float | None = None  # clock() when _price was combined
        self._last_round_ok = False
        self._readings = {feed.name: _Reading() for feed in self.feeds}
        self._session: aiohttp.ClientSession | None = None

    def age(self) -> float | None:
        """Seconds since the current price was combined, None before the first one."""
        return None if self._updated is None else self._clock() - self._updated

    def usd_per_btc(self) -> Decimal:
        age = self.age()
        if self._price is None or age is None:
            raise RateUnavailable("no BTC/USD price yet: none of the price sources has answered")
        if age > self.max_age:
            raise RateUnavailable(
                f"the BTC/USD price is {age:.1f} s old (limit {self.max_age:g} s) "
                "because no price source answers"
            )
        return self._price

    async def refresh(self) -> Decimal | None:
        """Ask every feed at once; keep the lowest sane quote. None if no feed gave one."""
        answers = await asyncio.gather(*(self._fetch(feed) for feed in self.feeds))
        quotes = {
            f.name: a for f, a in zip(self.feeds, answers, strict=True) if isinstance(a, Decimal)
        }
        kept, rejected = drop_outliers(quotes)
        now = self._clock()
        for feed, answer in zip(self.feeds, answers, strict=True):
            reading = self._readings[feed.name]
            error = answer if isinstance(answer, str) else rejected.get(feed.name)
            # Only changes are logged: a feed down for a day is one line, not 1440.
            if error is not None and reading.error is None:
                log.warning("BTC/USD source %s: %s", feed.name, error)
            elif error is None and reading.error is not None:
                log.info("BTC/USD source %s answers again", feed.name)
            if isinstance(answer, Decimal):
                reading.usd_per_btc = answer
            reading.error, reading.at = error, now
        was_ok, self._last_round_ok = self._last_round_ok, bool(kept)
        if not kept:
            age = self.age()
            # Warn once when the feeds go quiet, not on every retry while they stay quiet.
            log.log(
                logging.WARNING if was_ok else logging.DEBUG,
                "no BTC/USD source gave a price; the last one is %s (paid requests stop at %g s)",
                "missing" if age is None else f"{age:.0f} s old",
                self.max_age,
            )
            return None
        self._price, self._updated = min(kept.values()), now
        return self._price

    async def run(self, interval: float | Callable[[], float]) -> None:
        """Refresh every `interval` seconds until cancelled (more often while stale).

        `interval`: seconds, or a function read every round (the admin may change it).
        """
        while True:
            seconds = interval() if callable(interval) else interval
            await asyncio.sleep(seconds if self._last_round_ok else min(seconds, RETRY_SECONDS))
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any one bad round
                log.exception("BTC/USD refresh failed")

    def status(self) -> dict[str, Any]:
        """JSON-ready state for `/v1/info`: the price, its age, and each source's last answer."""
        age, now = self.age(), self._clock()
        return {
            "source": "live",
            "usd_per_btc": None if self._price is None else str(self._price),
            "age_seconds": None if age is None else round(age, 1),
            "max_age_seconds": self.max_age,
            "stale": age is None or age > self.max_age,
            "sources": {
                name: {
                    "usd_per_btc": None if r.usd_per_btc is None else str(r.usd_per_btc),
                    "error": r.error,
                    "age_seconds": None if r.at is None else round(now - r.at, 1),
                }
                for name, r in self._readings.items()
            },
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4 * len(self.feeds), ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json", "User-Agent": "satsrouter"},
            )
        return self._session

    async def _fetch(self, feed: Feed) -> Decimal | str:
        """The feed's price, or why there is none (a feed's failure is data, not an error)."""
        try:
            async with self._client().get(feed.url) as resp:
                if resp.status != 200:
                    return f"HTTP {resp.status}"
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        return "response too large"
            price = feed.parse(json.loads(body, parse_float=Decimal))
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc.__class__.__name__}"
        # Anything else is a response we cannot read (wrong shape, not JSON, not a number):
        # the feed is untrusted input and must never break the round for the others.
        except Exception as exc:
            return f"unexpected response: {exc.__class__.__name__}: {exc}"[:200]
        if not price.is_finite() or price <= 0:
            return f"absurd price {price}"
        return price
