"""The node's Prometheus metrics (`GET /metrics`): counted as requests go, the books read at scrape.

Each node has its own `CollectorRegistry` (tests run many nodes in one process; the global
registry would mix them). On the hot path a paid request costs one dict lookup, a counter
increment and a histogram observation, made by `RequestMetrics` around the app. What needs
the database — reservations, liabilities, the node's ecash per mint — is read in one
`TxRunner.read` when Prometheus scrapes, never while serving.

Labels stay bounded: endpoints are the paid routes; a model label is a catalogue model's id
(set by the handler once the request is priced), else `other`; providers and mints are the
configured ones; mint operations have their ids replaced.

With `serve --workers N` each worker process counts its own requests, and a scrape reaches
one of them: the counters are per process; the figures read from the database are the
node's whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satsrouter import __version__
from satsrouter.store.tx import Tx, TxRunner

OTHER_MODEL = "other"

# An LLM answer takes from tens of milliseconds (cached, short) to minutes (long streams).
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# A swap at a nearby mint takes a few milliseconds; a melt waits on Lightning.
MINT_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")

_RESERVATIONS = (
    "SELECT count(*), coalesce(sum(amount_msat), 0) FROM reservations WHERE state = 'active'"
)
_LIABILITIES = "SELECT coalesce(sum(balance_msat), 0) FROM accounts"
_PAYOUTS_IN_FLIGHT = "SELECT coalesce(sum(amount_msat), 0) FROM payouts WHERE state = 'pending'"
# As the audit counts it: proofs held, whether free or reserved for a payout or swap.
_HELD = (
    "SELECT mint_url, unit, coalesce(sum(amount), 0) FROM wallet_proofs "
    "WHERE state IN ('unspent', 'reserved') GROUP BY mint_url, unit"
)
_MSAT = {"sat": 1000, "msat": 1}


@dataclass(frozen=True)
class Books:
    """What the database says at one moment: money owed and held, requests in flight."""

    reservations_active: int = 0
    reserved_msat: int = 0
    liabilities_msat: int = 0  # users' balances, what is reserved included
    payouts_in_flight_msat: int = 0
    held_msat: dict[str, int] = field(default_factory=dict)  # per mint


def books_tx(tx: Tx) -> Books:
    """Read the books in one transaction."""
    rows, _ = tx.execute(_RESERVATIONS, {})
    count, reserved = rows[0]
    liabilities = int(tx.execute(_LIABILITIES, {})[0][0][0])
    in_flight = int(tx.execute(_PAYOUTS_IN_FLIGHT, {})[0][0][0])
    held: dict[str, int] = {}
    for mint, unit, amount in tx.execute(_HELD, {})[0]:
        held[mint] = held.get(mint, 0) + int(amount) * _MSAT.get(unit, 1)
    return Books(int(count), int(reserved), liabilities, in_flight, held)


class _BooksCollector(Collector):
    """Gauges from the last `Books` read (refreshed just before each scrape is rendered)."""

    def __init__(self) -> None:
        self.books: Books | None = None

    def collect(self) -> Iterator[Metric]:
        books = self.books
        if books is None:
            return
        yield _gauge(
            "satsrouter_reservations_active",
            "Paid requests holding a reservation now",
            books.reservations_active,
        )
        yield _gauge(
            "satsrouter_reserved_msat", "Sum of active reservations (msat)", books.reserved_msat
        )
        yield _gauge(
            "satsrouter_liabilities_msat",
            "Users' balances, reservations included: what the node owes (msat)",
            books.liabilities_msat,
        )
        yield _gauge(
            "satsrouter_payouts_in_flight_msat",
            "Payouts debited from balances but not yet sent (msat)",
            books.payouts_in_flight_msat,
        )
        held = GaugeMetricFamily(
            "satsrouter_ecash_held_msat",
            "Ecash the node holds per mint, by its database (msat)",
            labels=["mint"],
        )
        for mint, msat in sorted(books.held_msat.items()):
            held.add_metric([mint], msat)
        yield held


class _CircuitsCollector(Collector):
    """`satsrouter_provider_circuit_open`: read from the providers' health at each scrape."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, str]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        family = GaugeMetricFamily(
            "satsrouter_provider_circuit_open",
            "1 while a provider's circuit is not closed (open, or half-open: one trial at a "
            "time), else 0",
            labels=["provider"],
        )
        for provider, circuit in sorted(self.source().items()):
            family.add_metric([provider], 0 if circuit == "closed" else 1)
        yield family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """One node's metrics: its registry, the hot-path recorders, and the scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, tx: TxRunner) -> None:
        self._tx = tx
        self.registry = CollectorRegistry()
        labels = ["endpoint", "model", "status"]
        self.requests = Counter(
            "satsrouter_requests",
            "Paid-endpoint requests answered, by endpoint, model and status class",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "satsrouter_request_duration_seconds",
            "Paid-endpoint requests, from arrival to the last byte of the answer",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "satsrouter_upstream_errors",
            "Upstream failures on paid requests, by provider and kind (rate_limited, rejected, "
            "server_error, timeout, transport, unreadable, stream)",
            ["provider", "kind"],
            registry=self.registry,
        )
        self.mint_calls = Histogram(
            "satsrouter_mint_request_duration_seconds",
            "HTTP calls to the node's mints, until the mint's answer starts",
            ["mint", "operation", "outcome"],
            buckets=MINT_BUCKETS,
            registry=self.registry,
        )
        self.admin_login_failures = Counter(
            "satsrouter_admin_login_failures",
            "Admin password checks refused: wrong_password, or rate_limited",
            ["reason"],
            registry=self.registry,
        )
        info = GaugeMetricFamily("satsrouter_build_info", "The node's version", labels=["version"])
        info.add_metric([__version__], 1)
        self.registry.register(_Constant([info]))
        self._books = _BooksCollector()
        self.registry.register(self._books)
        self._circuits = _CircuitsCollector()
        self.registry.register(self._circuits)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """Count one answered paid request and its duration."""
        key = (endpoint, model, status // 100)
        children = self._children.get(key)
        if children is None:
            cls = _STATUS_CLASSES[key[2]] if 0 <= key[2] < len(_STATUS_CLASSES) else "5xx"
            children = (
                self.requests.labels(endpoint, model, cls),
                self.latency.labels(endpoint, model, cls),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_error(self, provider: str, kind: str) -> None:
        """Count one upstream failure of a paid request."""
        self.upstream_errors.labels(provider, kind).inc()

    def watch_circuits(self, source: Callable[[], Mapping[str, str]]) -> None:
        """Where the scrape reads each provider's circuit (`closed`, `open`, `half_open`)."""
        self._circuits.source = source

    def mint_call(self, mint: str, operation: str, outcome: str, seconds: float) -> None:
        """Time one HTTP call to a mint (the wallet's `MintCallObserver`)."""
        self.mint_calls.labels(mint, operation, outcome).observe(seconds)

    def admin_login_failed(self, reason: str) -> None:
        """Count one refused admin password check."""
        self.admin_login_failures.labels(reason).inc()

    async def exposition(self) -> bytes:
        """Read the books (one read transaction), then render every metric as Prometheus text."""
        self._books.books = await self._tx.read(books_tx)
        return generate_latest(self.registry)


class _Constant(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


class RequestMetrics:
    """ASGI middleware: time and count each request to a paid endpoint (`paths`: path → label).

    Other paths pass through untouched. The status is the answer's; a request that raised
    before answering counts as 500. The model is what the handler left in the request's
    state under `model_key` (a catalogue id, once the request is priced), else `other`.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, paths: Mapping[str, str], model_key: str
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = dict(paths)
        self.model_key = model_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.paths.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            state = scope.get("state")
            model = state.get(self.model_key, OTHER_MODEL) if state else OTHER_MODEL
            self.metrics.observe_request(endpoint, model, status, time.perf_counter() - started)
