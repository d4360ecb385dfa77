"""The BTC/USD exchange rate, behind one small interface (live feeds plug in here later)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol


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


class NoRate:
    """No price configured: paid requests are refused rather than priced wrongly."""

    def usd_per_btc(self) -> Decimal:
        raise RateUnavailable("no BTC/USD price is configured (set BTC_USD_PRICE)")
