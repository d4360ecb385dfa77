"""Where the node may connect when it fetches a URL a user chose (LNURL-pay): public addresses.

A host name is resolved here, every address it resolves to is checked, and the connection
goes to an address that was checked — not to whatever a second lookup returns — so DNS
rebinding cannot slip a private address past the check. Refused: loopback, private
(RFC 1918, fc00::/7), link-local (169.254/16, fe80::/10), shared (100.64/10), multicast,
unspecified, reserved, and IPv6 forms that carry one of those IPv4 addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import typing
from collections.abc import Awaitable, Callable

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(Exception):
    """The host is, or resolves to, an address the node must not connect to."""


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), else itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def is_public(ip: IPAddress, allow_loopback: bool = False) -> bool:
    """Whether the node may connect to `ip` (loopback too when `allow_loopback`, for tests)."""
    ip = embedded_ipv4(ip)
    if allow_loopback and ip.is_loopback:
        return True
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def literal_ip(host: str) -> IPAddress | None:
    """`host` as an IP address if it is written as one (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    host: str, port: int, resolver: Resolver, allow_loopback: bool = False
) -> list[str]:
    """The addresses of `host`, all of them allowed; BlockedAddress if any is not.

    One forbidden address refuses the host: whoever controls its DNS chose to name it.
    """
    if host.lower() == "localhost" or host.lower().rstrip(".").endswith(".localhost"):
        if not allow_loopback:
            raise BlockedAddress(host)
    addresses = await resolver(host, port)
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        ip = literal_ip(address.split("%", 1)[0])  # a scope id (fe80::1%eth0) is not an IP
        if ip is None or not is_public(ip, allow_loopback):
            raise BlockedAddress(host)
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to checked addresses of each host."""

    def __init__(self, resolver: Resolver, allow_loopback: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolver = resolver
        self._allow_loopback = allow_loopback

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await checked_addresses(host, port, self._resolver, self._allow_loopback)
        except OSError as exc:  # (socket.gaierror is one)
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc
        failure: Exception = httpcore.ConnectError(f"cannot connect to {host}")
        for address in addresses:
            try:
                # TLS still checks the certificate against `host` (httpcore passes it as SNI)
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(path)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    resolver: Resolver = resolve, allow_loopback: bool = False
) -> httpx.AsyncHTTPTransport:
    """An httpx transport that connects only to public addresses (see the module's doc)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx 0.25 takes no network backend, so its pool is replaced by one that has ours.
    context: ssl.SSLContext = httpx.create_ssl_context(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context, network_backend=_GuardedBackend(resolver, allow_loopback)
    )
    return transport
