"""The seed client guide's Tor example, as written, against a node behind a SOCKS5 proxy.

The test SOCKS server stands in for Tor: it alone knows the node's `.onion` name (as Tor
alone resolves onion addresses), so a request only arrives if the client hands the name to
the proxy — which the seed's `httpx.HTTPTransport(proxy="socks5://…")` does.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
from cashu.core.nuts.nut18 import deserialize
from conftest import NodeFactory, expected_cost, model_entry
from openai import OpenAI
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from satsrouter_dev.socks_server import ATYP_DOMAIN, SocksServer, Target

# A v3 onion address: 56 base32 characters. No resolver but the proxy's knows it.
ONION = "satsroutertestnodexxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.onion"
MESSAGES = [{"role": "user", "content": "hello from the dark side"}]


def seed_http_client(proxy: str) -> httpx.Client:
    """The seed's `proxy_mounts` and `httpx.Client(mounts=…)`, the proxy's port ours.

    The seed passes the URL as a string, which httpx 0.26 and later take; the httpx pinned
    here (0.25, nutshell's bound) needs the same URL as `httpx.Proxy(…)`, which every
    version takes (README, "Reaching the node over Tor").
    """
    proxy_mounts = {
        "http://": httpx.HTTPTransport(proxy=httpx.Proxy(proxy)),
        "https://": httpx.HTTPTransport(proxy=httpx.Proxy(proxy)),
    }
    return httpx.Client(mounts=proxy_mounts, timeout=30)


def test_the_onion_name_resolves_nowhere_but_at_the_proxy() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(ONION, 80)


async def test_the_seed_tor_snippet_pays_through_the_proxy(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(onion_url=f"http://{ONION}")
    port = int(node.url.rsplit(":", 1)[1])
    base_url = f"http://{ONION}:{port}/v1"  # a hidden service maps its port to the node's
    (token,) = await user_wallet.mint_tokens(100)

    def seed_client() -> tuple[dict[str, Any], Any]:
        with seed_http_client(socks.url) as http:
            info = http.get(f"{base_url}/info").json()
            client = OpenAI(base_url=base_url, api_key=token, http_client=http, max_retries=0)
            reply = client.chat.completions.create(
                model="test/priced", messages=MESSAGES, max_tokens=8
            )
            return info, reply

    async with SocksServer(names={ONION: "127.0.0.1"}) as socks:
        # Synchronous, as in the seed: on a thread, while the node serves in this loop.
        info, reply = await asyncio.to_thread(seed_client)

    assert info["onion_url"] == f"http://{ONION}"
    assert reply.choices[0].message.content
    cost = expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )
    assert reply.usage.model_extra["cost"]["total_msats"] == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    # Every connection went through the proxy, by name: the client resolved nothing.
    assert socks.targets and set(socks.targets) == {Target(ONION, port, ATYP_DOMAIN)}
    await node.check_invariants()


async def test_nut24_round_trip_over_tor(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    """No key at all: the 402's payment request, paid in X-Cashu, through the proxy."""
    upstream.reset()
    node = await node_factory()
    port = int(node.url.rsplit(":", 1)[1])
    url = f"http://{ONION}:{port}/v1/chat/completions"
    body = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 8}
    loop = asyncio.get_running_loop()

    def wallet_client() -> tuple[int, httpx.Response]:
        with seed_http_client(socks.url) as http:
            asked = http.post(url, json=body)
            amount = deserialize(asked.headers["X-Cashu"]).a
            assert amount is not None
            # The user's wallet lives in the test's loop (its database too): mint there.
            mint = asyncio.run_coroutine_threadsafe(user_wallet.mint_tokens(amount), loop)
            (token,) = mint.result(60)
            return amount, http.post(url, json=body, headers={"X-Cashu": token})

    async with SocksServer(names={ONION: "127.0.0.1"}) as socks:
        amount, paid = await asyncio.to_thread(wallet_client)

    assert paid.status_code == 200, paid.text
    cost = int(paid.headers["X-Routstr-Cost-Msats"])
    assert cost == paid.json()["usage"]["cost"]["total_msats"] > 0
    assert await user_wallet.redeem(paid.headers["X-Cashu"]) == (amount * 1000 - cost) // 1000
    assert set(socks.targets) == {Target(ONION, port, ATYP_DOMAIN)}
    await node.check_invariants()
