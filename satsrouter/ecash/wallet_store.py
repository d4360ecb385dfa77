"""The wallet database writes on the X-Cashu path, each one transaction in one hop.

nutshell's own database layer opens a new SQLAlchemy connection for every operation (no
pool) and writes a proof per statement; on the X-Cashu path that cost more CPU than the
mint's swap. These are the same rows in nutshell's own tables (the pinned 0.20 schema),
written with the stdlib driver on one thread. Commits stay fully synced: this is the
node's ecash.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from satsrouter.ecash._cashu import Proof
from satsrouter.store.tx import SqliteTxRunner, Tx

_BUMP_COUNTER = "UPDATE keysets SET counter = counter + :n WHERE id = :id RETURNING counter"
_INSERT_PROOF = (
    "INSERT INTO proofs (id, amount, C, secret, time_created, derivation_path, dleq, mint_id, "
    "melt_id) VALUES (:id, :amount, :C, :secret, :now, :path, :dleq, :mint_id, :melt_id)"
)
_DELETE_PROOF = "DELETE FROM proofs WHERE secret = :secret"
_INSERT_USED = (
    "INSERT INTO proofs_used (amount, C, secret, time_used, id, derivation_path, mint_id, "
    "melt_id) VALUES (:amount, :C, :secret, :now, :id, :path, :mint_id, :melt_id)"
)


class WalletStoreError(Exception):
    """The wallet database refused a write; nothing of it was committed."""


def _proof_row(proof: Proof, now: int) -> dict[str, Any]:
    return {
        "id": proof.id,
        "amount": proof.amount,
        "C": str(proof.C),
        "secret": str(proof.secret),
        "now": now,
        "path": proof.derivation_path,
        "dleq": json.dumps(proof.dleq.model_dump()) if proof.dleq else "",
        "mint_id": proof.mint_id,
        "melt_id": proof.melt_id,
    }


class WalletStore:
    """Counter bumps, new proofs and given-away proofs in the wallet's SQLite file."""

    def __init__(self, path: Path) -> None:
        self._tx = SqliteTxRunner(str(path), synchronous="FULL", name="wallet-tx")

    async def reserve_counters(self, keyset_id: str, n: int) -> int:
        """Take `n` derivation counters of a keyset for new secrets; returns the first."""

        def op(tx: Tx) -> int:
            rows, _ = tx.execute(_BUMP_COUNTER, {"n": n, "id": keyset_id})
            if not rows:
                raise WalletStoreError(f"keyset {keyset_id} is not in the wallet database")
            return int(rows[0][0]) - n

        return await self._tx.run(op)

    async def any_stored(self, secrets: Sequence[str]) -> bool:
        """Whether a proof with one of these secrets is held (a reused counter)."""
        names = {f"s{i}": s for i, s in enumerate(secrets)}
        sql = f"SELECT 1 FROM proofs WHERE secret IN ({', '.join(':' + k for k in names)})"
        return bool(await self._tx.run(lambda tx: tx.execute(sql, names)[0]))

    async def store(self, proofs: Sequence[Proof]) -> None:
        """Record proofs the node now holds, all or none."""
        now = int(time.time())
        rows = [_proof_row(p, now) for p in proofs]

        def op(tx: Tx) -> None:
            for row in rows:
                tx.execute(_INSERT_PROOF, row)

        await self._tx.run(op)

    async def give_away(self, proofs: Sequence[Proof]) -> None:
        """Move proofs handed to a user from `proofs` to `proofs_used`, all or none.

        Fails loudly (nutshell's `invalidate` logs and swallows database errors, so a proof
        handed out could come back on the next reload and be handed out again).
        """
        now = int(time.time())
        rows = [_proof_row(p, now) for p in proofs]

        def op(tx: Tx) -> None:
            for row in rows:
                _, deleted = tx.execute(_DELETE_PROOF, {"secret": row["secret"]})
                if deleted != 1:
                    raise WalletStoreError("a proof being given away is not in the wallet")
                tx.execute(_INSERT_USED, row)

        await self._tx.run(op)

    async def close(self) -> None:
        await self._tx.close()
