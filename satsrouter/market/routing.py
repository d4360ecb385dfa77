"""Which provider serves a request: a public model's routes, best first.

Routes whose provider is in rotation (its circuit closed, or half-open with the trial free)
come first; among them an operator's order for the model (`routes` in the providers file)
wins, then the cheapest (prompt + completion price, as charged), then the fastest lately.
Providers out of rotation follow in the same order: when every route is out, they are still
tried rather than refusing outright.

A request may steer it the way OpenRouter's API lets it (`Preferences`, from the body's
`provider` object): `order` (provider names tried first, in that order), `only` and `ignore`
(names allowed or not), `allow_fallbacks: false` (the first route only), `sort` (`price` or
`latency` ahead of the operator's order). Names are this node's provider names, compared
without case; names it does not have are passed over (an OpenRouter upstream still gets the
whole object and applies it to its own providers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from satsrouter.errors import ApiError
from satsrouter.market.catalogue import Model

# Fields of OpenRouter's request that steer its routing. No plain OpenAI or Anthropic API
# knows them (OpenAI refuses unknown fields): only an OpenRouter-dialect upstream gets them.
ROUTING_FIELDS = ("provider", "models", "route")
SORTS = ("price", "latency", "throughput")


@dataclass(frozen=True)
class Preferences:
    """A request's own routing wishes (OpenRouter's `provider` object)."""

    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str = ""

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Preferences | None:
        """The body's `provider` object read, None without one; 400 when malformed."""
        raw = body.get("provider")
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise _invalid("`provider` must be an object")
        fallbacks = raw.get("allow_fallbacks", True)
        sort = raw.get("sort") or ""
        if not isinstance(fallbacks, bool):
            raise _invalid("`provider.allow_fallbacks` must be true or false")
        if sort not in ("", *SORTS):
            raise _invalid(f"`provider.sort` must be one of {', '.join(SORTS)}")
        only = raw.get("only")
        return cls(
            order=tuple(_names(raw, "order")),
            only=frozenset(_names(raw, "only")) if only is not None else None,
            ignore=frozenset(_names(raw, "ignore")),
            allow_fallbacks=fallbacks,
            sort=sort,
        )

    def allows(self, provider: str, known: tuple[str, ...]) -> bool:
        """Whether `provider` may serve. An `only` list naming none of the `known` providers
        is meant for an OpenRouter upstream (its own provider names): passed on, not applied."""
        name = provider.lower()
        only = self.only
        if only is not None and not only & {k.lower() for k in known}:
            only = None
        return (only is None or name in only) and name not in self.ignore


def fallback_models(body: dict[str, Any], limit: int = 5) -> list[str]:
    """The body's `models` list (OpenRouter's fallback models), checked; [] without one."""
    raw = body.get("models")
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw):
        raise _invalid("`models` must be a list of model ids")
    if len(raw) > limit:
        raise _invalid(f"`models` may name at most {limit} models")
    return list(dict.fromkeys(raw))


def _names(raw: dict[str, Any], field: str) -> list[str]:
    value = raw.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"`provider.{field}` must be a list of provider names")
    return [v.lower() for v in value]


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


class Rotation(Protocol):
    """What routing needs to know of provider health."""

    def available(self, provider: str) -> bool: ...

    def latency_ms(self, provider: str) -> float | None: ...


class Router:
    """Orders a model's routes for one request."""

    def __init__(self, health: Rotation, routes: dict[str, list[str]] | None = None) -> None:
        self.health = health
        self.routes = routes or {}  # public model id -> provider names, in the operator's order

    def rank(
        self,
        model: Model,
        price: Callable[[Model], Decimal],
        wishes: Preferences | None = None,
    ) -> list[Model]:
        """`model`'s routes, the one to try first first; `price(route)` orders by cost.

        400 when the request's `wishes` leave no route.
        """
        routes = model.routes
        if wishes is None and len(routes) == 1:
            return [routes[0]]
        if wishes is not None:
            routes = tuple(r for r in routes if wishes.allows(r.provider, model.providers))
            if not routes:
                raise _invalid(
                    f"No provider of {model.id} is allowed by the request's `provider` "
                    f"options; this node's are {', '.join(model.providers)}."
                )
        asked = wishes.order if wishes is not None else ()
        sort = wishes.sort if wishes is not None else ""
        configured = self.routes.get(model.id, [])

        def key(route: Model) -> tuple[bool, int, int, Decimal, float]:
            name = route.provider
            wished = asked.index(name.lower()) if name.lower() in asked else len(asked)
            preferred = configured.index(name) if name in configured else len(configured)
            latency = self.health.latency_ms(name)
            fast = latency if latency is not None else 0.0
            if sort == "latency":
                return (not self.health.available(name), wished, 0, Decimal(0), fast)
            if sort:  # price (or throughput, which this node does not measure: price then)
                return (not self.health.available(name), wished, 0, price(route), fast)
            return (not self.health.available(name), wished, preferred, price(route), fast)

        ranked = sorted(routes, key=key)
        if wishes is not None and not wishes.allow_fallbacks:
            return ranked[:1]
        return ranked
