"""Nostr for the market: the node's provider announcement (kind 38421), signed and sent to
relays, and other nodes' announcements read back from them.

Keys, signing, event ids and relay I/O are nostr-sdk's (the rust-nostr bindings); this module
only says what goes in the event and reads what comes out. Secret keys never leave the
`Keys` object, never reach a log line, and never appear in an error message.

The announcement (Routstr's provider discovery, NIP-91 draft) is a parameterised replaceable
event: relays keep the newest one per (author, kind 38421, `d` tag). Its tags:

    ["d", <identifier, stable per node>]
    ["u", <HTTP URL>], ["u", <onion URL>]   one per URL the node is reachable at
    ["mint", <mint URL>]                    one per accepted mint, primary first
    ["version", <satsrouter version>]

and its content a JSON object `{"name", "about"}`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from nostr_sdk import (
    Client,
    EventBuilder,
    Filter,
    Keys,
    Kind,
    RelayUrl,
    ReqTarget,
    Tag,
    Timestamp,
)

log = logging.getLogger(__name__)

ANNOUNCEMENT_KIND = 38421
RELAY_TIMEOUT_S = 10.0  # to connect to the relays, and for each to acknowledge (OK)
FETCH_LIMIT = 500  # announcements asked of each relay


class NostrKeyError(ValueError):
    """A secret key that is not a Nostr key (the message never repeats it)."""


def parse_keys(secret: str) -> Keys:
    """`nsec1…` or 64 hex characters → nostr-sdk `Keys`; NostrKeyError otherwise."""
    try:
        return Keys.parse(secret.strip())
    except Exception:
        raise NostrKeyError("not a Nostr secret key (nsec1… or 64 hex characters)") from None


def generate_secret() -> str:
    """A new random Nostr secret key, as hex."""
    return str(Keys.generate().secret_key().to_hex())


def npub(keys: Keys) -> str:
    """The `npub1…` of `keys`."""
    return str(keys.public_key().to_bech32())


@dataclass(frozen=True)
class Announcement:
    """What the node announces; equal announcements need not be sent again."""

    identifier: str
    urls: tuple[str, ...]
    mints: tuple[str, ...]
    version: str
    name: str
    about: str

    def tags(self) -> list[list[str]]:
        """The event's tags, in the order documented above."""
        tags = [["d", self.identifier]]
        tags += [["u", url] for url in self.urls]
        tags += [["mint", mint] for mint in self.mints]
        tags.append(["version", self.version])
        return tags

    def content(self) -> str:
        """The event's content: name and about, as JSON."""
        return orjson.dumps({"name": self.name, "about": self.about}).decode()


def sign(keys: Keys, announcement: Announcement, created_at: int) -> Any:
    """The signed nostr-sdk `Event` of `announcement` at `created_at` (unix seconds)."""
    return (
        EventBuilder(Kind(ANNOUNCEMENT_KIND), announcement.content())
        .tags([Tag.parse(tag) for tag in announcement.tags()])
        .custom_created_at(Timestamp.from_secs(created_at))
        .finalize(keys)
    )


@dataclass(frozen=True)
class Sent:
    """Which relays accepted an event and why the others did not."""

    accepted: tuple[str, ...]
    failed: dict[str, str]


async def _client(relays: Iterable[str]) -> Client:
    """A client connected (as far as it got within the timeout) to `relays`."""
    client = Client()
    for url in relays:
        await client.add_relay(RelayUrl.parse(url))
    await client.connect(timedelta(seconds=RELAY_TIMEOUT_S))
    return client


async def publish(event: Any, relays: list[str]) -> Sent:
    """Send `event` to every relay; unreachable ones are reported in `failed`, never raised."""
    client = await _client(relays)
    try:
        output = await client.send_event(event, ok_timeout=timedelta(seconds=RELAY_TIMEOUT_S))
    finally:
        await client.shutdown()
    return Sent(
        tuple(str(url) for url in output.success),
        {str(url): str(reason) for url, reason in output.failed.items()},
    )


@dataclass(frozen=True)
class NodeAnnouncement:
    """Another node's announcement, as a relay returned it (its signature checked)."""

    pubkey: str  # hex
    npub: str
    identifier: str
    created_at: int
    urls: tuple[str, ...]
    mints: tuple[str, ...]
    version: str | None
    name: str
    about: str


def read_announcement(event: Any) -> NodeAnnouncement | None:
    """The announcement an event carries; None when it is not one or its signature fails."""
    if not event.verify():
        return None
    raw = orjson.loads(event.as_json())
    if raw.get("kind") != ANNOUNCEMENT_KIND:
        return None
    tags = [t for t in raw.get("tags") or [] if isinstance(t, list) and len(t) >= 2]

    def values(name: str) -> list[str]:
        return [str(t[1]) for t in tags if t[0] == name]

    identifier = next(iter(values("d")), "")
    try:
        content = orjson.loads(raw.get("content") or "{}")
    except orjson.JSONDecodeError:
        content = {}
    if not isinstance(content, dict):
        content = {}
    return NodeAnnouncement(
        pubkey=str(raw["pubkey"]),
        npub=str(event.author().to_bech32()),
        identifier=identifier,
        created_at=int(raw["created_at"]),
        urls=tuple(values("u")),
        mints=tuple(values("mint")),
        version=next(iter(values("version")), None),
        name=str(content.get("name") or ""),
        about=str(content.get("about") or ""),
    )


async def fetch_announcements(relays: list[str]) -> list[NodeAnnouncement]:
    """Every node announcement the relays hold, the newest per (author, `d`) only."""
    client = await _client(relays)
    try:
        events = await client.fetch_events(
            ReqTarget.auto([Filter().kind(Kind(ANNOUNCEMENT_KIND)).limit(FETCH_LIMIT)]),
            timedelta(seconds=RELAY_TIMEOUT_S),
        )
    finally:
        await client.shutdown()
    newest: dict[tuple[str, str], NodeAnnouncement] = {}
    for event in events:
        found = read_announcement(event)
        if found is None:
            continue
        key = (found.pubkey, found.identifier)
        if key not in newest or newest[key].created_at < found.created_at:
            newest[key] = found
    return list(newest.values())
