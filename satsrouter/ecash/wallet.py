"""The node's own Cashu wallet: receive (swap) users' tokens, issue change, check state."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from satsrouter.ecash._cashu import (
    Wallet,
    new_mint_client,
    pooled_client,
)
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.mint_http import new_mint_session
from satsrouter.ecash.receiving import SwapBatcher
from satsrouter.ecash.tokens import SUPPORTED_UNITS, ParsedToken, normalize_mint_url
from satsrouter.ecash.wallet_store import WalletStore

log = logging.getLogger(__name__)


class WalletLock:
    """Serialises wallet mutations across the node's processes (`serve --workers N`).

    nutshell keeps proofs in memory: a worker that chose proofs from a stale list could hand
    the same ecash to two users. So every mutation holds an exclusive `flock` on one file for
    the whole wallet database, and reloads the proofs first when another process changed them
    (a counter in the lock file says so; a single process never reloads).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = -1

    def acquire(self) -> tuple[int, int]:
        """Block until held; returns the open descriptor and the current change counter."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0)
        return fd, int(raw) if raw.strip() else 0

    def peek(self) -> int:
        """The change counter, read without locking (for reads that may be a moment late)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(32)
        except FileNotFoundError:
            return 0
        return int(raw) if raw.strip() else 0

    def release(self, fd: int, counter: int) -> None:
        """Record this process's change (counter + 1) and let the next process in."""
        try:
            data = str(counter + 1).encode()
            os.pwrite(fd, data.ljust(32), 0)
            self.seen = counter + 1
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@dataclass
class _Slot:
    """One nutshell Wallet for one (mint, unit), and the locks that serialise its mutations."""

    wallet: Wallet
    client: httpx.AsyncClient | None
    file_lock: WalletLock
    session: aiohttp.ClientSession | None = None  # for swaps; None through a proxy
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: bool = False

    @asynccontextmanager
    async def mutating(self) -> AsyncIterator[None]:
        """Hold this slot (in-process) and the wallet (across processes), proofs fresh."""
        async with self.lock:
            fd, counter = await asyncio.to_thread(self.file_lock.acquire)
            try:
                if counter != self.file_lock.seen:
                    await self.wallet.load_proofs(reload=True)
                yield
            finally:
                self.file_lock.release(fd, counter)


class NodeWallet:
    """All ecash the node holds, one nutshell wallet per accepted (mint, unit)."""

    def __init__(self, mints: list[str], data_dir: Path) -> None:
        if not mints:
            raise ValueError("at least one mint URL is required")
        normalised = [normalize_mint_url(m) for m in mints]
        self.mints: list[str] = list(dict.fromkeys(normalised))
        self.primary_mint = self.mints[0]
        self._accepted = frozenset(self.mints)
        self._db_dir = Path(data_dir) / "wallet"
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._receivers: dict[tuple[str, str], SwapBatcher] = {}
        self._clients: dict[str, httpx.AsyncClient | None] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._create_lock = asyncio.Lock()
        self._file_lock = WalletLock(self._db_dir / ".lock")
        # all (mint, unit) wallets share one database file (nutshell's name for it)
        self._store = WalletStore(self._db_dir / "wallet.sqlite3")

    # ---- lifecycle ----

    async def start(self) -> None:
        """Open the wallet database (creating the seed once) and try to reach each mint."""
        self._db_dir.mkdir(parents=True, exist_ok=True)
        # Sequential and offline: the first Wallet creates the seed that all later ones share.
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
        await self._store.close()

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

    async def receive(self, token: ParsedToken) -> int:
        """Swap the token into the node's wallet; returns the amount received, in token.unit."""
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
            received = await self._receivers[(token.mint, token.unit)].receive(proofs)
        except Exception as exc:
            err = map_mint_error(exc)
            log.info("receive %s failed: %s", token.raw_hash[:12], err.code)
            raise err from None
        log.info(
            "received %d %s (fee %d) from %s at %s",
            received,
            token.unit,
            fee,
            token.raw_hash[:12],
            token.mint,
        )
        return received

    async def proof_state(self, token: ParsedToken) -> str:
        """NUT-07: "spent", "pending", "unspent", or "mixed" for the token's proofs."""
        self.check_accepted(token)
        slot = await self._slot(token.mint, token.unit)
        if not slot.loaded:
            async with slot.lock:
                await self._load(slot)
        try:
            with pooled_client(slot.client):
                response = await slot.wallet.check_proof_state(token.proofs)
        except Exception as exc:
            raise map_mint_error(exc) from None
        states = {str(s.state.value) for s in response.states}
        if len(response.states) != len(token.proofs):
            raise EcashError("mint_error")
        if states == {"SPENT"}:
            return "spent"
        if "PENDING" in states:
            return "pending"
        if states == {"UNSPENT"}:
            return "unspent"
        return "mixed"

    # ---- money out ----

    async def issue(
        self, amount: int, unit: str = "sat", mint: str | None = None, *, legacy: bool = False
    ) -> str:
        """A new token worth exactly `amount` from the node's proofs (cashuB; cashuA if legacy)."""
        if amount <= 0:
            raise ValueError("amount must be positive")
        mint_url = self._accepted_mint(mint)
        slot = await self._slot(mint_url, unit)
        wallet = slot.wallet
        async with slot.mutating():
            await self._load(slot)
            available = wallet.active_proofs(wallet.proofs)
            if sum(int(p.amount) for p in available) < amount:
                raise _insufficient(amount, unit)
            try:
                chosen = wallet.coinselect(available, amount)
                if sum(int(p.amount) for p in chosen) != amount:
                    # no exact coins: swap for them (the swap fee comes from our side)
                    with pooled_client(slot.client):
                        _, chosen = await wallet.swap_to_send(available, amount)
                token = str(await wallet.serialize_proofs(chosen, legacy=legacy))
                # from here the proofs are the user's: drop them from our spendable set
                await self._store.give_away(chosen)
                given = {proof.secret for proof in chosen}
                wallet.proofs = [p for p in wallet.proofs if p.secret not in given]
            except EcashError:
                raise
            except AssertionError:
                raise _insufficient(amount, unit) from None
            except Exception as exc:
                err = map_mint_error(exc)
                raise (
                    _insufficient(amount, unit) if err.code == "insufficient_node_funds" else err
                ) from None
        log.info("issued %d %s at %s", amount, unit, mint_url)
        return token

    async def balance(self, mint: str | None = None, unit: str = "sat") -> int:
        """Spendable amount (in `unit`) held at `mint` (default: the primary mint)."""
        slot = await self._slot(self._accepted_mint(mint), unit)
        async with slot.lock:
            counter = self._file_lock.peek()
            if counter != self._file_lock.seen:  # another process changed the proofs
                await slot.wallet.load_proofs(reload=True)
                self._file_lock.seen = counter
        return sum(int(p.amount) for p in slot.wallet.proofs if not p.reserved)

    async def reserve_counters(self, keyset_id: str, n: int) -> int:
        """Take `n` fresh derivation counters of a keyset (atomic; never handed out twice)."""
        return await self._store.reserve_counters(keyset_id, n)

    async def loaded_slot(self, mint: str | None, unit: str) -> _Slot:
        """The wallet, lock and client of an accepted (mint, unit), keysets loaded."""
        slot = await self._slot(self._accepted_mint(mint), unit)
        if not slot.loaded:
            async with slot.lock:
                await self._load(slot)
        return slot

    # ---- internals ----

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

    async def _slot(self, mint: str, unit: str) -> _Slot:
        key = (mint, unit)
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        if unit not in SUPPORTED_UNITS:
            raise EcashError("unit_not_supported")
        async with self._create_lock:
            slot = self._slots.get(key)
            if slot is None:
                self._db_dir.mkdir(parents=True, exist_ok=True)
                # all (mint, unit) wallets share one database, hence one seed
                wallet = await Wallet.with_db(mint, str(self._db_dir), name="wallet", unit=unit)
                await wallet.load_proofs(reload=True)
                if mint not in self._clients:
                    self._clients[mint] = client = new_mint_client(mint)
                    if client is not None:
                        self._sessions[mint] = new_mint_session()
                slot = _Slot(
                    wallet=wallet,
                    client=self._clients[mint],
                    file_lock=self._file_lock,
                    session=self._sessions.get(mint),
                )
                self._receivers[key] = SwapBatcher(slot, self._store)
                self._slots[key] = slot
        return slot

    async def _load(self, slot: _Slot) -> None:
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
        await wallet.load_proofs(reload=True)
        slot.loaded = True

    async def _resolve_keysets(self, slot: _Slot, proofs: list[Any]) -> None:
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
        raise EcashError(
            "invalid_cashu_token",
            f"The token's keyset is not one of {wallet.url}'s {wallet.unit.name} keysets. "
            "Check that the token's mint and unit are right.",
        )


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


def _insufficient(amount: int, unit: str) -> EcashError:
    return EcashError(
        "insufficient_node_funds",
        f"The node cannot issue {amount} {unit} right now. "
        "Try again later or contact the operator.",
    )


def _describe(exc: BaseException) -> str:
    return exc.code if isinstance(exc, EcashError) else type(exc).__name__
