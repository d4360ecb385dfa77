"""Swapping users' proofs for new ones of the node's, recorded so a crash loses nothing.

Each swap is an operation row (`wallet_ops`) written before it leaves for the mint, with
its outputs (keyset, counters, amounts) and the users' proofs; the callers link their
own rows to it in that transaction. The new proofs, the operation's end and the callers'
credits are written in one transaction after the mint answers. A crash in between leaves
the operation pending, and recovery restores exactly those outputs from the mint (NUT-09).

Receives at one wallet are coalesced: those that arrive while a swap is at the mint go to
the mint together in the next one. A swap costs nutshell's mint about 10 ms plus about 2 ms
per signature, and it runs them one at a time, so eight receives in one swap cost it about
half of eight swaps, and the mint never sees two of ours at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from satsrouter import faults
from satsrouter.ecash._cashu import Proof
from satsrouter.ecash.mint_gate import MintBusy, bounded_wait, current_wait
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import (
    Output,
    encode_proofs,
    finish_op_tx,
    give_back_counters_tx,
    insert_op_tx,
    store_proofs_tx,
    take_counters_tx,
)
from satsrouter.ecash.swap import Refused, blind, swap, unblind_signed
from satsrouter.store.tx import Tx, TxRunner

T = TypeVar("T")

# Well under nutshell's default limit of 1000 entries per request array.
MAX_BATCH_INPUTS = 50

Link = Callable[[Tx, str, int], None]
"""Called in the swap's intent transaction with the operation id and what is owed."""


@dataclass
class _Receive:
    """One caller's proofs waiting for a swap, what it is owed, and its two hooks."""

    proofs: list[Proof]
    owed: int
    link: Link
    finish: Callable[[Tx, int], Any]
    done: asyncio.Future[Any]
    # When it stops waiting for the mint (monotonic; None: it waits as long as it takes).
    deadline: float | None


@dataclass
class SwapBatcher:
    """One (mint, unit) wallet's receives, swapped in batches, one batch at the mint at a time.

    A batch's outputs are split as one amount; each receive is owed its own proofs less the
    fee they would have cost alone, and the mint charges the batch's inputs together,
    rounding up once, so what rounding saves is the node's (recorded on the operation). A
    mint's refusal fails the whole swap, so then each receive of the batch is swapped
    alone: one bad token cannot fail the others.
    """

    slot: Slot
    tx: TxRunner
    instance_id: str
    _waiting: list[_Receive] = field(default_factory=list)
    _feeder: asyncio.Task[None] | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _mint_turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Counters of outputs a mint refused to sign (it signed nothing): the next swaps take
    # them first, so forged tokens cannot burn counters (a gap defeats a seed restore).
    _unsigned: list[int] = field(default_factory=list)
    _unsigned_keyset: str = ""
    # Swaps recorded and not yet finished by this process: recovery leaves them alone.
    in_flight: set[str] = field(default_factory=set)

    async def receive(self, proofs: list[Proof], link: Link, finish: Callable[[Tx, int], T]) -> T:
        """Swap a user's proofs into the node's wallet; returns `finish`'s result."""
        wallet = self.slot.wallet
        wallet.verify_proofs_dleq(proofs)
        owed = _total(proofs) - wallet.get_fees_for_proofs(proofs)
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        wait = current_wait()
        deadline = None if wait is None else time.monotonic() + wait
        self._waiting.append(_Receive(proofs, owed, link, finish, done, deadline))
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
                if not batch:
                    continue
                at_mint = asyncio.Event()
                task = asyncio.create_task(self._run(batch, at_mint))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                # what arrives from now on waits for the next batch
                await at_mint.wait()
        finally:
            self._feeder = None

    def _take(self) -> list[_Receive]:
        """The next batch; receives whose wait for the mint ran out in the queue get
        `mint_busy` instead (nothing of theirs was recorded here or sent)."""
        now = time.monotonic()
        late = [r for r in self._waiting if r.deadline is not None and r.deadline <= now]
        if late:
            self._waiting = [r for r in self._waiting if all(r is not x for x in late)]
            for receive in late:
                receive.done.set_exception(MintBusy(1.0))
                receive.done.exception()  # retrieved: a caller that gave up logs nothing
            if not self._waiting:
                return []
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
                results = await self._swap(batch, at_mint)
            except Refused as refused:
                if len(batch) == 1 or refused.error.code == "mint_busy":
                    raise refused.error from None
                for receive in batch:  # someone's proofs spoiled the swap: each alone
                    await self._run([receive], at_mint)
                return
            for receive, result in zip(batch, results, strict=True):
                if not receive.done.done():
                    receive.done.set_result(result)
        except BaseException as exc:
            for receive in batch:
                if not receive.done.done():
                    receive.done.set_exception(exc)
                    receive.done.exception()  # retrieved: a caller that gave up logs nothing
            if not isinstance(exc, Exception):
                raise
        finally:
            at_mint.set()

    async def _swap(self, batch: list[_Receive], at_mint: asyncio.Event) -> list[Any]:
        op_id = "receive:" + os.urandom(12).hex()
        self.in_flight.add(op_id)
        try:
            return await self._swap_as(op_id, batch, at_mint)
        finally:
            self.in_flight.discard(op_id)

    async def _swap_as(
        self, op_id: str, batch: list[_Receive], at_mint: asyncio.Event
    ) -> list[Any]:
        """Record, send and finish one swap of `batch`'s proofs; the callers' results."""
        slot = self.slot
        wallet = slot.wallet
        proofs = [p for receive in batch for p in receive.proofs]
        keyset_id = str(wallet.keyset_id)
        amounts, _ = wallet.determine_output_amounts(proofs, 0, keyset_id_outputs=keyset_id)
        if keyset_id != self._unsigned_keyset:  # counters are per keyset (NUT-13)
            self._unsigned, self._unsigned_keyset = [], keyset_id
        reused, self._unsigned = self._unsigned[: len(amounts)], self._unsigned[len(amounts) :]
        fresh = len(amounts) - len(reused)
        inputs = encode_proofs(proofs)

        def intent(tx: Tx) -> tuple[list[Output], int]:
            first = take_counters_tx(tx, keyset_id, fresh) if fresh else 0
            counters = reused + list(range(first, first + fresh))
            outputs = [Output(a, c) for a, c in zip(amounts, counters, strict=True)]
            insert_op_tx(
                tx,
                op_id,
                "receive",
                slot.mint,
                slot.unit,
                self.instance_id,
                keyset_id,
                outputs,
                inputs=inputs,
            )
            for receive in batch:
                receive.link(tx, op_id, receive.owed)
            return outputs, first

        try:
            outputs, first = await self.tx.run(intent)
        except BaseException:
            self._unsigned[:0] = reused
            raise
        faults.reach("receive.after_intent")
        blinded = await blind(wallet, keyset_id, outputs)
        signed_inputs = wallet.sign_proofs_inplace_swap(proofs, blinded.messages)
        deadlines = [receive.deadline for receive in batch]
        # The batch waits for the mint as long as its most patient receive would.
        wait = None
        if None not in deadlines:
            wait = max(d for d in deadlines if d is not None) - time.monotonic()
        async with self._mint_turn:
            # What arrives until the fleet's turn at the mint is ours joins the next batch.
            try:
                if wait is None:
                    promises = await swap(slot, signed_inputs, blinded, at_mint.set)
                else:
                    with bounded_wait(wait):
                        promises = await swap(slot, signed_inputs, blinded, at_mint.set)
            except Refused:
                await self._refused(op_id, keyset_id, reused, first, fresh)
                raise
        faults.reach("receive.after_swap")
        # Let the next batch, waiting for its turn, send its swap before we unblind ours:
        # otherwise the mint idles for the unblinding (~0.5 ms of CPU per output).
        await asyncio.sleep(0)
        kept = await unblind_signed(wallet, blinded, promises)
        received = _total(kept)
        owed = sum(receive.owed for receive in batch)
        per_unit = slot.per_unit_msat

        def complete(tx: Tx) -> list[Any]:
            if not finish_op_tx(tx, op_id, "done", (received - owed) * per_unit):
                raise RuntimeError(f"swap {op_id} was finished elsewhere")
            store_proofs_tx(tx, kept, slot.mint, slot.unit, op_id)
            return [receive.finish(tx, receive.owed) for receive in batch]

        results = await self.tx.run(complete)
        slot.add(kept)
        faults.reach("receive.after_store")
        return results

    async def _refused(
        self, op_id: str, keyset_id: str, reused: list[int], first: int, fresh: int
    ) -> None:
        """The mint signed nothing: end the operation and keep its counters for reuse."""

        def undo(tx: Tx) -> bool:
            finish_op_tx(tx, op_id, "undone")
            return give_back_counters_tx(tx, keyset_id, first, fresh) if fresh else True

        given_back = await self.tx.run(undo)
        if keyset_id == self._unsigned_keyset:
            self._unsigned[:0] = reused + ([] if given_back else list(range(first, first + fresh)))


def _total(proofs: list[Proof]) -> int:
    return sum(int(p.amount) for p in proofs)


def _batchable(proofs: list[Proof]) -> bool:
    """Plain proofs only: spending conditions (NUT-10) may sign over the whole swap."""
    return all(not str(p.secret).startswith("[") and not p.witness for p in proofs)
