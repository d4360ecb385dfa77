"""The node's own Cashu wallet: receive (swap) users' tokens, issue tokens, check state.

The proofs, the seed and the derivation counters live in the node's database
(`ecash/store.py`), so every operation can write its ecash in the same transaction as the
ledger rows it pays for: `receive` and `issue` take the caller's transaction function and
run it there. nutshell provides the cryptography and the mint's protocol only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx

from satsrouter import faults
from satsrouter.ecash._cashu import (
    Proof,
    Wallet,
    new_mint_client,
    new_mnemonic,
    pooled_client,
    use_gate,
    use_seed,
)
from satsrouter.ecash.errors import EcashError, insufficient_funds, map_mint_error
from satsrouter.ecash.legacy import read_legacy
from satsrouter.ecash.mint_gate import MintGate
from satsrouter.ecash.mint_http import MintCallObserver, TimedTransport, new_mint_session
from satsrouter.ecash.receiving import SIGNAL, Link, ReceiveBook, SwapBatcher, batchable
from satsrouter.ecash.recovery import recover_split
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.splitting import Splitter
from satsrouter.ecash.store import (
    Op,
    WalletConflict,
    ensure_keyset_tx,
    move_proofs_tx,
    op_proofs_tx,
    pending_ops_tx,
    seed_tx,
    take_counters_tx,
    unspent_tx,
)
from satsrouter.ecash.tokens import ParsedToken, normalize_mint_url
from satsrouter.store.signals import Signals
from satsrouter.store.turns import LocalTurn, Turn, Turns
from satsrouter.store.tx import DurableRunner, Tx, TxRunner
from satsrouter.units import SUPPORTED_UNITS

log = logging.getLogger(__name__)

T = TypeVar("T")

# A proof chosen here may be taken by another process first: choose again this often.
# Several processes (nodes on one database) spend from the same proofs: the database takes
# each by compare-and-set, and a process that lost a race looks again. Enough attempts that
# a busy fleet does not give up; the backoff spreads the retries.
_ISSUE_ATTEMPTS = 8
_BACK_OFF_S = 0.005


def _shuffled(proofs: list[Proof]) -> list[Proof]:
    """The proofs in random order: coin selection sorts by amount but keeps the order of
    equal ones, so processes choosing at the same moment pick different coins."""
    return random.sample(proofs, len(proofs))


async def _back_off(attempt: int) -> None:
    """A short random wait before retrying a spend that lost a race to another process."""
    await asyncio.sleep(random.uniform(0, _BACK_OFF_S * attempt))


@dataclass(frozen=True)
class Prepared:
    """A token checked and ready to swap: its proofs (full keyset ids), what the node owes
    for them (its value less the mint's fee, in its unit), and whether it may share a swap."""

    token: ParsedToken
    proofs: list[Proof]
    owed: int
    batchable: bool


class NodeWallet:
    """All ecash the node holds, per accepted (mint, unit), in the node's database."""

    def __init__(
        self,
        mints: list[str],
        tx: TxRunner,
        instance_id: str,
        is_dead: Callable[[str], Awaitable[bool]],
        legacy_dir: Path | None = None,
        observe_mint_call: MintCallObserver | None = None,
        mint_max_concurrency: int = 8,
        mint_calls_per_second: float = 0.0,
        turns: Turns | None = None,
        signals: Signals | None = None,
    ) -> None:
        if not mints:
            raise ValueError("at least one mint URL is required")
        normalised = [normalize_mint_url(m) for m in mints]
        self.mints: list[str] = list(dict.fromkeys(normalised))
        self.primary_mint = self.mints[0]
        self._accepted = frozenset(self.mints)
        self.tx: TxRunner = DurableRunner(tx)  # every wallet write records ecash
        self.instance_id = instance_id
        self.is_dead = is_dead  # whether another instance's process is provably gone
        self._legacy_dir = legacy_dir  # where an older node may have left its wallet file
        self._observe = observe_mint_call  # the node's metrics: each call to a mint, timed
        self.splitter = Splitter(self.tx, instance_id)
        self._mnemonic = ""
        self._slots: dict[tuple[str, str], Slot] = {}
        self._receivers: dict[tuple[str, str], SwapBatcher] = {}
        self._clients: dict[str, httpx.AsyncClient | None] = {}
        self._sessions: dict[str, Any] = {}
        # One bound per mint, whatever the unit: it is the mint's capacity being spared.
        self._bounds = (mint_max_concurrency, mint_calls_per_second)
        self.gates = {m: MintGate(*self._bounds) for m in self.mints}
        # Each mint's swap turn, shared with the node's other processes when it has any.
        self._turns = turns
        self._local_turns: dict[str, Turn] = {}
        # Where receives any process may carry are kept (the redemptions), and how the
        # processes wake each other when they carried some.
        self._book: ReceiveBook | None = None
        self._signals = signals
        self._create_lock = asyncio.Lock()
        # nutshell wants a database for the mint's public keysets; ours holds everything else
        self._keyset_cache = Path(tempfile.mkdtemp(prefix="satsrouter-keysets-"))

    # ---- lifecycle ----

    async def start(self) -> None:
        """Load (or create, once) the seed and try to reach each mint."""
        legacy = read_legacy(self._legacy_dir) if self._legacy_dir else None
        fresh = legacy.mnemonic if legacy else new_mnemonic()
        self._mnemonic = await self.tx.run(lambda tx: seed_tx(tx, fresh))
        if legacy is not None:
            if legacy.mnemonic != self._mnemonic:
                raise RuntimeError(
                    f"{legacy.path} holds another wallet than the database: refusing to mix"
                )
            imported = await self.tx.run(legacy.import_tx)
            legacy.retire()
            log.warning("imported %d proofs from the older wallet file %s", imported, legacy.path)
        for mint in self.mints:
            await self._slot(mint, "sat")
        results = await asyncio.gather(
            *(self._load(self._slots[(m, "sat")]) for m in self.mints), return_exceptions=True
        )
        for mint, result in zip(self.mints, results, strict=True):
            if isinstance(result, BaseException):
                # a mint that is down now is retried on first use
                log.warning("mint %s not loaded at start: %s", mint, _describe(result))

    async def close(self) -> None:
        for receiver in self._receivers.values():
            await receiver.close()
        for client in self._clients.values():
            if client is not None:
                await client.aclose()
        self._clients.clear()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        for slot in self._slots.values():
            await slot.wallet.db.engine.dispose()
        self._slots.clear()
        shutil.rmtree(self._keyset_cache, ignore_errors=True)

    # ---- checks ----

    def check_accepted(self, token: ParsedToken) -> None:
        """Refuse tokens from mints not in our list; never contacts the mint."""
        if token.mint not in self._accepted:
            raise EcashError(
                "mint_not_accepted",
                "This node only accepts Cashu tokens from these mints: "
                + ", ".join(self.mints)
                + ". Send a token from one of them.",
            )

    # ---- money in ----

    async def prepare(self, token: ParsedToken) -> Prepared:
        """Check a token before anything is recorded: its mint, unit, keysets, DLEQ proofs
        and that it is worth more than the mint's fee (contacts the mint once, to load)."""
        self.check_accepted(token)
        slot = await self._slot(token.mint, token.unit)
        wallet = slot.wallet
        # copies: expanding keyset ids must not change the caller's token
        proofs = [p.model_copy() for p in token.proofs]
        if not (slot.loaded and _expand_keyset_ids(wallet, proofs)):
            async with slot.lock:  # loading talks to the mint: once, not per request
                await self._load(slot)
                await self._resolve_keysets(slot, proofs)
        fee = int(wallet.get_fees_for_proofs(proofs))
        if token.amount <= fee:
            raise EcashError(
                "token_too_small",
                f"This token is worth {token.amount} {token.unit} but the mint charges "
                f"{fee} {token.unit} to receive it. Send a larger token.",
            )
        try:
            wallet.verify_proofs_dleq(proofs)
        except Exception as exc:
            raise map_mint_error(exc) from None
        return Prepared(token, proofs, token.amount - fee, batchable(proofs))

    @overload
    async def receive(self, token: ParsedToken) -> int: ...

    @overload
    async def receive(
        self, token: ParsedToken, link: Link, finish: Callable[[Tx, int], T]
    ) -> T: ...

    async def receive(
        self,
        token: ParsedToken,
        link: Link | None = None,
        finish: Callable[[Tx, int], Any] | None = None,
    ) -> Any:
        """Swap the token into the node's wallet.

        `link(tx, op_id, owed)` runs in the transaction that records the swap before it is
        sent; `finish(tx, owed)` in the one that stores the new proofs, and its result is
        returned (without one, `owed`). `owed` is the token's value less the mint's fee, in
        the token's unit.
        """
        prepared = await self.prepare(token)
        receiver = self._receivers[(token.mint, token.unit)]
        return await self._logged(
            prepared,
            receiver.receive(prepared.proofs, prepared.owed, link or _no_link, finish or _owed),
        )

    async def carry(self, prepared: Prepared, ref: str) -> Any:
        """Swap a prepared token recorded in the receive book as `ref` (see
        `keep_receives_in`); whichever process's swap carries it, the book's result."""
        token = prepared.token
        receiver = self._receivers[(token.mint, token.unit)]
        return await self._logged(prepared, receiver.carry(prepared.proofs, prepared.owed, ref))

    def keep_receives_in(self, book: ReceiveBook) -> None:
        """Let every process sharing the database carry receives recorded in `book`."""
        self._book = book
        for receiver in self._receivers.values():
            receiver.book = book

    def receives_settled_tx(self, tx: Tx) -> None:
        """Wake the processes waiting for receives whose outcome `tx` writes (recovery)."""
        if self._signals is not None:
            self._signals.send_tx(tx, SIGNAL)

    async def _logged(self, prepared: Prepared, receiving: Awaitable[T]) -> T:
        token = prepared.token
        try:
            result = await receiving
        except Exception as exc:
            err = map_mint_error(exc)
            log.info("receive %s failed: %s", token.raw_hash[:12], err.code)
            raise err from None
        log.info(
            "received %d %s (owed %d) from %s",
            token.amount,
            token.unit,
            prepared.owed,
            token.raw_hash[:12],
        )
        return result

    async def proof_state(self, token: ParsedToken) -> str:
        """NUT-07: "spent", "pending", "unspent", or "mixed" for the token's proofs."""
        self.check_accepted(token)
        slot = await self.loaded_slot(token.mint, token.unit)
        return await self.proofs_state(slot, token.proofs)

    async def proof_states(self, slot: Slot, proofs: list[Proof]) -> list[str]:
        """NUT-07, proof by proof: "UNSPENT", "PENDING" or "SPENT"."""
        try:
            with pooled_client(slot.client):
                response = await slot.wallet.check_proof_state(proofs)
        except Exception as exc:
            raise map_mint_error(exc) from None
        if len(response.states) != len(proofs):
            raise EcashError("mint_error")
        return [str(s.state.value) for s in response.states]

    async def proofs_state(self, slot: Slot, proofs: list[Proof]) -> str:
        """NUT-07 for any proofs of one slot's mint, summed up as one word."""
        states = set(await self.proof_states(slot, proofs))
        if states == {"SPENT"}:
            return "spent"
        if "PENDING" in states:
            return "pending"
        if states == {"UNSPENT"}:
            return "unspent"
        return "mixed"

    # ---- money out ----

    @overload
    async def issue(
        self, amount: int, unit: str = "sat", mint: str | None = None, *, legacy: bool = False
    ) -> str: ...

    @overload
    async def issue(
        self,
        amount: int,
        unit: str,
        mint: str | None,
        ref: str,
        record: Callable[[Tx, str], T],
        *,
        legacy: bool = False,
    ) -> T: ...

    async def issue(
        self,
        amount: int,
        unit: str = "sat",
        mint: str | None = None,
        ref: str | None = None,
        record: Callable[[Tx, str], Any] | None = None,
        *,
        legacy: bool = False,
    ) -> Any:
        """A token worth exactly `amount`, handed over in one transaction with `record`.

        The proofs become `spent` (under `ref`) in the same transaction that `record(tx,
        token)` writes the payout: either both stand or neither does, so a token is never
        out without its payout, nor a payout recorded without its proofs gone. Without
        `record`, the token is returned (the caller keeps it safe).
        """
        if amount <= 0:
            raise ValueError("amount must be positive")
        ref = ref or "issue:" + os.urandom(12).hex()
        record = record or _token
        slot = await self.loaded_slot(mint, unit)
        for attempt in range(_ISSUE_ATTEMPTS):
            if attempt:
                await _back_off(attempt)
            async with slot.lock:
                chosen = await self._exact(slot, amount)
                slot.take(chosen)
            try:
                token = str(await slot.wallet.serialize_proofs(chosen, legacy=legacy))
                secrets = [str(p.secret) for p in chosen]

                def hand_over(tx: Tx, token: str = token, secrets: list[str] = secrets) -> Any:
                    move_proofs_tx(tx, secrets, ref, "unspent", "spent")
                    return record(tx, token)

                result = await self.tx.run(hand_over)
            except WalletConflict:
                await self.refresh(slot)  # another process spent some of them: look again
                continue
            except BaseException:
                slot.add(chosen)  # nothing was written: they are still ours
                raise
            faults.reach("issue.after_record")
            log.info("issued %d %s at %s", amount, unit, slot.mint)
            return result
        raise EcashError("mint_error", "The node's wallet is busy; try again.")

    async def balance(self, mint: str | None = None, unit: str = "sat") -> int:
        """Spendable amount (in `unit`) held at `mint` (default: the primary mint)."""
        url = self._accepted_mint(mint)
        proofs = await self.tx.run(lambda tx: unspent_tx(tx, url, unit))
        return sum(int(p.amount) for p in proofs)

    async def take_counters(self, keyset_id: str, n: int) -> int:
        """Take `n` fresh derivation counters of a keyset (atomic; never handed out twice)."""
        return await self.tx.run(lambda tx: take_counters_tx(tx, keyset_id, n))

    async def loaded_slot(self, mint: str | None, unit: str) -> Slot:
        """The (mint, unit) slot, keysets loaded."""
        slot = await self._slot(self._accepted_mint(mint), unit)
        if not slot.loaded:
            async with slot.lock:
                await self._load(slot)
        return slot

    async def orphaned(self, op: Op) -> bool:
        """Whether nobody is finishing a pending operation: its process is gone, or it is
        this process's and no longer in flight (e.g. the mint's answer was lost)."""
        if op.instance_id != self.instance_id:
            return await self.is_dead(op.instance_id)
        receiving = (r.in_flight for r in self._receivers.values())
        in_flight = self.splitter.in_flight.union(*receiving)
        return op.id not in in_flight

    async def recover(self) -> int:
        """Finish the node's own splits that nobody is finishing (from the mint's answers)."""
        finished = 0
        for op in await self.tx.run(pending_ops_tx):
            if op.kind != "split" or not await self.orphaned(op):
                continue
            try:
                slot = await self.loaded_slot(op.mint_url, op.unit)
                inputs = await self.tx.run(_reserved_of(op.id))
                state = await self.proofs_state(slot, inputs) if inputs else "unspent"
                await recover_split(self.tx, slot, op, is_spent=state == "spent")
                finished += 1
            except EcashError as exc:
                log.warning("recovery of split %s postponed: %s", op.id[:20], exc.code)
        return finished

    async def refresh(self, slot: Slot) -> None:
        """Reload the slot's unspent proofs from the database (the cache proved stale)."""
        slot.replace(await self.tx.run(lambda tx: unspent_tx(tx, slot.mint, slot.unit)))

    # ---- internals ----

    async def _exact(self, slot: Slot, amount: int) -> list[Proof]:
        """Proofs summing to exactly `amount`, swapping for them if none do (slot locked)."""
        refreshed = False
        for attempt in range(_ISSUE_ATTEMPTS):
            available = _shuffled(slot.proofs)
            if sum(int(p.amount) for p in available) >= amount:
                chosen = slot.wallet.coinselect(available, amount)
                if sum(int(p.amount) for p in chosen) == amount:
                    return list(chosen)
                try:
                    await self.splitter.split(slot, amount)
                except WalletConflict:
                    # Another process took one of the inputs: look again, after a moment.
                    await self.refresh(slot)
                    await _back_off(attempt + 1)
                    continue
                chosen = slot.wallet.coinselect(_shuffled(slot.proofs), amount)
                if sum(int(p.amount) for p in chosen) == amount:
                    return list(chosen)
            if refreshed:
                break
            await self.refresh(slot)  # others may have received more than we know of
            refreshed = True
        raise insufficient_funds(amount, slot.unit)

    def _accepted_mint(self, mint: str | None) -> str:
        if mint is None:
            return self.primary_mint
        url = normalize_mint_url(mint)
        if url not in self._accepted:
            raise EcashError(
                "mint_not_accepted",
                "This node only uses these mints: " + ", ".join(self.mints) + ".",
            )
        return url

    async def _slot(self, mint: str, unit: str) -> Slot:
        key = (mint, unit)
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        if unit not in SUPPORTED_UNITS:
            raise EcashError("unit_not_supported")
        async with self._create_lock:
            slot = self._slots.get(key)
            if slot is None:
                # nutshell's database here holds only the mint's public keysets
                wallet = await Wallet.with_db(
                    mint,
                    str(self._keyset_cache),
                    name=f"keysets-{len(self._slots)}",
                    unit=unit,
                    skip_db_read=True,
                )
                use_seed(wallet, self._mnemonic)
                gate = self.gates.setdefault(mint, MintGate(*self._bounds))
                use_gate(wallet, gate.call)
                wallet.keysets = {}
                wallet.proofs = []
                if mint not in self._clients:
                    timed = TimedTransport(mint, self._observe) if self._observe else None
                    self._clients[mint] = client = new_mint_client(mint, transport=timed)
                    if client is not None:
                        self._sessions[mint] = new_mint_session(mint, self._observe)
                slot = Slot(
                    mint=mint,
                    unit=unit,
                    wallet=wallet,
                    client=self._clients[mint],
                    session=self._sessions.get(mint),
                    gate=gate,
                    turn=self._turn(mint),
                )
                self._receivers[key] = SwapBatcher(
                    slot, self.tx, self.instance_id, self._book, self._signals
                )
                self._slots[key] = slot
        return slot

    def _turn(self, mint: str) -> Turn:
        if self._turns is not None:
            return self._turns.turn(f"mint {mint}")
        return self._local_turns.setdefault(mint, LocalTurn())

    async def _load(self, slot: Slot) -> None:
        """Fetch the mint's keysets and info once (nutshell's load_mint hides errors)."""
        if slot.loaded:
            return
        wallet = slot.wallet
        try:
            with pooled_client(slot.client):
                await wallet.load_mint_keysets()
                await wallet.load_mint_info(reload=True)
        except Exception as exc:
            raise map_mint_error(exc) from None
        try:
            await wallet.activate_keyset()
        except Exception:
            raise EcashError(
                "unit_not_supported",
                f"The mint {wallet.url} has no active keyset for unit {wallet.unit.name}.",
            ) from None

        def register(tx: Tx) -> list[Proof]:
            _register_keysets(tx, slot)
            return unspent_tx(tx, slot.mint, slot.unit)

        slot.replace(await self.tx.run(register))
        slot.loaded = True

    async def _resolve_keysets(self, slot: Slot, proofs: list[Any]) -> None:
        """Expand V4 short keyset ids and make sure every keyset is one of this mint/unit's."""
        wallet = slot.wallet
        for attempt in range(2):
            if _expand_keyset_ids(wallet, proofs):
                return
            if attempt == 0:
                # the mint may have rotated keysets since we loaded them
                try:
                    with pooled_client(slot.client):
                        await wallet.load_mint_keysets()
                except Exception as exc:
                    raise map_mint_error(exc) from None
                await self.tx.run(lambda tx: _register_keysets(tx, slot))
        raise EcashError(
            "invalid_cashu_token",
            f"The token's keyset is not one of {wallet.url}'s {wallet.unit.name} keysets. "
            "Check that the token's mint and unit are right.",
        )


def _no_link(tx: Tx, op_id: str, owed: int) -> None:
    return None


def _owed(tx: Tx, owed: int) -> int:
    return owed


def _token(tx: Tx, token: str) -> str:
    return token


def _reserved_of(op_id: str) -> Callable[[Tx], list[Proof]]:
    return lambda tx: op_proofs_tx(tx, op_id, "reserved")


def _register_keysets(tx: Tx, slot: Slot) -> None:
    """Counters start for each of the mint's keysets in this unit (once)."""
    for keyset_id in list(slot.wallet.keysets):
        ensure_keyset_tx(tx, keyset_id, slot.mint, slot.unit)


def _expand_keyset_ids(wallet: Wallet, proofs: list[Any]) -> bool:
    """Give V4 short keyset ids their full form; False if some keyset is not known here."""
    known = True
    for proof in proofs:
        if proof.id in wallet.keysets:
            continue
        matches = [k for k in wallet.keysets if k.startswith(proof.id)]
        if len(proof.id) == 16 and len(matches) == 1:
            proof.id = matches[0]
        else:
            known = False
    return known


def _describe(exc: BaseException) -> str:
    return exc.code if isinstance(exc, EcashError) else type(exc).__name__
