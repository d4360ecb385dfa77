"""Splitting the node's own proofs, so that a token of an exact amount can be handed out.

A split is recorded like any swap before it goes to the mint: its inputs move to
`reserved` under the operation, and its outputs (keyset, counters, amounts) are written
with it. The mint's answer is stored in one transaction (inputs spent, new proofs held, the
fee the node's); a refusal makes the inputs spendable again; an unknown outcome leaves the
operation pending for recovery (`recovery.recover_split`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from satsrouter import faults
from satsrouter.ecash._cashu import Proof
from satsrouter.ecash.errors import insufficient_funds
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import (
    Output,
    finish_op_tx,
    finish_split_tx,
    insert_op_tx,
    move_op_proofs_tx,
    move_proofs_tx,
    take_counters_tx,
)
from satsrouter.ecash.swap import Refused, blind, swap, unblind_signed
from satsrouter.store.tx import Tx, TxRunner


@dataclass
class Splitter:
    """Splits at the node's mints; knows which of its splits are still in flight."""

    tx: TxRunner
    instance_id: str
    in_flight: set[str] = field(default_factory=set)

    async def split(self, slot: Slot, amount: int) -> None:
        """Swap some of the slot's proofs for ones that include exactly `amount` (slot locked).

        The fee is the node's. Raises WalletConflict when another process took an input.
        """
        wallet = slot.wallet
        inputs = list(wallet.coinselect(slot.proofs, amount, include_fees=True))
        fee = int(wallet.get_fees_for_proofs(inputs))
        if sum(int(p.amount) for p in inputs) < amount + fee:
            raise insufficient_funds(amount, slot.unit)
        keyset_id = str(wallet.keyset_id)
        keep, send = wallet.determine_output_amounts(inputs, amount, keyset_id_outputs=keyset_id)
        op_id = "split:" + os.urandom(12).hex()
        self.in_flight.add(op_id)
        try:
            await self._split_as(op_id, slot, inputs, fee, keyset_id, list(keep) + list(send))
        finally:
            self.in_flight.discard(op_id)

    async def _split_as(
        self,
        op_id: str,
        slot: Slot,
        inputs: list[Proof],
        fee: int,
        keyset_id: str,
        amounts: list[int],
    ) -> None:
        wallet = slot.wallet
        secrets = [str(p.secret) for p in inputs]

        def intent(tx: Tx) -> list[Output]:
            move_proofs_tx(tx, secrets, op_id, "unspent", "reserved")
            first = take_counters_tx(tx, keyset_id, len(amounts))
            outputs = [Output(a, first + i) for i, a in enumerate(amounts)]
            insert_op_tx(
                tx, op_id, "split", slot.mint, slot.unit, self.instance_id, keyset_id, outputs
            )
            return outputs

        outputs = await self.tx.run(intent)
        slot.take(inputs)
        faults.reach("split.after_intent")
        blinded = await blind(wallet, keyset_id, outputs)
        signed_inputs = wallet.sign_proofs_inplace_swap(inputs, blinded.messages)
        try:
            promises = await swap(slot, signed_inputs, blinded)
        except Refused as refused:
            await self.tx.run(lambda tx: _undo_split(tx, op_id))
            slot.add(inputs)
            raise refused.error from None
        faults.reach("split.after_swap")
        new = await unblind_signed(wallet, blinded, promises)
        fee_msat = fee * slot.per_unit_msat
        await self.tx.run(
            lambda tx: finish_split_tx(tx, op_id, slot.mint, slot.unit, new, fee_msat)
        )
        slot.add(new)


def _undo_split(tx: Tx, op_id: str) -> None:
    """The mint refused the split: its inputs are spendable again."""
    if finish_op_tx(tx, op_id, "undone"):
        move_op_proofs_tx(tx, op_id, "reserved", "unspent")
