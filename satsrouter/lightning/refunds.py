"""Refunds paid over Lightning (LNURL-pay) by melting the node's ecash; key expiry refunds.

Money flow, all through `Payouts` (I7): debit the whole amount first, pay an invoice for
the amount minus the mint's fee reserve, then credit back whatever fee reserve the mint
did not use (`fee_return`). A melt whose outcome is unknown stays `pending` with a ticket
in `payouts.detail` and is finished later from the mint's quote state (`reconcile`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from satsrouter.billing.balances import credit_tx
from satsrouter.billing.ledger import Ledger
from satsrouter.billing.payouts import (
    NothingToPayOut,
    Payout,
    PayoutConflict,
    Payouts,
    PendingPayout,
)
from satsrouter.ecash.melting import Melter, MeltFailed, MeltQuote, MeltResult, MeltTicket
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.errors import ApiError
from satsrouter.lightning.lnurl import LnurlClient, LnurlError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.units import UNIT_MSAT

log = logging.getLogger(__name__)

# A pending Lightning payout is only reconciled once it has been left alone this long, so
# that a melt still in flight (ours, or another node process's) is never judged too early;
# it must exceed the melt timeout by a margin.
RECONCILE_AFTER_S = 180.0
# Rounds of invoice + quote to fit amount + fee reserve into the debited budget.
_FIT_ROUNDS = 3

_RECORD_TICKET = (
    "UPDATE payouts SET detail = :detail, updated_at = :now WHERE id = :id AND state = 'pending'"
)
_SENT = (
    "UPDATE payouts SET amount_msat = :sent, fee_msat = :fee, updated_at = :now "
    "WHERE id = :id AND state = 'pending' AND amount_msat = :debited"
)
_SENT_BEFORE = "SELECT fee_msat, amount_msat FROM payouts WHERE id = :id"
_CHARGE_MELT = "UPDATE wallet_ops SET node_delta_msat = node_delta_msat + :msat WHERE id = :op"
_PENDING = (
    "SELECT id, account_id, amount_msat, unit, mint_url, detail, updated_at, instance_id "
    "FROM payouts WHERE method = 'lightning' AND state = 'pending'"
)
_CLAIM = (
    "UPDATE payouts SET updated_at = :now "
    "WHERE id = :id AND state = 'pending' AND updated_at = :seen"
)
# Keys past their expiry with a refund address, idle, and holding at least one unit of
# their token (less cannot be paid out).
_EXPIRED = (
    "SELECT id, refund_lnurl FROM accounts WHERE expires_at IS NOT NULL AND "
    "expires_at <= :now AND refund_lnurl IS NOT NULL AND reserved_msat = 0 AND balance_msat >= "
    "CASE unit "
    + " ".join(f"WHEN '{unit}' THEN {msat}" for unit, msat in UNIT_MSAT.items())
    + " ELSE 1 END"
)
_PAYOUT_EXISTS = "SELECT 1 FROM payouts WHERE id = :id"


class RefundPending(ApiError):
    """The payment is in flight; it will be completed or credited back automatically."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "refund_pending",
            "The Lightning payment is still in flight. It will complete, or the amount will "
            "be credited back to your balance; retry the same request later to see which.",
        )


@dataclass(frozen=True)
class _PendingRow:
    id: str
    account_id: int
    amount_msat: int
    unit: str
    mint_url: str
    detail: str | None
    updated_at: float
    instance_id: str | None = None


class LightningRefunds:
    """Pays balances out to Lightning addresses; finishes unknown melts; refunds expired keys."""

    def __init__(
        self,
        tx: TxRunner,
        ledger: Ledger,
        payouts: Payouts,
        wallet: NodeWallet,
        *,
        allow_http: bool = False,
        melter: Melter | None = None,
        lnurl: LnurlClient | None = None,
        reconcile_after: float = RECONCILE_AFTER_S,
    ) -> None:
        self._tx = tx
        self.ledger = ledger
        self.payouts = payouts
        self.melter = melter or Melter(wallet, tx)
        self.lnurl = lnurl or LnurlClient(allow_http=allow_http)
        self.reconcile_after = reconcile_after
        # Payout ids this process is sending or reconciling right now: never touched twice.
        self._busy: set[str] = set()

    async def close(self) -> None:
        await self.lnurl.close()

    def check_destination(self, destination: str) -> None:
        """Refuse a destination that is no Lightning address or LNURL (LnurlError, 400),
        without contacting it: a key's refund address is checked when the key is made."""
        self.lnurl.url_of(destination)

    async def vet_destination(self, destination: str) -> None:
        """`check_destination`, and its host must not resolve to a private or local address."""
        await self.lnurl.vet(destination)

    # ---- refunds ----

    async def refund(
        self, account_id: int, payout_id: str, amount_msat: int | None, destination: str
    ) -> Payout:
        """Pay `amount_msat` (None: the whole available balance) to a Lightning address.

        Idempotent by `payout_id`: a finished payout is returned as it was, one in flight
        raises PayoutConflict. The balance drops by what the recipient got plus the mint's
        actual fee (`amount_msat + fee_msat` of the result). Raises LnurlError for a bad
        destination or amount, ApiError `lightning_payment_failed` when the payment failed
        (balance restored), RefundPending when the outcome is not known yet.
        """
        if not is_invoice(destination):
            await self.lnurl.vet(destination)  # a private address: refused before the debit
        step = await self.payouts.begin(
            account_id, payout_id, amount_msat, method="lightning", destination=destination
        )
        if isinstance(step, Payout):
            return step
        return await self.send(step, destination)

    async def send(self, step: PendingPayout, destination: str) -> Payout:
        """Pay an already debited payout to a Lightning address, LNURL or bolt11 invoice.

        The same outcomes as `refund`; an invoice whose amount plus the mint's fees does not
        fit the debit is refused (400 `invoice_exceeds_amount`) with the payout undone.
        """
        self._busy.add(step.id)
        try:
            if is_invoice(destination):
                return await self._send_invoice(step, invoice_of(destination))
            return await self._send(step, destination)
        finally:
            self._busy.discard(step.id)

    def check_payee(self, destination: str) -> None:
        """Refuse (400) what is neither a bolt11 invoice nor a Lightning address / LNURL."""
        if not is_invoice(destination):
            self.check_destination(destination)

    async def _send(self, step: PendingPayout, destination: str) -> Payout:
        try:
            quote = await self._fit_quote(step, destination)
        except Exception:
            # nothing was sent: the balance is whole again and the id may be retried
            await self.payouts.undo(step)
            raise
        return await self._melt(step, quote)

    async def _send_invoice(self, step: PendingPayout, bolt11: str) -> Payout:
        try:
            quote = await self.melter.quote(bolt11, step.unit, step.mint_url)
            spend = quote.amount + quote.fee_reserve
            spend += await self.melter.input_fee(spend, step.unit, step.mint_url)
            if spend * UNIT_MSAT[step.unit] > step.amount_msat:
                raise ApiError(
                    400,
                    "invoice_exceeds_amount",
                    f"The invoice ({quote.amount} {step.unit}) plus the mint's fee reserve "
                    f"needs {spend} {step.unit}, more than the {step.amount} {step.unit} "
                    "asked for. Ask for a larger amount or send a smaller invoice.",
                )
        except Exception:
            await self.payouts.undo(step)
            raise
        return await self._melt(step, quote)

    async def _melt(self, step: PendingPayout, quote: MeltQuote) -> Payout:
        try:
            result = await self.melter.melt(quote, lambda ticket: self._record(step, ticket))
        except MeltFailed as exc:
            await self.payouts.undo(step)
            log.info("lightning payout %s failed: %s", step.id[:24], exc.error.code)
            raise ApiError(
                502 if exc.error.status >= 500 else 400,
                "lightning_payment_failed",
                "The Lightning payment failed and your balance was not charged: "
                f"{exc.error.message}",
            ) from None
        except Exception:
            # An unexpected error after the ticket may have been written: only the mint
            # knows whether money left, so the payout stays pending for reconcile().
            log.exception("lightning payout %s: outcome unknown", step.id[:24])
            raise RefundPending() from None
        if not result.paid:
            raise RefundPending()
        return await self._finish_paid(step, result)

    async def _fit_quote(self, step: PendingPayout, destination: str) -> MeltQuote:
        """A melt quote for an invoice whose amount + fee reserve + input fee fits the debit.

        The first invoice (kept inside the receiver's range) discovers the mint's fees; the
        amount sent is then the debit less those fees, and must itself be in range.
        """
        per_unit = UNIT_MSAT[step.unit]
        budget = step.amount_msat
        params = await self.lnurl.params(destination)
        if budget < params.min_sendable_msat:
            params.check_amount(budget)  # fees only make it smaller: refuse before probing
        target = min(max(budget, params.min_sendable_msat), params.max_sendable_msat)
        for round_ in range(_FIT_ROUNDS):
            target -= target % per_unit
            if round_:
                params.check_amount(target)
            bolt11 = await self.lnurl.invoice(params, target)
            quote = await self.melter.quote(bolt11, step.unit, step.mint_url)
            spend = quote.amount + quote.fee_reserve
            spend += await self.melter.input_fee(spend, step.unit, step.mint_url)
            fees = spend * per_unit - target
            want = budget - fees
            want -= want % per_unit
            # Exact fit, or (after the first round) a fit with a little reserve to spare,
            # which comes back as fee_return: fees only shrink as the amount does.
            if want == target or (round_ and target <= want):
                params.check_amount(target)
                return quote
            target = want
            if target <= 0:
                break
        raise LnurlError(
            400,
            "lnurl_amount_out_of_range",
            f"{budget} msat does not cover the mint's fee for a Lightning payment. "
            "Refund a larger amount.",
        )

    async def _record(self, step: PendingPayout, ticket: MeltTicket) -> None:
        """Persist the melt ticket on the payout row, before the proofs leave the node."""
        detail = json.dumps(
            {"debit_msat": step.amount_msat, "melt": json.loads(ticket.to_json())},
            separators=(",", ":"),
        )
        params = {"id": step.id, "detail": detail, "now": time.time()}
        _, moved = await self._tx.run(lambda tx: tx.execute(_RECORD_TICKET, params), durable=True)
        if moved != 1:
            raise PayoutConflict("payout changed while paying; retry")

    async def _finish_paid(self, step: PendingPayout, result: MeltResult) -> Payout:
        """Record a paid melt: fee reserve not used goes back to the balance, exactly once."""
        per_unit = UNIT_MSAT[step.unit]
        ticket = result.ticket
        sent_msat = ticket.amount * per_unit
        # Never charge more than was debited; an input-fee overrun is the node's.
        cost_msat = min(result.cost * per_unit, step.amount_msat)
        fee_msat = max(cost_msat - sent_msat, 0)
        fee_return = step.amount_msat - max(cost_msat, sent_msat)
        now = time.time()

        def sent(tx: Tx) -> tuple[int, int]:
            """The fee and the amount sent, as recorded (by this call or an earlier one)."""
            # The amount moves from "debited" to "sent" once: that compare-and-set is what
            # makes the fee return happen exactly once, whoever finishes the payout.
            params = {
                "id": step.id,
                "debited": step.amount_msat,
                "sent": sent_msat,
                "fee": fee_msat,
                "now": now,
            }
            if tx.execute(_SENT, params)[1] == 1:
                # The melt's operation charged its whole cost to the node; what the user
                # paid for it moves over, so ecash held == liabilities + revenue exactly.
                charged = {"op": ticket.op_id, "msat": max(cost_msat, sent_msat)}
                tx.execute(_CHARGE_MELT, charged)
                if fee_return > 0:
                    credit_tx(tx, step.account_id, fee_return, "fee_return", step.id, now)
                return fee_msat, sent_msat
            # finished before (a crash between this and complete()): keep its fee
            rows, _ = tx.execute(_SENT_BEFORE, {"id": step.id})
            return (int(rows[0][0]), int(rows[0][1])) if rows else (fee_msat, sent_msat)

        fee_msat, sent_msat = await self._tx.run(sent, durable=True)
        detail = result.preimage or f"quote:{ticket.quote}"
        payout = await self.payouts.complete(
            replace(step, amount_msat=sent_msat), detail=detail, fee_msat=fee_msat
        )
        log.info("lightning payout %s paid %d msat, fee %d msat", step.id[:24], sent_msat, fee_msat)
        return payout

    # ---- reconciliation ----

    async def reconcile(self, min_age: float | None = None) -> int:
        """Finish pending Lightning payouts from the mint's answer; returns how many finished.

        Payouts whose sending process is provably dead are looked at at once, others once
        left alone for `min_age` seconds (default: `reconcile_after`); each is claimed by
        compare-and-set on `updated_at`, so two node processes do not finish the same payout.
        """
        age = self.reconcile_after if min_age is None else min_age
        now = time.time()
        pending, _ = await self._tx.read(lambda tx: tx.execute(_PENDING, {}))
        rows = [
            _PendingRow(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], float(r[6]), r[7])
            for r in pending
        ]
        finished = 0
        for row in rows:
            if row.id in self._busy:
                continue
            orphaned = row.instance_id is not None and await self.ledger.is_dead(row.instance_id)
            if not (orphaned or row.updated_at <= now - age) or not await self._claim(row):
                continue
            self._busy.add(row.id)
            try:
                finished += await self._reconcile_one(row)
            except Exception as exc:
                code = getattr(exc, "code", type(exc).__name__)
                log.warning("reconcile of payout %s deferred: %s", row.id[:24], code)
            finally:
                self._busy.discard(row.id)
        return finished

    async def _claim(self, row: _PendingRow) -> bool:
        params = {"id": row.id, "seen": row.updated_at, "now": time.time()}
        _, moved = await self._tx.run(lambda tx: tx.execute(_CLAIM, params), durable=True)
        return moved == 1

    async def _reconcile_one(self, row: _PendingRow) -> int:
        step = PendingPayout(row.id, row.account_id, row.amount_msat, row.unit, row.mint_url)
        if row.detail is None:
            # No ticket: the proofs were never sent (the ticket is written first).
            await self.payouts.undo(step)
            log.info("payout %s never sent; credited back", row.id[:24])
            return 1
        info = json.loads(row.detail)
        ticket = MeltTicket(**info["melt"])
        step = replace(step, amount_msat=int(info["debit_msat"]))
        answer = await self.melter.check(ticket)
        if answer.state == "paid" and answer.result is not None:
            await self._finish_paid(step, answer.result)
            return 1
        if answer.state == "unpaid":
            await self.melter.release(ticket)
            await self.payouts.undo(step)
            log.info("payout %s was not paid; credited back", row.id[:24])
            return 1
        return 0

    # ---- key expiry ----

    async def expire_once(self) -> int:
        """Refund every expired key with a refund address and an idle balance; returns count.

        Each key is refunded once (payout id `expiry:<account>`); what the mint's fee
        reserve leaves over afterwards stays on the key, as does a rest below one unit of
        its token (no payment can carry it, so such a key is not due).
        """
        now = time.time()

        def due_now(tx: Tx) -> list[tuple[int, str]]:
            """Expired keys whose expiry refund was never made, with their address."""
            rows, _ = tx.execute(_EXPIRED, {"now": now})
            return [
                (int(account_id), str(destination))
                for account_id, destination in rows
                if not tx.execute(_PAYOUT_EXISTS, {"id": expiry_payout_id(int(account_id))})[0]
            ]

        due = await self._tx.read(due_now)
        refunded = 0
        for account_id, destination in due:
            payout_id = expiry_payout_id(account_id)
            try:
                await self.refund(account_id, payout_id, None, destination)
                refunded += 1
            except RefundPending:
                refunded += 1
            except NothingToPayOut:
                continue  # spent below one unit since it was found due: nothing to send
            except (ApiError, PayoutConflict) as exc:
                code = getattr(exc, "code", "conflict")
                log.warning("expiry refund of account %d not made: %s", account_id, code)
            except Exception:
                log.exception("expiry refund of account %d failed", account_id)
        return refunded

    async def run_expiry(self, interval: float | Callable[[], float]) -> None:
        """Every `interval` seconds: finish pending melts, then refund expired keys.

        `interval`: seconds, or a function read every round (the admin may change it).
        """
        while True:
            await self.expiry_pass()
            await asyncio.sleep(interval() if callable(interval) else interval)

    async def expiry_pass(self) -> None:
        """One pass of `run_expiry`: finish pending melts, then refund expired keys."""
        for job in (self.reconcile, self.expire_once):
            try:
                await job()
            except Exception:
                log.exception("lightning %s pass failed", job.__name__)


_INVOICE_PREFIXES = ("lnbc", "lntb", "lntbs", "lnbcrt", "lnsb")


def invoice_of(destination: str) -> str:
    """The bolt11 invoice in `destination` (a `lightning:` prefix dropped, lower case)."""
    text = destination.strip().lower()
    return text.removeprefix("lightning:")


def is_invoice(destination: str) -> bool:
    """Whether `destination` is a bolt11 invoice rather than a Lightning address or LNURL."""
    return invoice_of(destination).startswith(_INVOICE_PREFIXES)


def expiry_payout_id(account_id: int) -> str:
    """The one payout id an account's expiry refund may use."""
    return f"expiry:{account_id}"
