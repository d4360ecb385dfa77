"""One (mint, unit) of the node's wallet: nutshell's protocol object and the proofs at hand."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import httpx

from satsrouter.ecash._cashu import Proof, Wallet
from satsrouter.ecash.mint_gate import MintGate
from satsrouter.store.turns import LocalTurn, Turn


@dataclass
class Slot:
    """nutshell's `Wallet` for one (mint, unit), used for keysets, cryptography and the mint's
    HTTP protocol only; and this process's view of the unspent proofs held there.

    `proofs` is a cache: the database decides (a proof is taken by compare-and-set), and the
    cache is reloaded whenever it proves stale. `lock` serialises choosing among them in
    this process.
    """

    mint: str
    unit: str
    wallet: Wallet
    client: httpx.AsyncClient | None
    session: aiohttp.ClientSession | None = None  # for swaps; None through a proxy
    gate: MintGate = field(default_factory=MintGate)  # the mint's bound, shared by its units
    turn: Turn = field(default_factory=LocalTurn)  # the mint's swap turn, across processes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: bool = False

    @property
    def proofs(self) -> list[Proof]:
        """The unspent proofs this process knows of (nutshell's coin selection reads them)."""
        proofs: list[Proof] = self.wallet.proofs
        return proofs

    def take(self, chosen: list[Proof]) -> None:
        """Drop proofs from the cache (they are being spent)."""
        gone = {p.secret for p in chosen}
        self.wallet.proofs = [p for p in self.wallet.proofs if p.secret not in gone]

    def add(self, proofs: list[Proof]) -> None:
        """Add proofs to the cache (they are unspent in the database)."""
        have = {p.secret for p in self.wallet.proofs}
        self.wallet.proofs = self.wallet.proofs + [p for p in proofs if p.secret not in have]

    def replace(self, proofs: list[Proof]) -> None:
        self.wallet.proofs = list(proofs)

    @property
    def per_unit_msat(self) -> int:
        return 1000 if self.unit == "sat" else 1
