"""The money path every payment mode shares: who pays → reserve → finish or fail → receipt.

A paid request enters through `Billing.begin` and leaves through `Charge.finish` (charge what
its usage cost) or `Charge.fail` (charge nothing); either settles or releases the
reservation, issues X-Cashu change, and returns the `Receipt` the HTTP layer renders. How the
request was paid shows only in the receipt's contents, never in the caller's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from satsrouter.billing.dead_tokens import DeadTokens
from satsrouter.billing.ledger import (
    Account,
    InsufficientBalance,
    KeyDisabled,
    Ledger,
    Reservation,
    Settlement,
    SpendLimitReached,
    UnknownAccount,
)
from satsrouter.billing.payouts import NothingToPayOut, Payout, Payouts
from satsrouter.billing.quote import Quote
from satsrouter.billing.redeem import Redeemed, Redeemer
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.mint_gate import bounded_wait
from satsrouter.ecash.tokens import ParsedToken, parse_token, token_hash
from satsrouter.errors import ApiError, insufficient_balance, payment_too_small
from satsrouter.usage import Usage

log = logging.getLogger(__name__)

CASHU_PREFIXES = ("cashuA", "cashuB")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_cashu_token(text: str) -> bool:
    return text.startswith(CASHU_PREFIXES)


def ecash_api_error(exc: EcashError) -> ApiError:
    """The client-facing form of a wallet failure (one mapping for every path)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return ApiError(exc.status, exc.code, exc.message, headers)


def nothing_to_refund(exc: NothingToPayOut, holder: str, fate: str) -> ApiError:
    """400 saying why no token was made: `holder` has less than 1 unit; `fate` of the rest."""
    if not exc.available_msat:
        return ApiError(400, "nothing_to_refund", f"Nothing to refund: {holder} has 0 msat left.")
    return ApiError(
        400,
        "nothing_to_refund",
        f"Nothing to refund: {holder} has {exc.available_msat} msat left, less than "
        f"1 {exc.unit}, the smallest amount a Cashu token can carry. {fate}",
    )


def key_disabled() -> ApiError:
    """403 for a key the operator disabled: it pays for nothing, its money stays its owner's."""
    return ApiError(
        403,
        "key_disabled",
        "This key was disabled by the node's operator. Its balance is kept: withdraw it with "
        "POST /v1/balance/refund, or ask the operator to enable the key again.",
    )


def xcashu_key_hash(token: ParsedToken) -> str:
    # Distinct from the Bearer key hash, so a per-request token never doubles as an API key.
    return sha256_hex("x-cashu:" + token.raw_hash)


@dataclass(frozen=True)
class Credentials:
    """What the client presented: an `X-Cashu` token and/or a bearer key or token."""

    x_cashu: str | None = None
    bearer: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.x_cashu or self.bearer)


@dataclass(frozen=True)
class Receipt:
    """How a paid request ended: all the HTTP layer shows of its money."""

    # What it cost, by component; `total_msats` is what was charged. Empty: it failed.
    cost: dict[str, int]
    balance_msat: int | None  # what the paying key has left (None when paid per request)
    change: Payout | None  # X-Cashu change issued as a token (None when there is none)

    @property
    def charged_msat(self) -> int:
        return self.cost.get("total_msats", 0)

    @property
    def change_token(self) -> str | None:
        return self.change.token if self.change is not None else None

    @property
    def change_msat(self) -> int:
        return self.change.amount_msat if self.change is not None and self.change.token else 0


class Charge:
    """One paid request's hold on a balance, settled or released exactly once."""

    def __init__(
        self,
        billing: Billing,
        quote: Quote,
        reservation: Reservation,
        x_cashu: ParsedToken | None,
    ) -> None:
        self.billing = billing
        self.quote = quote
        self.reservation = reservation
        self.x_cashu = x_cashu
        self.settlement: Settlement | None = None
        self.done = False

    @property
    def request_id(self) -> str:
        return self.reservation.id

    def serve(self, quote: Quote) -> None:
        """The provider that serves is priced by `quote` (`PriceBook.served`): what `finish`
        charges. Its reservation, the most that can be charged, stays as reserved."""
        self.quote = quote

    async def finish(self, usage: Usage) -> Receipt:
        """Charge what `usage` cost (at most the reservation), then issue X-Cashu change."""
        cost = self.quote.cost(usage)
        settlement = await self.settle(cost.total_msats, usage)
        charged = settlement.charged_msat if settlement is not None else 0
        balance = settlement.balance_msat if settlement is not None else None
        change = await self._change_or_none()
        return Receipt(
            {**cost.as_dict(), "total_msats": charged},
            balance if self.x_cashu is None else None,
            change,
        )

    async def fail(self, error: str, *, change: bool = True) -> Receipt:
        """Charge nothing (I4); an X-Cashu payer's whole value comes back as change.

        `error` is a short code saying why (`upstream_error`, `client_gone`, …), recorded for
        the operator. `change=False` when no one is left to hand it to: it stays refundable by
        the token.
        """
        await self.release(error)
        return Receipt({}, None, await self._change_or_none() if change else None)

    async def settle(self, cost_msat: int, usage: Usage | None = None) -> Settlement | None:
        """Charge `cost_msat` (capped at the reservation); idempotent. A step of `finish`."""
        if self.done:
            return self.settlement
        self.done = True
        try:
            self.settlement = await self.billing.ledger.settle(
                self.reservation, cost_msat, usage, self.quote.model.provider or None
            )
        finally:
            self.billing.live.discard(self.reservation.id)
        return self.settlement

    async def release(self, error: str) -> None:
        """Charge nothing and free the reservation (I4); idempotent. A step of `fail`."""
        if self.done:
            return
        self.done = True
        try:
            await self.billing.ledger.release(self.reservation, error)
        finally:
            self.billing.live.discard(self.reservation.id)

    async def _change_or_none(self) -> Payout | None:
        """For `X-Cashu` payments: the rest of the token's value, in whole units, as a token.

        None when there is no token to give: not an `X-Cashu` payment, or less than one unit
        left (that rest stays on the token's account; `refund_x_cashu` says so), or issuing it
        failed (logged, not raised: the change stays refundable).
        """
        if self.x_cashu is None:
            return None
        try:
            payout = await self.billing.payouts.pay_out_all(
                self.reservation.account_id, change_payout_id(self.x_cashu)
            )
        except NothingToPayOut:
            return None
        except Exception as exc:
            log.warning(
                "request %s: change not issued (%s); refundable later",
                self.request_id,
                type(exc).__name__,
            )
            return None
        return payout if payout.token else None


def change_payout_id(token: ParsedToken) -> str:
    """The payout id of an `X-Cashu` token's change: stable, so refunds are idempotent."""
    return "xcashu:" + token.raw_hash


class Billing:
    """Resolves who pays and holds their money for the length of one request."""

    def __init__(
        self,
        ledger: Ledger,
        redeemer: Redeemer,
        payouts: Payouts,
        dead_tokens: DeadTokens | None = None,
        mint_wait: float = 2.0,
    ) -> None:
        self.ledger = ledger
        self.redeemer = redeemer
        self.payouts = payouts
        # Replays of dead tokens are answered from here: no mint call, no database write.
        self.dead_tokens = dead_tokens or DeadTokens()
        # How long a redemption waits for the mint (the node's bound on it) before a 503.
        self.mint_wait = mint_wait
        # Reservations held by requests alive in this process; the sweeper never touches them.
        self.live: set[str] = set()

    async def begin(
        self, creds: Credentials, quote: Quote, request_id: str, endpoint: str | None = None
    ) -> Charge:
        """Reserve the quote's maximum cost from whoever pays for this request.

        `endpoint` (the client's API path, e.g. `/chat/completions`) and the quote's provider
        are recorded with the reservation for the operator's usage figures.
        """
        if creds.x_cashu:
            return await self._begin_x_cashu(creds.x_cashu, quote, request_id, endpoint)
        key = creds.bearer or ""
        key_hash = sha256_hex(key)
        try:
            return await self._reserve(key_hash, quote, request_id, None, endpoint)
        except UnknownAccount:
            if not is_cashu_token(key):
                raise ApiError(
                    401, "invalid_api_key", "Unknown API key. Check the key or create a new one."
                ) from None
        # A token used as an API key for the first time: redeem it into its own balance.
        token = self.parse(key)
        if (await self.redeem(token, key_hash, "token")).already:
            raise self.spent_here(token)  # redeemed into another key's balance before
        return await self._reserve(key_hash, quote, request_id, None, endpoint)

    async def account(self, key: str) -> Account:
        """The balance behind an `sk-` key or a Cashu token used as a key (redeemed once)."""
        key_hash = sha256_hex(key)
        account = await self.ledger.get_account(key_hash)
        if account is not None:
            return account
        if not is_cashu_token(key):
            raise ApiError(401, "invalid_api_key", "Unknown API key.")
        token = self.parse(key)
        if (await self.redeem(token, key_hash, "token")).already:
            raise self.spent_here(token)
        account = await self.ledger.get_account(key_hash)
        if account is None:
            raise ApiError(401, "invalid_api_key", "Unknown API key.")
        return account

    async def redeem(self, token: ParsedToken, key_hash: str, kind: str) -> Redeemed:
        """Redeem a token into `key_hash`'s balance; mint failures become client errors."""
        try:
            # New work for the mint: refused (`mint_busy`, the token untouched) rather than
            # queued without end when the node's bound on the mint is reached.
            with bounded_wait(self.mint_wait):
                return await self.redeemer.redeem(token, key_hash, kind)
        except EcashError as exc:
            error = ecash_api_error(exc)
            self.dead_tokens.remember(token.raw_hash, error)
            raise error from exc

    def spent_here(self, token: ParsedToken, message: str | None = None) -> ApiError:
        """400 for a token this node already redeemed (into another balance), remembered."""
        error = ecash_api_error(EcashError("cashu_token_already_spent", message))
        self.dead_tokens.remember(token.raw_hash, error)
        return error

    def parse(self, text: str) -> ParsedToken:
        """Decode a token to redeem and check its mint is accepted (400 otherwise, nothing
        contacted); a token known dead gets its earlier error straight away."""
        digest = token_hash(text)
        self.dead_tokens.check(digest)
        try:
            return self._parse(text)
        except ApiError as error:
            self.dead_tokens.remember(digest, error)
            raise

    def _parse(self, text: str) -> ParsedToken:
        try:
            token = parse_token(text)
            self.redeemer.wallet.check_accepted(token)
        except EcashError as exc:
            raise ecash_api_error(exc) from exc
        return token

    async def _begin_x_cashu(
        self, text: str, quote: Quote, request_id: str, endpoint: str | None
    ) -> Charge:
        token = self.parse(text)
        if token.amount_msat < quote.max_cost_msat:
            # Refused before redeeming: the token stays spendable by its owner. 400, as NUT-24
            # says for a short payment (a 402 would ask the wallet to pay again).
            raise payment_too_small(
                token.amount_msat,
                quote.max_cost_msat,
                "Nothing was redeemed: the token is still yours.",
            )
        key_hash = xcashu_key_hash(token)
        redeemed = await self.redeem(token, key_hash, "xcashu")
        if redeemed.already:
            raise self.spent_here(
                token,
                "This Cashu token was already spent here. Use POST /v1/balance/refund with "
                "it in X-Cashu to collect its change.",
            )
        try:
            return await self._reserve(key_hash, quote, request_id, token, endpoint)
        except ApiError as exc:
            # The mint's fee left less than the request may cost: hand everything back.
            try:
                payout = await self.payouts.pay_out_all(
                    redeemed.account_id, change_payout_id(token)
                )
            except NothingToPayOut:
                raise exc from None
            if payout.token:
                exc.headers["X-Cashu"] = payout.token
                exc.message += " What it was worth after the fee is in this answer's X-Cashu."
            raise

    async def _reserve(
        self,
        key_hash: str,
        quote: Quote,
        request_id: str,
        x_cashu: ParsedToken | None,
        endpoint: str | None,
    ) -> Charge:
        try:
            reservation = await self.ledger.reserve(
                key_hash,
                request_id,
                quote.max_cost_msat,
                quote.model.id,
                provider=quote.model.provider or None,
                endpoint=endpoint,
            )
        except KeyDisabled:
            raise key_disabled() from None
        except InsufficientBalance as exc:
            if x_cashu is not None:  # redeemed, but the mint's fee left too little
                raise payment_too_small(
                    exc.available_msat,
                    exc.required_msat,
                    "The mint's fee for receiving the token left less than that.",
                ) from None
            raise insufficient_balance(exc.available_msat, exc.required_msat) from None
        except SpendLimitReached as exc:
            resets = f" It resets at {exc.resets_at:.0f} (Unix time)." if exc.resets_at else ""
            raise ApiError(
                402,
                "spend_limit_reached",
                f"This key's spend limit leaves {exc.remaining_msat} msat, the request needs "
                f"{exc.required_msat} msat.{resets}",
            ) from None
        self.live.add(request_id)
        return Charge(self, quote, reservation, x_cashu)

    async def refund_x_cashu(self, text: str) -> tuple[Payout, Account]:
        """The change of an earlier `X-Cashu` request, again (idempotent recovery).

        Returns the payout and the token's account after it: what stays behind (less than
        one unit) is its balance. 400 `nothing_to_refund` when no token can be made.
        """
        # Not `parse`: a token spent here as X-Cashu is dead for paying, alive for this.
        token = self._parse(text)
        account = await self.ledger.get_account(xcashu_key_hash(token))
        if account is None:
            raise ApiError(404, "not_found", "This token was never used to pay here.")
        fate = "They stay recorded against this token at this node."
        payout = await self.payouts.get(change_payout_id(token))
        if payout is None:
            if account.reserved_msat:
                raise ApiError(
                    409,
                    "request_in_progress",
                    "The request paid with this token is still running; retry later.",
                )
            try:
                payout = await self.payouts.pay_out_all(account.id, change_payout_id(token))
            except NothingToPayOut as exc:
                raise nothing_to_refund(exc, "this token", fate) from None
        elif payout.token is None and payout.method == "cashu":
            # An empty payout, recorded by older nodes for a sub-unit rest: nothing was paid.
            empty = NothingToPayOut(account.available_msat, account.unit)
            raise nothing_to_refund(empty, "this token", fate)
        return payout, await self.ledger.get_account_by_id(account.id)

    async def recover(self) -> None:
        """Take over what dead instances left half done: reservations, swaps, payouts."""
        dead_after = self.ledger.dead_after
        released = await self.ledger.sweep(dead_after, set(self.live), min_age=dead_after)
        if released:
            log.warning("released %d reservations of requests that are gone", released)
        split = await self.redeemer.wallet.recover()
        if split:
            log.info("finished %d interrupted splits of the node's ecash", split)
        credited = await self.redeemer.recover()
        if credited:
            log.info("finished %d interrupted redemptions", credited)
        undone = await self.payouts.recover_cashu()
        if undone:
            log.warning("credited back %d Cashu payouts interrupted before issue", undone)

    async def run_sweeper(self, interval: float | Callable[[], float]) -> None:
        """Heartbeat and take over the work of instances that are provably gone, forever.

        `interval`: seconds, or a function read every round (the admin may change it).
        """
        while True:
            await asyncio.sleep(interval() if callable(interval) else interval)
            try:
                await self.ledger.heartbeat()
                await self.recover()
            except Exception:
                log.exception("sweeper pass failed")
