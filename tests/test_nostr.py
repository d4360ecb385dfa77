"""Nostr: the node's announcement reaches a real relay (PyPI nostr-relay on 127.0.0.1), signed
and replaced on a settings change; discovery lists another real node announced there and
drops it once it stops answering.

The relay is read over a plain websocket and every event checked here, independently of
the node's library: the id is the NIP-01 hash, the signature BIP-340 (coincurve).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coincurve
import httpx
import pytest
import websockets
from conftest import ADMIN_PASSWORD, NodeFactory, RunningNode, eventually
from satsrouter_dev.mint import LocalMint, free_port
from satsrouter_dev.nostr_relay import LocalRelay
from satsrouter_dev.socks_server import ATYP_DOMAIN, SocksServer, Target

from satsrouter import __version__
from satsrouter.identity import npub_of
from satsrouter.market import nostr
from satsrouter.market.announce import SECRET_ROW

KIND = 38421
NSEC = "3c" * 32  # a valid secp256k1 secret key, in hex as NSEC takes it


@pytest.fixture
def relay() -> Iterator[LocalRelay]:
    """A real Nostr relay on 127.0.0.1, empty for each test."""
    with LocalRelay() as server:
        yield server


def xonly(secret_hex: str) -> str:
    """The x-only public key (hex) of a secret key."""
    return coincurve.PrivateKey(bytes.fromhex(secret_hex)).public_key.format()[1:].hex()


async def relay_events(url: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    """What the relay returns for one REQ, up to its EOSE."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(["REQ", "test", query]))
        events = []
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message[0] == "EVENT":
                events.append(message[2])
            elif message[0] == "EOSE":
                return events


def verify(event: dict[str, Any]) -> None:
    """NIP-01: the id is the hash of the serialised event, the signature BIP-340 over it."""
    serial = json.dumps(
        [0, event["pubkey"], event["created_at"], event["kind"], event["tags"], event["content"]],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    digest = hashlib.sha256(serial.encode()).digest()
    assert digest.hex() == event["id"]
    key = coincurve.PublicKeyXOnly(bytes.fromhex(event["pubkey"]))
    assert key.verify(bytes.fromhex(event["sig"]), digest)


def tag_values(event: dict[str, Any], name: str) -> list[str]:
    return [tag[1] for tag in event["tags"] if tag[0] == name]


async def announcements(relay: LocalRelay, pubkey: str) -> list[dict[str, Any]]:
    return await relay_events(relay.url, {"kinds": [KIND], "authors": [pubkey]})


async def patch_settings(running: RunningNode, body: dict[str, Any]) -> None:
    """An admin change, with Routstr's cookie: with an https HTTP_URL the session cookie is
    `Secure`, which a client does not send back over the tests' plain http."""
    cookies = {"admin_password": ADMIN_PASSWORD}
    async with httpx.AsyncClient(base_url=running.url, cookies=cookies) as http:
        resp = await http.patch("/admin/api/settings", json=body)
        assert resp.status_code == 200, resp.text


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient() as http:
        resp = await http.get(url)
        assert resp.status_code == 200, resp.text
        return resp.json()


async def test_the_announcement_arrives_signed_and_a_settings_change_replaces_it(
    node_factory: NodeFactory, relay: LocalRelay, local_mint: LocalMint
) -> None:
    running = await node_factory(
        nsec=NSEC,
        nostr_announce=True,
        relays=[relay.url],
        http_url="https://node.example",
        onion_url="http://nodeexampleonion.onion",
        name="first name",
        description="cheap tokens",
        settings_refresh_seconds=0.2,
    )
    pubkey = xonly(NSEC)
    found: list[dict[str, Any]] = []

    async def published() -> bool:
        found[:] = await announcements(relay, pubkey)
        return len(found) == 1

    await eventually(published)
    first = found[0]
    verify(first)
    assert first["kind"] == KIND and first["pubkey"] == pubkey
    [identifier] = tag_values(first, "d")
    assert len(identifier) == 32  # made once for this node's database
    assert tag_values(first, "u") == ["https://node.example", "http://nodeexampleonion.onion"]
    assert tag_values(first, "mint") == [local_mint.url]
    assert tag_values(first, "version") == [__version__]
    assert json.loads(first["content"]) == {"name": "first name", "about": "cheap tokens"}
    info = await get_json(running.url + "/v1/info")
    assert info["npub"] == npub_of(NSEC)

    await patch_settings(running, {"name": "second name", "onion_url": "http://moved.onion"})

    async def replaced() -> bool:
        found[:] = await announcements(relay, pubkey)
        return len(found) == 1 and found[0]["id"] != first["id"]

    await eventually(replaced)
    second = found[0]
    verify(second)
    assert tag_values(second, "d") == [identifier]
    assert second["created_at"] > first["created_at"]
    assert tag_values(second, "u") == ["https://node.example", "http://moved.onion"]
    assert json.loads(second["content"]) == {"name": "second name", "about": "cheap tokens"}
    # Unchanged since: not sent again before the interval (an hour).
    assert running.node.announcer.published == 2


async def test_without_nsec_a_key_is_generated_stored_and_never_logged(
    node_factory: NodeFactory, relay: LocalRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = {
        "relays": [relay.url],
        "http_url": "https://generated.example",
        "settings_refresh_seconds": 0.2,
    }
    running = await node_factory(**settings)
    assert (await get_json(running.url + "/v1/info"))["npub"] is None  # no key, none made
    await patch_settings(running, {"nostr_announce": True})  # switched on while it runs

    async def has_npub() -> bool:
        return (await get_json(running.url + "/v1/info"))["npub"] is not None

    await eventually(has_npub)

    def stored(tx: Any) -> str:
        rows, _ = tx.execute("SELECT value FROM node_config WHERE name = :n", {"n": SECRET_ROW})
        return str(rows[0][0])

    secret = await running.node.tx.read(stored)
    info = await get_json(running.url + "/v1/info")
    assert info["npub"] == npub_of(secret)
    found: list[dict[str, Any]] = []

    async def published() -> bool:
        found[:] = await announcements(relay, xonly(secret))
        return len(found) == 1

    await eventually(published)
    verify(found[0])
    assert tag_values(found[0], "u") == ["https://generated.example"]
    assert secret not in caplog.text

    # The same database after a restart: the same key, the same `d` tag.
    data = running.node.settings
    await running.stop()
    again = await node_factory(
        **settings, nostr_announce=True, data_dir=data.data_dir, database_url=data.database_url
    )
    assert (await get_json(again.url + "/v1/info"))["npub"] == npub_of(secret)
    assert await again.node.announcer.identifier() == tag_values(found[0], "d")[0]


async def test_an_unreachable_relay_is_logged_and_retried_and_the_node_serves(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nostr, "RELAY_TIMEOUT_S", 0.5)
    monkeypatch.setattr("satsrouter.market.announce.FIRST_RETRY_S", 0.2)
    caplog.set_level(logging.INFO)
    dead = f"ws://127.0.0.1:{free_port()}"
    running = await node_factory(
        nsec=NSEC,
        nostr_announce=True,
        relays=[dead],
        http_url="https://node.example",
        settings_refresh_seconds=0.1,
    )

    async def retried() -> bool:
        return caplog.text.count(f"Nostr relay {dead} did not take the announcement") >= 2

    await eventually(retried)
    assert running.node.announcer.published == 0
    assert (await get_json(running.url + "/v1/info"))["npub"] == npub_of(NSEC)
    assert NSEC not in caplog.text


async def test_discovery_lists_a_second_node_and_drops_it_when_it_stops_answering(
    node_factory: NodeFactory, relay: LocalRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nostr, "RELAY_TIMEOUT_S", 2.0)  # the relay is stopped at the end
    # Its own database: another node, with its own key and lease.
    other = await node_factory(
        data_dir=tmp_path / "other",
        nostr_announce=True,
        relays=[relay.url],
        name="the other node",
        settings_refresh_seconds=0.2,
    )
    await patch_settings(other, {"http_url": other.url})  # known once it listens
    other_npub = other.node.npub
    assert other_npub is not None
    discovery = {
        "nostr_discovery": True,
        "nostr_discovery_ttl": 0.5,
        "relays": [relay.url],
        "settings_refresh_seconds": 0.2,
    }
    seeker = await node_factory(
        **discovery,
        nostr_discovery_allow_loopback=True,
        nostr_announce=True,  # announced too, but never lists itself
        nsec=NSEC,
    )
    await patch_settings(seeker, {"http_url": seeker.url})
    # A node whose only URL is an onion: without UPSTREAM_PROXY it cannot be checked.
    keys = nostr.parse_keys("4d" * 32)
    onion_only = nostr.Announcement("x", ("http://nowhere.onion",), (), "1", "onion only", "")
    await nostr.publish(nostr.sign(keys, onion_only, 1_800_000_000), [relay.url])
    models = len((await get_json(other.url + "/v1/models"))["data"])
    listed: dict[str, Any] = {}

    async def discovered() -> bool:
        listed.update(await get_json(seeker.url + "/v1/providers"))
        return any(n["npub"] == other_npub for n in listed["nodes"])

    await eventually(discovered)
    [entry] = listed["nodes"]  # not the seeker itself, not the onion-only node
    assert entry["name"] == "the other node"
    assert entry["urls"] == [other.url] and entry["http_url"] == other.url
    assert entry["onion_url"] is None
    assert (entry["status"], entry["checked_url"], entry["models"]) == ("online", other.url, models)
    assert entry["version"] == __version__
    assert [p["name"] for p in listed["providers"]] == list(seeker.node.upstreams)
    # Announced URLs come from strangers: loopback only with the tests' switch.
    guarded = await node_factory(data_dir=tmp_path / "guarded", **discovery)
    rounds = guarded.node.discovery.rounds

    async def checked() -> bool:
        return guarded.node.discovery.rounds > rounds + 1

    await eventually(checked)
    assert (await get_json(guarded.url + "/v1/providers"))["nodes"] == []

    # Relays gone: the nodes last announced are checked again, not forgotten.
    relay.stop()
    rounds = seeker.node.discovery.rounds

    async def rechecked() -> bool:
        return seeker.node.discovery.rounds > rounds + 1

    await eventually(rechecked)
    assert [n["npub"] for n in (await get_json(seeker.url + "/v1/providers"))["nodes"]] == [
        other_npub
    ]

    await other.stop()

    async def dropped() -> bool:
        return (await get_json(seeker.url + "/v1/providers"))["nodes"] == []

    await eventually(dropped)


async def test_discovery_checks_an_onion_node_through_the_socks_proxy(
    node_factory: NodeFactory,
    relay: LocalRelay,
    tmp_path: Path,
    local_mint: LocalMint,
) -> None:
    onion = "satsrouterexampleonionservice.onion"
    hidden = await node_factory(data_dir=tmp_path / "hidden")
    port = int(hidden.url.rsplit(":", 1)[1])
    onion_url = f"http://{onion}:{port}"
    keys = nostr.parse_keys("5e" * 32)
    announced = nostr.Announcement(
        "hidden", (onion_url,), (local_mint.url,), __version__, "hidden node", "over Tor"
    )
    await nostr.publish(nostr.sign(keys, announced, 1_800_000_000), [relay.url])
    # Only the proxy knows the name, as only Tor resolves .onion names.
    async with SocksServer(names={onion: "127.0.0.1"}) as socks:
        seeker = await node_factory(
            nostr_discovery=True,
            nostr_discovery_ttl=0.5,
            relays=[relay.url],
            settings_refresh_seconds=0.2,
            upstream_proxy=socks.url_remote_dns,  # as for Tor: the proxy resolves the name
        )
        listed: list[dict[str, Any]] = []

        async def discovered() -> bool:
            listed[:] = (await get_json(seeker.url + "/v1/providers"))["nodes"]
            return bool(listed)

        await eventually(discovered)
        [entry] = listed
        assert (entry["name"], entry["about"]) == ("hidden node", "over Tor")
        assert (entry["onion_url"], entry["http_url"]) == (onion_url, None)
        assert entry["checked_url"] == onion_url and entry["npub"] == nostr.npub(keys)
        assert entry["mints"] == [local_mint.url]
        assert Target(onion, port, ATYP_DOMAIN) in socks.targets  # through the proxy, by name
