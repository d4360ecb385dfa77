"""NUT-18 payment requests, sent in `X-Cashu` with a 402 (NUT-24)."""

from __future__ import annotations

import base64

import cbor2


def payment_request(amount: int, unit: str, mints: list[str]) -> str:
    """Encode a `creqA…` payment request for `amount` of `unit` at any of `mints`."""
    payload = cbor2.dumps({"a": amount, "u": unit, "m": mints, "s": True})
    return "creqA" + base64.urlsafe_b64encode(payload).decode().rstrip("=")
