"""Other nodes found on Nostr, for `GET /v1/providers` (`nodes`), each checked before listed.

With `NOSTR_DISCOVERY` on, every `NOSTR_DISCOVERY_TTL` seconds the node reads the provider
announcements (kind 38421) the relays hold, keeps the newest per author and `d` tag, leaves
out its own, and checks each: `GET <url>/v1/info` and `GET <url>/v1/models` must both answer
200 with JSON. Clearnet URLs are tried first, then `.onion` ones, through `UPSTREAM_PROXY`
when it is set (skipped otherwise). Only nodes that pass are listed; the list is kept in
memory until the next round, so a request never waits for relays or checks.

The URLs come from anyone who can write to a relay: clearnet checks go through the same
guarded transport as LNURL payouts, which connects only to public addresses (checked at
connect time, so a name that later resolves elsewhere is refused too); `.onion` ones only
through the proxy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from satsrouter.lightning.addresses import guarded_transport
from satsrouter.market.nostr import NodeAnnouncement, fetch_announcements
from satsrouter.upstream.client import parse_proxy, proxy_connector

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 10.0  # each health check request
MAX_CONCURRENT_CHECKS = 16


@dataclass(frozen=True)
class DiscoveryConfig:
    """The settings discovery runs with, read afresh each round."""

    enabled: bool
    relays: tuple[str, ...]
    ttl: float
    proxy: str  # UPSTREAM_PROXY, "" when none
    allow_loopback: bool  # tests only: their nodes listen on 127.0.0.1


class Discovery:
    """The other nodes found on the relays that answered their health check last round."""

    def __init__(
        self,
        config: Callable[[], DiscoveryConfig],
        own: Callable[[], tuple[str | None, str | None]],
    ) -> None:
        """`own()`: this node's npub and `d` tag (None until known), left out of the list."""
        self._config = config
        self._own = own
        self.nodes: list[dict[str, Any]] = []
        self.checked_at: float | None = None
        self._next_at = 0.0
        self._announced: list[NodeAnnouncement] = []
        self.rounds = 0

    async def run(self, poll: Callable[[], float]) -> None:
        """Refresh every TTL while discovery is on (looking every `poll()` seconds whether
        it was turned on or off), forever."""
        while True:
            try:
                await self.maybe_refresh()
            except Exception:
                log.exception("node discovery failed; retrying")
            await asyncio.sleep(poll())

    async def maybe_refresh(self) -> None:
        """Read the relays and check the nodes when on and the last round is older than TTL."""
        config = self._config()
        if not config.enabled:
            self.nodes, self.checked_at, self._next_at, self._announced = [], None, 0.0, []
            return
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + config.ttl  # also after a failure: the relays are not hammered
        await self.refresh(config)

    async def refresh(self, config: DiscoveryConfig) -> None:
        """One round: read announcements, check each node, keep those that answered."""
        found = await fetch_announcements(list(config.relays)) or self._announced
        # Relays that answer nothing (unreachable, for one) leave the last ones to re-check.
        self._announced = found
        own_npub, own_identifier = self._own()
        # Its own: same key and `d` tag (the key alone while the tag is not known yet).
        others = [
            a for a in found if a.npub != own_npub or own_identifier not in (None, a.identifier)
        ]
        checker = _Checker(config)
        try:
            checked = await asyncio.gather(*(checker.check(a) for a in others))
        finally:
            await checker.close()
        self.nodes = sorted(
            (entry for entry in checked if entry is not None),
            key=lambda e: (e["name"], e["npub"], e["d"]),
        )
        self.checked_at = time.time()
        self.rounds += 1
        log.info(
            "node discovery: %d announced, %d answered their health check",
            len(others),
            len(self.nodes),
        )


def _is_onion(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.endswith(".onion")


def _http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class _Checker:
    """The clients one round's health checks use: direct (guarded) and through the proxy."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self._direct = httpx.AsyncClient(
            transport=guarded_transport(allow_loopback=config.allow_loopback),
            timeout=CHECK_TIMEOUT_S,
            follow_redirects=False,
        )
        self._proxied: aiohttp.ClientSession | None = None
        if config.proxy:
            self._proxied = aiohttp.ClientSession(
                connector=proxy_connector(parse_proxy(config.proxy)),
                timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S),
            )
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)

    async def close(self) -> None:
        await self._direct.aclose()
        if self._proxied is not None:
            await self._proxied.close()

    async def check(self, node: NodeAnnouncement) -> dict[str, Any] | None:
        """The node's entry if one of its URLs answers both checks, else None."""
        urls = [u.rstrip("/") for u in node.urls if _http_url(u)]
        clearnet = [u for u in urls if not _is_onion(u)]
        onion = [u for u in urls if _is_onion(u)] if self._proxied is not None else []
        async with self._slots:
            for url in clearnet + onion:
                started = time.monotonic()
                models = await self._answers(url)
                if models is not None:
                    return _entry(node, url, models, time.monotonic() - started)
        return None

    async def _answers(self, url: str) -> int | None:
        """The number of models `url` lists when its `/v1/info` and `/v1/models` answer."""
        try:
            info = await self._get(url + "/v1/info")
            models = await self._get(url + "/v1/models")
        except Exception as exc:
            log.debug("discovered node at %s did not answer: %s", url, type(exc).__name__)
            return None
        data = models.get("data") if isinstance(models, dict) else None
        if not isinstance(info, dict) or not isinstance(data, list):
            return None
        return len(data)

    async def _get(self, url: str) -> Any:
        if _is_onion(url):
            assert self._proxied is not None
            async with self._proxied.get(url) as resp:
                resp.raise_for_status()
                return await resp.json(content_type=None)
        answer = await self._direct.get(url)
        answer.raise_for_status()
        return answer.json()


def _entry(node: NodeAnnouncement, url: str, models: int, seconds: float) -> dict[str, Any]:
    """A discovered node as `/v1/providers` lists it (openapi.py: DiscoveredNode)."""
    urls = list(node.urls)
    return {
        "name": node.name,
        "about": node.about,
        "npub": node.npub,
        "d": node.identifier,
        "urls": urls,
        "http_url": next((u for u in urls if _http_url(u) and not _is_onion(u)), None),
        "onion_url": next((u for u in urls if _is_onion(u)), None),
        "mints": list(node.mints),
        "version": node.version,
        "announced_at": node.created_at,
        "status": "online",
        "checked_url": url,
        "latency_ms": round(seconds * 1000),
        "models": models,
    }
