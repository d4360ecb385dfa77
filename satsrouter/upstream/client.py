"""One pooled HTTP client per upstream (aiohttp), with the node's timeout policy."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyTimeoutError
from python_socks import ProxyType

# The only client headers passed on to the upstream: options of the APIs themselves, which
# change what the upstream does or how it answers. Everything else stays here: the client's
# credentials for this node (Authorization, X-Cashu, cookies), hop-by-hop and proxy headers
# (X-Forwarded-*), and whatever else a client sends, which the upstream's operator has no
# business seeing. Content-Type is the node's own (the body is rebuilt), as is Accept
# (text/event-stream when the node asks for a stream). An operator may add more names
# (`FORWARD_HEADERS`), never credentials.
FORWARDED_CLIENT_HEADERS = frozenset(
    {
        "anthropic-version",  # the Messages API version the client speaks
        "anthropic-beta",  # Anthropic features the client opts into
        "openai-beta",  # OpenAI features the client opts into (Assistants, Realtime…)
    }
)


# The APIs an upstream may speak. OpenRouter is OpenAI chat plus extensions (`reasoning`,
# `plugins`) that the Anthropic translation uses. Ollama speaks OpenAI's API on the wire;
# only its model list differs (upstream/providers.py).
DIALECTS = ("openai", "openrouter", "anthropic", "ollama")
OPENAI_DIALECTS = ("openai", "openrouter", "ollama")

# Sent to Anthropic-dialect upstreams when the client did not name a version itself.
ANTHROPIC_VERSION = "2023-06-01"


class UpstreamFailure(Exception):
    """The upstream could not be reached, timed out, or broke the connection."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        # "transport" (refused, reset, a SOCKS proxy that failed or refused) | "timeout"
        # (connect, first byte or idle gap: `detail` says which)
        self.kind = kind


def forwardable_headers(headers: Any, extra: Collection[str] = ()) -> dict[str, str]:
    """The client's headers the upstream gets: `FORWARDED_CLIENT_HEADERS` and the operator's
    `extra` (lower-case names, `FORWARD_HEADERS`) only."""
    return {
        k: v
        for k, v in headers.items()
        if k.lower() in FORWARDED_CLIENT_HEADERS or (extra and k.lower() in extra)
    }


# --- SOCKS5 proxies ------------------------------------------------------------------------

# socks5h: the proxy resolves host names (Tor needs it for .onion, and it keeps the lookups
# off the local resolver); socks5: they are resolved here and the proxy gets an address.
PROXY_SCHEMES = ("socks5", "socks5h")
PROXY_FORM = "socks5://host:port or socks5h://host:port (optionally user:password@)"


@dataclass(frozen=True)
class ProxySpec:
    """A SOCKS5 proxy as `parse_proxy` reads it; its credentials stay out of `repr`."""

    host: str
    port: int
    remote_dns: bool
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The proxy without its credentials, for logs and messages."""
        scheme = "socks5h" if self.remote_dns else "socks5"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = "***@" if self.username or self.password else ""
        return f"{scheme}://{user}{host}:{self.port}"


def parse_proxy(url: str) -> ProxySpec:
    """`socks5://` or `socks5h://[user:password@]host:port`; ValueError for anything else.

    The messages never repeat the URL: it may carry a password.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"is not a proxy URL; expected {PROXY_FORM}") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        named = f"{scheme}://" if scheme else "a URL without a scheme"
        raise ValueError(f"only SOCKS5 proxies are supported, not {named}; expected {PROXY_FORM}")
    if not parts.hostname or port is None:
        raise ValueError(f"needs a host and a port; expected {PROXY_FORM}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"has more than a proxy address; expected {PROXY_FORM}")
    return ProxySpec(
        parts.hostname,
        port,
        remote_dns=scheme == "socks5h",
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def proxy_connector(proxy: ProxySpec, **pool: Any) -> aiohttp.TCPConnector:
    """A pool whose every connection goes through the SOCKS5 proxy (by default a small one,
    for other clients of `UPSTREAM_PROXY`, e.g. health checks of `.onion` nodes)."""
    return ProxyConnector(
        proxy_type=ProxyType.SOCKS5,
        host=proxy.host,
        port=proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.remote_dns,
        **({"limit": 20} | pool),
    )


def _connector(proxy: ProxySpec | None) -> aiohttp.TCPConnector:
    """The connection pool: direct, or every connection opened through the SOCKS5 proxy."""
    if proxy is None:
        return aiohttp.TCPConnector(limit=1000, keepalive_timeout=60, ttl_dns_cache=300)
    return proxy_connector(proxy, limit=1000, keepalive_timeout=60)


# --- timeouts --------------------------------------------------------------------------------

# An LLM may think for minutes before its first byte, then stream for as long as it likes:
# only the silences are bounded, never the total.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_FIRST_BYTE_TIMEOUT = 300.0
DEFAULT_IDLE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect (and pass the proxy), to the first byte, and between two chunks."""

    connect: float
    first_byte: float
    idle: float


@dataclass(frozen=True)
class _Timing:
    """What a response's readers need: when its first byte is due and the longest gap."""

    first_byte_deadline: float  # event loop time
    idle: float


# Kept beside each response the Upstream returns, so `read_body`, `first_chunk` and the
# stream relay apply its upstream's timeouts without being handed them.
_TIMINGS: weakref.WeakKeyDictionary[aiohttp.ClientResponse, _Timing] = weakref.WeakKeyDictionary()


def idle_timeout_of(resp: aiohttp.ClientResponse) -> float:
    """The longest wait between two chunks of this response's body, in seconds."""
    timing = _TIMINGS.get(resp)
    return timing.idle if timing is not None else DEFAULT_IDLE_TIMEOUT


async def read_within(gap: asyncio.Timeout, seconds: float, content: aiohttp.StreamReader) -> bytes:
    """The next bytes of a body, or `gap` (an entered `asyncio.timeout`) fires after `seconds`.

    One timeout pushed back per read costs a timer handle; a `wait_for` would cost a task.
    The caller's `async with` turns the expiry into TimeoutError.
    """
    gap.reschedule(asyncio.get_running_loop().time() + seconds)
    data = await content.readany()
    # Once resumed with data the timer cannot have fired (no loop turn in between): it is
    # stopped so that what the caller awaits next (a slow client) is not counted as a gap.
    gap.reschedule(None)
    return data


class Upstream:
    """An OpenAI-compatible upstream at `base_url`, reached through one connection pool.

    Timeouts: the node's settings (`set_timeouts`, live) unless the provider has its own
    (`connect_timeout`, `first_byte_timeout`, `idle_timeout`; None takes the node's).
    `timeout` is the deprecated single value (`UPSTREAM_TIMEOUT`): first byte and idle.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float | None = None,
        dialect: str = "openai",
        *,
        proxy: str = "",
        connect_timeout: float | None = None,
        first_byte_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.dialect = dialect  # one of DIALECTS: the API this upstream speaks
        self._api_key = api_key
        self._proxy = parse_proxy(proxy) if proxy else None
        self._node_timeouts = Timeouts(
            DEFAULT_CONNECT_TIMEOUT,
            timeout or DEFAULT_FIRST_BYTE_TIMEOUT,
            timeout or DEFAULT_IDLE_TIMEOUT,
        )
        self._own: tuple[float | None, float | None, float | None] = (None, None, None)
        self.set_own_timeouts(connect_timeout, first_byte_timeout, idle_timeout)
        self._session: aiohttp.ClientSession | None = None

    def set_timeouts(self, connect: float, first_byte: float, idle: float) -> None:
        """The node's timeouts (settings), for those the provider does not set itself."""
        self._node_timeouts = Timeouts(connect, first_byte, idle)
        self._apply()

    def set_own_timeouts(
        self,
        connect: float | None = None,
        first_byte: float | None = None,
        idle: float | None = None,
    ) -> None:
        """The provider's own timeouts; None takes the node's."""
        self._own = (connect, first_byte, idle)
        self._apply()

    def _apply(self) -> None:
        node = self._node_timeouts
        connect, first_byte, idle = self._own
        self.timeouts = Timeouts(
            node.connect if connect is None else connect,
            node.first_byte if first_byte is None else first_byte,
            node.idle if idle is None else idle,
        )
        # Given with each request rather than fixed in the session: the admin may change it.
        # No sock_read: aiohttp restarts it on every read and also applies it to the wait for
        # the headers, so first byte and gaps are timed here instead.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect, sock_read=None
        )

    @property
    def connect_timeout(self) -> float:
        """Seconds to open a connection (through the proxy, if any)."""
        return self.timeouts.connect

    @property
    def first_byte_timeout(self) -> float:
        """Seconds from sending a request to its headers (and, for a stream, first bytes)."""
        return self.timeouts.first_byte

    @property
    def idle_timeout(self) -> float:
        """Seconds the body may pause between two chunks."""
        return self.timeouts.idle

    @property
    def proxy(self) -> str:
        """The SOCKS5 proxy in use, without credentials ("" when connecting directly)."""
        return str(self._proxy) if self._proxy is not None else ""

    @property
    def has_credentials(self) -> bool:
        return bool(self._api_key)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=_connector(self._proxy),
                timeout=self._client_timeout,
                auto_decompress=True,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(
        self,
        extra: dict[str, str] | None,
        content_type: str = "application/json",
        stream: bool = False,
    ) -> dict[str, str]:
        headers = dict(extra or {})
        headers["Content-Type"] = content_type
        if stream:
            # Some upstreams (and proxies in front of them) choose the reply's form by Accept.
            headers["Accept"] = "text/event-stream"
        if self.dialect == "anthropic":
            headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
            if self._api_key:
                headers["x-api-key"] = self._api_key
        elif self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        *,
        stream: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send a request and return once response headers arrived (body still unread).

        Raises UpstreamFailure: "timeout" past the connect or first-byte timeout,
        "transport" when the upstream (or the proxy) cannot be reached or hangs up.
        """
        return await self._request(
            "POST", path, data=body, headers=self._headers(headers, content_type, stream)
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        timeouts = self.timeouts
        deadline = asyncio.get_running_loop().time() + timeouts.first_byte
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self.session.request(
                    method, f"{self.base_url}{path}", timeout=self._client_timeout, **kwargs
                )
        except (aiohttp.ConnectionTimeoutError, ProxyTimeoutError) as exc:
            raise UpstreamFailure("timeout", "no connection in time") from exc
        except TimeoutError as exc:
            raise UpstreamFailure("timeout", "no response in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("transport", type(exc).__name__) from exc
        except ProxyConnectionError as exc:
            raise UpstreamFailure("transport", "the SOCKS proxy is unreachable") from exc
        except ProxyError as exc:
            # Its reply code only: the text might name the proxy.
            code = getattr(exc, "error_code", None)
            raise UpstreamFailure("transport", f"the SOCKS proxy failed (reply {code})") from exc
        _TIMINGS[resp] = _Timing(deadline, timeouts.idle)
        return resp

    async def first_chunk(self, resp: aiohttp.ClientResponse) -> bytes:
        """A stream's first body bytes, due by the first-byte deadline of its request.

        b"" when the body is empty. Read before anything reaches the client, so a provider
        that goes silent can still be replaced by another. Raises UpstreamFailure (the
        response is then closed).
        """
        timing = _TIMINGS.get(resp)
        if timing is not None:
            deadline = timing.first_byte_deadline
        else:  # a response not sent by `post`: its own first-byte time from now
            deadline = asyncio.get_running_loop().time() + self.first_byte_timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await resp.content.readany()
        except TimeoutError as exc:
            resp.close()
            raise UpstreamFailure("timeout", "no first byte in time") from exc
        except aiohttp.ClientError as exc:
            resp.close()
            raise UpstreamFailure("transport", type(exc).__name__) from exc

    async def get_json(self, path: str) -> Any:
        """GET a JSON document (e.g. the model list)."""
        resp = await self._request("GET", path, headers=self._headers(None))
        if resp.status >= 400:
            resp.release()
            raise UpstreamFailure("transport", f"HTTP {resp.status}")
        return orjson.loads(await read_body(resp))


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole response body, with transport errors and timeouts as UpstreamFailure.

    No total limit: only a pause longer than its upstream's idle timeout fails it.
    """
    idle = idle_timeout_of(resp)
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(None) as gap:
            while chunk := await read_within(gap, idle, resp.content):
                chunks.append(chunk)
        return b"".join(chunks)
    except TimeoutError as exc:
        raise UpstreamFailure("timeout", "the body paused too long") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailure("transport", type(exc).__name__) from exc
    finally:
        resp.release()
