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
from satsrouter.ecash.mint_gate import MintBusy
from satsrouter.ecash.receiving import Queued
from satsrouter.ecash.recovery import recover_swap
from satsrouter.ecash.store import (
    Op,
    decode_proofs,
    encode_proofs,
    finish_op_tx,
    pending_ops_tx,
    store_proofs_tx,
)
from satsrouter.ecash.tokens import ParsedToken
from satsrouter.ecash.wallet import NodeWallet, Prepared
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

log = logging.getLogger(__name__)

_INSERT_INTENT = (
    "INSERT INTO redemptions (token_hash, key_hash, kind, mint_url, unit, amount, token, state, "
    "instance_id, credited_msat, proofs, created_at, updated_at) VALUES (:th, :kh, :kind, "
    ":mint, :unit, :amount, NULL, 'pending', :instance, :owed, :proofs, :now, :now) "
    "ON CONFLICT (token_hash) DO NOTHING"
)
_EXISTING = "SELECT state, account_id, credited_msat, error FROM redemptions WHERE token_hash = :th"
_MARK_FAILED = (
    "UPDATE redemptions SET state = 'failed', error = :error, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending'"
)
_FORGET = "DELETE FROM redemptions WHERE token_hash = :th AND state = 'pending'"
# Recovery's: only while no swap holds it (another node may be linking it right now).
_FORGET_UNSENT = (
    "DELETE FROM redemptions WHERE token_hash = :th AND state = 'pending' AND (op_id IS NULL "
    "OR op_id IN (SELECT id FROM wallet_ops WHERE state <> 'pending'))"
)
_CLAIM = (
    "UPDATE redemptions SET state = 'credited', proofs = NULL, error = NULL, updated_at = :now "
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


# The receive book (ecash/receiving.py): redemptions waiting for any node's swap.
_LINK = (
    "UPDATE redemptions SET op_id = :op, updated_at = :now WHERE token_hash IN ({names}) "
    "AND state = 'pending' AND {was} RETURNING token_hash"
)
_WAITING = (
    "SELECT token_hash, proofs, credited_msat FROM redemptions WHERE state = 'pending' "
    "AND op_id IS NULL AND proofs IS NOT NULL AND mint_url = :mint AND unit = :unit "
    "ORDER BY created_at LIMIT :limit"
)
_REFUSED = (
    "UPDATE redemptions SET error = :error, proofs = NULL, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending'"
)
_UNKNOWN = (
    "UPDATE redemptions SET error = 'mint_unreachable', updated_at = :now "
    "WHERE token_hash IN ({names}) AND state = 'pending'"
)
_WITHDRAW = (
    "UPDATE redemptions SET proofs = NULL, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending' AND op_id IS NULL"
)
_OUTCOMES = (
    "SELECT token_hash, state, error, account_id, credited_msat FROM redemptions "
    "WHERE token_hash IN ({names})"
)


def _in(refs: list[str]) -> tuple[str, dict[str, str]]:
    """`:r0, :r1, …` and their parameters, for `IN (…)`."""
    params = {f"r{i}": ref for i, ref in enumerate(refs)}
    return ", ".join(f":{name}" for name in params), params


class RedemptionBook:
    """Redemptions as the wallet's receive book: a `pending` row with its proofs waits for
    whichever node holds the mint's turn, which credits it or writes why not."""

    def link_tx(self, tx: Tx, refs: list[str], op_id: str, was: str | None) -> set[str]:
        names, params = _in(refs)
        condition = "op_id IS NULL" if was is None else "op_id = :was"
        sql = _LINK.format(names=names, was=condition)
        rows, _ = tx.execute(sql, {**params, "op": op_id, "was": was, "now": time.time()})
        return {str(row[0]) for row in rows}

    def claim_tx(self, tx: Tx, mint: str, unit: str, op_id: str, room: int) -> list[Queued]:
        if room <= 0:
            return []
        rows, _ = tx.execute(_WAITING, {"mint": mint, "unit": unit, "limit": room})
        chosen: list[Queued] = []
        for token_hash, proofs_json, owed_msat in rows:
            proofs = decode_proofs(proofs_json)
            if len(proofs) > room:
                continue
            room -= len(proofs)
            chosen.append(Queued(str(token_hash), proofs, int(owed_msat) // UNIT_MSAT[unit]))
        if not chosen:
            return []
        linked = self.link_tx(tx, [q.ref for q in chosen], op_id, None)
        return [q for q in chosen if q.ref in linked]

    def finish_tx(self, tx: Tx, ref: str) -> Redeemed:
        return credit_redemption_tx(tx, ref, time.time())

    def refused_tx(self, tx: Tx, ref: str, code: str) -> None:
        now = time.time()
        if code == "cashu_token_already_spent":
            tx.execute(_MARK_FAILED, {"th": ref, "error": code, "now": now})
        else:  # nothing happened at the mint: its waiter forgets it, the token is usable
            tx.execute(_REFUSED, {"th": ref, "error": code, "now": now})

    def unknown_tx(self, tx: Tx, refs: list[str]) -> None:
        names, params = _in(refs)
        tx.execute(_UNKNOWN.format(names=names), {**params, "now": time.time()})

    def withdraw_tx(self, tx: Tx, ref: str) -> bool:
        _, count = tx.execute(_WITHDRAW, {"th": ref, "now": time.time()})
        return count == 1

    def outcomes_tx(self, tx: Tx, refs: list[str]) -> dict[str, Any]:
        names, params = _in(refs)
        rows, _ = tx.execute(_OUTCOMES.format(names=names), params)
        found = {str(row[0]): row[1:] for row in rows}
        outcomes: dict[str, Any] = {}
        for ref in refs:
            if ref not in found:  # its swap was undone by recovery: the token is usable
                outcomes[ref] = MintBusy(1.0)
                continue
            state, error, account_id, credited = found[ref]
            if state == "credited":
                outcomes[ref] = Redeemed(int(account_id or 0), int(credited or 0), already=False)
            elif state == "failed" or error is not None:
                outcomes[ref] = _ecash_error(error)
        return outcomes


def _ecash_error(code: str | None) -> EcashError:
    try:
        return EcashError(code or "cashu_token_already_spent")
    except ValueError:
        return EcashError("mint_error")


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
        wallet.keep_receives_in(RedemptionBook())

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
        prepared = await self.wallet.prepare(token)
        now = time.time()
        intent = {
            "th": token.raw_hash,
            "kh": key_hash,
            "kind": kind,
            "mint": token.mint,
            "unit": token.unit,
            "amount": token.amount,
            "instance": self.ledger.instance_id,
            "owed": prepared.owed * UNIT_MSAT[token.unit],
            # Any node holding the mint's turn may carry it (ecash/receiving.py)
            "proofs": encode_proofs(prepared.proofs) if prepared.batchable else None,
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
        finishing = asyncio.ensure_future(self._swap_and_credit(prepared))
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finished)
        finishing.add_done_callback(lambda _: self._carried(token.raw_hash))
        return finishing

    def _finished(self, task: asyncio.Future[Redeemed]) -> None:
        self._finishing.discard(task)
        if not task.cancelled():
            task.exception()  # seen here: its request may have stopped waiting

    async def _swap_and_credit(self, prepared: Prepared) -> Redeemed:
        th = prepared.token.raw_hash
        try:
            result: Redeemed = await self.wallet.carry(prepared, th)
            return result
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
                await self._tx.run(_forget_unsent(token_hash))
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
                    self.wallet.receives_settled_tx(tx)  # its waiters may be other nodes

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
            self.wallet.receives_settled_tx(tx)
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


def _forget_unsent(token_hash: str) -> Callable[[Tx], object]:
    return lambda tx: tx.execute(_FORGET_UNSENT, {"th": token_hash})


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
