"""Ecash failures as stable error codes, and the one mapping from nutshell's errors."""

from __future__ import annotations

import re

import httpx

# code -> HTTP status; the codes are part of the wire contract (API.md).
STATUS: dict[str, int] = {
    "invalid_cashu_token": 400,
    "mint_not_accepted": 400,
    "cashu_token_already_spent": 400,
    "cashu_token_pending": 400,
    "token_too_small": 400,
    "unit_not_supported": 400,
    "mint_unreachable": 503,
    "mint_busy": 503,
    "mint_error": 502,
    "insufficient_node_funds": 503,
}

_DEFAULT_MESSAGES: dict[str, str] = {
    "invalid_cashu_token": "The Cashu token could not be read. Send a cashuA or cashuB token "
    "from a single mint, exactly as your wallet exported it.",
    "mint_not_accepted": "This node does not accept tokens from that mint.",
    "cashu_token_already_spent": "This Cashu token has already been spent. "
    "Send a fresh token from your wallet.",
    "cashu_token_pending": "This Cashu token is in a pending payment at the mint. "
    "Wait for that payment to finish, or send a different token.",
    "token_too_small": "The token's value does not cover the mint's fee for receiving it. "
    "Send a larger token.",
    "unit_not_supported": "Only tokens denominated in sat or msat are accepted.",
    "mint_unreachable": "The mint could not be reached. Try again shortly; "
    "your token has not been spent.",
    "mint_busy": "The mint is busy with this node's other requests. Try again shortly; "
    "your token has not been used.",
    "mint_error": "The mint rejected the operation. Try again, or use a different token.",
    "insufficient_node_funds": "The node cannot issue that token right now. "
    "Try again later or contact the operator.",
}


class EcashError(Exception):
    """An ecash failure with a stable code, an HTTP status and a user-facing message."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown ecash error code {code!r}")
        self.code = code
        self.status = STATUS[code]
        self.message = message or _DEFAULT_MESSAGES[code]
        self.retry_after: int | None = None  # seconds to wait before trying again, if known
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"EcashError({self.code!r}, {self.message!r})"


def insufficient_funds(amount: int, unit: str) -> EcashError:
    """The node's wallet holds too little at a mint to pay `amount` out."""
    return EcashError(
        "insufficient_node_funds",
        f"The node cannot issue {amount} {unit} right now. "
        "Try again later or contact the operator.",
    )


_MINT_CODE = re.compile(r"\(Code:\s*(\d+)\)")

# NUT error codes (https://github.com/cashubtc/nuts/blob/main/error_codes.md).
_BY_MINT_CODE: dict[int, str] = {
    10001: "invalid_cashu_token",  # proofs could not be verified (a forged signature)
    10002: "invalid_cashu_token",  # blinded message / proof verification failed
    10003: "invalid_cashu_token",  # proof could not be verified
    11001: "cashu_token_already_spent",
    11002: "cashu_token_pending",
    11003: "mint_error",  # outputs already signed: our own counter is off
    11005: "unit_not_supported",
    11006: "token_too_small",  # amount outside the mint's limits
    12001: "invalid_cashu_token",  # keyset unknown to the mint
    12002: "invalid_cashu_token",  # keyset inactive
}

# Nutshell raises plain exceptions whose text is its only structure; these are the
# phrases that mean "the token itself is bad", not "the mint is broken".
_INVALID_PHRASES = (
    "dleq proof invalid",
    "can not verify dleq",
    "unknown short keyset id",
    "no keyset with id",
    "ambiguous short keyset id",
    "could not verify proofs",
)


def map_mint_error(exc: BaseException) -> EcashError:
    """Translate whatever nutshell or httpx raised into one of our codes."""
    if isinstance(exc, EcashError):
        return exc
    if isinstance(exc, httpx.TimeoutException | httpx.TransportError | ConnectionError):
        return EcashError("mint_unreachable")
    if isinstance(exc, httpx.HTTPStatusError):
        if exc.response.status_code >= 500:
            return EcashError("mint_unreachable")
        return EcashError("mint_error")
    text = str(exc)
    match = _MINT_CODE.search(text)
    if match:
        code = _BY_MINT_CODE.get(int(match.group(1)))
        if code is not None:
            return EcashError(code)
    lowered = text.lower()
    if "mint error" in lowered:
        if "already spent" in lowered:
            return EcashError("cashu_token_already_spent")
        if "pending" in lowered:
            return EcashError("cashu_token_pending")
        if "unknown keyset" in lowered or ("keyset" in lowered and "not found" in lowered):
            return EcashError("invalid_cashu_token")
        return EcashError("mint_error")
    if any(phrase in lowered for phrase in _INVALID_PHRASES):
        return EcashError("invalid_cashu_token")
    if "balance too low" in lowered:
        return EcashError("insufficient_node_funds")
    return EcashError("mint_error")
