"""The node's Nostr identity: `NSEC` (bech32 or hex) to the public `npub` it announces."""

from __future__ import annotations

import bech32
import coincurve


class IdentityError(ValueError):
    """`NSEC` is not a valid secret key."""


def _secret_bytes(nsec: str) -> bytes:
    value = nsec.strip()
    if value.startswith("nsec1"):
        hrp, data = bech32.bech32_decode(value)
        decoded = bech32.convertbits(data, 5, 8, False) if data is not None else None
        if hrp != "nsec" or decoded is None or len(decoded) != 32:
            raise IdentityError("NSEC is not a valid nsec1… key")
        return bytes(decoded)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise IdentityError("NSEC must be nsec1… or 64 hex characters") from None
    if len(raw) != 32:
        raise IdentityError("NSEC must be 32 bytes")
    return raw


def npub_of(nsec: str) -> str:
    """The bech32 `npub1…` of a Nostr secret key (x-only public key, NIP-19)."""
    public = coincurve.PrivateKey(_secret_bytes(nsec)).public_key.format(compressed=True)[1:]
    words = bech32.convertbits(public, 8, 5, True)
    assert words is not None
    return str(bech32.bech32_encode("npub", words))
