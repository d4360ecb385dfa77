"""`satsrouter wallet restore`: find the node's ecash at its mints from the seed (NUT-09).

Every output the node ever asked a mint to sign derives from the seed, a keyset and a
counter (NUT-13). Walking the counters of each keyset and asking the mint which of those
outputs it signed finds every proof the node ever had; the ones the mint says are unspent
and that the database never recorded are taken back. Proofs the database recorded are
left alone: a `spent` one may be a token paid out to a user who has not redeemed it yet.

For when the database lost proofs (a restore from an old backup, a wallet operation
recovery could not finish). Run it with the node stopped and recovery done (a node that
starts finishes its pending operations first); it refuses while operations are pending.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from satsrouter.ecash._cashu import Proof
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import (
    Output,
    counter_tx,
    finish_op_tx,
    held_secrets_tx,
    insert_op_tx,
    pending_ops_tx,
    store_proofs_tx,
    take_counters_tx,
)
from satsrouter.ecash.swap import blind, restore, unblind_answered
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

BATCH = 100
# Empty batches past the last used counter before a keyset is considered fully walked.
GAP_BATCHES = 3


@dataclass(frozen=True)
class Restored:
    """What a restore took back at one (mint, unit, keyset)."""

    mint: str
    unit: str
    keyset_id: str
    found: int  # proofs the mint signed for us, in all
    restored: int  # of those, unspent and unknown to the database: taken back
    amount: int  # their value, in `unit`


class PendingOperations(Exception):
    """Wallet operations are still pending: recovery must finish them first."""


async def restore_wallet(
    wallet: NodeWallet, tx: TxRunner, units: tuple[str, ...] = ("sat", "msat")
) -> list[Restored]:
    """Walk every keyset of every accepted mint and take back unrecorded unspent proofs.

    `tx` runs on the wallet's database; what it takes back is recorded durably.
    """
    if await tx.read(pending_ops_tx):
        raise PendingOperations(
            "wallet operations are pending: start the node once so recovery finishes them"
        )
    results: list[Restored] = []
    for mint in wallet.mints:
        for unit in units:
            try:
                slot = await wallet.loaded_slot(mint, unit)
            except EcashError as exc:
                if exc.code == "unit_not_supported":
                    continue
                raise
            for keyset_id in list(slot.wallet.keysets):
                results.append(await _restore_keyset(wallet, tx, slot, keyset_id))
    return results


async def _restore_keyset(
    wallet: NodeWallet, runner: TxRunner, slot: Slot, keyset_id: str
) -> Restored:
    used = await runner.read(lambda tx: counter_tx(tx, keyset_id))
    found: list[Proof] = []
    last = -1
    start, empty = 0, 0
    while start < used or empty < GAP_BATCHES:
        outputs = [Output(1, c) for c in range(start, start + BATCH)]
        blinded = await blind(slot.wallet, keyset_id, outputs)
        promises = await restore(slot, blinded)
        signed = [i for i, p in enumerate(promises) if p is not None]
        if signed:
            found += await unblind_answered(slot.wallet, blinded, promises)
            last = start + signed[-1]
            empty = 0
        else:
            empty += 1
        start += BATCH
    states = []
    for at in range(0, len(found), BATCH):
        states += await wallet.proof_states(slot, found[at : at + BATCH])
    unspent = [p for p, s in zip(found, states, strict=True) if s == "UNSPENT"]
    op_id = "restore:" + os.urandom(12).hex()

    def take_back(tx: Tx) -> list[Proof]:
        known = held_secrets_tx(tx, [str(p.secret) for p in unspent])
        new = [p for p in unspent if str(p.secret) not in known]
        behind = last + 1 - counter_tx(tx, keyset_id)
        if behind > 0:  # never hand out a counter the mint already signed for
            take_counters_tx(tx, keyset_id, behind)
        if new:
            # Not revenue: the ledger still owes what these proofs pay for (the audit showed
            # them missing). Value found beyond that shows in the audit as a surplus.
            insert_op_tx(tx, op_id, "restore", slot.mint, slot.unit, wallet.instance_id)
            store_proofs_tx(tx, new, slot.mint, slot.unit, op_id)
            finish_op_tx(tx, op_id, "done")
        return new

    new = await runner.run(take_back, durable=True)
    slot.add(new)
    amount = sum(int(p.amount) for p in new)
    if new:
        log.warning("restored %d %s at %s (keyset %s)", amount, slot.unit, slot.mint, keyset_id)
    return Restored(slot.mint, slot.unit, keyset_id, len(found), len(new), amount)
