"""The one error type every layer raises for a client-visible failure."""

from __future__ import annotations


class ApiError(Exception):
    """A failure with an HTTP status and a stable code, shown as the error envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def envelope(self) -> dict[str, object]:
        """The wire shape: `{"error": {"message", "type", "code"}}` (API.md)."""
        return {"error": {"message": self.message, "type": self.code, "code": self.status}}


def insufficient_balance(available_msat: int, required_msat: int) -> ApiError:
    """402 telling the user what they have and what they need, in msat and sat."""
    return ApiError(
        402,
        "insufficient_balance",
        f"Insufficient balance. Current: {available_msat} msat ({available_msat // 1000} sat), "
        f"Required: {required_msat} msat ({-(-required_msat // 1000)} sat). "
        "Top up your key or send a larger token.",
    )


def payment_too_small(paid_msat: int, required_msat: int, fate: str) -> ApiError:
    """400 for an `X-Cashu` payment worth less than the request's maximum cost (NUT-24).

    Not 402: a wallet answers a 402 by paying, and this payment was already made. `fate`
    says what became of the token.
    """
    needed = -(-required_msat // 1000)
    return ApiError(
        400,
        "payment_too_small",
        f"The X-Cashu payment is worth {paid_msat} msat ({paid_msat // 1000} sat); this "
        f"request may cost up to {required_msat} msat, so pay with a token of at least "
        f"{needed} sat. {fate}",
    )
