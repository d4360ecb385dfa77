"""Pricing a request before it runs, and its real cost after (shared by every endpoint)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any

from satsrouter.billing.pricing import (
    NO_UNITS,
    Cost,
    MsatPrices,
    max_request_cost,
    model_max_cost,
    msat_prices,
    usage_cost,
    with_image_price,
)
from satsrouter.errors import ApiError
from satsrouter.market.catalogue import Catalogue, Model, UnknownModel
from satsrouter.market.rates import RateSource, RateUnavailable
from satsrouter.usage import Usage


@dataclass(frozen=True)
class Quote:
    """A model with its msat prices at the current rate, and this request's reservation.

    For a model several providers serve, `model` and `prices` are first the dearest route's
    (what is reserved); `PriceBook.served` swaps in the provider that serves.
    """

    model: Model
    prices: MsatPrices
    max_cost_msat: int
    image_variant: tuple[Any, Any] | None = None  # (size, quality) of images made

    def cost(self, usage: Usage) -> Cost:
        return usage_cost(self.prices, usage)


class PriceBook:
    """Model prices in msat at the current BTC/USD rate and fee, cached per rate."""

    def __init__(self, catalogue: Catalogue, rate: RateSource, fee: Decimal) -> None:
        self.catalogue = catalogue
        self.rate = rate
        self._fee = fee
        self._cache: dict[tuple[str, str, int, Decimal], MsatPrices] = {}

    @property
    def fee(self) -> Decimal:
        """The multiplier on upstream prices (a model's own `fee` wins over it)."""
        return self._fee

    @fee.setter
    def fee(self, fee: Decimal) -> None:
        # The admin changed it: the next quote must be priced with it, not from the cache.
        if fee != self._fee:
            self._fee = fee
            self._cache = {}

    def usd_per_btc(self) -> Decimal:
        try:
            return self.rate.usd_per_btc()
        except RateUnavailable as exc:
            raise ApiError(503, "price_unavailable", f"{exc}. Paid requests are paused.") from exc

    def prices(self, model: Model) -> MsatPrices:
        """The model's msat prices now (cached until the rate changes).

        A model several providers serve costs, per price field, the most any of them charges.
        """
        usd = self.usd_per_btc()
        key = (model.id, model.provider, len(model.candidates), usd)
        prices = self._cache.get(key)
        if prices is None or len(self._cache) > 10_000:
            if len(self._cache) > 10_000:
                self._cache.clear()
            if model.candidates:
                prices = dearest([self.prices(m) for m in model.candidates])
            else:
                prices = msat_prices(model, usd, self.fee)
            self._cache[key] = prices
        return prices

    def route_price(self, route: Model) -> Decimal:
        """What ranks routes by cost: a prompt token plus a completion token, in msat."""
        prices = self.prices(route)
        return prices.prompt + prices.completion

    def served(self, quote: Quote, route: Model) -> Quote:
        """The quote as charged when `route` (one of its model's providers) serves it: that
        provider's prices, the same reservation."""
        if route is quote.model:
            return quote
        prices = self.prices(route)
        if quote.image_variant is not None:
            variant = route.image_variant(*quote.image_variant)
            prices = with_image_price(prices, route, variant, self.usd_per_btc(), self.fee)
        return replace(quote, model=route, prices=prices)

    def model(self, model_id: Any) -> Model:
        """Resolve a requested model id or alias; 404 `model_not_found` naming close matches."""
        if not isinstance(model_id, str) or not model_id:
            raise ApiError(400, "invalid_request", "The request needs a `model`.")
        try:
            return self.catalogue.resolve(model_id)
        except UnknownModel as exc:
            if exc.ambiguous:
                raise ApiError(
                    400,
                    "ambiguous_model",
                    f"{model_id!r} could mean {', '.join(exc.candidates)}; use the full id.",
                ) from None
            hint = f" Did you mean {', '.join(exc.candidates)}?" if exc.candidates else ""
            raise ApiError(
                404,
                "model_not_found",
                f"Model {model_id!r} is not served here.{hint} GET /v1/models lists them.",
            ) from None

    def quote(
        self,
        model_id: Any,
        prompt_bound: int,
        max_tokens: int | None,
        *,
        prompt_estimate: Callable[[int], int] | None = None,
        units: Usage = NO_UNITS,
        image_size: Any = None,
        image_quality: Any = None,
        choices: int = 1,
        prompts: int = 1,
    ) -> Quote:
        """Price a request: its model, prices, and the most it may cost (the reservation).

        `prompt_estimate` (e.g. `lambda context: estimate_prompt_tokens(body, context)`) is
        called, with the model's context length, only when the prompt may be long enough to
        shorten the completion budget (RIP-05); `images` and `web_searches` are what the
        request may use (`count_input_images`, `reserved_web_searches`); `choices` how many
        completions it asks for (each may use the whole completion budget); `prompts` how
        many prompts a batch carries (each may fill the context).
        """
        model = self.model(model_id)
        prices = self.prices(model)
        image_variant = None
        if units.generated_images:
            image_variant = (image_size, image_quality)
            prices = dearest(
                [
                    with_image_price(
                        self.prices(route),
                        route,
                        route.image_variant(image_size, image_quality),
                        self.usd_per_btc(),
                        self.fee,
                    )
                    for route in model.routes
                ]
            )
        reservation = max_request_cost(
            prices,
            model,
            prompt_bound,
            max_tokens,
            prompt_estimate=prompt_estimate,
            units=units,
            choices=choices,
            prompts=prompts,
        )
        return Quote(model, prices, reservation, image_variant)

    def max_cost(self, model: Model) -> int:
        """The most any request to `model` can cost, in msat (`max_cost` in /v1/models)."""
        return model_max_cost(self.prices(model), model)


def dearest(options: list[MsatPrices]) -> MsatPrices:
    """Each price field's highest value among `options`: covers whichever one is charged."""
    if len(options) == 1:
        return options[0]
    # A zero cache, reasoning or made-image price means "as the prompt / completion / input
    # image": compare what each option really charges, or a 0 would lose to a small price.
    effective = [
        replace(
            p,
            input_cache_read=p.input_cache_read or p.prompt,
            input_cache_write=p.input_cache_write or p.prompt,
            internal_reasoning=p.internal_reasoning or p.completion,
            image_output=p.image_output or p.image,
        )
        for p in options
    ]
    return MsatPrices(
        **{f.name: max(getattr(p, f.name) for p in effective) for f in fields(MsatPrices)}
    )
