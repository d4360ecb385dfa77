"""A small SOCKS5 server for tests (RFC 1928): CONNECT only, no authentication, loopback only.

It stands in for Tor or an SSH tunnel: the node reaches an upstream through it
(`UPSTREAM_PROXY=socks5://…`), and a client reaches the node through it. It counts the
connections it accepted and remembers every target asked for, so a test can check that
traffic really went through it.

In the test's event loop::

    async with SocksServer() as socks:
        ...  # socks.url == "socks5://127.0.0.1:PORT"

From synchronous code (or a plain pytest fixture), on its own thread and event loop::

    with SocksServer() as socks:
        ...

`stall=True` accepts TCP connections but never answers the greeting: a proxy that hangs in
the middle of the connect, for connect timeouts.

`names={"abc….onion": "127.0.0.1"}`: host names only this proxy knows, as Tor alone resolves
`.onion` names. A client reaches them only by sending the name to the proxy (socks5h, or
httpx's socks5, which never resolves names itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

VERSION = 5
NO_AUTH, NO_ACCEPTABLE = 0x00, 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
# Replies (RFC 1928 section 6).
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

LOOPBACK = "127.0.0.1"
RELAY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Target:
    """What a client asked to CONNECT to, as it named it (an address or a host name)."""

    host: str
    port: int
    address_type: int  # ATYP_IPV4 | ATYP_DOMAIN | ATYP_IPV6


class SocksError(Exception):
    """A client broke the protocol; `reply` is the code sent back, if any."""

    def __init__(self, reply: int | None) -> None:
        super().__init__(f"SOCKS reply {reply}")
        self.reply = reply


class SocksServer:
    """A SOCKS5 CONNECT proxy on 127.0.0.1, in the current event loop or on its own thread."""

    def __init__(
        self, port: int = 0, *, stall: bool = False, names: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.stall = stall
        self.names = {name.lower(): address for name, address in (names or {}).items()}
        self.connections = 0  # TCP connections accepted
        self.targets: list[Target] = []  # every CONNECT asked for, in order
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """`socks5://127.0.0.1:PORT` (names resolved here, by the client)."""
        return f"socks5://{LOOPBACK}:{self.port}"

    @property
    def url_remote_dns(self) -> str:
        """`socks5h://127.0.0.1:PORT`: the client sends host names for this server to resolve."""
        return f"socks5h://{LOOPBACK}:{self.port}"

    def ports_seen(self) -> list[int]:
        """The target ports asked for, in order."""
        return [target.port for target in self.targets]

    # -- in the current event loop -------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 (port 0 picks a free one, then `port` is set)."""
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every relayed connection (as a proxy that went away)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- on a thread of its own, for synchronous code ------------------------------------

    def start_thread(self) -> None:
        """Run the server in a new thread with its own event loop; returns once listening."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name="socks-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("SOCKS server did not start")

    def stop_thread(self) -> None:
        """Stop the server started by `start_thread` and wait for its thread."""
        if self._thread is None or self._thread_loop is None:
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(10)
        self._thread = self._thread_loop = None

    def __enter__(self) -> Self:
        self.start_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    # -- the protocol --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.stall:
                await reader.read()  # until the client gives up
                return
            await self._serve(reader, writer)
        except (SocksError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a client that breaks the protocol or hangs up just loses its connection
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        if version != VERSION:
            raise SocksError(None)
        methods = await reader.readexactly(count)
        if NO_AUTH not in methods:
            writer.write(bytes([VERSION, NO_ACCEPTABLE]))
            await writer.drain()
            raise SocksError(NO_ACCEPTABLE)
        writer.write(bytes([VERSION, NO_AUTH]))

        version, command, _reserved, address_type = await reader.readexactly(4)
        if version != VERSION:
            raise SocksError(None)
        try:
            host = await _read_address(reader, address_type)
        except SocksError as exc:
            await _reply(writer, exc.reply or GENERAL_FAILURE)
            raise
        port = int.from_bytes(await reader.readexactly(2), "big")
        if command != CONNECT:
            await _reply(writer, COMMAND_NOT_SUPPORTED)
            raise SocksError(COMMAND_NOT_SUPPORTED)
        self.targets.append(Target(host, port, address_type))

        try:
            address = self.names.get(host.lower(), host) if address_type == ATYP_DOMAIN else host
            up_reader, up_writer = await asyncio.open_connection(address, port)
        except ConnectionRefusedError:
            await _reply(writer, CONNECTION_REFUSED)
            return
        except OSError:  # no route, unknown name
            await _reply(writer, HOST_UNREACHABLE)
            return
        try:
            bound = up_writer.get_extra_info("sockname")
            await _reply(writer, SUCCEEDED, bound[0], bound[1])
            await _relay_both(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


async def _read_address(reader: asyncio.StreamReader, address_type: int) -> str:
    """DST.ADDR of a request, as text (an address or a host name)."""
    if address_type == ATYP_IPV4:
        return str(ipaddress.IPv4Address(await reader.readexactly(4)))
    if address_type == ATYP_IPV6:
        return str(ipaddress.IPv6Address(await reader.readexactly(16)))
    if address_type == ATYP_DOMAIN:
        (length,) = await reader.readexactly(1)
        return (await reader.readexactly(length)).decode("idna")
    raise SocksError(ADDRESS_TYPE_NOT_SUPPORTED)


async def _reply(
    writer: asyncio.StreamWriter, code: int, host: str = "0.0.0.0", port: int = 0
) -> None:
    """A reply to the CONNECT request, with the bound address (BND.ADDR, BND.PORT)."""
    address = ipaddress.ip_address(host)
    address_type = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    writer.write(bytes([VERSION, code, 0, address_type]) + address.packed + port.to_bytes(2, "big"))
    await writer.drain()


async def _relay_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side closes (then both are closed)."""
    to_target = asyncio.create_task(_copy(reader, up_writer))
    to_client = asyncio.create_task(_copy(up_reader, writer))
    try:
        await asyncio.wait({to_target, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        to_target.cancel()
        to_client.cancel()
        await asyncio.gather(to_target, to_client, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
