"""Property tests of the money arithmetic: pricing (msat, rounding, reservations) and the
ledger (random sequences of every balance movement, on a real SQLite database).

Pricing: each component is rounded up, never down and by less than 1 msat; cost never falls
as tokens grow; published sats prices are exact; a request's reservation covers any usage
within its own limits. Ledger: whatever the order of reserve / settle (at any cost, above
the reservation too) / release / top-up / payout, and child keys spending within a limit,
no balance or available balance goes negative, every account's balance equals the sum of
its journal, the books add up to credits − charges − payouts to the msat, and nothing stays
reserved once every reservation is settled or released.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from satsrouter.billing.balances import credit_tx, debit_available_tx, open_account_tx
from satsrouter.billing.keys import _MAKE_CHILD
from satsrouter.billing.ledger import (
    InsufficientBalance,
    Ledger,
    Reservation,
    SpendLimitReached,
)
from satsrouter.billing.pricing import (
    MSAT_PER_BTC,
    PRICE_QUANTUM_MSAT,
    MsatPrices,
    completion_budget,
    max_request_cost,
    msat_prices,
    usage_cost,
)
from satsrouter.market.catalogue import PRICE_FIELDS, Model
from satsrouter.store.engine import make_engine, migrate
from satsrouter.store.tx import SqliteTxRunner, Tx
from satsrouter.units import UNIT_MSAT
from satsrouter.usage import Usage

PRICING = settings(max_examples=200, deadline=None)
LEDGER = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- pricing ---------------------------------------------------------------------------------

# msat per token or unit, as msat_prices makes them: multiples of 1e-9 msat.
msat_price = st.integers(0, 10**13).map(lambda n: Decimal(n) * PRICE_QUANTUM_MSAT)
# USD per token as catalogues publish them (e.g. "0.0000025"), and per unit up to $1.
usd_price = st.integers(0, 10**9).map(lambda n: Decimal(n).scaleb(-12))
tokens = st.integers(0, 2_000_000)


@st.composite
def prices(draw: st.DrawFn) -> MsatPrices:
    return MsatPrices(**{name: draw(msat_price) for name in PRICE_FIELDS})


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt = draw(tokens)
    completion = draw(tokens)
    cached = draw(st.integers(0, prompt))
    return Usage(
        prompt,
        completion,
        cached_tokens=cached,
        cache_write_tokens=draw(st.integers(0, prompt - cached)),
        reasoning_tokens=draw(st.integers(0, completion)),
        images=draw(st.integers(0, 20)),
        generated_images=draw(st.integers(0, 10)),
        web_searches=draw(st.integers(0, 20)),
    )


def exact_components(p: MsatPrices, u: Usage) -> list[Decimal]:
    """The cost's components before rounding, as `usage_cost` defines them."""
    cache_read = p.input_cache_read or p.prompt
    cache_write = p.input_cache_write or p.prompt
    plain = u.prompt_tokens - u.cached_tokens - u.cache_write_tokens
    if p.internal_reasoning:
        output = (u.completion_tokens - u.reasoning_tokens) * p.completion + (
            u.reasoning_tokens * p.internal_reasoning
        )
    else:
        output = u.completion_tokens * p.completion
    return [
        plain * p.prompt + u.cached_tokens * cache_read + u.cache_write_tokens * cache_write,
        output,
        p.request,
        u.images * p.image,
        u.generated_images * (p.image_output or p.image),
        u.web_searches * p.web_search,
    ]


@PRICING
@given(prices(), usages())
def test_rounding_up_per_component_never_undercharges(p: MsatPrices, u: Usage) -> None:
    parts = exact_components(p, u)
    total = usage_cost(p, u).total_msats
    exact = sum(parts, Decimal(0))
    # Never below the exact price; above it by less than 1 msat per component.
    assert exact <= total < exact + len(parts)


@PRICING
@given(prices(), usages(), st.integers(0, 10_000), st.integers(0, 10_000))
def test_cost_never_falls_as_tokens_grow(
    p: MsatPrices, u: Usage, more_prompt: int, more_completion: int
) -> None:
    # Plain prompt and completion tokens: the cached and reasoning shares stay as they were.
    bigger = Usage(
        u.prompt_tokens + more_prompt,
        u.completion_tokens + more_completion,
        cached_tokens=u.cached_tokens,
        cache_write_tokens=u.cache_write_tokens,
        reasoning_tokens=u.reasoning_tokens,
        images=u.images,
        generated_images=u.generated_images,
        web_searches=u.web_searches,
    )
    assert usage_cost(p, bigger).total_msats >= usage_cost(p, u).total_msats


def model_with(pricing: dict[str, Decimal], context: int, max_completion: int | None) -> Model:
    return Model("prop/model", context, max_completion, pricing, {}, "prop")


@st.composite
def usd_pricings(draw: st.DrawFn) -> dict[str, Decimal]:
    return {name: draw(usd_price) for name in PRICE_FIELDS}


@PRICING
@given(
    usd_pricings(),
    st.integers(1_000, 10**7).map(Decimal),  # USD per BTC
    st.integers(1_000, 3_000).map(lambda n: Decimal(n) / 1000),  # fee
)
def test_msat_prices_are_exact_and_published_exactly(
    pricing: dict[str, Decimal], usd_per_btc: Decimal, fee: Decimal
) -> None:
    model = model_with(pricing, 8192, 1024)
    p = msat_prices(model, usd_per_btc, fee)
    sats = p.as_sats()
    for name in PRICE_FIELDS:
        exact = pricing[name] * fee * MSAT_PER_BTC / usd_per_btc
        price: Decimal = getattr(p, name)
        # Rounded up to the 1e-9 msat quantum, in the node's favour. By at most one quantum
        # and a hair: the fee × msat/BTC ÷ rate factor is computed first, at 28 digits, so a
        # price that is exactly on a quantum can come out one quantum above (found here).
        assert exact <= price < exact + 2 * PRICE_QUANTUM_MSAT
        assert price % PRICE_QUANTUM_MSAT == 0
        # What a client reads in `sats_pricing` is exactly what it is charged.
        assert Decimal(repr(sats[name])) * 1000 == price


@PRICING
@given(st.sampled_from(sorted(UNIT_MSAT)), st.integers(0, 10**15))
def test_unit_conversions_are_exact(unit: str, whole: int) -> None:
    per_unit = UNIT_MSAT[unit]
    msat = whole * per_unit
    assert msat // per_unit == whole and msat % per_unit == 0
    # A balance shown in whole units never shows more than it holds.
    for rest in (0, per_unit - 1):
        assert (msat + rest) // per_unit * per_unit <= msat + rest


@st.composite
def requests_and_usage(draw: st.DrawFn) -> tuple[Any, ...]:
    """A model, a request's limits, and a usage that stays within them."""
    p = draw(prices())
    context = draw(st.integers(1, 200_000))
    max_completion = draw(st.one_of(st.none(), st.integers(1, 100_000)))
    model = model_with({name: Decimal(0) for name in PRICE_FIELDS}, context, max_completion)
    prompt_bytes = draw(st.integers(0, 1_000_000))
    max_tokens = draw(st.one_of(st.none(), st.integers(1, 300_000)))
    choices = draw(st.integers(1, 128))
    images = draw(st.integers(0, 5))
    searches = draw(st.integers(0, 10))
    # Within the limits: a prompt of at most its bytes (or the context, when images or search
    # results may add to it), each choice within the completion budget.
    prompt_cap = context if images or searches else min(max(prompt_bytes, 1), context)
    prompt = draw(st.integers(0, prompt_cap))
    budget = completion_budget(model, max_tokens)
    completion = draw(st.integers(0, budget * choices))
    cached = draw(st.integers(0, prompt))
    usage = Usage(
        prompt,
        completion,
        cached_tokens=cached,
        cache_write_tokens=draw(st.integers(0, prompt - cached)),
        reasoning_tokens=draw(st.integers(0, completion)),
        images=draw(st.integers(0, images)),
        web_searches=draw(st.integers(0, searches)),
    )
    units = Usage(0, 0, images=images, web_searches=searches)
    return p, model, prompt_bytes, max_tokens, choices, units, usage


@PRICING
@given(requests_and_usage())
def test_the_reservation_covers_any_usage_within_the_request(case: tuple[Any, ...]) -> None:
    p, model, prompt_bytes, max_tokens, choices, units, usage = case
    reserved = max_request_cost(
        p, model, prompt_bytes, max_tokens, units=units, choices=choices, prompts=1
    )
    # Whatever the split (cache reads, cache writes dearer than the prompt, part reasoning),
    # the reservation covers it to the msat: settle never has to cap a charge.
    assert usage_cost(p, usage).total_msats <= reserved


# -- the ledger -------------------------------------------------------------------------------

PARENTS = ("a", "b")
CHILD = "c"  # spends a's balance, within a limit


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty database: each example starts from a copy of it."""
    path = tmp_path_factory.mktemp("ledger") / "template.sqlite"

    async def make() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        await migrate(engine)
        await engine.dispose()

    asyncio.run(make())
    return path


amounts = st.integers(0, 5_000_000)
reserve = st.tuples(st.just("reserve"), st.sampled_from((*PARENTS, CHILD)), amounts)
# Settle at any cost, far above the reservation too; picks an active reservation by index.
settle = st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 20_000_000))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.sampled_from(PARENTS), amounts),
        st.tuples(st.just("payout"), st.sampled_from(PARENTS), amounts),
        reserve,
        reserve,
        settle,
        settle,
        st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
        # Settling or releasing a finished reservation again must do nothing.
        st.tuples(st.just("again"), st.integers(0, 50), st.integers(0, 20_000_000)),
    ),
    min_size=1,
    max_size=40,
)
# Money first, most of the time: reservations need a balance to hold.
opening = st.lists(st.tuples(st.just("topup"), st.sampled_from(PARENTS), amounts), max_size=2)


@dataclass
class Books:
    """What the test expects, kept in Python beside the real ledger."""

    balances: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARENTS, 0))
    credits: int = 0
    charges: int = 0
    payouts: int = 0


async def _rows(runner: SqliteTxRunner, sql: str) -> list[tuple[Any, ...]]:
    rows, _ = await runner.read(lambda tx: tx.execute(sql, {}))
    return rows


async def check_books(runner: SqliteTxRunner, ids: dict[str, int], books: Books) -> None:
    """I1 for every account, the books to the msat, and the child's limit kept."""
    accounts = await _rows(
        runner,
        "SELECT id, balance_msat, reserved_msat, period_spent_msat, period_reserved_msat, "
        "spend_limit_msat FROM accounts",
    )
    sums = dict(
        await _rows(runner, "SELECT account_id, sum(amount_msat) FROM journal GROUP BY account_id")
    )
    for account_id, balance, reserved, spent, period_reserved, limit in accounts:
        assert balance == sums.get(account_id, 0)
        assert balance >= 0 and reserved >= 0 and balance - reserved >= 0
        if limit is not None:
            assert 0 <= period_reserved and spent + period_reserved <= limit
    by_id = {row[0]: row[1] for row in accounts}
    for name in PARENTS:
        assert by_id[ids[name]] == books.balances[name]
    assert by_id[ids[CHILD]] == 0  # a child key holds nothing itself
    ((total_journal,),) = await _rows(runner, "SELECT coalesce(sum(amount_msat), 0) FROM journal")
    total_balances = sum(by_id.values())
    assert total_balances == total_journal == books.credits - books.charges - books.payouts
    kinds = dict(await _rows(runner, "SELECT kind, sum(amount_msat) FROM journal GROUP BY kind"))
    assert kinds.get("credit", 0) == books.credits
    assert kinds.get("charge", 0) == -books.charges
    assert kinds.get("payout", 0) == -books.payouts


async def run_ledger(db: Path, ops: list[tuple[str, Any, int]], limit: int, end: str) -> None:
    runner = SqliteTxRunner(str(db))
    ledger = Ledger(runner, "prop-instance")
    hashes = {name: f"hash-{name}" for name in (*PARENTS, CHILD)}
    now = time.time()

    def open_all(tx: Tx) -> dict[str, int]:
        ids = {
            name: open_account_tx(tx, hashes[name], "key", "http://mint", "sat", now)
            for name in (*PARENTS, CHILD)
        }
        child = {"parent": ids["a"], "limit": limit, "period": "daily", "start": now}
        tx.execute(_MAKE_CHILD, {**child, "expires": None, "id": ids[CHILD]})
        return ids

    try:
        ids = await runner.run(open_all)
        books = Books()
        active: list[tuple[str, Reservation]] = []
        finished: list[Reservation] = []
        refs = itertools.count()
        for kind, target, amount in ops:
            if kind == "topup":
                await runner.run(
                    lambda tx, t=target, a=amount: credit_tx(
                        tx, ids[t], a, "credit", f"top-{next(refs)}", now
                    )
                )
                books.balances[target] += amount
                books.credits += amount
            elif kind == "payout":
                done = await runner.run(
                    lambda tx, t=target, a=amount: debit_available_tx(
                        tx, ids[t], a, "payout", f"pay-{next(refs)}", now
                    )
                )
                reserved = sum(r.amount_msat for who, r in active if who in (target, f"{target}*"))
                fits = books.balances[target] - reserved >= amount
                assert (done is not None) == fits
                if done is not None:
                    books.balances[target] -= amount
                    books.payouts += amount
            elif kind == "reserve":
                payer = "a*" if target == CHILD else target  # a child spends a's balance
                try:
                    reservation = await ledger.reserve(
                        hashes[target], f"req-{next(refs)}", amount, "prop/model"
                    )
                except (InsufficientBalance, SpendLimitReached) as exc:
                    event(f"reserve refused: {type(exc).__name__}")
                    continue
                event("reserved")
                active.append((payer, reservation))
            elif kind in ("settle", "release") and active:
                who, reservation = active.pop(target % len(active))
                payer = who.rstrip("*")
                event(kind)
                if kind == "settle":
                    settled = await ledger.settle(reservation, amount)
                    assert settled is not None
                    charged = min(amount, reservation.amount_msat)  # never above the hold
                    assert settled.charged_msat == charged
                    books.balances[payer] -= charged
                    books.charges += charged
                else:
                    assert await ledger.release(reservation)
                finished.append(reservation)
            elif kind == "again" and finished:
                reservation = finished[target % len(finished)]
                assert await ledger.settle(reservation, amount) is None
                assert not await ledger.release(reservation)
            await check_books(runner, ids, books)
        # Every reservation ends, one way or the other: then nothing stays reserved.
        for i, (who, reservation) in enumerate(active):
            if end == "settle" or (end == "mixed" and i % 2):
                settled = await ledger.settle(reservation, reservation.amount_msat)
                assert settled is not None
                books.balances[who.rstrip("*")] -= settled.charged_msat
                books.charges += settled.charged_msat
            else:
                assert await ledger.release(reservation)
        await check_books(runner, ids, books)
        reserved = await _rows(runner, "SELECT reserved_msat, period_reserved_msat FROM accounts")
        assert all(r == 0 and pr == 0 for r, pr in reserved)
        (active_rows,) = await _rows(
            runner, "SELECT count(*) FROM reservations WHERE state = 'active'"
        )
        assert active_rows == (0,)
    finally:
        await runner.close()


@pytest.mark.sqlite_only("its ledgers are SQLite files made from one template, for speed")
@LEDGER
@given(
    opened=opening,
    ops=operations,
    limit=st.integers(1, 10_000_000),
    end=st.sampled_from(("settle", "release", "mixed")),
)
def test_no_sequence_of_money_movements_breaks_the_books(
    template_db: Path,
    tmp_path_factory: pytest.TempPathFactory,
    opened: list[tuple[str, Any, int]],
    ops: list[tuple[str, Any, int]],
    limit: int,
    end: str,
) -> None:
    db = tmp_path_factory.mktemp("example") / "ledger.sqlite"
    shutil.copyfile(template_db, db)
    asyncio.run(run_ledger(db, opened + ops, limit, end))
