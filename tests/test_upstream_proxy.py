"""Upstreams reached through a SOCKS5 proxy (UPSTREAM_PROXY), and clients reaching the node
through one (the seed's Tor snippet), with the test SOCKS server standing in for Tor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio
from conftest import NodeFactory, expected_cost, model_entry
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from satsrouter_dev.socks_server import ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, SocksServer, Target

from satsrouter.upstream.client import Upstream, UpstreamFailure, parse_proxy

MESSAGES = [{"role": "user", "content": "through the tunnel"}]


@pytest_asyncio.fixture
async def socks() -> AsyncIterator[SocksServer]:
    async with SocksServer() as server:
        yield server


async def test_a_paid_request_reaches_the_upstream_only_through_the_proxy(
    node_factory: NodeFactory, upstream: FakeUpstream, socks: SocksServer, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(upstream_proxy=socks.url)
    assert node.node.upstream.proxy == socks.url
    # The catalogue came through it already (the model list).
    assert socks.targets and set(socks.targets) == {Target("127.0.0.1", upstream.port, ATYP_IPV4)}
    (token,) = await user_wallet.mint_tokens(100)
    client = openai.AsyncOpenAI(base_url=node.api, api_key=token, max_retries=0)

    chats_before = upstream.stats["chat_requests"]
    reply = await client.chat.completions.create(
        model="test/priced", messages=MESSAGES, max_tokens=8
    )
    assert reply.usage is not None
    cost = expected_cost(
        model_entry("test/priced"), reply.usage.prompt_tokens, reply.usage.completion_tokens
    )
    assert reply.usage.model_extra["cost"]["total_msats"] == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    assert upstream.stats["chat_requests"] == chats_before + 1
    assert set(socks.ports_seen()) == {upstream.port}

    # The proxy gone, the upstream is out of reach (though it still listens): 502, free.
    await socks.stop()
    with pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=8)
    assert failed.value.status_code == 502
    balance = await node.balance(token)
    assert (balance["balance"], balance["reserved"]) == (100_000 - cost, 0)
    assert upstream.stats["chat_requests"] == chats_before + 1
    await node.check_invariants()


async def test_socks5h_leaves_names_to_the_proxy(
    upstream: FakeUpstream, socks: SocksServer
) -> None:
    """socks5h:// sends the host name (as .onion needs); socks5:// sends an address."""
    remote = Upstream(f"http://localhost:{upstream.port}/v1", "", proxy=socks.url_remote_dns)
    local = Upstream(f"http://localhost:{upstream.port}/v1", "", proxy=socks.url)
    try:
        assert (await remote.get_json("/models"))["data"]
        assert socks.targets == [Target("localhost", upstream.port, ATYP_DOMAIN)]
        await local.get_json("/models")
        assert socks.targets[1].address_type in (ATYP_IPV4, ATYP_IPV6)
        assert socks.targets[1].host in ("127.0.0.1", "::1")
    finally:
        await remote.close()
        await local.close()


async def test_ipv6_targets(socks: SocksServer) -> None:
    async with FakeUpstream(host="::1") as v6:
        up = Upstream(v6.url, "", proxy=socks.url)
        try:
            assert (await up.get_json("/models"))["data"]
        finally:
            await up.close()
    assert socks.targets == [Target("::1", v6.port, ATYP_IPV6)]


async def test_the_proxy_password_is_never_shown(socks: SocksServer) -> None:
    url = f"socks5h://tor:hunter2@127.0.0.1:{socks.port}"
    up = Upstream("http://127.0.0.1:9/v1", "", proxy=url)
    try:
        assert up.proxy == f"socks5h://***@127.0.0.1:{socks.port}"
        assert "hunter2" not in repr(parse_proxy(url))
        await socks.stop()
        with pytest.raises(UpstreamFailure) as failed:
            await up.get_json("/models")
        assert failed.value.kind == "transport"
        assert "hunter2" not in str(failed.value)
    finally:
        await up.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "socks4://127.0.0.1:1", "socks5://x"])
def test_only_socks5_proxies(url: str) -> None:
    with pytest.raises(ValueError, match="socks5://host:port or socks5h://host:port"):
        Upstream("http://127.0.0.1:9/v1", "", proxy=url)


async def test_a_client_reaches_the_node_through_socks(
    node_factory: NodeFactory, upstream: FakeUpstream, socks: SocksServer, user_wallet: TestWallet
) -> None:
    """The seed's Tor client: `httpx.AsyncClient(proxy="socks5://127.0.0.1:9050")`."""
    upstream.reset()
    node = await node_factory()
    port = int(node.url.rsplit(":", 1)[1])
    (token,) = await user_wallet.mint_tokens(100)
    # httpx 0.25 spells it `proxies=` (later versions `proxy=`); socksio does the SOCKS part.
    async with httpx.AsyncClient(proxies=socks.url, base_url=node.api, timeout=30) as http:
        resp = await http.post(
            "/chat/completions",
            json={"model": "test/priced", "messages": MESSAGES, "max_tokens": 8},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    cost = expected_cost(
        model_entry("test/priced"), usage["prompt_tokens"], usage["completion_tokens"]
    )
    assert int(resp.headers["X-Routstr-Cost-Msats"]) == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    assert socks.ports_seen() == [port]
