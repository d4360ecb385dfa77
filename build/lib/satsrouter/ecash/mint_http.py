"""The node's own `POST /v1/swap` (NUT-03), where nutshell's client costs too much.

nutshell's `LedgerAPI.split` goes through httpx and pydantic models both ways; with swaps
sent to a mint one at a time, the client's time is the mint's idle time. Errors read the
same as nutshell's, so that `map_mint_error` is the one mapping for both.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from satsrouter.ecash._cashu import UNCOMPRESSED, BlindedMessage, BlindedSignature, Proof
from satsrouter.ecash.errors import EcashError, map_mint_error

TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=5.0)
_HEADERS = {"Content-Type": "application/json", **UNCOMPRESSED}


_UNREADABLE = "The mint's answer to the swap could not be read; the node will check with the mint."


def new_mint_session() -> aiohttp.ClientSession:
    """A long-lived session for swaps at the node's mints (must be made in the event loop)."""
    connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=TIMEOUT, headers=_HEADERS)


def _input(proof: Proof) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": proof.id,
        "amount": proof.amount,
        "secret": proof.secret,
        "C": proof.C,
    }
    if proof.witness is not None:
        data["witness"] = proof.witness
    return data


async def post_swap(
    session: aiohttp.ClientSession,
    mint_url: str,
    proofs: list[Proof],
    outputs: list[BlindedMessage],
) -> list[BlindedSignature]:
    """The mint's signatures on `outputs` for spending `proofs`; EcashError if refused.

    `mint_unreachable` means the outcome is unknown (no answer, or a server error).
    """
    body = orjson.dumps(
        {
            "inputs": [_input(p) for p in proofs],
            "outputs": [{"amount": o.amount, "id": o.id, "B_": o.B_} for o in outputs],
        }
    )
    try:
        async with session.post(f"{mint_url.rstrip('/')}/v1/swap", data=body) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        raise EcashError("mint_unreachable") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if status == 200:
        try:
            return [BlindedSignature.model_validate(s) for s in data["signatures"]]
        except (TypeError, KeyError, ValueError):
            # The mint took the proofs: only a restore from the seed gets their value back.
            raise EcashError("mint_unreachable", _UNREADABLE) from None
    if status >= 500:
        raise EcashError("mint_unreachable")
    if isinstance(data, dict) and "detail" in data:
        # nutshell's wording, so that its error codes and phrases map as everywhere else
        message = f"Mint Error: {data['detail']}"
        if "code" in data:
            message += f" (Code: {data['code']})"
        raise map_mint_error(Exception(message))
    raise EcashError("mint_error")
