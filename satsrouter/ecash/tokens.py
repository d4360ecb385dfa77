"""Parse Cashu tokens (V3 `cashuA`, V4 `cashuB`) without touching the network."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import cbor2

from satsrouter.ecash._cashu import DLEQWallet, Proof
from satsrouter.ecash.errors import EcashError
from satsrouter.units import SUPPORTED_UNITS, UNIT_MSAT

# Far above any real token; stops absurd inputs before they cost CPU.
_MAX_TOKEN_CHARS = 200_000
_MAX_PROOFS = 1000
# Amounts are stored and summed as signed 64-bit msat (SQLite INTEGER, Postgres BIGINT): a
# token worth more would overflow the database, not be credited. No real token comes close
# (every bitcoin there will ever be is 2.1e18 msat); refusing it here keeps it from the mint.
MAX_TOKEN_MSAT = 2**63 - 1


@dataclass(frozen=True)
class ParsedToken:
    """A decoded token: one mint, one unit, its proofs, and a hash of the text given."""

    mint: str
    unit: str
    amount: int
    proofs: list[Any]
    raw_hash: str

    @property
    def amount_msat(self) -> int:
        return self.amount * UNIT_MSAT[self.unit]

    @property
    def secret_ys(self) -> list[str]:
        """The proofs' Y = hash_to_curve(secret), the identifiers NUT-07 uses; sorted."""
        return sorted(str(p.Y) for p in self.proofs)

    def __repr__(self) -> str:
        # never show proofs: they are bearer money
        return (
            f"ParsedToken(mint={self.mint!r}, unit={self.unit!r}, amount={self.amount}, "
            f"proofs={len(self.proofs)}, raw_hash={self.raw_hash[:12]!r})"
        )


def token_hash(text: str) -> str:
    """sha256 hex of a token string as given (stripped): safe to log and to key on."""
    return hashlib.sha256(text.strip().encode()).hexdigest()


def normalize_mint_url(url: str) -> str:
    """Lower-case scheme and host, no trailing slash, no query/fragment."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("mint URL must be http(s)://host[:port][/path]")
    return urlunsplit((scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def _invalid(why: str) -> EcashError:
    return EcashError(
        "invalid_cashu_token",
        f"The Cashu token could not be read ({why}). Send a cashuA or cashuB token "
        "from a single mint, exactly as your wallet exported it.",
    )


def _b64decode(data: str) -> bytes:
    # wallets emit both url-safe and standard alphabets, with or without padding
    data = data.replace("-", "+").replace("_", "/")
    data += "=" * (-len(data) % 4)
    return base64.b64decode(data, validate=True)


def _amount(value: object) -> int:
    if type(value) is not int or value <= 0:
        raise _invalid("proof amount must be a positive integer")
    if value > MAX_TOKEN_MSAT:  # each proof is stored too, as an int64 in its own unit
        raise _invalid("proof amount too large")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"{what} missing")
    return value


def _parse_v3(body: str) -> tuple[str, str, list[Proof]]:
    data = json.loads(_b64decode(body))
    if not isinstance(data, dict):
        raise _invalid("not a token object")
    entries = data.get("token")
    if not isinstance(entries, list) or not entries:
        raise _invalid("no proofs")
    mints = {e.get("mint") for e in entries if isinstance(e, dict)}
    if len(mints) != 1 or len(entries) != sum(isinstance(e, dict) for e in entries):
        raise _invalid("a token must hold proofs from exactly one mint")
    mint = _str(next(iter(mints)), "mint URL")
    unit = data.get("unit") or "sat"
    proofs: list[Proof] = []
    for entry in entries:
        raw = entry.get("proofs")
        if not isinstance(raw, list):
            raise _invalid("no proofs")
        for p in raw:
            if not isinstance(p, dict):
                raise _invalid("malformed proof")
            witness = p.get("witness")
            proofs.append(
                Proof(
                    id=_str(p.get("id"), "keyset id"),
                    amount=_amount(p.get("amount")),
                    secret=_str(p.get("secret"), "secret"),
                    C=_hex(_str(p.get("C"), "signature")),
                    witness=witness if isinstance(witness, str) else None,
                    dleq=_dleq_v3(p.get("dleq")),
                )
            )
    return mint, unit, proofs


def _hex(value: str) -> str:
    try:
        bytes.fromhex(value)
    except ValueError:
        raise _invalid("signature is not hex") from None
    return value


def _dleq_v3(value: object) -> Any:
    if not isinstance(value, dict):
        return None
    return DLEQWallet(e=value["e"], s=value["s"], r=value["r"])


def _parse_v4(body: str) -> tuple[str, str, list[Proof]]:
    data = cbor2.loads(_b64decode(body))
    if not isinstance(data, dict):
        raise _invalid("not a token object")
    mint = _str(data.get("m"), "mint URL")
    unit = _str(data.get("u"), "unit")
    groups = data.get("t")
    if not isinstance(groups, list) or not groups:
        raise _invalid("no proofs")
    proofs: list[Proof] = []
    for group in groups:
        if not isinstance(group, dict):
            raise _invalid("malformed keyset group")
        keyset_id, raw = group.get("i"), group.get("p")
        if not isinstance(keyset_id, bytes) or not keyset_id or not isinstance(raw, list):
            raise _invalid("malformed keyset group")
        for p in raw:
            if not isinstance(p, dict) or not isinstance(p.get("c"), bytes):
                raise _invalid("malformed proof")
            witness = p.get("w")
            proofs.append(
                Proof(
                    id=keyset_id.hex(),
                    amount=_amount(p.get("a")),
                    secret=_str(p.get("s"), "secret"),
                    C=p["c"].hex(),
                    witness=witness if isinstance(witness, str) else None,
                    dleq=_dleq_v4(p.get("d")),
                )
            )
    return mint, unit, proofs


def _dleq_v4(value: object) -> Any:
    if not isinstance(value, dict):
        return None
    return DLEQWallet(e=value["e"].hex(), s=value["s"].hex(), r=value["r"].hex())


def parse_token(text: str) -> ParsedToken:
    """Decode a cashuA/cashuB token; raise EcashError for anything we cannot accept."""
    if not isinstance(text, str):
        raise _invalid("not text")
    token = text.strip()
    if len(token) > _MAX_TOKEN_CHARS:
        raise _invalid("too long")
    try:
        if token.startswith("cashuA"):
            mint, unit, proofs = _parse_v3(token[6:])
        elif token.startswith("cashuB"):
            mint, unit, proofs = _parse_v4(token[6:])
        else:
            raise _invalid("it must start with cashuA or cashuB")
    except EcashError:
        raise
    except Exception:
        # binascii/json/cbor/pydantic/curve errors: all mean the same thing to the user
        raise _invalid("malformed encoding") from None
    if not proofs:
        raise _invalid("no proofs")
    if len(proofs) > _MAX_PROOFS:
        raise _invalid("too many proofs")
    if unit not in SUPPORTED_UNITS:
        raise EcashError(
            "unit_not_supported",
            f"Tokens in unit {unit[:16]!r} are not accepted; send a token in sat or msat.",
        )
    try:
        mint = normalize_mint_url(mint)
    except ValueError:
        raise _invalid("the mint URL is not http(s)") from None
    if len({p.secret for p in proofs}) != len(proofs):
        raise _invalid("a proof appears twice")
    amount = sum(p.amount for p in proofs)
    if amount * UNIT_MSAT[unit] > MAX_TOKEN_MSAT:
        raise _invalid("amount too large")
    return ParsedToken(
        mint=mint,
        unit=unit,
        amount=amount,
        proofs=proofs,
        raw_hash=token_hash(token),
    )


__all__ = [
    "ParsedToken",
    "normalize_mint_url",
    "parse_token",
    "token_hash",
]
