"""Turning a Cashu token into a balance, exactly once and never lost (I6)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from satsrouter.billing.ledger import Ledger
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.tokens import ParsedToken, parse_token
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.errors import ApiError
from satsrouter.store.tables import redemptions

log = logging.getLogger(__name__)

UNIT_MSAT = {"sat": 1000, "msat": 1}
PENDING_STALE_SECONDS = 60.0


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

    async def redeem(self, text: str, token: ParsedToken, key_hash: str, kind: str) -> Redeemed:
        """Redeem `token` (parsed from `text`) into the account `key_hash` (created if needed).

        Raises EcashError for tokens the mint refuses. A token this node already redeemed is
        not swapped again: the existing credit is reported with `already=True`.
        """
        self.wallet.check_accepted(token)
        now = time.time()
        engine = self.ledger.engine
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(redemptions).values(
                        token_hash=token.raw_hash,
                        key_hash=key_hash,
                        kind=kind,
                        mint_url=token.mint,
                        unit=token.unit,
                        amount=token.amount,
                        token=text.strip(),
                        state="pending",
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            return await self._existing(token)

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

    async def _existing(self, token: ParsedToken) -> Redeemed:
        async with self.ledger.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        redemptions.c.state, redemptions.c.account_id, redemptions.c.credited_msat
                    ).where(redemptions.c.token_hash == token.raw_hash)
                )
            ).one()
        state, account_id, credited = row
        if state == "credited":
            return Redeemed(int(account_id), int(credited), already=True)
        if state in ("pending", "swapped"):
            raise ApiError(
                409,
                "redemption_in_progress",
                "This token is being redeemed by another request; retry in a moment.",
            )
        raise EcashError("cashu_token_already_spent")

    async def _mark_failed(self, token_hash: str, reason: str) -> None:
        async with self.ledger.engine.begin() as conn:
            await conn.execute(
                update(redemptions)
                .where(
                    and_(redemptions.c.token_hash == token_hash, redemptions.c.state == "pending")
                )
                .values(state="failed", token=None, error=reason[:200], updated_at=time.time())
            )

    async def _mark_swapped(self, token_hash: str, amount_msat: int) -> None:
        # Its own commit: from here on a restart knows the node holds the ecash for it.
        async with self.ledger.engine.begin() as conn:
            await conn.execute(
                update(redemptions)
                .where(
                    and_(redemptions.c.token_hash == token_hash, redemptions.c.state == "pending")
                )
                .values(state="swapped", credited_msat=amount_msat, updated_at=time.time())
            )

    async def _credit(self, token_hash: str) -> Redeemed:
        if self.fail_before_credit is not None:
            raise self.fail_before_credit
        async with self.ledger.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        redemptions.c.key_hash,
                        redemptions.c.kind,
                        redemptions.c.mint_url,
                        redemptions.c.unit,
                        redemptions.c.state,
                        redemptions.c.credited_msat,
                    ).where(redemptions.c.token_hash == token_hash)
                )
            ).one()
            key_hash, kind, mint_url, unit, state, amount_msat = row
            if state != "swapped":
                raise RuntimeError(f"redemption {token_hash[:12]} is {state}, not swapped")
            account_id = await self.ledger.open_account(conn, key_hash, kind, mint_url, unit)
            await self.ledger.credit(conn, account_id, amount_msat, "credit", token_hash[:16])
            await conn.execute(
                update(redemptions)
                .where(redemptions.c.token_hash == token_hash)
                .values(
                    state="credited",
                    account_id=account_id,
                    credited_msat=amount_msat,
                    token=None,
                    updated_at=time.time(),
                )
            )
        return Redeemed(account_id, amount_msat, already=False)

    async def recover(self, ask_mint: bool = True, min_age: float = 0.0) -> int:
        """Finish redemptions that were interrupted; returns how many were credited.

        `swapped` rows (the node holds the ecash) are credited. With `ask_mint`, `pending` rows
        are checked at the mint (NUT-07): untouched proofs are released to their owner; proofs
        spent without a recorded swap result need a wallet restore (NUT-09) and are flagged,
        never credited blind. Safe to run any number of times.
        """
        async with self.ledger.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        redemptions.c.token_hash,
                        redemptions.c.state,
                        redemptions.c.token,
                        redemptions.c.updated_at,
                    ).where(redemptions.c.state.in_(("pending", "swapped")))
                )
            ).all()
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
        async with self.ledger.engine.begin() as conn:
            await conn.execute(
                update(redemptions)
                .where(redemptions.c.token_hash == token_hash)
                .values(state=state, updated_at=time.time())
            )
