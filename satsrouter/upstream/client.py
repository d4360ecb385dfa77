"""One pooled HTTP client per upstream (aiohttp), with the node's timeout policy."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import aiohttp
import orjson

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
        self.kind = kind  # "transport" | "timeout"


def forwardable_headers(headers: Any, extra: Collection[str] = ()) -> dict[str, str]:
    """The client's headers the upstream gets: `FORWARDED_CLIENT_HEADERS` and the operator's
    `extra` (lower-case names, `FORWARD_HEADERS`) only."""
    return {
        k: v
        for k, v in headers.items()
        if k.lower() in FORWARDED_CLIENT_HEADERS or (extra and k.lower() in extra)
    }


class Upstream:
    """An OpenAI-compatible upstream at `base_url`, reached through one connection pool."""

    def __init__(
        self, base_url: str, api_key: str, timeout: float, dialect: str = "openai"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.dialect = dialect  # one of DIALECTS: the API this upstream speaks
        self._api_key = api_key
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def timeout(self) -> float:
        """Seconds to wait for the first byte and between two chunks (per request)."""
        return self._timeout.sock_read or 0.0

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        # Given with each request rather than fixed in the session: the admin may change it.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=seconds)

    @property
    def has_credentials(self) -> bool:
        return bool(self._api_key)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
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
        """Send a request and return once response headers arrived (body still unread)."""
        try:
            # sock_read bounds both the first byte and every gap between stream chunks.
            return await self.session.post(
                f"{self.base_url}{path}",
                data=body,
                headers=self._headers(headers, content_type, stream),
                timeout=self._timeout,
            )
        except TimeoutError as exc:
            raise UpstreamFailure("timeout", "no response in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("transport", type(exc).__name__) from exc

    async def get_json(self, path: str) -> Any:
        """GET a JSON document (e.g. the model list)."""
        try:
            async with self.session.get(
                f"{self.base_url}{path}", headers=self._headers(None), timeout=self._timeout
            ) as resp:
                resp.raise_for_status()
                return orjson.loads(await resp.read())
        except TimeoutError as exc:
            raise UpstreamFailure("timeout", "no response in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("transport", type(exc).__name__) from exc


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole response body, with transport errors and timeouts as UpstreamFailure."""
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise UpstreamFailure("timeout", "body did not arrive in time") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailure("transport", type(exc).__name__) from exc
    finally:
        resp.release()
