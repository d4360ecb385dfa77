"""NUT-04 minting into the node's wallet: quotes, their state, and minting a paid quote.

Minting must survive a crash at any point without losing the ecash or minting twice.
The outputs for a quote are deterministic (NUT-13: secrets derive from the wallet seed, a
keyset and a counter), so the caller first *reserves* a counter range (bumped in the wallet
database, never reused) and records it; minting then always uses exactly those outputs.
If the mint already signed them (a lost response, a crash before the proofs were stored),
the mint refuses to sign again and the signatures are fetched with NUT-09 restore instead.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from satsrouter.ecash._cashu import (
    LedgerAPI,
    Wallet,
    get_bolt11_mint_quote,
    nut20,
    pooled_client,
)
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.wallet import NodeWallet

log = logging.getLogger(__name__)

# BOLT11's default expiry, for a mint that does not say when its quote expires.
DEFAULT_QUOTE_TTL = 3600.0

_MINT_CODE = re.compile(r"\(Code:\s*(\d+)\)")
_ALREADY_SIGNED = (11003, 20002)  # outputs already signed / quote already issued


@dataclass(frozen=True)
class QuoteInfo:
    """A mint quote as the mint reports it; `state` is unpaid, paid, pending or issued."""

    quote_id: str
    bolt11: str
    amount: int
    unit: str
    state: str
    expires_at: float


@dataclass(frozen=True)
class MintOutputs:
    """The deterministic outputs reserved for one quote: keyset, first counter, amounts."""

    keyset_id: str
    counter: int
    amounts: tuple[int, ...]

    @property
    def amount(self) -> int:
        return sum(self.amounts)

    def encode_amounts(self) -> str:
        return ",".join(str(a) for a in self.amounts)

    @staticmethod
    def decode_amounts(text: str) -> tuple[int, ...]:
        return tuple(int(a) for a in text.split(","))


class QuoteMinter:
    """Mint quotes at accepted mints, using the node wallet's slots, locks and clients."""

    def __init__(self, wallet: NodeWallet) -> None:
        self.wallet = wallet
        # Test hook: raise after the mint signed, before the proofs are stored (lost response).
        self.fail_after_mint: Exception | None = None

    async def request_quote(self, amount: int, unit: str, mint: str | None = None) -> QuoteInfo:
        """Ask the mint for a bolt11 invoice of `amount` `unit`; the quote's key stays local."""
        if amount <= 0:
            raise ValueError("amount must be positive")
        slot = await self.wallet.loaded_slot(mint, unit)
        try:
            with pooled_client(slot.client):
                # nutshell stores the quote and its NUT-20 signing key in the wallet database
                quote = await slot.wallet.request_mint(amount)
        except Exception as exc:
            raise map_mint_error(exc) from None
        expiry = getattr(quote, "expiry", None)
        return QuoteInfo(
            quote_id=str(quote.quote),
            bolt11=str(quote.request),
            amount=amount,
            unit=unit,
            state=_state(getattr(quote, "state", None)),
            expires_at=float(expiry) if expiry else time.time() + DEFAULT_QUOTE_TTL,
        )

    async def quote_state(self, quote_id: str, unit: str, mint: str | None = None) -> QuoteInfo:
        """The quote as the mint sees it now (read-only: nothing is stored)."""
        slot = await self.wallet.loaded_slot(mint, unit)
        try:
            with pooled_client(slot.client):
                resp = await LedgerAPI.get_mint_quote(slot.wallet, quote_id)
        except Exception as exc:
            raise map_mint_error(exc) from None
        return QuoteInfo(
            quote_id=quote_id,
            bolt11=str(resp.request),
            amount=int(resp.amount or 0),
            unit=str(resp.unit or unit),
            state=_state(resp.state),
            expires_at=float(resp.expiry) if resp.expiry else 0.0,
        )

    async def knows_quote(self, quote_id: str, unit: str, mint: str | None = None) -> bool:
        """True if this node's wallet requested the quote (only it holds the NUT-20 key)."""
        slot = await self.wallet.loaded_slot(mint, unit)
        return await get_bolt11_mint_quote(db=slot.wallet.db, quote=quote_id) is not None

    async def reserve_outputs(self, amount: int, unit: str, mint: str | None = None) -> MintOutputs:
        """Take a fresh counter range for `amount`'s outputs; it is never handed out again."""
        slot = await self.wallet.loaded_slot(mint, unit)
        amounts = tuple(_binary_split(amount))
        w = slot.wallet
        if not set(amounts) <= set(w.get_allowed_amounts()):
            raise EcashError("mint_error", "The mint's keyset cannot represent this amount.")
        keyset_id = str(w.keyset_id)
        counter = await self.wallet.reserve_counters(keyset_id, len(amounts))
        return MintOutputs(keyset_id, counter, amounts)

    async def mint(
        self, quote_id: str, outputs: MintOutputs, unit: str, mint: str | None = None
    ) -> int:
        """Have the quote's proofs in the wallet (minting or restoring them); the amount held.

        Idempotent: proofs already held are not fetched again, outputs the mint already
        signed are restored (NUT-09), never signed twice.
        """
        slot = await self.wallet.loaded_slot(mint, unit)
        n = len(outputs.amounts)
        async with slot.mutating():
            w = slot.wallet
            secrets, rs, paths = await w.generate_secrets_from_to(
                outputs.counter, outputs.counter + n - 1, keyset_id=outputs.keyset_id
            )
            held = [await _holds(w, s) for s in secrets]
            if all(held):
                return outputs.amount
            blinded, rs = w._construct_outputs(
                list(outputs.amounts), secrets, rs, keyset_id=outputs.keyset_id
            )
            if not any(held):
                try:
                    return await self._mint(slot.client, w, quote_id, blinded, secrets, rs, paths)
                except Exception as exc:
                    code = _mint_code(exc)
                    if code not in _ALREADY_SIGNED:
                        raise map_mint_error(exc) from None
                    log.info("quote %s already signed (%s): restoring", quote_id, code)
            missing = [i for i, h in enumerate(held) if not h]
            try:
                with pooled_client(slot.client):
                    _, restored = await w.restore_promises(
                        [blinded[i] for i in missing],
                        [secrets[i] for i in missing],
                        [rs[i] for i in missing],
                        [paths[i] for i in missing],
                    )
            except Exception as exc:
                raise map_mint_error(exc) from None
        if len(restored) != len(missing):
            raise EcashError(
                "mint_error",
                f"The mint issued quote {quote_id} but returned {len(restored)} of "
                f"{len(missing)} signatures on restore.",
            )
        got = sum(outputs.amounts[i] for i, h in enumerate(held) if h)
        return got + sum(int(p.amount) for p in restored)

    async def _mint(
        self,
        client: Any,
        w: Wallet,
        quote_id: str,
        blinded: list[Any],
        secrets: list[str],
        rs: list[Any],
        paths: list[str],
    ) -> int:
        local = await get_bolt11_mint_quote(db=w.db, quote=quote_id)
        if local is None:
            raise EcashError("mint_error", f"Quote {quote_id} is not this wallet's.")
        signature = (
            nut20.sign_mint_quote(quote_id, blinded, local.privkey) if local.privkey else None
        )
        with pooled_client(client):
            promises = await LedgerAPI.mint(w, blinded, quote_id, signature)
        if self.fail_after_mint is not None:
            raise self.fail_after_mint
        # verifies the DLEQ proofs and stores the proofs in the wallet database
        proofs = await w._construct_proofs(promises, secrets, rs, paths)
        return sum(int(p.amount) for p in proofs)


async def _holds(w: Wallet, secret: str) -> bool:
    """Whether the wallet has (or had, and spent) the proof with this secret."""
    row = await w.db.fetchone(
        "SELECT secret FROM proofs WHERE secret = :s "
        "UNION ALL SELECT secret FROM proofs_used WHERE secret = :s",
        {"s": secret},
    )
    return row is not None


def _state(value: object) -> str:
    text = str(getattr(value, "value", value) or "").lower()
    return text if text in ("unpaid", "paid", "pending", "issued") else "pending"


def _mint_code(exc: BaseException) -> int | None:
    match = _MINT_CODE.search(str(exc))
    return int(match.group(1)) if match else None


def _binary_split(amount: int) -> list[int]:
    if amount <= 0:
        raise ValueError("amount must be positive")
    return [1 << i for i in range(amount.bit_length()) if amount >> i & 1]
