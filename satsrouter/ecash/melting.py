"""Paying Lightning invoices with the node's ecash (NUT-05 melt), and finishing melts later.

Nutshell's own `Wallet.melt` releases the proofs whenever the HTTP call raises, even on a
timeout where the mint may have paid; here an unknown outcome keeps the proofs reserved
and is reported as `pending`, so it can be settled later by asking the mint (quote state).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from satsrouter import faults
from satsrouter.ecash._cashu import Wallet, pooled_client
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.slot import Slot
from satsrouter.ecash.store import (
    Output,
    finish_op_tx,
    insert_op_tx,
    move_op_proofs_tx,
    move_proofs_tx,
    op_proofs_tx,
    store_proofs_tx,
)
from satsrouter.ecash.swap import blind, unblind_answered
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

# A Lightning payment can take a while; past this the outcome is unknown, not failed.
MELT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class MeltQuote:
    """The mint's price for paying one invoice, in the wallet's unit."""

    quote: str
    mint_url: str
    unit: str
    request: str
    amount: int
    fee_reserve: int
    expiry: int | None


@dataclass(frozen=True)
class MeltTicket:
    """What must be remembered, before the proofs leave, to finish a melt after a crash.

    Holds no secrets: the change outputs are re-derived from the wallet seed and counters.
    """

    quote: str
    mint_url: str
    unit: str
    amount: int
    fee_reserve: int
    inputs: int  # sum of the proofs sent
    change_keyset: str | None = None
    change_counter: int | None = None
    change_outputs: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def op_id(self) -> str:
        """The wallet operation that holds this melt's proofs."""
        return melt_op_id(self.quote)


@dataclass(frozen=True)
class MeltResult:
    """A melt that was paid, or whose outcome is not known yet (`pending`)."""

    state: str  # paid | pending
    ticket: MeltTicket
    cost: int = 0  # what left the node when paid: inputs minus change recovered
    preimage: str | None = None

    @property
    def paid(self) -> bool:
        return self.state == "paid"


@dataclass(frozen=True)
class QuoteState:
    """The mint's answer about a melt quote: paid, unpaid or pending."""

    state: str
    result: MeltResult | None = None


class MeltFailed(Exception):
    """The payment definitely did not happen; the proofs are spendable again."""

    def __init__(self, error: EcashError) -> None:
        super().__init__(error.message)
        self.error = error


# Called with the ticket while the proofs are still in the node's hands: it must persist it.
TicketRecorder = Callable[[MeltTicket], Awaitable[None]]


def _api(wallet: Wallet) -> Any:
    """Nutshell's raw mint API (LedgerAPI), without Wallet's own bookkeeping around it."""
    return super(Wallet, wallet)


def melt_op_id(quote: str) -> str:
    return "melt:" + quote


def _change_outputs_for(fee_reserve: int) -> int:
    # NUT-08: enough blank outputs to represent any overpaid fee
    return 0 if fee_reserve <= 0 else max((fee_reserve - 1).bit_length(), 1)


class Melter:
    """NUT-05 over the node's wallet: quote, melt (serialised per mint/unit), quote state."""

    def __init__(self, wallet: NodeWallet, tx: TxRunner, timeout: float = MELT_TIMEOUT_S) -> None:
        self.wallet = wallet
        self._tx = tx  # every transaction here records ecash: all are durable
        self.timeout = timeout

    async def quote(self, bolt11: str, unit: str = "sat", mint: str | None = None) -> MeltQuote:
        """Ask the mint what paying `bolt11` costs (amount + fee reserve, in `unit`)."""
        slot = await self._ready_slot(mint, unit)
        try:
            with pooled_client(slot.client):
                resp = await _api(slot.wallet).melt_quote(bolt11, slot.wallet.unit)
        except Exception as exc:
            raise map_mint_error(exc) from None
        return MeltQuote(
            quote=str(resp.quote),
            mint_url=slot.wallet.url,
            unit=unit,
            request=bolt11,
            amount=int(resp.amount),
            fee_reserve=int(resp.fee_reserve),
            expiry=int(resp.expiry) if resp.expiry is not None else None,
        )

    async def input_fee(self, amount: int, unit: str = "sat", mint: str | None = None) -> int:
        """The mint's input fee for spending about `amount` of the node's proofs (estimate)."""
        slot = await self._ready_slot(mint, unit)
        wallet = slot.wallet
        chosen = wallet.coinselect(slot.proofs, amount, include_fees=True)
        return int(wallet.get_fees_for_proofs(chosen)) if chosen else 0

    async def melt(self, quote: MeltQuote, record: TicketRecorder) -> MeltResult:
        """Pay the quote's invoice with the node's proofs.

        Returns `paid`, or `pending` when the outcome is unknown (timeout, mint says pending):
        the proofs stay reserved until `check` learns the answer. Raises `MeltFailed` when
        nothing was paid. `record` is awaited with the ticket before any proof is sent.
        """
        slot = await self._ready_slot(quote.mint_url, quote.unit)
        wallet = slot.wallet
        total = quote.amount + quote.fee_reserve
        op_id = melt_op_id(quote.quote)
        n_change = _change_outputs_for(quote.fee_reserve)
        keyset_id = str(wallet.keyset_id)
        async with slot.lock:
            proofs = await self._select(slot, total)
            first = await self.wallet.take_counters(keyset_id, n_change) if n_change else 0
            change = [Output(1, first + i) for i in range(n_change)]
            ticket = MeltTicket(
                quote=quote.quote,
                mint_url=quote.mint_url,
                unit=quote.unit,
                amount=quote.amount,
                fee_reserve=quote.fee_reserve,
                inputs=sum(int(p.amount) for p in proofs),
                change_keyset=keyset_id if n_change else None,
                change_counter=first if n_change else None,
                change_outputs=n_change,
            )
            # Persist first: from the moment the proofs are sent, only the ticket can finish it.
            await record(ticket)
            secrets = [str(p.secret) for p in proofs]

            def intent(tx: Tx) -> None:
                move_proofs_tx(tx, secrets, op_id, "unspent", "reserved")
                insert_op_tx(
                    tx,
                    op_id,
                    "melt",
                    slot.mint,
                    slot.unit,
                    self.wallet.instance_id,
                    keyset_id,
                    change,
                    detail=ticket.to_json(),
                )

            await self._tx.run(intent, durable=True)
            slot.take(proofs)
        faults.reach("melt.after_intent")
        blinded = await blind(wallet, keyset_id, change)
        proofs = wallet.sign_proofs_inplace_melt(proofs, blinded.messages, quote.quote)
        # The mint call runs outside the lock: a payment may take long, and these proofs are
        # already reserved, so receives and issues at this mint carry on meanwhile.
        try:
            with pooled_client(slot.client):
                resp = await asyncio.wait_for(
                    _api(wallet).melt(quote.quote, proofs, blinded.messages), self.timeout
                )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # no connection was made: nothing reached the mint
            await self.release(ticket)
            raise MeltFailed(map_mint_error(exc)) from None
        except (TimeoutError, httpx.TimeoutException, httpx.TransportError) as exc:
            # the request may have reached the mint: only the quote state can tell
            log.warning("melt %s outcome unknown (%s)", quote.quote[:12], type(exc).__name__)
            return MeltResult("pending", ticket)
        except Exception as exc:
            # The mint answered with an error; confirm with the quote state before
            # trusting it, since a mint could fail after the payment went out.
            answer = await self._confirm(ticket)
            if answer.state == "unpaid":
                await self.release(ticket)
                raise MeltFailed(_failed(exc)) from None
            if answer.result is not None:
                return answer.result
            return MeltResult("pending", ticket)
        faults.reach("melt.after_melt")
        state = str(resp.state or ("PAID" if resp.paid else "UNPAID")).upper()
        if state == "PAID":
            return await self._settle_paid(slot, ticket, resp)
        if state == "UNPAID":
            await self.release(ticket)
            raise MeltFailed(EcashError("mint_error", "The Lightning payment failed."))
        return MeltResult("pending", ticket)

    async def _select(self, slot: Slot, total: int) -> list[Any]:
        """Proofs worth at least `total` plus their input fee (slot locked)."""
        for attempt in range(2):
            chosen = slot.wallet.coinselect(slot.proofs, total, include_fees=True)
            fee = int(slot.wallet.get_fees_for_proofs(chosen)) if chosen else 0
            if chosen and sum(int(p.amount) for p in chosen) >= total + fee:
                return list(chosen)
            if attempt == 0:
                await self.wallet.refresh(slot)
        raise MeltFailed(
            EcashError(
                "insufficient_node_funds",
                "The node cannot pay that out right now. Try again later.",
            )
        )

    async def check(self, ticket: MeltTicket) -> QuoteState:
        """NUT-05 quote state; a paid melt is settled into the wallet (spent proofs, change).

        `unpaid` proofs are left reserved: the caller decides when it is safe to `release`.
        Raises EcashError when the mint cannot be asked.
        """
        slot = await self._ready_slot(ticket.mint_url, ticket.unit)
        try:
            with pooled_client(slot.client):
                resp = await _api(slot.wallet).get_melt_quote(ticket.quote)
        except Exception as exc:
            raise map_mint_error(exc) from None
        state = str(resp.state or ("PAID" if resp.paid else "UNPAID")).upper()
        if state == "PAID":
            return QuoteState("paid", await self._settle_paid(slot, ticket, resp))
        if state == "UNPAID":
            return QuoteState("unpaid")
        return QuoteState("pending", MeltResult("pending", ticket))

    async def release(self, ticket: MeltTicket) -> None:
        """The melt did not happen: make its proofs spendable again (once)."""
        slot = await self._ready_slot(ticket.mint_url, ticket.unit)
        op_id = ticket.op_id

        def undo(tx: Tx) -> list[Any]:
            proofs = op_proofs_tx(tx, op_id, "reserved")
            if finish_op_tx(tx, op_id, "undone"):
                move_op_proofs_tx(tx, op_id, "reserved", "unspent")
                return proofs
            return []

        released = await self._tx.run(undo, durable=True)
        slot.add(released)
        log.info("melt %s released %d proofs", ticket.quote[:12], len(released))

    # ---- internals ----

    async def _ready_slot(self, mint: str | None, unit: str) -> Slot:
        return await self.wallet.loaded_slot(mint, unit)

    async def _confirm(self, ticket: MeltTicket) -> QuoteState:
        try:
            return await self.check(ticket)
        except EcashError:
            return QuoteState("pending", MeltResult("pending", ticket))

    async def _settle_paid(self, slot: Slot, ticket: MeltTicket, resp: Any) -> MeltResult:
        """Spend the inputs and keep the change, in one transaction; idempotent."""
        change = await self._change(slot, ticket, list(resp.change or []))
        change_amount = sum(int(p.amount) for p in change)
        cost = ticket.inputs - change_amount
        op_id = ticket.op_id

        def settle(tx: Tx) -> bool:
            # The node pays the whole cost here; the payout's own settlement moves what the
            # user was charged for it over (`node_delta_msat`), so the audit stays exact.
            if not finish_op_tx(tx, op_id, "done", -cost * slot.per_unit_msat):
                return False
            move_op_proofs_tx(tx, op_id, "reserved", "spent")
            store_proofs_tx(tx, change, slot.mint, slot.unit, op_id)
            return True

        if await self._tx.run(settle, durable=True):
            slot.add(change)
        preimage = str(resp.payment_preimage) if resp.payment_preimage else None
        log.info(
            "melt %s paid: %d %s + fee, %d change",
            ticket.quote[:12],
            ticket.amount,
            ticket.unit,
            change_amount,
        )
        return MeltResult("paid", ticket, cost=cost, preimage=preimage)

    async def _change(self, slot: Slot, ticket: MeltTicket, promises: list[Any]) -> list[Any]:
        if not promises or ticket.change_counter is None or ticket.change_keyset is None:
            return []
        promises = promises[: ticket.change_outputs]
        outputs = [Output(1, ticket.change_counter + i) for i in range(len(promises))]
        try:
            blinded = await blind(slot.wallet, ticket.change_keyset, outputs)
            return await unblind_answered(slot.wallet, blinded, promises)
        except Exception as exc:
            # the fee overpayment is lost to the node, never to a user: log and carry on
            log.error("melt %s: change not recovered (%s)", ticket.quote[:12], type(exc).__name__)
            return []


def _failed(exc: BaseException) -> EcashError:
    err = map_mint_error(exc)
    if err.code == "mint_error":
        return EcashError("mint_error", "The Lightning payment failed at the mint.")
    return err
