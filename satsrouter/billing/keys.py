"""Keys and their balances: create, top up, withdraw, history, child keys."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from satsrouter.billing.balances import open_account_tx
from satsrouter.billing.ledger import PERIODS, Account, Ledger
from satsrouter.billing.payments import (
    Billing,
    key_disabled,
    nothing_to_refund,
    sha256_hex,
)
from satsrouter.billing.payouts import NothingToPayOut, Payout, PayoutConflict, Payouts
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

MAX_CHILD_KEYS = 50

_SET_REFUND = "UPDATE accounts SET refund_lnurl = :lnurl, expires_at = :expires WHERE id = :id"
_MAKE_CHILD = (
    "UPDATE accounts SET parent_id = :parent, spend_limit_msat = :limit, "
    "limit_period = :period, period_start = :start, expires_at = :expires WHERE id = :id"
)
_DEBITED = (
    "SELECT coalesce(sum(amount_msat), 0) FROM journal "
    "WHERE account_id = :id AND ref = :ref AND kind = 'payout'"
)
# The balance and the last journal row, in one statement (see `_state`).
_STATE = (
    "SELECT a.balance_msat, a.reserved_msat, j.id, j.kind, j.ref FROM accounts a "
    "LEFT OUTER JOIN journal j "
    "ON j.id = (SELECT max(id) FROM journal WHERE account_id = :id) WHERE a.id = :id"
)
_CHILD_CHARGES = (
    "SELECT id, charged_msat, model, settled_at FROM reservations "
    "WHERE child_id = :id AND state = 'charged' ORDER BY settled_at DESC LIMIT :limit"
)
_JOURNAL = (
    "SELECT id, amount_msat, kind, ref, created_at FROM journal WHERE account_id = :id "
    "ORDER BY id DESC LIMIT :limit"
)
_JOURNAL_BEFORE = (
    "SELECT id, amount_msat, kind, ref, created_at FROM journal "
    "WHERE account_id = :id AND id < :before ORDER BY id DESC LIMIT :limit"
)


class LightningPayer(Protocol):
    """Pays a balance out over Lightning (LNURL-pay), debit-first like every payout."""

    async def refund(
        self, account_id: int, payout_id: str, amount_msat: int | None, destination: str
    ) -> Payout: ...


@dataclass(frozen=True)
class _KeyState:
    """A key's money and its last journal row (id, kind, ref), as of one moment."""

    available_msat: int
    reserved_msat: int
    last: tuple[int, str, str] | None


@dataclass(frozen=True)
class Topup:
    """The result of adding a token to a key."""

    account: Account
    added_msat: int


def new_key() -> str:
    return "sk-" + secrets.token_hex(24)


class Keys:
    """Key management over the one ledger: every movement is a journaled transaction.

    Its own writes (a key's refund address and expiry, child keys) are durable, as every
    write of a key's settings always was.
    """

    def __init__(
        self,
        tx: TxRunner,
        billing: Billing,
        payouts: Payouts,
        lightning: LightningPayer | None = None,
    ) -> None:
        self._tx = tx
        self.billing = billing
        self.ledger: Ledger = billing.ledger
        self.payouts = payouts
        self.lightning = lightning

    async def create(
        self,
        token_text: str,
        refund_address: str | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, Account]:
        """Redeem a token into a new `sk-` key; the key is returned once and stored hashed."""
        if expires_at is not None:
            if refund_address is None:
                raise ApiError(
                    400,
                    "refund_address_required",
                    "Key-Expiry-Time needs a Refund-LNURL to send the remainder to.",
                )
            if expires_at <= time.time():
                raise ApiError(400, "invalid_expiry", "Key-Expiry-Time is in the past.")
        token = self.billing.parse(token_text)
        key = new_key()
        redeemed = await self.billing.redeem(token, sha256_hex(key), "key")
        if redeemed.already:
            raise self.billing.spent_here(token)
        if refund_address is not None or expires_at is not None:
            params = {"id": redeemed.account_id, "lnurl": refund_address, "expires": expires_at}
            await self._tx.run(lambda tx: tx.execute(_SET_REFUND, params), durable=True)
        return key, await self.ledger.get_account_by_id(redeemed.account_id)

    async def parent_account(self, key: str) -> Account:
        """The account of a key that holds money itself (not a child key)."""
        account = await self.billing.account(key)
        if account.parent_id is not None:
            raise ApiError(
                403,
                "child_key_not_allowed",
                "Child keys spend their parent's balance; use the parent key for this.",
            )
        return account

    async def topup(self, key: str, token_text: str) -> Topup:
        """Add a token's value to the key's balance; refused for a disabled key."""
        account = await self.parent_account(key)
        if account.disabled_at is not None:
            raise key_disabled()
        token = self.billing.parse(token_text)
        if token.mint != account.mint_url or token.unit != account.unit:
            raise ApiError(
                400,
                "token_mismatch",
                f"This key holds {account.unit} from {account.mint_url}; top it up with a "
                "token from that mint in that unit.",
            )
        redeemed = await self.billing.redeem(token, account.key_hash, account.kind)
        if redeemed.already:
            raise self.billing.spent_here(token)
        return Topup(await self.ledger.get_account_by_id(account.id), redeemed.credited_msat)

    async def withdraw(
        self, key: str, amount_msat: int | None, idempotency_key: str | None
    ) -> Payout:
        """Pay the balance (or `amount_msat`) out; a replayed request gets the same payout.

        Without an `Idempotency-Key`, a request whose key's last movement is a withdrawal of
        the same amount (or, for "everything", one that left less than one unit) is taken as
        a replay and gets that withdrawal back (I7), or a 409 while it is being sent; send
        distinct Idempotency-Keys for repeated withdrawals of equal amounts.
        """
        account = await self.parent_account(key)
        reserved_msat = account.reserved_msat
        if idempotency_key:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
            payout_id = f"withdraw:{account.id}:{digest}"
        else:
            state = await self._state(account.id)
            previous = await self._replayed(account, state, amount_msat)
            if previous is not None:
                return previous
            payout_id = f"withdraw:{account.id}:{state.last[0] if state.last else 0}"
            reserved_msat = state.reserved_msat
        if amount_msat is None and reserved_msat:
            raise PayoutConflict(
                "a paid request on this key is still running; withdraw when it has finished"
            )
        try:
            if account.refund_lnurl:
                if self.lightning is None:
                    raise ApiError(
                        503, "lightning_unavailable", "Lightning refunds are not enabled."
                    )
                return await self.lightning.refund(
                    account.id, payout_id, amount_msat, account.refund_lnurl
                )
            return await self.payouts.pay_out(account.id, payout_id, amount_msat)
        except NothingToPayOut as exc:
            raise nothing_to_refund(
                exc, "this key", "They stay on the key and still pay for requests."
            ) from None

    async def _debited(self, account_id: int, payout_id: str) -> int:
        """What a payout took from the balance (a Lightning payout sends less: the fee)."""
        params = {"id": account_id, "ref": payout_id}
        rows, _ = await self._tx.read(lambda tx: tx.execute(_DEBITED, params))
        return -int(rows[0][0])

    async def _state(self, account_id: int) -> _KeyState:
        """The balance and the last journal row, read together in one statement.

        Read apart, a refund finishing between the two reads paired "money left" with
        "refunded since", and a concurrent refund answered as if there were nothing to pay.
        """
        rows, _ = await self._tx.read(lambda tx: tx.execute(_STATE, {"id": account_id}))
        ((balance, reserved, row_id, kind, ref),) = rows
        last_row = (int(row_id), str(kind), str(ref)) if row_id is not None else None
        return _KeyState(int(balance) - int(reserved), int(reserved), last_row)

    async def _replayed(
        self, account: Account, state: _KeyState, amount_msat: int | None
    ) -> Payout | None:
        """The withdrawal this request repeats, if the key's last movement is one.

        "Everything" again when less than one unit is left, or the same amount again. A
        withdrawal still being sent raises PayoutConflict (409: retry for its answer).
        """
        if state.last is None:
            return None
        _, kind, ref = state.last
        # `rounding`: the last row of a withdrawal made by older nodes
        if kind not in ("payout", "rounding", "fee_return") or not ref.startswith("withdraw:"):
            return None
        previous = await self.payouts.get(ref)
        if previous is None or (previous.token is None and previous.method == "cashu"):
            return None  # undone, or an empty payout of an older node: nothing to repeat
        if amount_msat is None:
            repeats = state.available_msat < UNIT_MSAT[account.unit]
        else:
            repeats = amount_msat == await self._debited(account.id, ref)
        return previous if repeats else None

    async def history(self, key: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        """The key's journal, newest first (a child key: the requests it paid for)."""
        account = await self.billing.account(key)
        params: dict[str, int] = {"id": account.id, "limit": limit}
        if account.parent_id is not None:
            charges, _ = await self._tx.read(lambda tx: tx.execute(_CHILD_CHARGES, params))
            return [
                {
                    "kind": "charge",
                    "amount_msat": -int(charged or 0),
                    "request_id": rid,
                    "model": model,
                    "created_at": settled_at,
                }
                for rid, charged, model, settled_at in charges
            ]
        query = _JOURNAL
        if before is not None:
            query, params["before"] = _JOURNAL_BEFORE, before
        rows, _ = await self._tx.read(lambda tx: tx.execute(query, params))
        return [
            {
                "id": row_id,
                "kind": kind,
                "amount_msat": int(amount),
                "request_id": ref if kind == "charge" else None,
                "ref": ref,
                "created_at": created_at,
            }
            for row_id, amount, kind, ref, created_at in rows
        ]

    async def create_children(
        self,
        key: str,
        count: int,
        spend_limit_msat: int | None,
        period: str | None,
        expires_at: float | None,
    ) -> list[str]:
        """New keys that spend this key's balance, each within its own limit per period."""
        parent = await self.parent_account(key)
        if parent.disabled_at is not None:
            raise key_disabled()
        if not 1 <= count <= MAX_CHILD_KEYS:
            raise ApiError(400, "invalid_request", f"count must be 1 to {MAX_CHILD_KEYS}.")
        if spend_limit_msat is not None and spend_limit_msat <= 0:
            raise ApiError(400, "invalid_request", "The spend limit must be positive.")
        if period is not None and period not in PERIODS:
            raise ApiError(400, "invalid_request", f"The reset period must be one of {PERIODS}.")
        if period is not None and spend_limit_msat is None:
            raise ApiError(400, "invalid_request", "A reset period needs a spend limit.")
        keys = [new_key() for _ in range(count)]
        now = time.time()
        limits = {
            "parent": parent.id,
            "limit": spend_limit_msat,
            "period": period,
            "start": now if period else None,
            "expires": expires_at,
        }

        def create(tx: Tx) -> None:
            for child in keys:
                kh = sha256_hex(child)
                child_id = open_account_tx(tx, kh, "child", parent.mint_url, parent.unit, now)
                tx.execute(_MAKE_CHILD, {**limits, "id": child_id})

        await self._tx.run(create, durable=True)
        return keys
