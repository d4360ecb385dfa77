"""LNURL-pay (LUD-06/16): turn a Lightning address or `lnurl1…` into an invoice for an amount.

This is the one place the node fetches a URL a user chose (I8 exception, required for
refunds to a Lightning address), so it is fenced: https only (plain http only when the
operator allows it, for tests), no redirects, small responses, short timeouts, public
addresses only — checked after DNS resolution, on the address actually connected to
(`addresses.py`) — and only the host is ever logged (a callback's query may carry secrets).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import bech32
import bolt11
import httpx

from satsrouter.errors import ApiError
from satsrouter.lightning.addresses import (
    BlockedAddress,
    Resolver,
    checked_addresses,
    guarded_transport,
    is_public,
    literal_ip,
    resolve,
)

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
TIMEOUT = httpx.Timeout(10.0, connect=5.0)

_ADDRESS = re.compile(r"^([a-z0-9\-_.+]+)@([a-z0-9\-.]+(?::\d{1,5})?)$")


class LnurlError(ApiError):
    """A Lightning address / LNURL that cannot be paid, with a message saying why."""


def invalid(message: str) -> LnurlError:
    return LnurlError(400, "invalid_lnurl", message)


def service_error(message: str) -> LnurlError:
    return LnurlError(502, "lnurl_error", message)


@dataclass(frozen=True)
class PayParams:
    """A LNURL-pay endpoint's answer: where to ask for invoices and what amounts it takes."""

    callback: str
    min_sendable_msat: int
    max_sendable_msat: int
    host: str

    def check_amount(self, amount_msat: int) -> None:
        """Refuse an amount outside the receiver's limits, saying what the limits are."""
        if not self.min_sendable_msat <= amount_msat <= self.max_sendable_msat:
            raise LnurlError(
                400,
                "lnurl_amount_out_of_range",
                f"The Lightning address accepts between {self.min_sendable_msat} and "
                f"{self.max_sendable_msat} msat per payment; this refund would send "
                f"{amount_msat} msat. Refund a different amount or use another address.",
            )


def decode_lnurl(text: str) -> str:
    """The URL inside a bech32 `lnurl1…` string (LUD-01); no 90-character limit applies."""
    value = text.strip().lower()
    pos = value.rfind("1")
    if value[:pos] != "lnurl" or len(value) < pos + 7:
        raise invalid("That is not an LNURL (it should start with lnurl1).")
    data = [bech32.CHARSET.find(c) for c in value[pos + 1 :]]
    if -1 in data or not bech32.bech32_verify_checksum("lnurl", data):
        raise invalid("The LNURL is damaged (its checksum does not match).")
    decoded = bech32.convertbits(data[:-6], 5, 8, False)
    if decoded is None:
        raise invalid("The LNURL is damaged.")
    try:
        return bytes(decoded).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("The LNURL does not contain a URL.") from None


def encode_lnurl(url: str) -> str:
    """Bech32-encode a URL as `lnurl1…` (used by tests and tooling)."""
    data = bech32.convertbits(url.encode(), 8, 5, True)
    assert data is not None
    return bech32.bech32_encode("lnurl", data)


_PRIVATE = "LNURL services on private or local addresses are not allowed."


class LnurlClient:
    """Resolves LNURL-pay destinations and fetches invoices, within the fences above.

    `allow_http` (tests only) also lets loopback through: the tests' LNURL servers listen on
    127.0.0.1. Private, link-local and other non-global addresses are refused regardless.
    """

    def __init__(
        self,
        allow_http: bool = False,
        max_bytes: int = MAX_RESPONSE_BYTES,
        resolver: Resolver = resolve,
    ) -> None:
        self.allow_http = allow_http
        self.max_bytes = max_bytes
        self.resolver = resolver  # host name -> addresses (a test may stand in for DNS)
        self._client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def url_of(self, destination: str) -> str:
        """The LNURL-pay URL for a Lightning address (`user@domain`) or an `lnurl1…`."""
        value = destination.strip()
        if value.lower().startswith("lightning:"):
            value = value[len("lightning:") :]
        match = _ADDRESS.match(value.lower())
        if match:
            user, domain = match.groups()
            scheme = "http" if self.allow_http else "https"
            url = f"{scheme}://{domain}/.well-known/lnurlp/{user}"
        elif value.lower().startswith("lnurl1"):
            url = decode_lnurl(value)
        elif value.lower().startswith("lnurlp://"):
            # LUD-17: the scheme stands for https
            url = "https://" + value[len("lnurlp://") :]
        else:
            raise invalid(
                "The refund destination must be a Lightning address (name@domain) "
                "or an LNURL (lnurl1…)."
            )
        self._check_url(url)
        return url

    async def vet(self, destination: str) -> None:
        """Refuse (400) a destination whose host resolves to an address not allowed, before
        any money moves. Each connection is checked again (DNS may answer otherwise then);
        a host that does not resolve now is left for the fetch to report."""
        url = httpx.URL(self.url_of(destination))
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            await checked_addresses(url.host, port, self.resolver, self.allow_http)
        except BlockedAddress:
            raise invalid(_PRIVATE) from None
        except OSError:
            return

    async def params(self, destination: str) -> PayParams:
        """Fetch the LNURL-pay parameters (callback, min/max sendable in msat)."""
        url = self.url_of(destination)
        body = await self._get_json(url)
        if body.get("tag") != "payRequest":
            raise service_error("The Lightning address does not offer LNURL-pay.")
        callback = body.get("callback")
        low, high = _as_int(body.get("minSendable")), _as_int(body.get("maxSendable"))
        if not isinstance(callback, str) or low is None or high is None:
            raise service_error("The Lightning address answered without valid pay parameters.")
        self._check_url(callback)
        if not 0 < low <= high:
            raise service_error("The Lightning address announces an impossible amount range.")
        return PayParams(callback, low, high, httpx.URL(callback).host)

    async def invoice(self, params: PayParams, amount_msat: int) -> str:
        """Ask the callback for an invoice of exactly `amount_msat`, and check it is that."""
        params.check_amount(amount_msat)
        url = httpx.URL(params.callback).copy_merge_params({"amount": str(amount_msat)})
        body = await self._get_json(str(url))
        pr = body.get("pr")
        if not isinstance(pr, str) or not pr:
            raise service_error("The Lightning address did not return an invoice.")
        try:
            decoded = bolt11.decode(pr)
        except Exception:
            raise service_error("The Lightning address returned an unreadable invoice.") from None
        if decoded.amount_msat is None or int(decoded.amount_msat) != amount_msat:
            raise service_error(
                "The Lightning address returned an invoice for a different amount "
                f"({decoded.amount_msat} msat instead of {amount_msat} msat); nothing was paid."
            )
        return pr

    # ---- internals ----

    async def _resolve(self, host: str, port: int) -> list[str]:
        return await self.resolver(host, port)

    def _check_url(self, url: str) -> None:
        try:
            parsed = httpx.URL(url)
        except Exception:
            raise invalid("The LNURL does not contain a valid URL.") from None
        allowed = ("https", "http") if self.allow_http else ("https",)
        if parsed.scheme not in allowed:
            raise invalid("LNURL services must use https.")
        if not parsed.host or parsed.userinfo:
            raise invalid("The LNURL does not contain a valid URL.")
        host = parsed.host.lower().rstrip(".")
        ip = literal_ip(host)
        local_name = host == "localhost" or host.endswith(".localhost")
        if (ip is not None and not is_public(ip, self.allow_http)) or (
            local_name and not self.allow_http
        ):
            raise invalid(_PRIVATE)

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=TIMEOUT,
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: it would connect for us
                transport=guarded_transport(self._resolve, allow_loopback=self.allow_http),
            )
        host = httpx.URL(url).host
        try:
            async with self._client.stream(
                "GET", url, headers={"Accept": "application/json"}
            ) as resp:
                if resp.is_redirect:
                    raise service_error(
                        "The Lightning address answered with a redirect, which is not followed."
                    )
                raw = bytearray()
                async for chunk in resp.aiter_bytes():
                    raw += chunk
                    if len(raw) > self.max_bytes:
                        raise service_error("The Lightning address sent an oversized answer.")
                status = resp.status_code
        except BlockedAddress:
            log.info("lnurl request to %s refused: not a public address", host)
            raise invalid(_PRIVATE) from None
        except httpx.HTTPError as exc:
            log.info("lnurl request to %s failed: %s", host, type(exc).__name__)
            raise service_error(
                "The Lightning address could not be reached. Try again later."
            ) from None
        try:
            body = json.loads(bytes(raw))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            log.info("lnurl %s answered %d without JSON", host, status)
            raise service_error("The Lightning address gave an invalid answer.")
        if str(body.get("status", "")).upper() == "ERROR":
            reason = _clean(body.get("reason"))
            raise service_error(f"The Lightning address refused: {reason}")
        if status >= 400:
            raise service_error(f"The Lightning address answered with HTTP {status}.")
        return body


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _clean(reason: object) -> str:
    # Text from a stranger's server goes into our error message: printable and short.
    text = "".join(ch for ch in str(reason or "no reason given") if ch.isprintable())
    return text[:200]
