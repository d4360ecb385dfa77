"""Finishing the node's own wallet operations after a crash, from the mint's answers.

An operation row holds its outputs (keyset, counters, amounts), so the mint can be asked
exactly whether it signed them (NUT-09 restore): if it did, the swap happened and the
signatures are all that is needed to hold its proofs; if it did not, the swap did not
happen, and its inputs are where they were.
"""

from __future__ import annotations

import logging

from satsrouter.ecash._cashu import Proof
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import (
    Op,
    finish_op_tx,
    finish_split_tx,
    move_op_proofs_tx,
    op_proofs_tx,
)
from satsrouter.ecash.swap import blind, restore, unblind_signed
from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)


async def recover_swap(slot: Slot, op: Op) -> list[Proof] | None:
    """The proofs a recorded swap produced, restored from the mint; None if it never ran."""
    if op.keyset_id is None or not op.outputs:
        return None
    blinded = await blind(slot.wallet, op.keyset_id, op.outputs)
    promises = await restore(slot, blinded)
    signed = sum(p is not None for p in promises)
    if signed == 0:
        return None
    if signed != len(promises):
        # A swap is atomic at the mint: a partial answer means the mint lost some.
        log.error("swap %s: the mint restored %d of %d outputs", op.id[:20], signed, len(promises))
    return await unblind_signed(slot.wallet, blinded, promises)


async def recover_split(tx_runner: TxRunner, slot: Slot, op: Op, is_spent: bool | None) -> str:
    """Finish a split of the node's proofs: `done` with its new proofs, or `undone`.

    `is_spent` is the mint's word on the inputs, needed only when no output was signed.
    """
    proofs = await recover_swap(slot, op)
    if proofs is not None:
        inputs = await tx_runner.run(lambda tx: op_proofs_tx(tx, op.id, "reserved"))
        fee = sum(int(p.amount) for p in inputs) - sum(int(p.amount) for p in proofs)
        fee_msat = fee * slot.per_unit_msat
        await tx_runner.run(
            lambda tx: finish_split_tx(tx, op.id, slot.mint, slot.unit, proofs, fee_msat)
        )
        slot.add(proofs)
        return "done"
    if is_spent:
        # Spent, but not into our outputs: nobody else holds these proofs, so this is a loss
        # the audit will show; never pretend they are still ours.
        log.error("split %s: inputs spent at the mint without our outputs", op.id[:20])

    def undo(tx: Tx) -> None:
        if finish_op_tx(tx, op.id, "undone"):
            move_op_proofs_tx(tx, op.id, "reserved", "spent" if is_spent else "unspent")

    await tx_runner.run(undo)
    return "undone"
