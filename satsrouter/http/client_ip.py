"""Who the client is: the socket's peer, or what a trusted proxy says in `X-Forwarded-For`.

Rate limits and failed-login counts are per client IP, so a forged `X-Forwarded-For` must
not choose the address: it is read only when the peer is one of `TRUSTED_PROXIES`, and then
from the right, skipping trusted hops, so that the first untrusted address is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def check_networks(entries: list[str]) -> None:
    """A settings check: every entry an IP address or a CIDR network."""
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(
    peer: Sequence[object] | None, forwarded_for: str | None, trusted_proxies: Sequence[str]
) -> str:
    """The client's address from the ASGI `client` (host, port), `X-Forwarded-For` and the
    trusted proxies."""
    host = str(peer[0]) if peer else "unknown"
    if not trusted_proxies or not forwarded_for:
        return host
    networks = _networks(tuple(trusted_proxies))
    if not _trusted(host, networks):
        return host
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return host  # garbage from the proxy's own client: the proxy is all we know
    return hops[0] if hops else host
