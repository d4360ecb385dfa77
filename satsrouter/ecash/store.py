"""The node's ecash rows, as transaction functions over the node's own database.

Every function takes an open transaction (`Tx`), so that callers can write the proofs an
operation brings in or sends out together with the ledger rows they pay for (I6). Proofs
move `unspent -> reserved -> spent` or `unspent -> spent`, each by compare-and-set, so two
processes (or two nodes on one Postgres) can never hand out the same proof. The SQL is plain
text that SQLite and Postgres both run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from satsrouter.ecash._cashu import DLEQWallet, Proof
from satsrouter.store.tx import Tx

_SEED = "SELECT mnemonic FROM wallet_seed WHERE id = 1"
_INSERT_SEED = (
    "INSERT INTO wallet_seed (id, mnemonic, created_at) VALUES (1, :m, :now) "
    "ON CONFLICT (id) DO NOTHING"
)
_INSERT_KEYSET = (
    "INSERT INTO wallet_keysets (id, mint_url, unit, counter) VALUES (:id, :mint, :unit, 0) "
    "ON CONFLICT (id) DO NOTHING"
)
_TAKE_COUNTERS = "UPDATE wallet_keysets SET counter = counter + :n WHERE id = :id RETURNING counter"
_GIVE_BACK_COUNTERS = "UPDATE wallet_keysets SET counter = :first WHERE id = :id AND counter = :end"
_COUNTER = "SELECT counter FROM wallet_keysets WHERE id = :id"
_INSERT_PROOF = (
    "INSERT INTO wallet_proofs (secret, keyset_id, amount, signature, dleq, mint_url, unit, "
    "state, op_id, created_at, updated_at) VALUES (:secret, :keyset, :amount, :signature, "
    ":dleq, :mint, :unit, 'unspent', :op, :now, :now) ON CONFLICT (secret) DO NOTHING"
)
_MOVE_PROOF = (
    "UPDATE wallet_proofs SET state = :to, op_id = :op, updated_at = :now "
    "WHERE secret = :secret AND state = :from"
)
_MOVE_OP_PROOFS = (
    "UPDATE wallet_proofs SET state = :to, updated_at = :now WHERE op_id = :op AND state = :from"
)
_UNSPENT = (
    "SELECT secret, keyset_id, amount, signature, dleq FROM wallet_proofs "
    "WHERE mint_url = :mint AND unit = :unit AND state = 'unspent'"
)
_OP_PROOFS = (
    "SELECT secret, keyset_id, amount, signature, dleq FROM wallet_proofs "
    "WHERE op_id = :op AND state = :state"
)
_HELD = "SELECT secret FROM wallet_proofs WHERE secret IN ({names})"
_INSERT_OP = (
    "INSERT INTO wallet_ops (id, kind, mint_url, unit, state, instance_id, keyset_id, outputs, "
    "inputs, detail, node_delta_msat, created_at, updated_at) VALUES (:id, :kind, :mint, :unit, "
    "'pending', :instance, :keyset, :outputs, :inputs, :detail, 0, :now, :now)"
)
_FINISH_OP = (
    "UPDATE wallet_ops SET state = :state, inputs = NULL, node_delta_msat = :delta, "
    "updated_at = :now WHERE id = :id AND state = 'pending'"
)
_PENDING_OPS = (
    "SELECT id, kind, mint_url, unit, state, instance_id, keyset_id, outputs, inputs, detail, "
    "created_at FROM wallet_ops WHERE state = 'pending'"
)


class WalletConflict(Exception):
    """A proof was taken by someone else between choosing it and writing it."""


@dataclass(frozen=True)
class Output:
    """One output of an operation: its amount and the derivation counter of its secret."""

    amount: int
    counter: int


@dataclass(frozen=True)
class Op:
    """A recorded request to a mint, as read back for recovery."""

    id: str
    kind: str
    mint_url: str
    unit: str
    state: str
    instance_id: str
    keyset_id: str | None
    outputs: tuple[Output, ...]
    inputs: list[Proof]
    detail: str | None
    created_at: float


def proof_of(row: Sequence[Any]) -> Proof:
    """A Proof from a (secret, keyset_id, amount, signature, dleq) row."""
    secret, keyset_id, amount, c, dleq = row
    parsed = DLEQWallet(**json.loads(dleq)) if dleq else None
    return Proof(id=keyset_id, amount=int(amount), C=c, secret=secret, dleq=parsed)


def _proof_params(
    proof: Proof, mint: str, unit: str, op_id: str | None, now: float
) -> dict[str, Any]:
    return {
        "secret": str(proof.secret),
        "keyset": proof.id,
        "amount": int(proof.amount),
        "signature": str(proof.C),
        "dleq": json.dumps(proof.dleq.model_dump()) if proof.dleq else None,
        "mint": mint,
        "unit": unit,
        "op": op_id,
        "now": now,
    }


def encode_proofs(proofs: Iterable[Proof]) -> str:
    """Proofs as JSON (for an operation's user inputs, kept until it is finished)."""
    return json.dumps(
        [
            {
                "id": p.id,
                "amount": int(p.amount),
                "secret": p.secret,
                "C": p.C,
                "witness": p.witness,
            }
            for p in proofs
        ],
        separators=(",", ":"),
    )


def decode_proofs(text: str | None) -> list[Proof]:
    if not text:
        return []
    return [Proof(**item) for item in json.loads(text)]


def encode_outputs(outputs: Iterable[Output]) -> str:
    return json.dumps([[o.amount, o.counter] for o in outputs], separators=(",", ":"))


def _op_of(row: Sequence[Any]) -> Op:
    op_id, kind, mint, unit, state, instance, keyset, outputs, inputs, detail, created = row
    parsed = tuple(Output(int(a), int(c)) for a, c in json.loads(outputs)) if outputs else ()
    return Op(
        op_id,
        kind,
        mint,
        unit,
        state,
        instance,
        keyset,
        parsed,
        decode_proofs(inputs),
        detail,
        float(created),
    )


# ---- seed and counters ----


def seed_tx(tx: Tx, new_mnemonic: str) -> str:
    """The wallet's mnemonic; `new_mnemonic` becomes it if there is none yet."""
    tx.execute(_INSERT_SEED, {"m": new_mnemonic, "now": time.time()})
    rows, _ = tx.execute(_SEED, {})
    return str(rows[0][0])


def ensure_keyset_tx(tx: Tx, keyset_id: str, mint: str, unit: str) -> None:
    tx.execute(_INSERT_KEYSET, {"id": keyset_id, "mint": mint, "unit": unit})


def take_counters_tx(tx: Tx, keyset_id: str, n: int) -> int:
    """Take `n` derivation counters of a keyset; returns the first. Never handed out twice."""
    rows, _ = tx.execute(_TAKE_COUNTERS, {"n": n, "id": keyset_id})
    if not rows:
        raise KeyError(f"keyset {keyset_id} is not in the wallet")
    return int(rows[0][0]) - n


def give_back_counters_tx(tx: Tx, keyset_id: str, first: int, n: int) -> bool:
    """Return the last `n` counters taken if nobody took any after them (nothing signed)."""
    _, moved = tx.execute(_GIVE_BACK_COUNTERS, {"id": keyset_id, "first": first, "end": first + n})
    return moved == 1


def counter_tx(tx: Tx, keyset_id: str) -> int:
    rows, _ = tx.execute(_COUNTER, {"id": keyset_id})
    return int(rows[0][0]) if rows else 0


# ---- proofs ----


def store_proofs_tx(
    tx: Tx, proofs: Sequence[Proof], mint: str, unit: str, op_id: str | None = None
) -> int:
    """Record proofs the node now holds (unspent); returns how many were new."""
    now = time.time()
    stored = 0
    for proof in proofs:
        _, inserted = tx.execute(_INSERT_PROOF, _proof_params(proof, mint, unit, op_id, now))
        stored += inserted
    return stored


def move_proofs_tx(
    tx: Tx, secrets: Iterable[str], op_id: str, from_state: str, to_state: str
) -> None:
    """Move each proof `from_state -> to_state` for `op_id`; WalletConflict if one is not."""
    now = time.time()
    # Always in the same order: two processes taking overlapping proofs then wait for each
    # other (and one finds them gone) instead of deadlocking on Postgres's row locks.
    for secret in sorted(secrets):
        _, moved = tx.execute(
            _MOVE_PROOF,
            {"secret": secret, "op": op_id, "from": from_state, "to": to_state, "now": now},
        )
        if moved != 1:
            raise WalletConflict("a proof was taken by another operation")


def move_op_proofs_tx(tx: Tx, op_id: str, from_state: str, to_state: str) -> int:
    """Move every proof of an operation `from_state -> to_state`; returns how many moved."""
    _, moved = tx.execute(
        _MOVE_OP_PROOFS, {"op": op_id, "from": from_state, "to": to_state, "now": time.time()}
    )
    return moved


def unspent_tx(tx: Tx, mint: str, unit: str) -> list[Proof]:
    rows, _ = tx.execute(_UNSPENT, {"mint": mint, "unit": unit})
    return [proof_of(r) for r in rows]


def op_proofs_tx(tx: Tx, op_id: str, state: str) -> list[Proof]:
    rows, _ = tx.execute(_OP_PROOFS, {"op": op_id, "state": state})
    return [proof_of(r) for r in rows]


def held_secrets_tx(tx: Tx, secrets: Sequence[str]) -> set[str]:
    """Which of these secrets the wallet holds or ever held."""
    if not secrets:
        return set()
    names = {f"s{i}": s for i, s in enumerate(secrets)}
    rows, _ = tx.execute(_HELD.format(names=", ".join(":" + k for k in names)), names)
    return {str(r[0]) for r in rows}


# ---- operations ----


def insert_op_tx(
    tx: Tx,
    op_id: str,
    kind: str,
    mint: str,
    unit: str,
    instance_id: str,
    keyset_id: str | None = None,
    outputs: Sequence[Output] = (),
    inputs: str | None = None,
    detail: str | None = None,
) -> None:
    tx.execute(
        _INSERT_OP,
        {
            "id": op_id,
            "kind": kind,
            "mint": mint,
            "unit": unit,
            "instance": instance_id,
            "keyset": keyset_id,
            "outputs": encode_outputs(outputs) if outputs else None,
            "inputs": inputs,
            "detail": detail,
            "now": time.time(),
        },
    )


def finish_op_tx(tx: Tx, op_id: str, state: str, node_delta_msat: int = 0) -> bool:
    """Move a pending operation to `done` or `undone`, once; False if it was not pending."""
    _, moved = tx.execute(
        _FINISH_OP, {"id": op_id, "state": state, "delta": node_delta_msat, "now": time.time()}
    )
    return moved == 1


def pending_ops_tx(tx: Tx) -> list[Op]:
    rows, _ = tx.execute(_PENDING_OPS, {})
    return [_op_of(r) for r in rows]


def finish_split_tx(
    tx: Tx, op_id: str, mint: str, unit: str, new: Sequence[Proof], fee_msat: int
) -> bool:
    """A split of the node's proofs happened: inputs spent, new proofs held, the fee the
    node's (recorded on the operation). Once: False if it was already finished."""
    if not finish_op_tx(tx, op_id, "done", -fee_msat):
        return False
    move_op_proofs_tx(tx, op_id, "reserved", "spent")
    store_proofs_tx(tx, new, mint, unit, op_id)
    return True
