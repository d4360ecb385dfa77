"""The node's Nostr announcement: published at start, when what it says changes, and on an
interval, to the configured relays (market/nostr.py says what is in it).

One announcement per database: nodes sharing a database are one service (one wallet, one
set of providers and settings), so they share its key and `d` tag, and the node holding the
`nostr-announce` lease publishes for all (node.py). Its pass runs every few seconds and
sends only when the announcement differs from the last one sent, when the interval is up,
or when a retry is due after a failure.

The key: `NSEC` when set. Otherwise, once announcing is on, a key generated on first use and
kept in the database (`node_config`, row `nostr_secret_key`, hex): every node of a fleet
reads the same one, and a backup of the database carries it, as it carries the wallet. It is
read only to sign, never logged, and never shown (the admin API shows settings, not this).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from satsrouter.market.nostr import (
    Announcement,
    generate_secret,
    npub,
    parse_keys,
    publish,
    sign,
)
from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

SECRET_ROW = "nostr_secret_key"  # node_config row of a generated key (hex)
IDENTIFIER_ROW = "nostr_identifier"  # node_config row of the announcement's `d` tag
FIRST_RETRY_S = 10.0  # after a failed publication; doubles up to the interval

_GET = "SELECT value FROM node_config WHERE name = :name"
_INSERT = (
    "INSERT INTO node_config (name, value, updated_at) VALUES (:name, :value, :now) "
    "ON CONFLICT (name) DO NOTHING"
)


@dataclass(frozen=True)
class AnnounceConfig:
    """The settings the announcement is made of, read afresh for every pass."""

    enabled: bool
    relays: tuple[str, ...]
    interval: float
    nsec: str
    name: str
    about: str
    urls: tuple[str, ...]
    mints: tuple[str, ...]
    version: str


class Announcer:
    """Publishes the node's announcement when it is due."""

    def __init__(
        self,
        tx: TxRunner,
        config: Callable[[], AnnounceConfig],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tx = tx
        self._config = config
        self._clock = clock
        self._keys: Any = None  # nostr-sdk Keys, once loaded
        self._keys_from: str | None = None  # "env" or "database"
        self.npub: str | None = None
        self._identifier: str | None = None
        self._sent: tuple[Announcement, tuple[str, ...]] | None = None  # last attempted
        self._next_at = 0.0  # when to send again though nothing changed
        self._failures = 0
        self._last_created_at = 0
        self._warned: tuple[str, ...] | None = None
        self.published = 0  # successful publications by this process (tests, admin)

    async def load_identity(self) -> str | None:
        """The node's npub: from `NSEC`, else (announcing on) the stored or a new key."""
        config = self._config()
        if config.nsec:
            if self._keys_from != "env":
                self._keys, self._keys_from = parse_keys(config.nsec), "env"
        elif config.enabled and self._keys_from is None:
            secret = await self._stored(SECRET_ROW, generate_secret)
            self._keys, self._keys_from = parse_keys(secret), "database"
        if self._keys is not None:
            self.npub = npub(self._keys)
        if config.enabled:
            await self.identifier()
        return self.npub

    async def follow(self, poll: Callable[[], float]) -> None:
        """Keep the identity current on every node, not only the lease holder: announcing
        may be switched on through the admin API, and `/v1/info` shows the key's npub."""
        while True:
            await asyncio.sleep(poll())
            try:
                await self.load_identity()
            except Exception as exc:
                log.warning("Nostr key not loaded (%s); retrying", type(exc).__name__)

    @property
    def known_identifier(self) -> str | None:
        """The `d` tag, once read (announcing on); None before."""
        return self._identifier

    async def tick(self) -> bool:
        """Publish if due (True when something was sent and at least one relay took it)."""
        config = self._config()
        if not config.enabled:
            self._sent = None  # turned on again later: publish at once
            return False
        if not config.relays or not config.urls:
            missing = "RELAYS" if not config.relays else "HTTP_URL or ONION_URL"
            if self._warned != (missing,):
                log.warning("NOSTR_ANNOUNCE is on but %s is empty: nothing announced", missing)
                self._warned = (missing,)
            return False
        self._warned = None
        await self.load_identity()
        announcement = Announcement(
            identifier=await self.identifier(),
            urls=config.urls,
            mints=config.mints,
            version=config.version,
            name=config.name,
            about=config.about,
        )
        target = (announcement, config.relays)
        now = self._clock()
        if target == self._sent and now < self._next_at:
            return False
        # Strictly newer than the last one: relays keep the newest, and of two with the same
        # second the one with the lower id, which need not be ours.
        created_at = max(int(now), self._last_created_at + 1)
        self._last_created_at = created_at
        self._sent = target
        try:
            sent = await publish(sign(self._keys, announcement, created_at), list(config.relays))
        except Exception as exc:
            # Relay URLs are checked settings; a failure here is the network's or the SDK's.
            self._retry_later(config.interval, now)
            log.warning("Nostr announcement not published (%s); retrying", type(exc).__name__)
            return False
        for relay, reason in sorted(sent.failed.items()):
            log.warning("Nostr relay %s did not take the announcement: %s", relay, reason)
        if sent.failed or not sent.accepted:
            self._retry_later(config.interval, now)
        else:
            self._failures = 0
            self._next_at = now + config.interval
        if sent.accepted:
            self.published += 1
            log.info(
                "Nostr announcement published to %d of %d relays as %s",
                len(sent.accepted),
                len(config.relays),
                self.npub,
            )
        return bool(sent.accepted)

    def _retry_later(self, interval: float, now: float) -> None:
        self._failures += 1
        self._next_at = now + min(interval, FIRST_RETRY_S * 2 ** (self._failures - 1))

    async def identifier(self) -> str:
        """The announcement's `d` tag: made once per database, kept ever after."""
        if self._identifier is None:
            self._identifier = await self._stored(IDENTIFIER_ROW, lambda: os.urandom(16).hex())
        return self._identifier

    async def _stored(self, row: str, make: Callable[[], str]) -> str:
        """The value of a node_config row, made and stored first if there is none (of two
        nodes making it at once, the first stored wins for both)."""
        value = make()
        now = self._clock()

        def op(tx: Tx) -> str:
            tx.execute(_INSERT, {"name": row, "value": value, "now": now})
            rows, _ = tx.execute(_GET, {"name": row})
            return str(rows[0][0])

        return await self._tx.run(op, durable=True)
