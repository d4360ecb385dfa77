"""One swap (NUT-03) or restore (NUT-09) at a mint, from outputs derived from the seed.

An output's secret and blinding factor derive from the wallet seed, its keyset and its
counter (NUT-13), so the outputs of any recorded operation can be rebuilt at any time: to
send them, or to ask the mint whether it signed them and get the signatures back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from satsrouter.ecash._cashu import (
    BlindedMessage,
    BlindedSignature,
    DLEQWallet,
    LedgerAPI,
    PrivateKey,
    Proof,
    PublicKey,
    Wallet,
    b_dhke,
    pooled_client,
)
from satsrouter.ecash.derivation import derive
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.mint_gate import MintBusy, current_wait
from satsrouter.ecash.mint_http import post_swap
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import Output


@dataclass
class Blinded:
    """Outputs ready to send: the blinded messages and what unblinds their signatures."""

    messages: list[BlindedMessage]
    secrets: list[str]
    rs: list[PrivateKey]


class Refused(Exception):
    """The mint answered with an error: it signed none of the outputs, spent no input."""

    def __init__(self, error: EcashError) -> None:
        super().__init__(error.message)
        self.error = error


async def blind(wallet: Wallet, keyset_id: str, outputs: Sequence[Output]) -> Blinded:
    """Rebuild the blinded messages of `outputs` from the seed (deterministic)."""
    secrets, rs = await derive(wallet, keyset_id, [output.counter for output in outputs])
    amounts = [o.amount for o in outputs]
    messages, rs = await asyncio.to_thread(
        wallet._construct_outputs, amounts, secrets, rs, keyset_id
    )
    return Blinded(messages, secrets, rs)


async def swap(
    slot: Slot,
    inputs: list[Proof],
    blinded: Blinded,
    on_turn: Callable[[], object] | None = None,
) -> list[BlindedSignature]:
    """Spend `inputs` for signatures on `blinded`, in output order; `on_turn` is called once
    the mint's turn is ours.

    Raises `Refused` when the mint said no or the node's bound on the mint held the swap
    back (`mint_busy`): nothing happened; EcashError `mint_unreachable` when the outcome is
    unknown (recovery asks the mint later).
    """
    # One swap at the mint from all the node's processes (store/turns.py); new work waits
    # for the turn no longer than for the mint itself.
    if not await slot.turn.acquire(current_wait()):
        raise Refused(MintBusy(1.0))
    try:
        if on_turn is not None:
            on_turn()
        return await send_swap(slot, inputs, blinded)
    finally:
        await slot.turn.release()


async def send_swap(slot: Slot, inputs: list[Proof], blinded: Blinded) -> list[BlindedSignature]:
    """`swap` by a caller that holds the mint's turn already."""
    outputs = blinded.messages
    # The mint wants outputs sorted by amount; its signatures come back in that order.
    order = sorted(range(len(outputs)), key=lambda i: outputs[i].amount)
    sorted_outputs = [outputs[i] for i in order]
    return await _send(slot, inputs, outputs, order, sorted_outputs)


async def _send(
    slot: Slot,
    inputs: list[Proof],
    outputs: list[BlindedMessage],
    order: list[int],
    sorted_outputs: list[BlindedMessage],
) -> list[BlindedSignature]:
    try:
        if slot.session is not None:
            async with slot.gate.call():  # (nutshell's calls pass it in `_cashu`)
                signed = await post_swap(slot.session, slot.wallet.url, inputs, sorted_outputs)
        else:  # through a proxy: nutshell's own client knows how
            with pooled_client(slot.client):
                signed = await LedgerAPI.split(slot.wallet, inputs, sorted_outputs)
    except Exception as exc:
        error = map_mint_error(exc)
        if error.code == "mint_unreachable":
            raise error from None
        raise Refused(error) from None
    if len(signed) != len(outputs):
        raise EcashError("mint_unreachable", "The mint answered the swap with the wrong outputs.")
    promises: list[Any] = [None] * len(outputs)
    for position, index in enumerate(order):
        promises[index] = signed[position]
    return promises


async def restore(slot: Slot, blinded: Blinded) -> list[BlindedSignature | None]:
    """NUT-09: the mint's signatures on these outputs, None for each it never signed."""
    try:
        with pooled_client(slot.client):
            outs, sigs = await LedgerAPI.restore_promises(slot.wallet, blinded.messages)
    except Exception as exc:
        raise map_mint_error(exc) from None
    by_b = {str(o.B_): s for o, s in zip(outs, sigs, strict=False)}
    return [by_b.get(str(m.B_)) for m in blinded.messages]


def unblind(
    wallet: Wallet,
    outputs: list[BlindedMessage],
    promises: list[BlindedSignature],
    rs: list[PrivateKey],
    secrets: list[str],
) -> list[Proof]:
    """Proofs from the mint's blind signatures, each one's DLEQ proof checked.

    The blinded messages are at hand, so the check needs neither hash-to-curve nor
    re-blinding (nutshell recomputes both per proof).
    """
    proofs: list[Proof] = []
    for output, promise, r, secret in zip(outputs, promises, rs, secrets, strict=True):
        keyset = wallet.keysets.get(promise.id)
        if keyset is None or promise.amount != output.amount or promise.id != output.id:
            raise EcashError("mint_error", "The mint signed something other than was asked.")
        mint_key: PublicKey = keyset.public_keys[promise.amount]
        signature = PublicKey(bytes.fromhex(promise.C_))
        dleq = None
        if promise.dleq is not None:
            e = PrivateKey(bytes.fromhex(promise.dleq.e))
            s = PrivateKey(bytes.fromhex(promise.dleq.s))
            blinded = PublicKey(bytes.fromhex(output.B_))
            if not b_dhke.alice_verify_dleq(blinded, signature, e, s, mint_key):
                raise EcashError("mint_error", "The mint's signature did not verify.")
            dleq = DLEQWallet(e=promise.dleq.e, s=promise.dleq.s, r=r.to_hex())
        unblinded = b_dhke.step3_alice(signature, r, mint_key)
        proofs.append(
            Proof(
                id=promise.id,
                amount=promise.amount,
                C=unblinded.format().hex(),
                secret=secret,
                dleq=dleq,
            )
        )
    return proofs


async def unblind_answered(
    wallet: Wallet, blinded: Blinded, promises: Sequence[BlindedSignature | None]
) -> list[Proof]:
    """Unblind outputs whose amount the mint chose (melt change, restores): each blinded
    message takes its signature's amount first (the message itself does not depend on it)."""
    for message, promise in zip(blinded.messages, promises, strict=False):
        if promise is not None:
            message.amount = promise.amount
    return await unblind_signed(wallet, blinded, promises)


async def unblind_signed(
    wallet: Wallet, blinded: Blinded, promises: Sequence[BlindedSignature | None]
) -> list[Proof]:
    """Unblind the outputs that have a signature (off the event loop)."""
    keep = [i for i, p in enumerate(promises) if p is not None]
    return await asyncio.to_thread(
        unblind,
        wallet,
        [blinded.messages[i] for i in keep],
        [promises[i] for i in keep],  # type: ignore[misc]
        [blinded.rs[i] for i in keep],
        [blinded.secrets[i] for i in keep],
    )
