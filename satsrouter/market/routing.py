"""Which provider serves a request: a public model's routes, best first.

Routes whose provider is in rotation (its circuit closed, or half-open with the trial free)
come first; among them an operator's order for the model (`routes` in the providers file)
wins, then the cheapest (prompt + completion price, as charged), then the fastest lately.
Providers out of rotation follow in the same order: when every route is out, they are still
tried rather than refusing outright.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from satsrouter.market.catalogue import Model


class Rotation(Protocol):
    """What routing needs to know of provider health."""

    def available(self, provider: str) -> bool: ...

    def latency_ms(self, provider: str) -> float | None: ...


class Router:
    """Orders a model's routes for one request."""

    def __init__(self, health: Rotation, routes: dict[str, list[str]] | None = None) -> None:
        self.health = health
        self.routes = routes or {}  # public model id -> provider names, in the operator's order

    def rank(self, model: Model, price: Callable[[Model], Decimal]) -> list[Model]:
        """`model`'s routes, the one to try first first; `price(route)` orders by cost."""
        routes = model.routes
        if len(routes) == 1:
            return [routes[0]]
        order = self.routes.get(model.id, [])

        def key(route: Model) -> tuple[bool, int, Decimal, float]:
            preferred = order.index(route.provider) if route.provider in order else len(order)
            latency = self.health.latency_ms(route.provider)
            return (
                not self.health.available(route.provider),
                preferred,
                price(route),
                latency if latency is not None else 0.0,
            )

        return sorted(routes, key=key)
