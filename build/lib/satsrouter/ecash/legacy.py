"""Bringing a wallet written by an older node (nutshell's own SQLite file) into the database.

Nodes before the ecash moved into the node's database kept it in `DATA_DIR/wallet/
wallet.sqlite3`, in nutshell's schema. At the first start on the new schema its seed,
counters and unspent proofs are copied over in one transaction, and the file is renamed
(`.imported`) so it is never read twice; it stays on disk as a backup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from satsrouter.ecash._cashu import DLEQWallet, Proof
from satsrouter.ecash.store import ensure_keyset_tx, store_proofs_tx, take_counters_tx
from satsrouter.ecash.tokens import normalize_mint_url
from satsrouter.store.tx import Tx

log = logging.getLogger(__name__)

LEGACY_FILE = Path("wallet") / "wallet.sqlite3"


@dataclass
class LegacyWallet:
    """What an older node's wallet file holds."""

    path: Path
    mnemonic: str
    counters: list[tuple[str, str, str, int]]  # keyset id, mint, unit, counter
    proofs: list[tuple[str, str, Proof]]  # mint, unit, proof

    def import_tx(self, tx: Tx) -> int:
        """Copy counters and proofs into the node's tables; returns how many proofs."""
        for keyset_id, mint, unit, counter in self.counters:
            ensure_keyset_tx(tx, keyset_id, mint, unit)
            take_counters_tx(tx, keyset_id, counter)
        by_place: dict[tuple[str, str], list[Proof]] = {}
        for mint, unit, proof in self.proofs:
            by_place.setdefault((mint, unit), []).append(proof)
        return sum(
            store_proofs_tx(tx, proofs, mint, unit, "legacy-import")
            for (mint, unit), proofs in by_place.items()
        )

    def retire(self) -> None:
        """Rename the file so it is not imported again (kept as a backup)."""
        target = self.path.with_name(f"{self.path.name}.imported-{int(time.time())}")
        with contextlib.suppress(FileNotFoundError):  # a sibling worker renamed it first
            self.path.rename(target)


def read_legacy(data_dir: Path) -> LegacyWallet | None:
    """The older node's wallet in `data_dir`, if there is one."""
    path = data_dir / LEGACY_FILE
    if not path.is_file():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        seed = db.execute("SELECT mnemonic FROM seed LIMIT 1").fetchone()
        if seed is None:
            return None
        keysets = {
            row[0]: (normalize_mint_url(row[1]), str(row[2]), int(row[3] or 0))
            for row in db.execute("SELECT id, mint_url, unit, counter FROM keysets")
        }
        proofs: list[tuple[str, str, Proof]] = []
        for keyset_id, amount, c, secret, dleq, reserved in db.execute(
            "SELECT id, amount, C, secret, dleq, reserved FROM proofs"
        ):
            if keyset_id not in keysets:
                continue
            if reserved:
                # an older node's melt in flight: the audit shows if it was spent
                log.warning("legacy wallet: a proof reserved for a melt is imported as unspent")
            mint, unit, _ = keysets[keyset_id]
            parsed = DLEQWallet(**json.loads(dleq)) if dleq else None
            proofs.append(
                (mint, unit, Proof(id=keyset_id, amount=amount, C=c, secret=secret, dleq=parsed))
            )
    counters = [(k, m, u, c) for k, (m, u, c) in keysets.items()]
    return LegacyWallet(path, str(seed[0]), counters, proofs)
