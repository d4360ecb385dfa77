"""The test SOCKS5 server itself, byte by byte (RFC 1928), run on its own thread."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from satsrouter_dev.socks_server import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    COMMAND_NOT_SUPPORTED,
    CONNECTION_REFUSED,
    NO_ACCEPTABLE,
    SUCCEEDED,
    SocksServer,
    Target,
)


@pytest.fixture
def socks() -> Iterator[SocksServer]:
    with SocksServer() as server:  # a thread and event loop of its own: no asyncio here
        yield server


@pytest.fixture
def target() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        yield listener
    finally:
        listener.close()


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        assert more, "closed early"
        data += more
    return data


def _greet(socks: SocksServer, methods: bytes = b"\x00") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", socks.port), timeout=5)
    sock.sendall(bytes([5, len(methods)]) + methods)
    return sock


def _connect(sock: socket.socket, address: bytes, port: int, command: int = 1) -> int:
    assert _exactly(sock, 2) == b"\x05\x00"
    sock.sendall(bytes([5, command, 0]) + address + struct.pack("!H", port))
    version, reply, _, address_type = _exactly(sock, 4)
    _exactly(sock, 4 if address_type == ATYP_IPV4 else 16)
    _exactly(sock, 2)
    assert version == 5
    return reply


@pytest.mark.parametrize(
    ("address", "named"),
    [
        (bytes([ATYP_IPV4]) + socket.inet_aton("127.0.0.1"), ("127.0.0.1", ATYP_IPV4)),
        (bytes([ATYP_DOMAIN, 9]) + b"localhost", ("localhost", ATYP_DOMAIN)),
    ],
)
def test_connect_relays_both_ways(
    socks: SocksServer, target: socket.socket, address: bytes, named: tuple[str, int]
) -> None:
    port = target.getsockname()[1]
    with _greet(socks) as sock:
        assert _connect(sock, address, port) == SUCCEEDED
        relayed, _ = target.accept()
        with relayed:
            sock.sendall(b"ping")
            assert _exactly(relayed, 4) == b"ping"
            relayed.sendall(b"pong")
            assert _exactly(sock, 4) == b"pong"
    assert socks.connections == 1
    assert socks.targets == [Target(named[0], port, named[1])]


def test_refusals(socks: SocksServer, target: socket.socket) -> None:
    port = target.getsockname()[1]
    ipv4 = bytes([ATYP_IPV4]) + socket.inet_aton("127.0.0.1")
    with _greet(socks, b"\x02") as sock:  # username/password only: not offered here
        assert _exactly(sock, 2) == bytes([5, NO_ACCEPTABLE])
    with _greet(socks) as sock:  # BIND
        assert _connect(sock, ipv4, port, command=2) == COMMAND_NOT_SUPPORTED
    target.close()  # nothing listens there any more
    with _greet(socks) as sock:
        assert _connect(sock, ipv4, port) == CONNECTION_REFUSED
    assert socks.connections == 3
