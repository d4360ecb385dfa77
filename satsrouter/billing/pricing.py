"""Prices in millisatoshis: USD-per-token prices × fee ÷ BTC/USD, rounded up per component."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal

from satsrouter.market.catalogue import PRICE_FIELDS, Model
from satsrouter.usage import UNBOUNDED_TOOL_SEARCHES, Usage

MSAT_PER_BTC = Decimal(100_000_000_000)
NO_UNITS = Usage(0, 0)  # a request that uses no per-unit component
# Priced per request / image / search rather than per token; in `sats_per_million` these are
# plain sats per unit, as the models file documents.
PER_UNIT_FIELDS = frozenset({"request", "image", "image_output", "web_search", "audio_second"})


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
    image_output: Decimal
    audio_second: Decimal

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
        if name in PER_UNIT_FIELDS and name in model.sats_per_million:
            exact = model.sats_per_million[name] * 1000  # sats per unit -> msat per unit
        elif name in model.sats_per_million:
            # sats per million tokens -> msat per token: × 1000 msat/sat ÷ 1e6 tokens
            exact = model.sats_per_million[name] / 1000
        else:
            exact = model.pricing[name] * factor
        values[name] = exact.quantize(PRICE_QUANTUM_MSAT, rounding=ROUND_CEILING).normalize()
    return MsatPrices(**values)


def with_image_price(
    prices: MsatPrices, model: Model, usd: Decimal | None, usd_per_btc: Decimal, fee: Decimal
) -> MsatPrices:
    """`prices` with `image_output` set to one image variant's USD price (size/quality)."""
    if usd is None:
        return prices
    factor = (model.fee or fee) * MSAT_PER_BTC / usd_per_btc
    exact = (usd * factor).quantize(PRICE_QUANTUM_MSAT, rounding=ROUND_CEILING).normalize()
    return replace(prices, image_output=exact)


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
    image_msats: int = 0
    web_search_msats: int = 0
    audio_msats: int = 0

    @property
    def total_msats(self) -> int:
        return (
            self.input_msats
            + self.output_msats
            + self.request_msats
            + self.image_msats
            + self.web_search_msats
            + self.audio_msats
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "total_msats": self.total_msats,
            "input_msats": self.input_msats,
            "output_msats": self.output_msats,
            "request_msats": self.request_msats,
            "image_msats": self.image_msats,
            "web_search_msats": self.web_search_msats,
            "audio_msats": self.audio_msats,
        }


def usage_cost(prices: MsatPrices, usage: Usage) -> Cost:
    """Exact cost of `usage`; each component (input, output, ...) rounded up to the msat once."""
    # Missing cache/reasoning prices mean "no discount / no surcharge": charge them like
    # ordinary tokens so the node never undercharges.
    cache_read = prices.input_cache_read or prices.prompt
    cache_write = prices.input_cache_write or prices.prompt
    plain_prompt = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    # One rounding per component, not per part: the reservation prices every prompt token at
    # the dearest input price and rounds once, so a usage split into cached, cache-write and
    # plain parts can never round past it (three separate roundings could, by 2 msat).
    input_msats = ceil_msat(
        plain_prompt * prices.prompt
        + usage.cached_tokens * cache_read
        + usage.cache_write_tokens * cache_write
    )
    if prices.internal_reasoning:
        output_msats = ceil_msat(
            (usage.completion_tokens - usage.reasoning_tokens) * prices.completion
            + usage.reasoning_tokens * prices.internal_reasoning
        )
    else:
        output_msats = ceil_msat(usage.completion_tokens * prices.completion)
    return Cost(
        input_msats,
        output_msats,
        ceil_msat(prices.request),
        ceil_msat(usage.images * prices.image)
        # Made images: `image_output` when the model prices them apart, else `image`.
        + ceil_msat(usage.generated_images * (prices.image_output or prices.image)),
        ceil_msat(usage.web_searches * prices.web_search),
        ceil_msat(usage.audio_seconds * prices.audio_second),
    )


def completion_budget(model: Model, requested: int | None, prompt_estimate: int = 0) -> int:
    """Most completion tokens a request may produce (RIP-05): its max_tokens, capped by the
    model, and by the context left after `prompt_estimate` (a lower estimate); at least 1."""
    cap = model.max_completion_tokens or model.context_length
    budget = min(requested, cap) if requested is not None and requested > 0 else cap
    return max(1, min(budget, model.context_length - prompt_estimate))


def max_request_cost(
    prices: MsatPrices,
    model: Model,
    prompt_bound: int,
    max_tokens: int | None,
    *,
    prompt_estimate: Callable[[int], int] | None = None,
    units: Usage = NO_UNITS,
    choices: int = 1,
    prompts: int = 1,
) -> int:
    """The reservation for one request: the most it can cost.

    `prompt_bound` is an upper bound on prompt tokens (the request's byte length works for
    text: a token is at least one byte), capped at the context window of each of the
    request's `prompts` (a batch of completions prompts or embeddings inputs: each fills a
    context of its own). `prompt_estimate` returns a *lower* estimate of the prompt, called
    with the context length (past which it may stop counting) only when it can shorten the
    completion budget of a single prompt. `units` holds the most of each per-unit component
    the request can use (images carried in and made, web searches, audio seconds); its token
    counts are ignored. `choices` is how many completions the request asks for in all (`n`,
    `best_of`, times the prompts of a batch): each may use the whole completion budget, and
    the prompt is reserved once, as OpenAI bills it (usage counts the completions of all
    choices, the prompt once).
    """
    contexts = model.context_length * max(prompts, 1)
    if units.images or units.web_searches:
        # Images sent by URL and search results both enter the prompt without being in the
        # request's bytes: only the context window bounds the prompt then.
        prompt_tokens = contexts
    else:
        prompt_tokens = min(max(prompt_bound, 1), contexts)
    budget = completion_budget(model, max_tokens)
    # Counting costs time; skip it unless it can matter. Any estimate is at most the bytes,
    # so when context - bytes already leaves the whole budget, no estimate can reduce it.
    # A batch's estimate would be the sum of its prompts, while each completion follows its
    # own prompt: it could cut every budget when none should be.
    if (
        prompt_estimate is not None
        and prompts <= 1
        and model.context_length - max(prompt_bound, 0) < budget
    ):
        estimate = min(max(prompt_estimate(model.context_length), 0), max(prompt_bound, 0))
        budget = completion_budget(model, max_tokens, estimate)
    completion_tokens = budget * max(choices, 1)
    # Reasoning may be priced above completion; reserve for the dearer of the two.
    reasoning = completion_tokens if prices.internal_reasoning > prices.completion else 0
    # Likewise every prompt token at the dearest input price: cache writes cost more than
    # plain prompt tokens at some providers (Anthropic: 1.25x), and settle caps a charge at
    # the reservation, so a cheaper reservation would undercharge.
    dearest_input = max(prices.prompt, prices.input_cache_read, prices.input_cache_write)
    worst = usage_cost(
        replace(prices, prompt=dearest_input),
        replace(
            units,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=0,
            cache_write_tokens=0,
            reasoning_tokens=reasoning,
        ),
    )
    return worst.total_msats


def model_max_cost(prices: MsatPrices, model: Model) -> int:
    """The most a request to this model can cost, in msat (published as `max_cost`).

    The full context as prompt, the model's whole completion limit, and, when the model
    prices web search, the searches reserved for a search tool without a bound. Each image
    a request carries adds the `image` price, and a request that allows more searches adds
    the `web_search` price per search: its own reservation says so (402 `Required`).
    """
    searches = UNBOUNDED_TOOL_SEARCHES if prices.web_search else 0
    units = Usage(0, 0, web_searches=searches)
    return max_request_cost(prices, model, model.context_length, None, units=units)
