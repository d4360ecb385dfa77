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

When other processes share the database (several nodes on one Postgres, or workers on one
SQLite file) a receive is also a row any of them may carry (`ReceiveBook`): whichever
process holds the mint's turn (store/turns.py) takes every receive waiting in the fleet
into its swap and writes each one's outcome in its row, and the processes whose receives
it carried learn of it from those rows (woken by `Signals`). So the fleet sends the mint
the batches one process would, whatever node each request reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from satsrouter import faults
from satsrouter.ecash._cashu import Proof
from satsrouter.ecash.errors import EcashError
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
from satsrouter.ecash.swap import Blinded, Refused, blind, send_swap, swap, unblind_signed
from satsrouter.store.signals import Signals
from satsrouter.store.turns import LocalTurn
from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

T = TypeVar("T")

# Well under nutshell's default limit of 1000 entries per request array.
MAX_BATCH_INPUTS = 50
# How long a receive another process's swap carried waits for its outcome before it is
# reported unknown (recovery settles it later); a swap takes well under a second.
ELSEWHERE_PATIENCE = 60.0
# The wake-up a process sends when it has written outcomes other processes wait for.
SIGNAL = "receives"

Link = Callable[[Tx, str, int], None]
"""Called in the swap's intent transaction with the operation id and what is owed."""


@dataclass(frozen=True)
class Queued:
    """A receive waiting in the book for any process's swap: its row, proofs and what is owed."""

    ref: str
    proofs: list[Proof]
    owed: int


class ReceiveBook(Protocol):
    """Receives kept as rows (by `ref`) that any process sharing the database may carry.

    Each method runs in the caller's transaction. A row waits with its proofs until a swap
    links it (compare-and-set on the operation it was last linked to, None at first); that
    swap then writes its outcome in the row.
    """

    def link_tx(self, tx: Tx, refs: list[str], op_id: str, was: str | None) -> set[str]:
        """Link these rows to `op_id` where still linked to `was`; the refs linked."""
        ...

    def claim_tx(self, tx: Tx, mint: str, unit: str, op_id: str, room: int) -> list[Queued]:
        """Link to `op_id` rows waiting at this (mint, unit), up to `room` proofs in all."""
        ...

    def finish_tx(self, tx: Tx, ref: str) -> Any:
        """Credit a row whose swap the mint signed; what its waiter gets."""
        ...

    def refused_tx(self, tx: Tx, ref: str, code: str) -> None:
        """Record that the mint refused the row's proofs (`code`), or never saw them."""
        ...

    def unknown_tx(self, tx: Tx, refs: list[str]) -> None:
        """Record that the rows' swap has an unknown outcome (recovery settles it)."""
        ...

    def withdraw_tx(self, tx: Tx, ref: str) -> bool:
        """Stop a row being carried unless a swap has linked it; whether it was stopped."""
        ...

    def outcomes_tx(self, tx: Tx, refs: list[str]) -> dict[str, Any]:
        """The outcomes written so far, by ref: a result, or an exception to raise."""
        ...


@dataclass
class _Receive:
    """One receive in a swap: its proofs, what it is owed, how it is linked and finished,
    and who waits for it."""

    proofs: list[Proof]
    owed: int
    link: Link | None  # None: a row of the book, linked by `ref`
    finish: Callable[[Tx, int], Any]
    done: asyncio.Future[Any] | None  # None: another process waits for it
    # When it stops waiting for the mint (monotonic; None: it waits as long as it takes).
    deadline: float | None
    ref: str | None = None
    linked: str | None = None  # the operation its row was last linked to
    since: float = 0.0  # when it began waiting for another process's swap


@dataclass
class _Recorded:
    """A swap written down and ready to send."""

    went: list[_Receive]
    proofs: list[Proof]
    outputs: list[Output]
    keyset_id: str
    reused: list[int]
    first: int
    fresh: int
    blinded: Blinded


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
    book: ReceiveBook | None = None
    signals: Signals | None = None
    _waiting: list[_Receive] = field(default_factory=list)
    _feeder: asyncio.Task[None] | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _mint_turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Counters of outputs a mint refused to sign (it signed nothing): the next swaps take
    # them first, so forged tokens cannot burn counters (a gap defeats a seed restore).
    _unsigned: list[int] = field(default_factory=list)
    _unsigned_keyset: str = ""
    # Receives of ours that another process's swap carries, by ref, and who watches them.
    _elsewhere: dict[str, _Receive] = field(default_factory=dict)
    _watcher: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Swaps recorded and not yet finished by this process: recovery leaves them alone.
    in_flight: set[str] = field(default_factory=set)

    @property
    def shared(self) -> bool:
        """Whether other processes may carry our receives and we theirs."""
        return self.book is not None and not isinstance(self.slot.turn, LocalTurn)

    async def receive(
        self, proofs: list[Proof], owed: int, link: Link, finish: Callable[[Tx, int], T]
    ) -> T:
        """Swap proofs (DLEQ checked) into the node's wallet; returns `finish`'s result."""
        result: T = await self._enqueue(proofs, owed, link, finish, None)
        return result

    async def carry(self, proofs: list[Proof], owed: int, ref: str) -> Any:
        """Swap the proofs of the book's row `ref` (already recorded there); returns what
        the book's `finish_tx` gave, here or in the process whose swap carried them."""
        book = self.book
        assert book is not None
        return await self._enqueue(proofs, owed, None, lambda tx, _: book.finish_tx(tx, ref), ref)

    async def _enqueue(
        self,
        proofs: list[Proof],
        owed: int,
        link: Link | None,
        finish: Callable[[Tx, int], Any],
        ref: str | None,
    ) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        wait = current_wait()
        deadline = None if wait is None else time.monotonic() + wait
        self._waiting.append(_Receive(proofs, owed, link, finish, done, deadline, ref))
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
        watcher = self._watcher
        if watcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), 5.0)
            watcher.cancel()
            for receive in self._elsewhere.values():
                _fail(receive, EcashError("mint_unreachable"))
            self._elsewhere.clear()

    async def _feed(self) -> None:
        try:
            while self._waiting:
                await self._drop_late()
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

    async def _drop_late(self) -> None:
        """Receives whose wait for the mint ran out in the queue get `mint_busy`."""
        now = time.monotonic()
        late = [r for r in self._waiting if r.deadline is not None and r.deadline <= now]
        if late:
            self._waiting = [r for r in self._waiting if all(r is not x for x in late)]
            await self._busy(late)

    async def _busy(self, receives: list[_Receive]) -> None:
        """Refuse receives with `mint_busy` (nothing was sent): those no other process's
        swap has taken meanwhile; the others wait for that swap's outcome."""
        for receive in receives:
            if receive.done is None:  # another process's, waiting for its outcome
                await self._write_outcomes([receive], "mint_busy")
                continue
            if self.shared and receive.ref is not None and receive.linked is None:
                if not await self.tx.run(_withdraw(self.book, receive.ref)):
                    self._wait_elsewhere(receive)
                    continue
            _fail(receive, MintBusy(1.0))

    def _take(self) -> list[_Receive]:
        """The next batch: plain receives together, up to MAX_BATCH_INPUTS proofs."""
        if not self._waiting:
            return []
        batch = [self._waiting.pop(0)]
        inputs = len(batch[0].proofs)
        while self._waiting and batchable(batch[0].proofs):
            nxt = self._waiting[0]
            if not batchable(nxt.proofs) or inputs + len(nxt.proofs) > MAX_BATCH_INPUTS:
                break
            batch.append(self._waiting.pop(0))
            inputs += len(nxt.proofs)
        return batch

    async def _run(
        self, batch: list[_Receive], at_mint: asyncio.Event, alone: bool = False
    ) -> None:
        try:
            try:
                await self._swap(batch, at_mint, alone)
            except _Spoiled as spoiled:
                for receive in spoiled.went:  # someone's proofs spoiled the swap: each alone
                    receive.deadline = None  # it was let in: no `mint_busy` now
                    await self._run([receive], at_mint, alone=True)
        except BaseException as exc:
            for receive in batch:
                if receive.ref not in self._elsewhere:  # (those learn their own outcome)
                    _fail(receive, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            at_mint.set()

    async def _swap(self, batch: list[_Receive], at_mint: asyncio.Event, alone: bool) -> None:
        op_id = "receive:" + os.urandom(12).hex()
        self.in_flight.add(op_id)
        try:
            await self._swap_as(op_id, batch, at_mint, alone)
        finally:
            self.in_flight.discard(op_id)

    async def _swap_as(
        self, op_id: str, batch: list[_Receive], at_mint: asyncio.Event, alone: bool
    ) -> None:
        """Record, send and finish one swap of `batch` (and, shared, of whatever else waits
        in the book); each receive gets its result."""
        slot = self.slot
        deadlines = [receive.deadline for receive in batch]
        # The batch waits for the mint as long as its most patient receive would.
        wait = None
        if None not in deadlines:
            wait = max(d for d in deadlines if d is not None) - time.monotonic()
        if not self.shared:
            recorded = await self._record(op_id, batch, claim=False)
            if recorded is None:
                return
            async with self._mint_turn:
                # What arrives until the fleet's turn at the mint is ours joins the next batch.
                with _bounded(wait):
                    promises = await self._send(op_id, recorded, at_mint.set)
        else:
            # Shared: the batch is whatever waits in the book once the turn is ours.
            with _bounded(wait):
                taken = await slot.turn.acquire(current_wait())
                at_mint.set()
                if not taken:
                    await self._busy(batch)
                    return
                try:
                    recorded = await self._record(op_id, batch, claim=not alone)
                    if recorded is None:
                        return
                    promises = await self._send(op_id, recorded, None)
                finally:
                    await slot.turn.release()
        faults.reach("receive.after_swap")
        try:
            await self._finish(op_id, recorded, promises)
        except Exception:
            await self._write_outcomes(recorded.went, None)
            raise

    async def _send(
        self, op_id: str, recorded: _Recorded, on_turn: Callable[[], object] | None
    ) -> list[Any]:
        """Send the swap: taking the mint's turn first (`on_turn`), or holding it already."""
        signed = self.slot.wallet.sign_proofs_inplace_swap(
            recorded.proofs, recorded.blinded.messages
        )
        try:
            if on_turn is None:
                return await send_swap(self.slot, signed, recorded.blinded)
            return await swap(self.slot, signed, recorded.blinded, on_turn)
        except Refused as refused:
            final = len(recorded.went) == 1 or refused.error.code == "mint_busy"
            await self._refused(op_id, recorded, refused.error.code if final else None)
            if final:
                raise refused.error from None
            raise _Spoiled(recorded.went) from None
        except Exception:
            await self._write_outcomes(recorded.went, None)
            raise

    async def _record(self, op_id: str, batch: list[_Receive], claim: bool) -> _Recorded | None:
        """Write the swap's intent (its outputs' counters, the inputs, each receive linked)
        and blind its outputs; None when every receive was taken by another process."""
        slot = self.slot
        wallet = slot.wallet
        keyset_id = str(wallet.keyset_id)
        if keyset_id != self._unsigned_keyset:  # counters are per keyset (NUT-13)
            self._unsigned, self._unsigned_keyset = [], keyset_id
        # Taken now, so no other swap of this process reuses them; what is left goes back.
        unsigned, self._unsigned = self._unsigned, []
        book = self.book

        def intent(tx: Tx) -> tuple[list[_Receive], list[Proof], list[Output], int, int] | None:
            went = self._link_tx(tx, op_id, batch)
            if claim and book is not None and all(batchable(r.proofs) for r in went):
                room = MAX_BATCH_INPUTS - sum(len(r.proofs) for r in went)
                for queued in book.claim_tx(tx, slot.mint, slot.unit, op_id, room):
                    went.append(_foreign(book, queued, op_id))
            if not went:
                return None
            proofs = [p for receive in went for p in receive.proofs]
            amounts, _ = wallet.determine_output_amounts(proofs, 0, keyset_id_outputs=keyset_id)
            reused = min(len(amounts), len(unsigned))
            fresh = len(amounts) - reused
            first = take_counters_tx(tx, keyset_id, fresh) if fresh else 0
            counters = unsigned[:reused] + list(range(first, first + fresh))
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
                inputs=encode_proofs(proofs),
            )
            for receive in went:
                if receive.link is not None:
                    receive.link(tx, op_id, receive.owed)
            return went, proofs, outputs, first, reused

        try:
            written = await self.tx.run(intent)
        except BaseException:
            self._unsigned[:0] = unsigned
            raise
        reused = 0 if written is None else written[4]
        self._unsigned[:0] = unsigned[reused:]
        went_ids = set() if written is None else {id(r) for r in written[0]}
        for receive in batch:
            if id(receive) not in went_ids:
                self._wait_elsewhere(receive)  # another process's swap took it
        if written is None:
            return None
        went, proofs, outputs, first, reused = written
        for receive in went:
            receive.linked = op_id
        faults.reach("receive.after_intent")
        blinded = await blind(wallet, keyset_id, outputs)
        return _Recorded(
            went,
            proofs,
            outputs,
            keyset_id,
            unsigned[:reused],
            first,
            len(outputs) - reused,
            blinded,
        )

    def _link_tx(self, tx: Tx, op_id: str, batch: list[_Receive]) -> list[_Receive]:
        """Link the batch's book rows to `op_id`; the receives still ours to send."""
        went = [r for r in batch if r.ref is None]
        rows = [r for r in batch if r.ref is not None]
        if rows:
            assert self.book is not None
            for was in {r.linked for r in rows}:
                group = [r for r in rows if r.linked == was]
                linked = self.book.link_tx(tx, [r.ref for r in group if r.ref], op_id, was)
                went += [r for r in group if r.ref in linked]
        return went

    async def _finish(self, op_id: str, recorded: _Recorded, promises: list[Any]) -> None:
        """Unblind, store the new proofs, end the operation and finish every receive."""
        slot = self.slot
        # Let the next batch, waiting for its turn, send its swap before we unblind ours:
        # otherwise the mint idles for the unblinding (~0.5 ms of CPU per output).
        await asyncio.sleep(0)
        kept = await unblind_signed(slot.wallet, recorded.blinded, promises)
        received = _total(kept)
        went = recorded.went
        owed = sum(receive.owed for receive in went)
        per_unit = slot.per_unit_msat
        foreign = any(receive.done is None for receive in went)

        def complete(tx: Tx) -> list[Any]:
            if not finish_op_tx(tx, op_id, "done", (received - owed) * per_unit):
                raise RuntimeError(f"swap {op_id} was finished elsewhere")
            store_proofs_tx(tx, kept, slot.mint, slot.unit, op_id)
            results = [receive.finish(tx, receive.owed) for receive in went]
            if foreign and self.signals is not None:
                self.signals.send_tx(tx, SIGNAL)
            return results

        results = await self.tx.run(complete)
        slot.add(kept)
        faults.reach("receive.after_store")
        for receive, result in zip(went, results, strict=True):
            if receive.done is not None and not receive.done.done():
                receive.done.set_result(result)

    async def _refused(self, op_id: str, recorded: _Recorded, final: str | None) -> None:
        """The mint signed nothing: end the operation and keep its counters for reuse; when
        the refusal is `final` (a code), other processes' receives in it learn it."""
        book, signals = self.book, self.signals
        foreign = [r.ref for r in recorded.went if r.done is None and r.ref] if final else []
        keyset_id, first, fresh = recorded.keyset_id, recorded.first, recorded.fresh

        def undo(tx: Tx) -> bool:
            finish_op_tx(tx, op_id, "undone")
            if foreign and book is not None and final is not None:
                for ref in foreign:
                    book.refused_tx(tx, ref, final)
                if signals is not None:
                    signals.send_tx(tx, SIGNAL)
            return give_back_counters_tx(tx, keyset_id, first, fresh) if fresh else True

        given_back = await self.tx.run(undo)
        if keyset_id == self._unsigned_keyset:
            burnt = [] if given_back else list(range(first, first + fresh))
            self._unsigned[:0] = recorded.reused + burnt

    async def _write_outcomes(self, receives: list[_Receive], code: str | None) -> None:
        """Tell other processes' receives their outcome: refused with `code`, or unknown."""
        book, signals = self.book, self.signals
        refs = [r.ref for r in receives if r.done is None and r.ref]
        if not refs or book is None:
            return

        def write(tx: Tx) -> None:
            if code is None:
                book.unknown_tx(tx, refs)
            else:
                for ref in refs:
                    book.refused_tx(tx, ref, code)
            if signals is not None:
                signals.send_tx(tx, SIGNAL)

        try:
            await self.tx.run(write)
        except Exception as exc:  # their waiters give up in time; recovery settles the swap
            log.warning("could not record the outcome of a shared swap: %s", type(exc).__name__)

    # ---- receives another process's swap carries ----

    def _wait_elsewhere(self, receive: _Receive) -> None:
        assert receive.ref is not None
        receive.since = time.monotonic()
        self._elsewhere[receive.ref] = receive
        self._wake.set()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Read the outcomes of our receives that other processes carry, when woken by
        their signal and every `poll_seconds`, until none is left."""
        book = self.book
        assert book is not None
        poll = self.signals.poll_seconds if self.signals is not None else 0.01
        try:
            while self._elsewhere:
                self._wake.clear()
                refs = list(self._elsewhere)
                try:
                    outcomes = await self.tx.read(_outcomes(book, refs))
                except Exception as exc:
                    log.warning("reading shared swaps' outcomes failed: %s", type(exc).__name__)
                    outcomes = {}
                now = time.monotonic()
                for ref, receive in list(self._elsewhere.items()):
                    if ref in outcomes:
                        outcome = outcomes[ref]
                    elif now - receive.since > ELSEWHERE_PATIENCE:
                        outcome = EcashError("mint_unreachable")  # recovery settles it
                    else:
                        continue
                    del self._elsewhere[ref]
                    if isinstance(outcome, BaseException):
                        _fail(receive, outcome)
                    elif receive.done is not None and not receive.done.done():
                        receive.done.set_result(outcome)
                if not self._elsewhere:
                    break
                if self.signals is not None:
                    await self.signals.watch(SIGNAL, self._wake.set)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll)
        finally:
            self._watcher = None


class _Spoiled(Exception):
    """The mint refused a swap of several receives: each is to be swapped alone."""

    def __init__(self, went: list[_Receive]) -> None:
        super().__init__("a shared swap was refused")
        self.went = went


def _foreign(book: ReceiveBook, queued: Queued, op_id: str) -> _Receive:
    """Another process's receive, taken from the book into our swap."""
    ref = queued.ref
    return _Receive(
        queued.proofs,
        queued.owed,
        None,
        lambda tx, _: book.finish_tx(tx, ref),
        None,
        None,
        ref=ref,
        linked=op_id,
    )


def _withdraw(book: ReceiveBook | None, ref: str) -> Callable[[Tx], bool]:
    assert book is not None
    return lambda tx: book.withdraw_tx(tx, ref)


def _outcomes(book: ReceiveBook, refs: list[str]) -> Callable[[Tx], dict[str, Any]]:
    return lambda tx: book.outcomes_tx(tx, refs)


def _fail(receive: _Receive, exc: BaseException) -> None:
    if receive.done is not None and not receive.done.done():
        receive.done.set_exception(exc)
        receive.done.exception()  # retrieved: a caller that gave up logs nothing


@contextlib.contextmanager
def _bounded(wait: float | None) -> Iterator[None]:
    if wait is None:
        yield
    else:
        with bounded_wait(wait):
            yield


def _total(proofs: list[Proof]) -> int:
    return sum(int(p.amount) for p in proofs)


def batchable(proofs: list[Proof]) -> bool:
    """Plain proofs only: spending conditions (NUT-10) may sign over the whole swap."""
    return all(not str(p.secret).startswith("[") and not p.witness for p in proofs)
