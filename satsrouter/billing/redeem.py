"""Turning a Cashu token into a balance, exactly once and never lost (I6)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from satsrouter.billing.balances import credit_tx, open_account_tx
from satsrouter.billing.ledger import Ledger
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.tokens import ParsedToken, parse_token
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx

log = logging.getLogger(__name__)

UNIT_MSAT = {"sat": 1000, "msat": 1}
PENDING_STALE_SECONDS = 60.0

_INSERT_INTENT = (
    "INSERT INTO redemptions (token_hash, key_hash, kind, mint_url, unit, amount, token, state, "
    "created_at, updated_at) VALUES (:th, :kh, :kind, :mint, :unit, :amount, :token, 'pending', "
    ":now, :now) ON CONFLICT (token_hash) DO NOTHING"
)
_EXISTING = "SELECT state, account_id, credited_msat FROM redemptions WHERE token_hash = :th"
_MARK_FAILED = (
    "UPDATE redemptions SET state = 'failed', token = NULL, error = :error, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending'"
)
_MARK_SWAPPED = (
    "UPDATE redemptions SET state = 'swapped', credited_msat = :amount, updated_at = :now "
    "WHERE token_hash = :th AND state = 'pending'"
)
_CLAIM_SWAPPED = (
    "UPDATE redemptions SET state = 'credited', token = NULL, updated_at = :now "
    "WHERE token_hash = :th AND state = 'swapped' "
    "RETURNING key_hash, kind, mint_url, unit, credited_msat"
)
_SET_ACCOUNT = "UPDATE redemptions SET account_id = :account WHERE token_hash = :th"
_MARK_STATE = "UPDATE redemptions SET state = :state, updated_at = :now WHERE token_hash = :th"
_UNFINISHED = (
    "SELECT token_hash, state, token, updated_at FROM redemptions "
    "WHERE state IN ('pending', 'swapped')"
)


@dataclass(frozen=True)
class Redeemed:
    """A token turned into balance on `account_id`."""

    account_id: int
    credited_msat: int
    already: bool  # True when this token had been redeemed before (no new credit)


class Redeemer:
    """Swaps tokens at the mint and credits accounts, recording intent first."""

    def __init__(self, ledger: Ledger, wallet: NodeWallet) -> None:
        self.ledger = ledger
        self.wallet = wallet
        # Test hook: raise here to simulate a crash between the swap and the credit.
        self.fail_before_credit: Exception | None = None
        self._finishing: set[asyncio.Future[Redeemed]] = set()

    async def redeem(self, text: str, token: ParsedToken, key_hash: str, kind: str) -> Redeemed:
        """Redeem `token` (parsed from `text`) into the account `key_hash` (created if needed).

        Raises EcashError for tokens the mint refuses. A token this node already redeemed is
        not swapped again: the existing credit is reported with `already=True`.
        """
        self.wallet.check_accepted(token)
        now = time.time()
        intent = {
            "th": token.raw_hash,
            "kh": key_hash,
            "kind": kind,
            "mint": token.mint,
            "unit": token.unit,
            "amount": token.amount,
            "token": text.strip(),
            "now": now,
        }

        def record_intent(tx: Tx) -> tuple[Any, ...] | None:
            _, inserted = tx.execute(_INSERT_INTENT, intent)
            if inserted == 1:
                return None
            rows, _ = tx.execute(_EXISTING, {"th": token.raw_hash})
            return rows[0]

        existing = await self.ledger.tx.run(record_intent)
        if existing is not None:
            return _already(*existing)
        # From here the swap, its record and the credit run to the end even if this request
        # is cancelled (client gone): the node must never hold a token's ecash without the
        # balance for it. (A cancelled X-Cashu payer collects it with /v1/balance/refund.)
        finishing = asyncio.ensure_future(self._swap_and_credit(token))
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finished)
        return await asyncio.shield(finishing)

    def _finished(self, task: asyncio.Future[Redeemed]) -> None:
        self._finishing.discard(task)
        if not task.cancelled():
            task.exception()  # seen here: its request may have stopped waiting

    async def _swap_and_credit(self, token: ParsedToken) -> Redeemed:
        try:
            received = await self.wallet.receive(token)
        except EcashError as exc:
            if exc.code in ("mint_unreachable",):
                # The swap may or may not have reached the mint: recovery asks it later.
                log.warning("redemption %s outcome unknown: %s", token.raw_hash[:12], exc.code)
            else:
                await self._mark_failed(token.raw_hash, exc.code)
            raise
        await self._mark_swapped(token.raw_hash, received * UNIT_MSAT[token.unit])
        return await self._credit(token.raw_hash)

    async def _mark_failed(self, token_hash: str, reason: str) -> None:
        params = {"th": token_hash, "error": reason[:200], "now": time.time()}
        await self.ledger.tx.run(lambda tx: tx.execute(_MARK_FAILED, params))

    async def _mark_swapped(self, token_hash: str, amount_msat: int) -> None:
        # Its own commit: from here on a restart knows the node holds the ecash for it.
        params = {"th": token_hash, "amount": amount_msat, "now": time.time()}
        await self.ledger.tx.run(lambda tx: tx.execute(_MARK_SWAPPED, params))

    async def _credit(self, token_hash: str) -> Redeemed:
        if self.fail_before_credit is not None:
            raise self.fail_before_credit
        now = time.time()

        def op(tx: Tx) -> Redeemed:
            # Compare-and-set first: of two callers racing to credit (a request and the
            # sweeper's recovery, on Postgres), only the one that moves the row credits.
            rows, _ = tx.execute(_CLAIM_SWAPPED, {"th": token_hash, "now": now})
            if not rows:
                raise RuntimeError(f"redemption {token_hash[:12]} is not swapped")
            key_hash, kind, mint_url, unit, amount_msat = rows[0]
            account_id = open_account_tx(tx, key_hash, kind, mint_url, unit, now)
            credit_tx(tx, account_id, amount_msat, "credit", token_hash[:16], now)
            tx.execute(_SET_ACCOUNT, {"th": token_hash, "account": account_id})
            return Redeemed(account_id, int(amount_msat), already=False)

        return await self.ledger.tx.run(op)

    async def recover(self, ask_mint: bool = True, min_age: float = 0.0) -> int:
        """Finish redemptions that were interrupted; returns how many were credited.

        `swapped` rows (the node holds the ecash) are credited. With `ask_mint`, `pending` rows
        are checked at the mint (NUT-07): untouched proofs are released to their owner; proofs
        spent without a recorded swap result need a wallet restore (NUT-09) and are flagged,
        never credited blind. Safe to run any number of times.
        """
        rows = await self.ledger.tx.run(lambda tx: tx.execute(_UNFINISHED, {})[0])
        credited = 0
        now = time.time()
        for token_hash, state, text, updated_at in rows:
            if updated_at > now - min_age:
                continue  # possibly still in flight in a live request
            if state == "swapped":
                try:
                    await self._credit(token_hash)
                except RuntimeError:
                    continue  # finished concurrently
                credited += 1
                log.info("recovered redemption %s", token_hash[:12])
                continue
            # A swap takes milliseconds: a pending row this old is not in flight anywhere.
            if not ask_mint or updated_at > now - PENDING_STALE_SECONDS:
                continue
            try:
                proofs = await self.wallet.proof_state(parse_token(text))
            except EcashError as exc:
                log.warning("recovery of %s postponed: %s", token_hash[:12], exc.code)
                continue
            if proofs == "unspent":
                await self._mark_failed(token_hash, "not swapped before restart")
            elif proofs == "spent":
                await self._mark_state(token_hash, "needs_restore")
                log.error(
                    "redemption %s: proofs spent but the swap result was lost; "
                    "restore the wallet from its seed (NUT-09)",
                    token_hash[:12],
                )
        return credited

    async def _mark_state(self, token_hash: str, state: str) -> None:
        params = {"th": token_hash, "state": state, "now": time.time()}
        await self.ledger.tx.run(lambda tx: tx.execute(_MARK_STATE, params))


def _already(state: str, account_id: int | None, credited: int | None) -> Redeemed:
    """What a second redemption of the same token gets: the first's credit, or an error."""
    if state == "credited":
        return Redeemed(int(account_id or 0), int(credited or 0), already=True)
    if state in ("pending", "swapped"):
        raise ApiError(
            409,
            "redemption_in_progress",
            "This token is being redeemed by another request; retry in a moment.",
        )
    raise EcashError("cashu_token_already_spent")
