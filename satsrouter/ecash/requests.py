"""NUT-18 payment requests, sent in `X-Cashu` with a 402 (NUT-24)."""

from __future__ import annotations

import base64

import cbor2


def payment_request(amount: int, unit: str, mints: list[str]) -> str:
    """Encode a `creqA…` payment request for `amount` of `unit` at any of `mints`.

    NUT-18's encoding: "creqA" + base64url of the CBOR map, unpadded as nutshell writes it
    (its decoder and CDK's take either). The fields are NUT-24's, plus single use;
    no transport (`t`): the token comes back in band, in the retried request's `X-Cashu`.
    """
    payload = cbor2.dumps({"a": amount, "u": unit, "m": mints, "s": True})
    return "creqA" + base64.urlsafe_b64encode(payload).decode().rstrip("=")
