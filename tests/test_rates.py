"""BTC/USD rate from live feeds served by a local server: combination, failures, staleness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import BTC_USD, NodeFactory, RunningNode, expected_cost, model_entry
from satsrouter_dev.mint import TestWallet, free_port

from satsrouter.market.rates import (
    FEEDS,
    Feed,
    LiveRate,
    RateUnavailable,
    drop_outliers,
    select_feeds,
)
from satsrouter.settings import Settings, SettingsError

MESSAGES = [{"role": "user", "content": "what does a sat buy"}]


def ticker(name: str, price: Decimal) -> Any:
    """The JSON each real API answers with (trimmed), carrying `price`."""
    s, n = str(price), float(price)
    return {
        "coinbase": {"data": {"amount": s, "base": "BTC", "currency": "USD"}},
        "kraken": {
            "error": [],
            "result": {"XXBTZUSD": {"a": [s, "1", "1.000"], "c": [s, "0.0012"], "v": ["1", "2"]}},
        },
        "bitstamp": {"timestamp": "1700000000", "last": s, "bid": s, "ask": s},
        "binance": {"symbol": "BTCUSDT", "price": s},
        "coingecko": {"bitcoin": {"usd": n}},  # a JSON number, not a string
        "blockchain": {
            "USD": {"15m": n, "last": n, "buy": n, "sell": n, "symbol": "$"},
            "EUR": {"15m": 1.0, "last": 1.0, "buy": 1.0, "sell": 1.0, "symbol": "€"},
        },
    }[name]


class FakeFeeds:
    """One local server answering every feed's ticker path; each feed scriptable on its own."""

    def __init__(self) -> None:
        self.prices: dict[str, Decimal] = {}
        self.down: set[str] = set()  # answer 503
        self.hang: set[str] = set()  # never answer
        self.raw: dict[str, Any] = {}  # answer this JSON instead of a ticker
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # releases hanging handlers so shutdown is quick
        self._paths = {feed.path.split("?")[0]: name for name, feed in FEEDS.items()}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = self._paths[request.path]
        if name in self.hang:
            await self._closing.wait()
        if name in self.down or (name not in self.prices and name not in self.raw):
            return web.json_response({"message": "maintenance"}, status=503)
        if name in self.raw:
            return web.json_response(self.raw[name])
        return web.json_response(ticker(name, self.prices[name]))

    def feeds(self, *names: str) -> list[Feed]:
        return select_feeds({name: self.url for name in names})

    async def start(self) -> None:
        app = web.Application()
        for path in self._paths:
            app.router.add_get(path, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest_asyncio.fixture
async def feeds() -> AsyncIterator[FakeFeeds]:
    fake = FakeFeeds()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def make_rate() -> AsyncIterator[Callable[..., LiveRate]]:
    rates: list[LiveRate] = []

    def make(feeds: list[Feed], max_age: float = 600, **kw: Any) -> LiveRate:
        rates.append(LiveRate(feeds, max_age, **kw))
        return rates[-1]

    yield make
    for rate in rates:
        await rate.close()


async def test_every_feed_shape_is_read_exactly(
    feeds: FakeFeeds, make_rate: Callable[..., LiveRate]
) -> None:
    for name in FEEDS:
        feeds.prices = {name: Decimal("97123.45")}
        rate = make_rate(feeds.feeds(name))
        assert await rate.refresh() == Decimal("97123.45"), name
        assert rate.usd_per_btc() == Decimal("97123.45")


async def test_lowest_quote_wins(feeds: FakeFeeds, make_rate: Callable[..., LiveRate]) -> None:
    feeds.prices = {
        "coinbase": Decimal("100200"),
        "kraken": Decimal("100400.1"),
        "bitstamp": Decimal("99950.5"),
        "binance": Decimal("100300"),
    }
    rate = make_rate(feeds.feeds(*feeds.prices))
    assert await rate.refresh() == Decimal("99950.5")
    assert rate.usd_per_btc() == Decimal("99950.5")
    status = rate.status()
    assert status["usd_per_btc"] == "99950.5" and status["stale"] is False
    assert status["sources"]["kraken"] == {
        "usd_per_btc": "100400.1",
        "error": None,
        "age_seconds": 0.0,
    }


async def test_sources_down_are_skipped(
    feeds: FakeFeeds, make_rate: Callable[..., LiveRate]
) -> None:
    feeds.prices = {name: Decimal(100_000 + i) for i, name in enumerate(FEEDS)}
    feeds.down = {"coinbase"}  # the lowest one, so the answer shows it was skipped
    feeds.hang = {"kraken"}
    refused = select_feeds({"bitstamp": f"http://127.0.0.1:{free_port()}"})  # nothing listens
    rate = make_rate(
        [*feeds.feeds("coinbase", "kraken"), *refused, *feeds.feeds("binance", "coingecko")],
        timeout=0.5,
    )
    assert await rate.refresh() == feeds.prices["binance"]
    errors = {name: s["error"] for name, s in rate.status()["sources"].items()}
    assert errors == {
        "coinbase": "HTTP 503",
        "kraken": "no answer within 0.5 s",
        "bitstamp": "unreachable: ClientConnectorError",
        "binance": None,
        "coingecko": None,
    }


async def test_absurd_quotes_are_ignored(
    feeds: FakeFeeds, make_rate: Callable[..., LiveRate]
) -> None:
    feeds.prices = {
        "coinbase": Decimal("1.5"),  # far below the median of the others: a broken feed
        "kraken": Decimal(100_000),
        "bitstamp": Decimal(100_500),
        "binance": Decimal(0),
    }
    feeds.raw = {"coingecko": {"status": {"error_code": 429}}, "blockchain": {"USD": {"last": "x"}}}
    rate = make_rate(feeds.feeds(*FEEDS))
    assert await rate.refresh() == Decimal(100_000)
    sources = rate.status()["sources"]
    assert sources["coinbase"]["error"].startswith("ignored: 1.5 is more than 10%")
    assert sources["binance"]["error"] == "absurd price 0"
    assert sources["coingecko"]["error"].startswith("unexpected response: KeyError")
    assert sources["blockchain"]["error"].startswith("unexpected response: InvalidOperation")


def test_outlier_rule_needs_three_quotes() -> None:
    # Two quotes that disagree: nobody can tell which is wrong, so both stay (lowest wins).
    two = {"a": Decimal(100_000), "b": Decimal(50_000)}
    assert drop_outliers(two) == (two, {})
    kept, rejected = drop_outliers({**two, "c": Decimal(101_000)})
    assert kept == {"a": Decimal(100_000), "c": Decimal(101_000)} and set(rejected) == {"b"}
    # Within 10% of the median is normal disagreement between exchanges.
    close = {"a": Decimal(100_000), "b": Decimal(91_000), "c": Decimal(100_100)}
    assert drop_outliers(close) == (close, {})


async def test_all_down_keeps_price_until_max_age(
    feeds: FakeFeeds, make_rate: Callable[..., LiveRate]
) -> None:
    clock = Clock()
    feeds.prices = {"coinbase": Decimal(100_000), "kraken": Decimal(100_100)}
    rate = make_rate(feeds.feeds("coinbase", "kraken"), max_age=600, clock=clock)
    with pytest.raises(RateUnavailable, match="no BTC/USD price yet"):
        rate.usd_per_btc()
    await rate.refresh()

    feeds.down = {"coinbase", "kraken"}
    clock.now += 300
    assert await rate.refresh() is None
    assert rate.usd_per_btc() == Decimal(100_000)  # still within the limit
    clock.now += 300
    assert rate.usd_per_btc() == Decimal(100_000)  # exactly at the limit
    clock.now += 0.5
    with pytest.raises(RateUnavailable, match=r"600\.5 s old \(limit 600 s\)"):
        rate.usd_per_btc()
    assert rate.status()["stale"] is True
    assert rate.status()["sources"]["kraken"] == {
        "usd_per_btc": "100100",
        "error": "HTTP 503",
        "age_seconds": 300.5,
    }

    feeds.down = set()
    assert await rate.refresh() == Decimal(100_000)
    assert rate.usd_per_btc() == Decimal(100_000)


async def test_run_loop_follows_the_price(
    feeds: FakeFeeds, make_rate: Callable[..., LiveRate]
) -> None:
    feeds.prices = {"bitstamp": Decimal(100_000)}
    rate = make_rate(feeds.feeds("bitstamp"))
    task = asyncio.create_task(rate.run(0.05))
    try:
        await wait_until(lambda: _price_or_none(rate) == Decimal(100_000))
        feeds.prices = {"bitstamp": Decimal(90_000)}
        await wait_until(lambda: _price_or_none(rate) == Decimal(90_000))
    finally:
        task.cancel()


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "BTC_USD_SOURCES": "Kraken, coinbase=http://127.0.0.1:8001/",
            "BTC_USD_REFRESH_SECONDS": "30",
            "BTC_USD_MAX_AGE_SECONDS": "300",
        }
    )
    assert s.btc_usd_sources == {"kraken": "", "coinbase": "http://127.0.0.1:8001"}
    assert (s.btc_usd_refresh_seconds, s.btc_usd_max_age_seconds) == (30.0, 300.0)
    assert [(f.name, f.url) for f in select_feeds(s.btc_usd_sources)] == [
        ("kraken", "https://api.kraken.com/0/public/Ticker?pair=XBTUSD"),
        ("coinbase", "http://127.0.0.1:8001/v2/prices/BTC-USD/spot"),
    ]
    assert select_feeds(Settings.from_env({}).btc_usd_sources) == list(FEEDS.values())
    with pytest.raises(SettingsError, match=r"unknown BTC/USD source.*mtgox"):
        Settings.from_env({"BTC_USD_SOURCES": "kraken,mtgox=http://x"})
    with pytest.raises(SettingsError, match="BTC_USD_MAX_AGE_SECONDS"):
        Settings.from_env({"BTC_USD_REFRESH_SECONDS": "60", "BTC_USD_MAX_AGE_SECONDS": "60"})


async def test_stale_rate_refuses_paid_requests_and_charges_nothing(
    feeds: FakeFeeds, node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    # The lowest quote is the suite's usual BTC_USD, so the usual expected costs apply.
    feeds.prices = {
        "coinbase": BTC_USD + 250,
        "kraken": BTC_USD,
        "bitstamp": BTC_USD + 500,
    }
    node = await node_factory(
        btc_usd_price=None,
        btc_usd_sources={name: feeds.url for name in feeds.prices},
        btc_usd_refresh_seconds=0.1,
        btc_usd_max_age_seconds=0.5,
    )
    rate = node.node.rate
    assert isinstance(rate, LiveRate) and rate.usd_per_btc() == BTC_USD  # fetched at start
    (token,) = await user_wallet.mint_tokens(100)
    api = openai.AsyncOpenAI(base_url=node.api, api_key=token, max_retries=0)
    reply = await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=5)
    assert reply.usage is not None
    cost = expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )
    assert (await node.balance(token))["balance"] == 100_000 - cost

    feeds.down = set(feeds.prices)
    await wait_until(lambda: _price_or_none(rate) is None)
    with pytest.raises(openai.APIStatusError) as refused:
        await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=5)
    assert refused.value.status_code == 503
    assert refused.value.type == "price_unavailable"
    assert "old" in refused.value.message and "Paid requests are paused" in refused.value.message
    info = await node.balance(token)
    assert (info["balance"], info["reserved"]) == (100_000 - cost, 0)
    await node.check_invariants()

    # The feeds come back: the background loop picks the price up and requests are served.
    feeds.down = set()
    await wait_until(lambda: _price_or_none(rate) == BTC_USD)
    await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=5)
    await node.check_invariants()


async def test_node_starts_with_every_feed_down(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    node: RunningNode = await node_factory(
        btc_usd_price=None, btc_usd_sources={"kraken": f"http://127.0.0.1:{free_port()}"}
    )
    rate = node.node.rate
    assert isinstance(rate, LiveRate)
    with pytest.raises(RateUnavailable, match="no BTC/USD price yet"):
        rate.usd_per_btc()
    (token,) = await user_wallet.mint_tokens(50)
    api = openai.AsyncOpenAI(base_url=node.api, api_key=token, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=5)
    assert (refused.value.status_code, refused.value.type) == (503, "price_unavailable")
    assert (await node.balance(token))["balance"] == 50_000
    await node.check_invariants()


def _price_or_none(rate: LiveRate) -> Decimal | None:
    try:
        return rate.usd_per_btc()
    except RateUnavailable:
        return None


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
