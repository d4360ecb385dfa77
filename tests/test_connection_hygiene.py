"""What one client can hold: header limits and deadlines, idle sockets, the in-flight limit,
and the client headers that reach the upstream.

The connection tests run the real `satsrouter serve` (KillableNode, and `--workers 2`), on raw
sockets: an HTTP client library would not send a request this badly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import databases
import httpx
import orjson
import pytest
from conftest import NodeFactory, eventually
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream, FakeUpstreamProcess
from satsrouter_dev.mint import LocalMint, TestWallet
from satsrouter_dev.stack import node_process

from satsrouter.settings import Settings, SettingsError

HEADER_TIMEOUT_S = 2.0
KEEPALIVE_TIMEOUT_S = 1.0
SLACK_S = 8.0  # on top of a timeout, for a loaded machine: closed by then, or it failed
ATTACKERS = 60
QUESTION = [{"role": "user", "content": "still there?"}]

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def guarded(
    local_mint: LocalMint, upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[KillableNode]:
    """`satsrouter serve` with short header and keep-alive timeouts."""
    upstream.reset()
    node = KillableNode(
        tmp_path,
        local_mint.url,
        upstream.url,
        HEADER_TIMEOUT=str(HEADER_TIMEOUT_S),
        KEEPALIVE_TIMEOUT=str(KEEPALIVE_TIMEOUT_S),
    )
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def raw_connections(port: int, count: int) -> AsyncIterator[list[Conn]]:
    """`count` open TCP connections to the node, every one closed at the end."""
    conns: list[Conn] = []
    try:
        for _ in range(count):
            conns.append(await asyncio.open_connection("127.0.0.1", port))
        yield conns
    finally:
        for _, writer in conns:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server still sends, once it has closed the connection (EOF)."""
    received = b""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the server kept the connection open"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError("the server kept the connection open") from None
        if not chunk:
            return received
        received += chunk


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, leaving the connection open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, body


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """A whole response read to EOF: its status, headers and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def drip(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """A slow-loris client: a request line, then a header byte now and then, never the end."""
    try:
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: node\r\n")
        await writer.drain()
        for i in range(1000):  # bounded: the server closes long before
            writer.write(b"X-Slow-%d: %d\r\n" % (i, i))
            await writer.drain()
            # Pacing the attack (not waiting for a result): slower than the header deadline.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.3)
            if stop.is_set():
                return
    except OSError:
        return  # the server closed the connection: what the test waits for


async def serves_while(attack: Awaitable[None], url: str, key: str) -> int:
    """Free and paid requests, one after another until `attack` ends; all must succeed."""
    task = asyncio.ensure_future(attack)
    served = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        try:
            for _ in range(10_000):  # bounded; the attack ends within its deadlines
                for path in ("/v1/models", "/v1/info"):
                    assert (await http.get(path)).status_code == 200
                paid = await http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "test/priced", "messages": QUESTION, "max_tokens": 3},
                )
                assert paid.status_code == 200, paid.text
                assert int(paid.headers["X-Routstr-Cost-Msats"]) > 0
                served += 3
                if task.done():
                    break
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    task.result()
    return served


async def test_slow_loris_and_idle_sockets_are_closed_while_requests_are_served(
    guarded: KillableNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(200)
    stop = asyncio.Event()

    async def attack() -> None:
        async with (
            raw_connections(guarded.port, ATTACKERS) as slow,
            raw_connections(guarded.port, 10) as silent,
        ):
            started = time.monotonic()
            drips = [asyncio.create_task(drip(writer, stop)) for _, writer in slow]
            try:
                # Every one closed by the header deadline, with no answer: not one got in.
                for reader, _ in slow + silent:
                    assert await closed_by_server(reader, HEADER_TIMEOUT_S + SLACK_S) == b""
                assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9
            finally:
                stop.set()
                await asyncio.gather(*drips)

    served = await serves_while(attack(), guarded.url, token)
    assert served >= 3

    # An idle keep-alive socket is closed after the keep-alive timeout…
    async with raw_connections(guarded.port, 1) as [(reader, writer)]:
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: node\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection") != "close"
        assert await closed_by_server(reader, KEEPALIVE_TIMEOUT_S + SLACK_S) == b""

    # …and a second request on a kept-alive connection has its own header deadline.
    async with raw_connections(guarded.port, 1) as [(reader, writer)]:
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: node\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: node\r\n")  # never finished
        await writer.drain()
        assert await closed_by_server(reader, HEADER_TIMEOUT_S + SLACK_S) == b""

    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{guarded.url}/v1/info")).status_code == 200
    guarded.check_books()


async def refused(port: int, request: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send `request` (as far as the server reads it); the 431's status, JSON and headers."""
    async with raw_connections(port, 1) as [(reader, writer)]:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            writer.write(request)
            await writer.drain()
        raw = await closed_by_server(reader, SLACK_S)
    status, headers, body = parse_response(raw)
    return status, orjson.loads(body), headers


async def assert_header_limits(port: int, url: str) -> None:
    """One 64 KiB header, 200 headers, a 10 MB header never ended: 431; the node fine."""
    big = b"GET /v1/info HTTP/1.1\r\nHost: node\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    many = (
        b"GET /v1/info HTTP/1.1\r\nHost: node\r\n"
        + b"".join(b"X-H-%d: v\r\n" % i for i in range(200))
        + b"\r\n"
    )
    endless = b"GET /v1/info HTTP/1.1\r\nHost: node\r\nX-Huge: " + b"b" * 10_000_000
    for request in (big, many, endless):
        status, body, headers = await refused(port, request)
        assert status == 431
        assert body["error"]["type"] == "request_header_fields_too_large"
        assert body["error"]["code"] == 431
        assert headers["connection"] == "close"
    async with httpx.AsyncClient(base_url=url) as http:
        # Within the limits: served, not refused by a miscount.
        fine = await http.get(
            "/v1/info",
            headers={"X-Fine": "c" * 20_000, **{f"X-N-{i}": "v" for i in range(80)}},
        )
        assert fine.status_code == 200
        assert (await http.get("/v1/models")).status_code == 200


async def test_oversized_headers_get_431_and_the_node_stays_healthy(
    guarded: KillableNode,
) -> None:
    await assert_header_limits(guarded.port, guarded.url)
    assert guarded.proc is not None and guarded.proc.poll() is None


async def test_limits_apply_to_every_worker(
    local_mint: LocalMint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT", str(HEADER_TIMEOUT_S))
    monkeypatch.setenv("KEEPALIVE_TIMEOUT", str(KEEPALIVE_TIMEOUT_S))
    # An upstream of its own process: `node_process` waits for the node synchronously.
    with (
        FakeUpstreamProcess() as upstream,
        node_process(
            tmp_path,
            local_mint.url,
            upstream.url,
            workers=2,
            settings=databases.node_env(tmp_path / "node"),
        ) as node,
    ):
        port = int(node.url.rsplit(":", 1)[1])
        # Several connections: the kernel spreads them over both workers.
        async with raw_connections(port, 8) as conns:
            for _, writer in conns:
                writer.write(b"GET /v1/info HTTP/1.1\r\n")
            for reader, _ in conns:
                assert await closed_by_server(reader, HEADER_TIMEOUT_S + SLACK_S) == b""
        for _ in range(4):
            await assert_header_limits(port, node.url)


async def test_too_many_requests_in_flight_get_503_overloaded(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    running = await node_factory(max_concurrent_requests=2)
    tokens = await user_wallet.mint_tokens(100, count=3)
    body = {"model": "test/priced", "messages": QUESTION, "max_tokens": 3}
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:

        async def paid(token: str, slow: bool) -> httpx.Response:
            fake = {"fake": {"latency_ms": 1500}} if slow else {}
            return await http.post(
                "/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={**body, **fake},
            )

        slow = [asyncio.create_task(paid(t, slow=True)) for t in tokens[:2]]

        async def both_upstream() -> bool:
            return int(upstream.stats["chat_requests"]) >= 2

        await eventually(both_upstream, within=20, every=0.02)
        turned_away = await http.get("/models")
        assert turned_away.status_code == 503
        assert turned_away.headers["retry-after"] == "1"
        assert turned_away.headers["content-type"] == "application/json"
        error = turned_away.json()["error"]
        assert error["type"] == "overloaded" and error["code"] == 503
        assert "2" in error["message"]
        assert turned_away.headers["x-request-id"]

        for done in await asyncio.gather(*slow):
            assert done.status_code == 200, done.text
        # Room again: served, and charged as usual.
        after = await paid(tokens[2], slow=False)
        assert after.status_code == 200
        assert int(after.headers["X-Routstr-Cost-Msats"]) > 0
    await running.check_invariants()


async def test_only_allowed_client_headers_reach_the_upstream(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    running = await node_factory()
    (token,) = await user_wallet.mint_tokens(100)
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        resp = await http.post(
            "/chat/completions",
            headers={
                "X-Cashu": token,
                "Cookie": "session=secret-cookie",
                "X-Unknown-Thing": "steer-me",
                "X-Forwarded-For": "203.0.113.7",
                "Forwarded": "for=203.0.113.7",
                "X-Real-IP": "203.0.113.7",
                "User-Agent": "hostile/1.0",
                "Proxy-Authorization": "Basic c2VjcmV0",
                "OpenAI-Beta": "assistants=v2",
            },
            json={"model": "test/priced", "messages": QUESTION, "max_tokens": 3},
        )
    assert resp.status_code == 200, resp.text
    seen: dict[str, str] = upstream.stats["last_headers"]
    assert seen["openai-beta"] == "assistants=v2"  # an API option: passed on
    assert seen["authorization"] == "Bearer upstream-secret"  # the node's key, not the client's
    for name in (
        "x-cashu",
        "cookie",
        "x-unknown-thing",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "proxy-authorization",
    ):
        assert name not in seen, name
    assert seen.get("user-agent") != "hostile/1.0"
    text = str(seen)
    for secret in (token, "secret-cookie", "steer-me", "203.0.113.7"):
        assert secret not in text
    await running.check_invariants()


async def test_the_operator_may_forward_more_headers_but_never_credentials(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    # OpenRouter attributes usage to an app by HTTP-Referer and X-Title; an operator may pass
    # them on. A stream is asked for as one: some upstreams and proxies choose by Accept.
    upstream.reset()
    running = await node_factory(forward_headers=["http-referer", "x-title"])
    (token,) = await user_wallet.mint_tokens(100)
    headers = {
        "Authorization": f"Bearer {token}",
        "HTTP-Referer": "https://app.example",
        "X-Title": "Example App",
        "X-Unknown-Thing": "steer-me",
    }
    body = {"model": "test/priced", "messages": QUESTION, "max_tokens": 3}
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        resp = await http.post("/chat/completions", headers=headers, json=body)
        assert resp.status_code == 200, resp.text
        seen: dict[str, str] = upstream.stats["last_headers"]
        assert (seen["http-referer"], seen["x-title"]) == ("https://app.example", "Example App")
        assert "x-unknown-thing" not in seen and token not in str(seen)
        assert seen.get("accept") != "text/event-stream"

        async with http.stream(
            "POST", "/chat/completions", headers=headers, json={**body, "stream": True}
        ) as streamed:
            assert streamed.status_code == 200
            assert "data: [DONE]" in (await streamed.aread()).decode()
        assert upstream.stats["last_headers"]["accept"] == "text/event-stream"

    for name in ("Authorization", "X-Cashu", "cookie", "x-api-key", "X-Forwarded-For"):
        with pytest.raises(SettingsError, match="never forwarded"):
            Settings.from_env({"FORWARD_HEADERS": f"X-Title,{name}", "CASHU_MINTS": "http://m"})
    await running.check_invariants()
