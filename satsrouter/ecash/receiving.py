"""Swapping a user's proofs for new ones of the node's: nutshell's `redeem`, split apart.

Only the writes that other requests must see in order hold the wallet locks; the mint round
trip and the cryptography run concurrently with other requests'. New secrets come from
derivation counters taken in one atomic database update (never shared, restorable from the
seed), and the new proofs become spendable only once stored, under the same locks `issue`
and reloads take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.wallet_store import WalletStore

if TYPE_CHECKING:
    from satsrouter.ecash.wallet import _Slot


async def swap_in(slot: _Slot, store: WalletStore, proofs: list[Proof]) -> list[Proof]:
    """Swap a user's proofs at the mint for new proofs of the same total; returns them, stored."""
    wallet = slot.wallet
    wallet.verify_proofs_dleq(proofs)
    keyset_id = wallet.keyset_id
    amounts, _ = wallet.determine_output_amounts(proofs, 0, keyset_id_outputs=keyset_id)
    first = await store.reserve_counters(keyset_id, len(amounts))
    secrets, rs, paths = await wallet.generate_secrets_from_to(first, first + len(amounts) - 1)
    if await store.any_stored(secrets):
        # A counter behind proofs we hold (e.g. a restore went wrong): never reuse a secret.
        raise EcashError("mint_error", "The node's wallet needs attention; try again later.")
    outputs, rs = wallet._construct_outputs(amounts, secrets, rs, keyset_id)
    proofs = wallet.sign_proofs_inplace_swap(proofs, outputs)
    # The mint wants outputs sorted by amount; its signatures come back in that order.
    order = sorted(range(len(outputs)), key=lambda i: outputs[i].amount)
    with pooled_client(slot.client):
        signed = await LedgerAPI.split(wallet, proofs, [outputs[i] for i in order])
    if len(signed) != len(outputs):
        raise EcashError("mint_error", "The mint answered the swap with the wrong outputs.")
    promises: list[Any] = [None] * len(outputs)
    for position, index in enumerate(order):
        promises[index] = signed[position]
    kept = unblind(wallet, outputs, promises, rs, secrets, paths)
    # (nutshell would also copy the user's spent proofs into its history table: nothing
    # reads them there.)
    async with slot.mutating():
        await store.store(kept)
        wallet.proofs += kept
    return kept


def unblind(
    wallet: Wallet,
    outputs: list[BlindedMessage],
    promises: list[BlindedSignature],
    rs: list[PrivateKey],
    secrets: list[str],
    paths: list[str],
) -> list[Proof]:
    """Proofs from the mint's blind signatures, each one's DLEQ proof checked.

    The blinded messages are at hand, so the check needs neither hash-to-curve nor
    re-blinding (nutshell recomputes both per proof).
    """
    proofs: list[Proof] = []
    for output, promise, r, secret, path in zip(outputs, promises, rs, secrets, paths, strict=True):
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
                derivation_path=path,
                dleq=dleq,
            )
        )
    return proofs
