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

from satsrouter import faults
from satsrouter.ecash._cashu import LedgerAPI, nut20, pooled_client
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import Output, held_secrets_tx, store_proofs_tx
from satsrouter.ecash.swap import blind, restore, unblind_signed
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tx import TxRunner

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
    quote_key: str | None = None  # NUT-20 private key (hex); only when this node asked


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
    """Mint quotes at accepted mints, using the node wallet's slots and clients.

    Its transactions record ecash, so every one is durable (as all of the wallet's are).
    """

    def __init__(self, wallet: NodeWallet, tx: TxRunner) -> None:
        self.wallet = wallet
        self._tx = tx
        # Test hook: raise after the mint signed, before the proofs are stored (lost response).
        self.fail_after_mint: Exception | None = None

    async def request_quote(self, amount: int, unit: str, mint: str | None = None) -> QuoteInfo:
        """Ask the mint for a bolt11 invoice of `amount` `unit`, locked to a key of ours
        (NUT-20) that the caller stores with the invoice: only it can mint the quote."""
        if amount <= 0:
            raise ValueError("amount must be positive")
        slot = await self.wallet.loaded_slot(mint, unit)
        privkey, pubkey = nut20.generate_keypair()
        try:
            with pooled_client(slot.client):
                quote = await LedgerAPI.mint_quote(
                    slot.wallet, amount, slot.wallet.unit, None, pubkey
                )
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
            quote_key=str(privkey),
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

    async def reserve_outputs(self, amount: int, unit: str, mint: str | None = None) -> MintOutputs:
        """Take a fresh counter range for `amount`'s outputs; it is never handed out again."""
        slot = await self.wallet.loaded_slot(mint, unit)
        amounts = tuple(_binary_split(amount))
        w = slot.wallet
        if not set(amounts) <= set(w.get_allowed_amounts()):
            raise EcashError("mint_error", "The mint's keyset cannot represent this amount.")
        keyset_id = str(w.keyset_id)
        counter = await self.wallet.take_counters(keyset_id, len(amounts))
        return MintOutputs(keyset_id, counter, amounts)

    async def mint(
        self,
        quote_id: str,
        quote_key: str | None,
        outputs: MintOutputs,
        unit: str,
        mint: str | None = None,
    ) -> int:
        """Have the quote's proofs in the wallet (minting or restoring them); the amount held.

        Idempotent: proofs already held are not fetched again, outputs the mint already
        signed are restored (NUT-09), never signed twice.
        """
        slot = await self.wallet.loaded_slot(mint, unit)
        wanted = [Output(a, outputs.counter + i) for i, a in enumerate(outputs.amounts)]
        blinded = await blind(slot.wallet, outputs.keyset_id, wanted)
        held = await self._tx.run(lambda tx: held_secrets_tx(tx, blinded.secrets), durable=True)
        if len(held) == len(wanted):
            return outputs.amount
        promises: list[Any] | None = None
        if not held:
            try:
                promises = await self._mint(slot, quote_id, quote_key, blinded.messages)
            except Exception as exc:
                code = _mint_code(exc)
                if code not in _ALREADY_SIGNED:
                    raise map_mint_error(exc) from None
                log.info("quote %s already signed (%s): restoring", quote_id[:12], code)
        if promises is None:
            restored = await restore(slot, blinded)
            promises = [
                None if s in held else p for s, p in zip(blinded.secrets, restored, strict=True)
            ]
            missing = sum(
                p is None for s, p in zip(blinded.secrets, promises, strict=True) if s not in held
            )
            if missing:
                raise EcashError(
                    "mint_error",
                    f"The mint issued quote {quote_id[:12]} but {missing} of its signatures "
                    "could not be restored.",
                )
        faults.reach("mint.after_mint")
        if self.fail_after_mint is not None:
            raise self.fail_after_mint
        proofs = await unblind_signed(slot.wallet, blinded, promises)
        await self._tx.run(
            lambda tx: store_proofs_tx(tx, proofs, slot.mint, slot.unit), durable=True
        )
        slot.add(proofs)
        return outputs.amount

    async def _mint(
        self, slot: Slot, quote_id: str, quote_key: str | None, messages: list[Any]
    ) -> list[Any]:
        if quote_key is None:
            raise EcashError("mint_error", f"Quote {quote_id[:12]} is not this wallet's.")
        signature = nut20.sign_mint_quote(quote_id, messages, quote_key)
        with pooled_client(slot.client):
            promises: list[Any] = await LedgerAPI.mint(slot.wallet, messages, quote_id, signature)
        return promises


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
