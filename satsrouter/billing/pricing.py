"""Prices in millisatoshis: USD-per-token prices × fee ÷ BTC/USD, rounded up per component."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from satsrouter.billing.metering import Usage
from satsrouter.market.catalogue import PRICE_FIELDS, Model

MSAT_PER_BTC = Decimal(100_000_000_000)


def ceil_msat(value: Decimal) -> int:
    """Round a Decimal amount of msat up to a whole msat (in the node's favour)."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class MsatPrices:
    """A model's prices in msat per token (or per unit), exact Decimals."""

    prompt: Decimal
    completion: Decimal
    request: Decimal
    image: Decimal
    web_search: Decimal
    internal_reasoning: Decimal
    input_cache_read: Decimal
    input_cache_write: Decimal

    def as_sats(self) -> dict[str, float]:
        """The same prices in sats per token or unit, for publishing (`sats_pricing`).

        Exact: the msat prices have at most 9 decimal places, so these floats have at most
        12 and print back as the same decimals.
        """
        return {name: float(getattr(self, name) / 1000) for name in PRICE_FIELDS}


# Published prices are exact decimals with at most 12 places in sats (9 in msat): few
# enough significant digits that a JSON number round-trips them exactly, so what a client
# reads in `sats_pricing` is exactly what it is charged.
PRICE_QUANTUM_MSAT = Decimal("1e-9")


def msat_prices(model: Model, usd_per_btc: Decimal, fee: Decimal) -> MsatPrices:
    """A model's prices in msat at this rate: USD × fee, or the operator's sats prices.

    Each price is rounded up to 1e-9 msat (in the node's favour, by less than that).
    """
    factor = (model.fee or fee) * MSAT_PER_BTC / usd_per_btc
    values: dict[str, Decimal] = {}
    for name in PRICE_FIELDS:
        if name in model.sats_per_million:
            # sats per million tokens -> msat per token: × 1000 msat/sat ÷ 1e6 tokens
            exact = model.sats_per_million[name] / 1000
        else:
            exact = model.pricing[name] * factor
        values[name] = exact.quantize(PRICE_QUANTUM_MSAT, rounding=ROUND_CEILING).normalize()
    return MsatPrices(**values)


def usd_prices(prices: MsatPrices, usd_per_btc: Decimal) -> dict[str, str]:
    """The same prices in USD per token/unit, as OpenRouter-style strings (what is charged)."""
    return {
        name: format((getattr(prices, name) * usd_per_btc / MSAT_PER_BTC).normalize(), "f")
        for name in PRICE_FIELDS
    }


@dataclass(frozen=True)
class Cost:
    """What one request costs, in msat, split the way `usage.cost` publishes it."""

    input_msats: int
    output_msats: int
    request_msats: int

    @property
    def total_msats(self) -> int:
        return self.input_msats + self.output_msats + self.request_msats

    def as_dict(self) -> dict[str, int]:
        return {
            "total_msats": self.total_msats,
            "input_msats": self.input_msats,
            "output_msats": self.output_msats,
            "request_msats": self.request_msats,
        }


def usage_cost(prices: MsatPrices, usage: Usage) -> Cost:
    """Exact cost of `usage`; each component rounded up to the msat."""
    # Missing cache/reasoning prices mean "no discount / no surcharge": charge them like
    # ordinary tokens so the node never undercharges.
    cache_read = prices.input_cache_read or prices.prompt
    cache_write = prices.input_cache_write or prices.prompt
    plain_prompt = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    input_msats = (
        ceil_msat(plain_prompt * prices.prompt)
        + ceil_msat(usage.cached_tokens * cache_read)
        + ceil_msat(usage.cache_write_tokens * cache_write)
    )
    if prices.internal_reasoning:
        output_msats = ceil_msat(
            (usage.completion_tokens - usage.reasoning_tokens) * prices.completion
        ) + ceil_msat(usage.reasoning_tokens * prices.internal_reasoning)
    else:
        output_msats = ceil_msat(usage.completion_tokens * prices.completion)
    return Cost(input_msats, output_msats, ceil_msat(prices.request))


def completion_budget(model: Model, requested: int | None) -> int:
    """Most completion tokens a request may produce: its max_tokens, capped by the model."""
    cap = model.max_completion_tokens or model.context_length
    if requested is not None and requested > 0:
        return min(requested, cap)
    return cap


def max_request_cost(
    prices: MsatPrices, model: Model, prompt_bound: int, max_tokens: int | None
) -> int:
    """The reservation for one request: the most it can cost (prompt bound + completion budget).

    `prompt_bound` is an upper bound on prompt tokens (the request's byte length works: a
    token is at least one byte), capped at the context window.
    """
    prompt_tokens = min(max(prompt_bound, 1), model.context_length)
    usage = Usage(prompt_tokens, completion_budget(model, max_tokens))
    worst = usage_cost(prices, usage)
    # Reasoning may be priced above completion; reserve for the dearer of the two.
    if prices.internal_reasoning > prices.completion:
        worst = usage_cost(
            prices, Usage(prompt_tokens, usage.completion_tokens, 0, 0, usage.completion_tokens)
        )
    return worst.total_msats


def model_max_cost(prices: MsatPrices, model: Model) -> int:
    """The most any request to this model can cost, in msat (published as `max_cost`)."""
    return max_request_cost(prices, model, model.context_length, None)
