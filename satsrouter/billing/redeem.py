"""Turning a Cashu token into a balance, exactly once and never lost (I6).

A redemption is a row keyed by the token's hash: `pending` from before the token goes to the
mint, `credited` in the same transaction that stores the proofs the swap brought in, or
`failed` when the mint said the token was spent. A crash leaves it `pending`; recovery asks
the mint about the swap it was part of and finishes or forgets it, so the user is credited
once or their token is theirs to use again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from satsrouter import faults
from satsrouter.billing.balances import credit_tx, open_account_tx
from satsrouter.billing.ledger import Ledger
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.recovery import recover_swap
from satsrouter.ecash.store import Op, finish_op_tx, pending_ops_tx, store_proofs_tx
from satsrouter.ecash.tokens import ParsedToken
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

log = logging.getLogger(__name__)

_INSERT_INTENT = (
    "INSERT INTO redemptions (token_hash, key_hash, kind, mint_url, unit, amount, token, state, "
    "instance_id, created_at, updated_at) VALUES (:th, :kh, :kind, :mint, :unit, :amount, "
    "NULL, 'pending', :instance, :now, :now) ON CONFLICT (token_hash) DO NOTHING"
)
_EXISTING = "SELECT state, account_id, credited_msat, error FROM redemptions WHERE token_hash = :th"
_MARK_FAILED = (
    "UPDATE redemptions SET state = 'failed', error = :error, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending'"
)
_FORGET = "DELETE FROM redemptions WHERE token_hash = :th AND state = 'pending'"
_LINK = (
    "UPDATE redemptions SET op_id = :op, credited_msat = :owed, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending'"
)
_CLAIM = (
    "UPDATE redemptions SET state = 'credited', updated_at = :now "
    "WHERE token_hash = :th AND state = :state "
    "RETURNING key_hash, kind, mint_url, unit, credited_msat"
)
_SET_ACCOUNT = "UPDATE redemptions SET account_id = :account WHERE token_hash = :th"
_OF_OP = "SELECT token_hash, credited_msat FROM redemptions WHERE op_id = :op AND state = 'pending'"
_FORGET_OF_OP = "DELETE FROM redemptions WHERE op_id = :op AND state = 'pending'"
_UNSENT = (
    "SELECT token_hash, instance_id, state, updated_at FROM redemptions "
    "WHERE (state = 'pending' AND (op_id IS NULL OR op_id IN "
    "(SELECT id FROM wallet_ops WHERE state <> 'pending'))) OR state = 'swapped'"
)


@dataclass(frozen=True)
class Redeemed:
    """A token turned into balance on `account_id`."""

    account_id: int
    credited_msat: int
    already: bool  # True when this token had been redeemed before (no new credit)


def credit_redemption_tx(tx: Tx, token_hash: str, now: float, state: str = "pending") -> Redeemed:
    """Move a redemption to `credited` and credit its account, in the caller's transaction.

    Compare-and-set first: of two callers racing to finish it, only one credits.
    """
    rows, _ = tx.execute(_CLAIM, {"th": token_hash, "now": now, "state": state})
    if not rows:
        raise RuntimeError(f"redemption {token_hash[:12]} is not {state}")
    key_hash, kind, mint_url, unit, amount_msat = rows[0]
    account_id = open_account_tx(tx, key_hash, kind, mint_url, unit, now)
    credit_tx(tx, account_id, int(amount_msat), "credit", token_hash[:16], now)
    tx.execute(_SET_ACCOUNT, {"th": token_hash, "account": account_id})
    return Redeemed(account_id, int(amount_msat), already=False)


class Redeemer:
    """Swaps tokens at the mint and credits accounts, recording intent first."""

    def __init__(self, tx: TxRunner, ledger: Ledger, wallet: NodeWallet) -> None:
        self._tx = tx
        self.ledger = ledger
        self.wallet = wallet
        self._finishing: set[asyncio.Future[Redeemed]] = set()
        # Token hashes whose redemption a call in this process is carrying.
        self._redeeming: Counter[str] = Counter()

    async def redeem(self, token: ParsedToken, key_hash: str, kind: str) -> Redeemed:
        """Redeem `token` into the account `key_hash` (created if needed).

        Raises EcashError for tokens the mint refuses. A token this node already redeemed is
        not swapped again: the existing credit is reported with `already=True`.
        """
        self.wallet.check_accepted(token)
        th = token.raw_hash
        # Carried from before the intent is written until its swap ends (which outlives a
        # cancelled caller): recovery never forgets an intent while a swap may still use it.
        self._redeeming[th] += 1
        try:
            started = await self._start(token, key_hash, kind)
        except BaseException:
            self._carried(th)
            raise
        if isinstance(started, Redeemed):
            self._carried(th)
            return started
        return await asyncio.shield(started)  # the swap's end lets go of the token hash

    def _carried(self, token_hash: str) -> None:
        self._redeeming[token_hash] -= 1
        if not self._redeeming[token_hash]:
            del self._redeeming[token_hash]

    async def _start(
        self, token: ParsedToken, key_hash: str, kind: str
    ) -> Redeemed | asyncio.Future[Redeemed]:
        """Record the intent and start the swap; an earlier redemption's result instead."""
        now = time.time()
        intent = {
            "th": token.raw_hash,
            "kh": key_hash,
            "kind": kind,
            "mint": token.mint,
            "unit": token.unit,
            "amount": token.amount,
            "instance": self.ledger.instance_id,
            "now": now,
        }

        def record_intent(tx: Tx) -> tuple[Any, ...] | None:
            _, inserted = tx.execute(_INSERT_INTENT, intent)
            if inserted == 1:
                return None
            rows, _ = tx.execute(_EXISTING, {"th": token.raw_hash})
            return rows[0]

        existing = await self._tx.run(record_intent)
        if existing is not None:
            return _already(*existing)
        faults.reach("redeem.after_intent")
        # From here the swap, its record and the credit run to the end even if this request
        # is cancelled (client gone): the node must never hold a token's ecash without the
        # balance for it. (A cancelled X-Cashu payer collects it with /v1/balance/refund.)
        finishing = asyncio.ensure_future(self._swap_and_credit(token))
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finished)
        finishing.add_done_callback(lambda _: self._carried(token.raw_hash))
        return finishing

    def _finished(self, task: asyncio.Future[Redeemed]) -> None:
        self._finishing.discard(task)
        if not task.cancelled():
            task.exception()  # seen here: its request may have stopped waiting

    async def _swap_and_credit(self, token: ParsedToken) -> Redeemed:
        th = token.raw_hash
        per_unit = UNIT_MSAT[token.unit]

        def link(tx: Tx, op_id: str, owed: int) -> None:
            tx.execute(_LINK, {"th": th, "op": op_id, "owed": owed * per_unit, "now": time.time()})

        def finish(tx: Tx, owed: int) -> Redeemed:
            return credit_redemption_tx(tx, th, time.time())

        try:
            return await self.wallet.receive(token, link, finish)
        except EcashError as exc:
            if exc.code == "mint_unreachable":
                # The swap may or may not have reached the mint: recovery asks it later.
                log.warning("redemption %s outcome unknown: %s", th[:12], exc.code)
            elif exc.code == "cashu_token_already_spent":
                await self._mark_failed(th, exc.code)
            else:
                # Nothing happened at the mint: the token stays its owner's, to use again.
                await self._tx.run(lambda tx: tx.execute(_FORGET, {"th": th}))
            raise

    async def _mark_failed(self, token_hash: str, reason: str) -> None:
        params = {"th": token_hash, "error": reason[:200], "now": time.time()}
        await self._tx.run(lambda tx: tx.execute(_MARK_FAILED, params))

    # ---- recovery ----

    async def recover(self, ask_mint: bool = True) -> int:
        """Finish or undo redemptions and swaps whose process died; returns how many credited.

        A swap recorded but never answered is asked about at the mint (NUT-09 restore of its
        exact outputs): signed means credit each linked redemption once; not signed means
        the tokens were not taken, and their rows are forgotten so they can be used again.
        Safe to run any number of times, from any node.
        """
        credited = 0
        if ask_mint:
            ops = await self._tx.read(pending_ops_tx)
            for op in ops:
                if op.kind != "receive" or not await self.wallet.orphaned(op):
                    continue
                try:
                    credited += await self._recover_op(op)
                except EcashError as exc:
                    log.warning("recovery of swap %s postponed: %s", op.id[:20], exc.code)
        rows = await self._tx.read(lambda tx: tx.execute(_UNSENT, {})[0])
        for token_hash, instance_id, state, _ in rows:
            if state == "swapped":  # written by a version that kept ecash elsewhere
                credited += await self._credit_legacy(token_hash)
            elif await self._abandoned(token_hash, instance_id):
                await self._tx.run(_forget(token_hash))
                log.info("redemption %s never reached the mint; forgotten", token_hash[:12])
        return credited

    async def _abandoned(self, token_hash: str, instance_id: str | None) -> bool:
        """Whether nobody carries a redemption not yet sent to the mint any more."""
        if instance_id == self.ledger.instance_id:
            return token_hash not in self._redeeming
        return instance_id is None or await self.ledger.is_dead(instance_id)

    async def _recover_op(self, op: Op) -> int:
        slot = await self.wallet.loaded_slot(op.mint_url, op.unit)
        proofs = await recover_swap(slot, op)
        now = time.time()
        if proofs is None:

            def undo(tx: Tx) -> None:
                if finish_op_tx(tx, op.id, "undone"):
                    tx.execute(_FORGET_OF_OP, {"op": op.id})

            await self._tx.run(undo, durable=True)  # records ecash
            log.info("swap %s never happened; its tokens are usable again", op.id[:20])
            return 0
        received = sum(int(p.amount) for p in proofs) * slot.per_unit_msat

        def complete(tx: Tx) -> int:
            rows, _ = tx.execute(_OF_OP, {"op": op.id})
            owed = sum(int(owed_msat) for _, owed_msat in rows)
            if not finish_op_tx(tx, op.id, "done", received - owed):
                return 0  # finished meanwhile by whoever sent it
            for token_hash, _ in rows:
                credit_redemption_tx(tx, token_hash, now)
            store_proofs_tx(tx, proofs, op.mint_url, op.unit, op.id)
            return len(rows)

        count = await self._tx.run(complete, durable=True)  # records ecash
        slot.add(proofs)
        log.info("swap %s restored from the mint: %d redemptions credited", op.id[:20], count)
        return count

    async def _credit_legacy(self, token_hash: str) -> int:
        try:
            await self._tx.run(
                lambda tx: credit_redemption_tx(tx, token_hash, time.time(), state="swapped")
            )
        except RuntimeError:
            return 0  # finished concurrently
        return 1


def _forget(token_hash: str) -> Callable[[Tx], object]:
    return lambda tx: tx.execute(_FORGET, {"th": token_hash})


def _already(
    state: str, account_id: int | None, credited: int | None, error: str | None
) -> Redeemed:
    """What a second redemption of the same token gets: the first's credit, or an error."""
    if state == "credited":
        return Redeemed(int(account_id or 0), int(credited or 0), already=True)
    if state in ("pending", "swapped"):
        raise ApiError(
            409,
            "redemption_in_progress",
            "This token is being redeemed by another request; retry in a moment.",
        )
    try:
        raise EcashError(error or "cashu_token_already_spent")
    except ValueError:
        raise EcashError("cashu_token_already_spent") from None
