"""Request bodies past MAX_BODY_BYTES get 413 in our envelope on every route, and the node stops
reading them there: a huge upload is cut at the limit, not read whole and then refused.

"Stopped reading" is measured at the client, not by timing or by the test process's memory:
a client that keeps sending can only get as far as the node read, plus what the kernel buffers
between them (the node's receive buffer at its largest, the client's small send buffer). Past
that its writes block, and then fail when the node closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import NodeFactory, RunningNode

LIMIT = 1 << 20  # the node's MAX_BODY_BYTES in these tests
MiB = 1 << 20
CLIENT_SNDBUF = 64 * 1024


def _kernel_receive_buffer() -> int:
    """The most a TCP receive buffer may grow to here (net.ipv4.tcp_rmem's maximum)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 32 * MiB


# What a client can have sent when the node read no further than the limit; and what each
# upload offers: four times that, so a node that reads it all is caught.
READ_BOUND = LIMIT + _kernel_receive_buffer() + 2 * CLIENT_SNDBUF + MiB
OFFERED = 4 * READ_BOUND

MULTIPART = (
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\ntest/whisper\r\n'
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\n"
)
JSON_START = b'{"model": "test/priced", "messages": [{"role": "user", "content": "'
ROUTES: dict[str, tuple[str, str, bytes]] = {
    # name: (method and path, content type, the start of the body; filler follows)
    "chat": ("POST /v1/chat/completions", "application/json", JSON_START),
    "wallet_create": ("POST /v1/wallet/create", "application/json", b'{"cashu_token": "'),
    "balance_topup": ("POST /v1/balance/topup", "application/json", b'{"cashu_token": "'),
    "lightning_invoice": ("POST /lightning/invoice", "application/json", b'{"purpose": "'),
    "audio_multipart": (
        "POST /v1/audio/transcriptions",
        "multipart/form-data; boundary=b0undary",
        MULTIPART,
    ),
    "count_tokens": ("POST /v1/messages/count_tokens", "application/json", JSON_START),
}


def _port(node: RunningNode) -> int:
    return int(node.url.rsplit(":", 1)[1])


async def _request(
    node: RunningNode, head: bytes, body_start: bytes, total: int
) -> tuple[int, bytes]:
    """Send `head`, then a chunked body of `total` bytes (`body_start`, then filler), while
    reading the answer. Returns (body bytes sent, the raw answer) once the node closed."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
    sock.setblocking(False)
    sent = 0

    async def write() -> None:
        nonlocal sent
        await loop.sock_sendall(sock, head)
        if not total:
            return
        filler = b"a" * (256 * 1024)
        piece = body_start + filler[len(body_start) :]
        with contextlib.suppress(OSError):  # the node closed the connection
            while sent < total:
                await loop.sock_sendall(sock, b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                piece = filler
            await loop.sock_sendall(sock, b"0\r\n\r\n")

    async def read() -> bytes:
        answer = b""
        with contextlib.suppress(OSError):
            while part := await loop.sock_recv(sock, 65536):
                answer += part
        return answer

    try:
        await loop.sock_connect(sock, ("127.0.0.1", _port(node)))
        writer = asyncio.create_task(write())
        answer = await asyncio.wait_for(read(), 120)
        await asyncio.wait_for(writer, 120)  # a closed connection ends it
    finally:
        sock.close()
    return sent, answer


def _status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _is_413(answer: bytes) -> None:
    status, body = _status_and_body(answer)
    assert status == 413, answer[:300]
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head and b"x-request-id" in head
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("request_too_large", 413)
    assert str(LIMIT) in error["message"]


@pytest.fixture
async def small_node(node_factory: NodeFactory) -> RunningNode:
    return await node_factory(max_body_bytes=LIMIT)


@pytest.mark.parametrize("route", ROUTES)
async def test_huge_chunked_upload_is_cut_at_the_limit(small_node: RunningNode, route: str) -> None:
    line, content_type, body_start = ROUTES[route]
    head = (
        f"{line} HTTP/1.1\r\nHost: node\r\nContent-Type: {content_type}\r\n"
        "Authorization: Bearer sk-unknown\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent, answer = await _request(small_node, head, body_start, OFFERED)
    _is_413(answer)
    assert sent < READ_BOUND, f"sent {sent // MiB} MiB: the node kept reading"
    assert await small_node.node.ledger.total_liabilities() == 0


@pytest.mark.parametrize("route", ROUTES)
async def test_declared_length_past_the_limit_is_refused_before_the_body(
    small_node: RunningNode, route: str
) -> None:
    line, content_type, _ = ROUTES[route]
    head = (
        f"{line} HTTP/1.1\r\nHost: node\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {200 * MiB}\r\n\r\n"
    ).encode()
    sent, answer = await _request(small_node, head, b"", 0)  # no body byte sent at all
    assert sent == 0
    _is_413(answer)


async def test_unread_body_closes_the_connection(small_node: RunningNode) -> None:
    """A route that answers without reading the body does not read the rest of it either."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n"
    sent, answer = await _request(small_node, head, b"", OFFERED)
    assert _status_and_body(answer)[0] == 200
    assert sent < READ_BOUND


async def test_bodies_within_the_limit_are_served_on_kept_alive_connections(
    small_node: RunningNode,
) -> None:
    padding = "a" * (LIMIT - 200)
    body = orjson.dumps(
        {"model": "test/priced", "messages": [{"role": "user", "content": padding}]}
    )
    assert len(body) <= LIMIT

    async def chunks() -> object:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    async with httpx.AsyncClient(base_url=small_node.url) as http:
        chunked = await http.post("/v1/chat/completions", content=chunks())  # type: ignore[arg-type]
        # Read whole and priced: no credentials, so 402 with a payment request.
        assert chunked.status_code == 402, chunked.text
        assert chunked.headers.get("connection") != "close"
        sized = await http.post("/v1/chat/completions", content=body)
        assert sized.status_code == 402
        models = await http.get("/v1/models")
        assert models.status_code == 200 and models.headers.get("connection") != "close"
