"""Upstream timeouts shaped for LLMs: connect, first byte, and the gap between two chunks.

A long answer is never cut for its length: only a silence longer than a timeout fails it,
and then nothing is charged.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import NodeFactory, RunningNode, admin_client, expected_cost, model_entry
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from satsrouter_dev.socks_server import SocksServer
from sqlalchemy import select

from satsrouter.store.tables import reservations
from satsrouter.upstream.client import Timeouts, Upstream, UpstreamFailure, read_body

MESSAGES = [{"role": "user", "content": "take your time"}]


def client(node: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)


async def last_reservation(node: RunningNode) -> tuple[str, int | None, str | None]:
    async with node.node.engine.connect() as conn:
        row = (
            await conn.execute(
                select(reservations.c.state, reservations.c.charged_msat, reservations.c.error)
                .order_by(reservations.c.created_at.desc())
                .limit(1)
            )
        ).one()
    return row[0], row[1], row[2]


# --- through the node -------------------------------------------------------------------------


async def test_a_stream_longer_than_the_idle_timeout_is_not_cut(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(upstream_idle_timeout=1.0, upstream_first_byte_timeout=2.0)
    (token,) = await user_wallet.mint_tokens(100)
    started = time.monotonic()
    stream = await client(node, token).chat.completions.create(
        model="test/priced",
        messages=MESSAGES,
        max_tokens=20,
        stream=True,
        extra_body={"fake": {"chunk_delay_ms": 500, "completion_tokens": 6}},
    )
    chunks = [chunk async for chunk in stream]
    # Every gap under the idle timeout, the whole well past it: no total limit.
    assert time.monotonic() - started > 2.0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w1 w2 w3 w4 w5 w6"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6
    cost = expected_cost(model_entry("test/priced"), usage.prompt_tokens, 6)
    assert usage.model_extra["cost"]["total_msats"] == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    assert await last_reservation(node) == ("charged", cost, None)


async def test_a_pause_longer_than_the_idle_timeout_fails_the_stream_free(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(upstream_idle_timeout=1.0, upstream_first_byte_timeout=5.0)
    (token,) = await user_wallet.mint_tokens(100)
    received: list[Any] = []
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="nothing was charged"):
        stream = await client(node, token).chat.completions.create(
            model="test/priced",
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            extra_body={"fake": {"chunk_delay_ms": 4000, "completion_tokens": 6}},
        )
        async for chunk in stream:  # the client stays connected throughout
            received.append(chunk)
    # Ended by the first pause (the upstream's second event was due only at 4 s).
    assert time.monotonic() - started < 4.0
    assert len(received) == 1  # the event that came before the silence
    balance = await node.balance(token)
    assert (balance["balance"], balance["reserved"]) == (100_000, 0)
    state, charged, error = await last_reservation(node)
    assert (state, charged or 0, error) == ("released", 0, "upstream_timeout")
    await node.check_invariants()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_slow_first_byte_is_a_504_and_free(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet, stream: bool
) -> None:
    upstream.reset()
    node = await node_factory(upstream_first_byte_timeout=1.0, upstream_idle_timeout=30.0)
    (token,) = await user_wallet.mint_tokens(100)
    body = {
        "model": "test/priced",
        "messages": MESSAGES,
        "max_tokens": 8,
        "stream": stream,
        "fake": {"latency_ms": 3000},
    }
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=node.api, timeout=30) as http:
        resp = await http.post(
            "/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["type"] == "upstream_timeout"
    assert time.monotonic() - started < 3.0
    balance = await node.balance(token)
    assert (balance["balance"], balance["reserved"]) == (100_000, 0)
    await node.check_invariants()


async def test_the_settings_reach_the_upstream_and_change_live(
    node_factory: NodeFactory, upstream: FakeUpstream
) -> None:
    upstream.reset()
    # First byte not set: the deprecated UPSTREAM_TIMEOUT (3 s in the tests' settings).
    node = await node_factory(upstream_connect_timeout=0.7, upstream_idle_timeout=2.0)
    up = node.node.upstream
    assert up.timeouts == Timeouts(connect=0.7, first_byte=3.0, idle=2.0)
    # The connect timeout is aiohttp's; the others are timed by the client itself.
    assert (up._client_timeout.sock_connect, up._client_timeout.sock_read) == (0.7, None)
    assert up._client_timeout.total is None

    http = await admin_client(node)
    try:
        resp = await http.patch(
            "/admin/api/settings",
            json={"upstream_idle_timeout": 9, "upstream_connect_timeout": "1.5"},
        )
        assert resp.status_code == 200, resp.text
        assert up.timeouts == Timeouts(connect=1.5, first_byte=3.0, idle=9.0)
        # The deprecated single timeout only fills in what is not set.
        resp = await http.patch("/admin/api/settings", json={"upstream_timeout": 6})
        assert resp.status_code == 200, resp.text
        assert up.timeouts == Timeouts(connect=1.5, first_byte=6.0, idle=9.0)
    finally:
        await http.aclose()


def test_a_providers_own_timeouts_win_over_the_nodes() -> None:
    up = Upstream("http://127.0.0.1:9/v1", "", idle_timeout=45.0)
    up.set_timeouts(5.0, 200.0, 100.0)
    assert up.timeouts == Timeouts(connect=5.0, first_byte=200.0, idle=45.0)
    up.set_own_timeouts(first_byte=600.0)
    assert up.timeouts == Timeouts(connect=5.0, first_byte=600.0, idle=100.0)
    legacy = Upstream("http://127.0.0.1:9/v1", "", 30.0)  # the old single timeout
    assert legacy.timeouts == Timeouts(connect=10.0, first_byte=30.0, idle=30.0)


# --- the client alone, against a scripted slow server -----------------------------------------


async def _slow(request: web.Request) -> web.StreamResponse:
    """Headers at once; then `chunks` chunks, the first after `first_ms`, then every `gap_ms`."""
    first_ms = float(request.query.get("first_ms", 0))
    gap_ms = float(request.query.get("gap_ms", 0))
    chunks = int(request.query.get("chunks", 1))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(chunks):
        await asyncio.sleep((first_ms if i == 0 else gap_ms) / 1000)
        await resp.write(b'data: {"n": %d}\n\n' % i)
    await resp.write_eof()
    return resp


@pytest_asyncio.fixture
async def slow_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/slow", _slow)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_first_chunk_is_due_by_the_first_byte_deadline(slow_server: str) -> None:
    up = Upstream(slow_server, "", first_byte_timeout=1.0, idle_timeout=30.0)
    try:
        resp = await up.post("/slow?first_ms=100", b"{}", stream=True)
        assert await up.first_chunk(resp) == b'data: {"n": 0}\n\n'
        resp.close()

        started = time.monotonic()
        resp = await up.post("/slow?first_ms=3000", b"{}", stream=True)
        assert resp.status == 200  # headers at once: the body's first bytes are late
        with pytest.raises(UpstreamFailure) as late:
            await up.first_chunk(resp)
        assert (late.value.kind, str(late.value)) == ("timeout", "timeout: no first byte in time")
        assert 0.9 < time.monotonic() - started < 2.5
    finally:
        await up.close()


async def test_a_plain_body_may_take_long_but_not_pause_long(slow_server: str) -> None:
    up = Upstream(slow_server, "", first_byte_timeout=5.0, idle_timeout=1.0)
    try:
        started = time.monotonic()
        resp = await up.post("/slow?chunks=6&gap_ms=300", b"{}")
        body = await read_body(resp)
        assert body.count(b"data:") == 6
        assert time.monotonic() - started > 1.0  # longer than the idle timeout in total

        resp = await up.post("/slow?chunks=2&gap_ms=3000", b"{}")
        started = time.monotonic()
        with pytest.raises(UpstreamFailure) as paused:
            await read_body(resp)
        assert paused.value.kind == "timeout"
        assert time.monotonic() - started < 2.5
    finally:
        await up.close()


# --- connecting -------------------------------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 whose connects hang: a listener that never accepts, its accept
    queue (backlog 0) filled by one connection, so Linux drops every further SYN."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        with pytest.raises(OSError):  # TimeoutError: the SYN really goes unanswered
            probe.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in (probe, filler, listener):
            sock.close()


async def test_a_connect_that_hangs_times_out_at_the_connect_timeout(black_hole: int) -> None:
    up = Upstream(
        f"http://127.0.0.1:{black_hole}/v1", "", connect_timeout=0.5, first_byte_timeout=10.0
    )
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamFailure) as failed:
            await up.post("/chat/completions", b"{}")
        assert str(failed.value) == "timeout: no connection in time"
        assert 0.4 < time.monotonic() - started < 3.0
    finally:
        await up.close()


async def test_a_proxy_that_hangs_times_out_at_the_connect_timeout() -> None:
    async with SocksServer(stall=True) as socks:
        up = Upstream(
            "http://127.0.0.1:9/v1", "", proxy=socks.url, connect_timeout=0.5, first_byte_timeout=10
        )
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamFailure) as failed:
                await up.post("/chat/completions", b"{}")
            assert str(failed.value) == "timeout: no connection in time"
            assert 0.4 < time.monotonic() - started < 3.0
            assert socks.connections == 1
        finally:
            await up.close()
