"""Swapping users' proofs for new ones of the node's: nutshell's `redeem`, split apart.

Receives at one wallet are coalesced: those that arrive while a swap is at the mint go to
the mint together in the next one. A swap costs nutshell's mint about 10 ms plus about 2 ms
per signature, and it runs them one at a time (concurrent ones collide on its database and
retry after 100 ms or more), so eight receives in one swap cost it about half of eight
swaps, and the mint never sees two of ours at once.

Only the writes that other requests must see in order hold the wallet locks; the mint round
trip and the cryptography run concurrently with other requests'. New secrets come from
derivation counters taken in one atomic database update (never shared, restorable from the
seed), and the new proofs become spendable only once stored, under the same locks `issue`
and reloads take.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
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
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.mint_http import post_swap
from satsrouter.ecash.wallet_store import WalletStore

if TYPE_CHECKING:
    from satsrouter.ecash.wallet import _Slot

# Well under nutshell's default limit of 1000 entries per request array.
MAX_BATCH_INPUTS = 50

# Refusals that are about the inputs: the mint looked at none of the outputs' secrets, so
# they can be used in the next swap (no counter wasted, no gap for a seed restore).
_INPUT_REFUSALS = frozenset(
    {"cashu_token_already_spent", "cashu_token_pending", "invalid_cashu_token"}
)


@dataclass
class _Receive:
    """One caller's proofs waiting for a swap, and the amount it is owed once swapped."""

    proofs: list[Proof]
    owed: int
    done: asyncio.Future[int]


class _Refused(Exception):
    """The mint answered the swap with an error: nothing was spent."""

    def __init__(self, error: EcashError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class SwapBatcher:
    """One (mint, unit) wallet's receives, swapped in batches, one batch at the mint at a time.

    A receive arriving at an idle batcher goes to the mint at once; the next batch is
    prepared (counters, secrets, blinding) while one is at the mint. A batch's outputs are
    split as one amount (fewer coins than per receive); each receive is owed its own
    proofs less the fee they would have cost alone, and the mint charges the batch's inputs
    together, rounding up once, so what rounding saves is the node's. A mint's refusal fails
    the whole swap, so then each receive of the batch is swapped alone: one bad token
    cannot fail the others.
    """

    slot: _Slot
    store: WalletStore
    _waiting: list[_Receive] = field(default_factory=list)
    _feeder: asyncio.Task[None] | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _mint_turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    # secrets (secret, r, path) of outputs a mint refused to sign: the next swaps take them
    _unsigned: list[tuple[str, PrivateKey, str]] = field(default_factory=list)
    _unsigned_keyset: str = ""

    async def receive(self, proofs: list[Proof]) -> int:
        """Swap a user's proofs into the node's wallet; returns what they are worth less fees."""
        wallet = self.slot.wallet
        wallet.verify_proofs_dleq(proofs)
        owed = _total(proofs) - wallet.get_fees_for_proofs(proofs)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Receive(proofs, owed, done))
        if self._feeder is None:
            self._feeder = asyncio.create_task(self._feed())
        # shielded: a caller that gives up does not cancel a swap others share
        return await asyncio.shield(done)

    async def close(self) -> None:
        """Wait for the swaps in flight (their proofs must be stored before the wallet closes)."""
        while self._feeder is not None or self._running:
            await asyncio.gather(
                *([self._feeder] if self._feeder else []), *self._running, return_exceptions=True
            )

    async def _feed(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                at_mint = asyncio.Event()
                task = asyncio.create_task(self._run(batch, at_mint))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                # what arrives from now on waits for the next batch
                await at_mint.wait()
        finally:
            self._feeder = None

    def _take(self) -> list[_Receive]:
        batch = [self._waiting.pop(0)]
        inputs = len(batch[0].proofs)
        while self._waiting and _batchable(batch[0].proofs):
            nxt = self._waiting[0]
            if not _batchable(nxt.proofs) or inputs + len(nxt.proofs) > MAX_BATCH_INPUTS:
                break
            batch.append(self._waiting.pop(0))
            inputs += len(nxt.proofs)
        return batch

    async def _run(self, batch: list[_Receive], at_mint: asyncio.Event) -> None:
        try:
            try:
                await self._swap([p for receive in batch for p in receive.proofs], at_mint)
            except _Refused as refused:
                if len(batch) == 1:
                    raise refused.error from None
                for receive in batch:  # someone's proofs spoiled the swap: each alone
                    await self._run([receive], at_mint)
                return
            for receive in batch:
                if not receive.done.done():
                    receive.done.set_result(receive.owed)
        except BaseException as exc:
            for receive in batch:
                if not receive.done.done():
                    receive.done.set_exception(exc)
                    receive.done.exception()  # retrieved: a caller that gave up logs nothing
            if not isinstance(exc, Exception):
                raise
        finally:
            at_mint.set()

    async def _swap(self, proofs: list[Proof], at_mint: asyncio.Event) -> None:
        """Swap `proofs` for new ones of the node's, stored before returning."""
        wallet = self.slot.wallet
        keyset_id = wallet.keyset_id
        amounts, _ = wallet.determine_output_amounts(proofs, 0, keyset_id_outputs=keyset_id)
        secrets, rs, paths = await self._secrets(keyset_id, len(amounts))
        outputs, rs = await asyncio.to_thread(
            wallet._construct_outputs, amounts, secrets, rs, keyset_id
        )
        proofs = wallet.sign_proofs_inplace_swap(proofs, outputs)
        # The mint wants outputs sorted by amount; its signatures come back in that order.
        order = sorted(range(len(outputs)), key=lambda i: outputs[i].amount)
        async with self._mint_turn:
            at_mint.set()
            try:
                sorted_outputs = [outputs[i] for i in order]
                if self.slot.session is not None:
                    signed = await post_swap(self.slot.session, wallet.url, proofs, sorted_outputs)
                else:  # through a proxy: nutshell's own client knows how
                    with pooled_client(self.slot.client):
                        signed = await LedgerAPI.split(wallet, proofs, sorted_outputs)
            except Exception as exc:
                error = map_mint_error(exc)
                if error.code == "mint_unreachable":
                    raise error from None  # the swap may have happened: recovery asks the mint
                if error.code in _INPUT_REFUSALS and keyset_id == self._unsigned_keyset:
                    self._unsigned[:0] = zip(secrets, rs, paths, strict=True)
                raise _Refused(error) from None
        # Let the next batch, waiting for its turn, send its swap before we unblind ours:
        # otherwise the mint idles for the unblinding (~0.5 ms of CPU per output).
        await asyncio.sleep(0)
        if len(signed) != len(outputs):
            # The mint took the proofs: only a restore from the seed gets their value back.
            raise EcashError(
                "mint_unreachable", "The mint answered the swap with the wrong outputs."
            )
        promises: list[Any] = [None] * len(outputs)
        for position, index in enumerate(order):
            promises[index] = signed[position]
        kept = await asyncio.to_thread(unblind, wallet, outputs, promises, rs, secrets, paths)
        # (nutshell would also copy the user's spent proofs into its history table: nothing
        # reads them there.)
        async with self.slot.mutating():
            await self.store.store(kept)
            wallet.proofs += kept

    async def _secrets(
        self, keyset_id: str, count: int
    ) -> tuple[list[str], list[PrivateKey], list[str]]:
        """`count` secrets never signed: refused ones first, then from fresh counters."""
        if keyset_id != self._unsigned_keyset:  # derived per keyset (NUT-13)
            self._unsigned, self._unsigned_keyset = [], keyset_id
        taken, self._unsigned = self._unsigned[:count], self._unsigned[count:]
        secrets = [s for s, _, _ in taken]
        rs = [r for _, r, _ in taken]
        paths = [p for _, _, p in taken]
        if fresh := count - len(taken):
            first = await self.store.reserve_counters(keyset_id, fresh)
            new, new_rs, new_paths = await self.slot.wallet.generate_secrets_from_to(
                first, first + fresh - 1
            )
            if await self.store.any_stored(new):
                # A counter behind proofs we hold (e.g. a restore went wrong): never reuse one.
                raise EcashError(
                    "mint_error", "The node's wallet needs attention; try again later."
                )
            secrets, rs, paths = secrets + new, rs + new_rs, paths + new_paths
        return secrets, rs, paths


def _total(proofs: list[Proof]) -> int:
    return sum(int(p.amount) for p in proofs)


def _batchable(proofs: list[Proof]) -> bool:
    """Plain proofs only: spending conditions (NUT-10) may sign over the whole swap."""
    return all(not str(p.secret).startswith("[") and not p.witness for p in proofs)


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
