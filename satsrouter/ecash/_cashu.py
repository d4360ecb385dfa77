"""The only module that imports nutshell (`cashu`); everything else imports from here.

Importing nutshell has process-wide side effects that a server cannot accept:
it reads ./.env (or ~/.cashu/.env) into os.environ, overriding what the operator
set, and it sets sys.tracebacklimit = 0. Both are undone here, once. Its loguru
output is switched off because it logs proofs (bearer secrets) at debug/trace level.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import httpx


def _import_nutshell() -> None:
    environ_before = dict(os.environ)
    had_limit = hasattr(sys, "tracebacklimit")
    limit_before = getattr(sys, "tracebacklimit", None)
    try:
        import cashu.wallet.wallet  # noqa: F401  (importing is the side effect)
    finally:
        if dict(os.environ) != environ_before:
            os.environ.clear()
            os.environ.update(environ_before)
        if had_limit:
            sys.tracebacklimit = limit_before  # type: ignore[assignment]
        elif hasattr(sys, "tracebacklimit"):
            del sys.tracebacklimit


_import_nutshell()

from bip32 import BIP32  # noqa: E402
from cashu.core.base import (  # noqa: E402
    BlindedMessage,
    BlindedSignature,
    DLEQWallet,
    Proof,
    TokenV3,
    TokenV4,
    Unit,
)
from cashu.core.crypto import b_dhke  # noqa: E402
from cashu.core.crypto.secp import PrivateKey, PublicKey  # noqa: E402
from cashu.core.nuts import nut20  # noqa: E402
from cashu.core.settings import settings as cashu_settings  # noqa: E402
from cashu.wallet import v1_api as _v1_api  # noqa: E402
from cashu.wallet.crud import get_bolt11_mint_quote  # noqa: E402
from cashu.wallet.v1_api import LedgerAPI  # noqa: E402
from cashu.wallet.wallet import Wallet  # noqa: E402
from loguru import logger as _loguru  # noqa: E402
from mnemonic import Mnemonic  # noqa: E402

# DEBUG=true would switch off TLS verification in nutshell's HTTP client, and Tor
# would spawn a daemon; an .env file in the cwd must not be able to turn either on.
cashu_settings.debug = False
cashu_settings.tor = False
# Receives split into up to 10 coins of each small amount (nutshell's default is 3), so that
# X-Cashu change is nearly always an exact selection of held coins: no second swap per
# request. Measured: 1.56 -> 1.00 swaps per X-Cashu request. Fees are on inputs, not outputs.
cashu_settings.wallet_target_amount_count = 10
_loguru.disable("cashu")

__all__ = [
    "UNCOMPRESSED",
    "BlindedMessage",
    "BlindedSignature",
    "DLEQWallet",
    "LedgerAPI",
    "PrivateKey",
    "Proof",
    "PublicKey",
    "TokenV3",
    "TokenV4",
    "Unit",
    "Wallet",
    "b_dhke",
    "cashu_settings",
    "get_bolt11_mint_quote",
    "new_mnemonic",
    "nut20",
    "pooled_client",
    "use_gate",
    "use_seed",
]


def new_mnemonic() -> str:
    """A fresh BIP39 mnemonic for a new wallet."""
    return str(Mnemonic("english").generate())


def use_seed(wallet: Wallet, mnemonic: str) -> None:
    """Give a nutshell wallet our seed without letting it store the seed anywhere."""
    words = Mnemonic("english")
    if not words.check(mnemonic):
        raise ValueError("the wallet mnemonic is not valid BIP39")
    seed = words.to_seed(mnemonic)
    wallet.seed = seed
    wallet.mnemonic = mnemonic
    wallet.bip32 = BIP32.from_seed(seed)


# Nutshell builds a fresh httpx.AsyncClient (loading the CA bundle, ~27 ms of CPU)
# for every call to the mint. Its v1_api module looks the class up as
# `httpx.AsyncClient` at call time, so a stand-in for the module lets a caller
# supply a long-lived client for the calls made inside `pooled_client(...)`.
_current_client: ContextVar[httpx.AsyncClient | None] = ContextVar(
    "satsrouter_cashu_client", default=None
)


class _HttpxModuleProxy:
    """httpx as nutshell sees it: identical, except AsyncClient can be pre-supplied."""

    def __getattr__(self, name: str) -> Any:
        return getattr(httpx, name)

    @staticmethod
    def AsyncClient(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        client = _current_client.get()
        if client is not None:
            return client
        return httpx.AsyncClient(*args, **kwargs)


_v1_api.httpx = _HttpxModuleProxy()  # type: ignore[assignment]


@contextlib.contextmanager
def pooled_client(client: httpx.AsyncClient | None) -> Iterator[None]:
    """Make nutshell calls in this context (task) use `client` instead of a new one."""
    token = _current_client.set(client)
    try:
        yield
    finally:
        _current_client.reset(token)


# Every HTTP call nutshell makes goes through `LedgerAPI._request`: the one place to hold a
# call back until the node's bound on that mint (`ecash/mint_gate.py`) lets it go.
_GATE_ATTR = "_satsrouter_gate"
_ungated_request = LedgerAPI._request


async def _gated_request(
    self: Any, method: str, path: str, noprefix: bool = False, **kw: Any
) -> Any:
    gate: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = getattr(
        self, _GATE_ATTR, None
    )
    if gate is None:
        return await _ungated_request(self, method, path, noprefix, **kw)
    async with gate():
        return await _ungated_request(self, method, path, noprefix, **kw)


LedgerAPI._request = _gated_request  # type: ignore[method-assign]


def use_gate(
    wallet: Wallet, gate: Callable[[], contextlib.AbstractAsyncContextManager[Any]]
) -> None:
    """Make every call `wallet` makes to its mint enter `gate()` first."""
    setattr(wallet, _GATE_ATTR, gate)


# nutshell's mint compresses every answer the client accepts compressed, brotli at quality 11:
# measured 13 % of its CPU per swap, for replies of a few hundred bytes of hex. Uncompressed
# costs the mint and us nothing. Every client of the node's mints sends this.
UNCOMPRESSED = {"Accept-Encoding": "identity"}


def new_mint_client(
    mint_url: str, timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient | None:
    """A long-lived client for one mint, or None when nutshell must build its own (proxies).

    `transport` (one that verifies TLS) replaces httpx's own, e.g. to time each call.
    """
    if cashu_settings.socks_proxy or cashu_settings.http_proxy or cashu_settings.tor:
        return None
    return httpx.AsyncClient(
        base_url=mint_url.rstrip("/"),
        headers={"Client-version": cashu_settings.version, **UNCOMPRESSED},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        verify=True,
        transport=transport,
    )
