"""Where the node's providers come from: the environment, the providers file, the admin.

`configured_providers` gives every provider the node has, in three layers, a later one
replacing an earlier by name:

1. the environment's (`UPSTREAM_*`), the one-provider case. With `PROVIDERS_PATH` set it
   exists only if `UPSTREAM_BASE_URL` differs from its default or `UPSTREAM_API_KEY` is set,
   so that a providers file does not bring the default OpenRouter provider along unasked;
2. the providers file's (`PROVIDERS_PATH`, upstream/provider_file.py);
3. the admin's, stored in the `providers` table: a whole provider (`PUT`), or an override
   (`PATCH` of an environment or file provider, e.g. `{"enabled": false}`) whose fields are
   laid over that provider's.

Disabled providers are included (`enabled=False`). Routes come from the file's `[routes]`,
then the admin's (`PUT /admin/api/routes`, the `routes` row of `node_config`) per model.

API keys the admin gives are stored encrypted (Fernet, its key derived from
`PROVIDER_SECRET`); without that secret no key is stored. A key that cannot be decrypted
(the secret changed or is gone) leaves its provider disabled, with an error in the log.
Every change bumps `providers_version` in `node_config`, so nodes sharing the database can
see with one read that they should reload.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner
from satsrouter.upstream.provider_file import (
    FIELDS,
    ProviderConfigError,
    load_providers_file,
    parse_routes,
    provider_fields,
    provider_from_fields,
)
from satsrouter.upstream.providers import DEFAULT_UPSTREAM_URL, ProviderConfig

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
VERSION = "providers_version"  # its row in node_config: bumped by every change
ROUTES = "routes"  # the admin's routes, a row of node_config (JSON)
PROVIDER, OVERRIDE = "provider", "override"  # the kinds of rows in `providers`
# Shown by GET, ignored when a client sends them back in a PUT or PATCH.
READ_ONLY = ("source", "overrides")

_ROWS = "SELECT name, kind, config, api_key_encrypted FROM providers ORDER BY name"
_ROW = "SELECT kind, config, api_key_encrypted FROM providers WHERE name = :name"
_UPSERT = (
    "INSERT INTO providers (name, kind, config, api_key_encrypted, updated_at) "
    "VALUES (:name, :kind, :config, :key, :now) ON CONFLICT (name) DO UPDATE SET "
    "kind = excluded.kind, config = excluded.config, "
    "api_key_encrypted = excluded.api_key_encrypted, updated_at = excluded.updated_at"
)
_DELETE = "DELETE FROM providers WHERE name = :name"
_BUMP = (
    "INSERT INTO node_config (name, value, updated_at) VALUES (:name, '1', :now) "
    "ON CONFLICT (name) DO UPDATE SET "
    "value = CAST(CAST(node_config.value AS INTEGER) + 1 AS TEXT), updated_at = :now"
)
_CONFIG = "SELECT value FROM node_config WHERE name = :name"
_SET_CONFIG = (
    "INSERT INTO node_config (name, value, updated_at) VALUES (:name, :value, :now) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)

_HKDF_SALT = b"satsrouter provider keys"
_HKDF_INFO = b"fernet key for upstream provider API keys"


class ProviderSettings(Protocol):
    """The settings the provider sources read (`satsrouter.settings.Settings` has them)."""

    @property
    def upstream_base_url(self) -> str: ...
    @property
    def upstream_api_key(self) -> str: ...
    @property
    def upstream_dialect(self) -> str: ...
    @property
    def upstream_name(self) -> str: ...
    @property
    def upstream_proxy(self) -> str: ...
    @property
    def providers_path(self) -> Path | None: ...
    @property
    def provider_secret(self) -> str: ...


def env_provider(settings: ProviderSettings) -> ProviderConfig | None:
    """The environment's provider (`UPSTREAM_*`), or None when a providers file replaces it."""
    if (
        settings.providers_path is not None
        and settings.upstream_base_url.rstrip("/") == DEFAULT_UPSTREAM_URL
        and not settings.upstream_api_key
    ):
        return None
    # Not checked like the others: a name or URL the node ran with before stays valid.
    return ProviderConfig(
        name=settings.upstream_name,
        base_url=settings.upstream_base_url,
        dialect=settings.upstream_dialect,
        api_key=settings.upstream_api_key,
        proxy=settings.upstream_proxy,
        source="environment",
    )


# --- keys at rest ---------------------------------------------------------------------------


def _fernet(secret: str) -> Fernet:
    """The cipher for stored keys: a Fernet key derived from `PROVIDER_SECRET` (HKDF-SHA256)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return Fernet(base64.urlsafe_b64encode(derived.derive(secret.encode())))


def encrypt_key(secret: str, api_key: str) -> str:
    """An API key encrypted for the `providers` table."""
    return _fernet(secret).encrypt(api_key.encode()).decode()


def decrypt_key(secret: str, token: str) -> str:
    """A stored API key in clear; ValueError when the secret is missing or not the one used."""
    if not secret:
        raise ValueError("PROVIDER_SECRET is not set")
    try:
        return _fernet(secret).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("PROVIDER_SECRET is not the secret it was stored with") from None


# --- merging the sources --------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderRow:
    """One row of `providers`: an admin provider or an override, its key still encrypted."""

    name: str
    kind: str  # PROVIDER | OVERRIDE
    fields: dict[str, Any]
    api_key_encrypted: str | None


@dataclass(frozen=True)
class Configured:
    """A provider as configured, with the fields an admin override sets on it."""

    config: ProviderConfig
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sources:
    """The environment's and the file's providers (by name, in order) and the file's routes."""

    providers: dict[str, ProviderConfig]
    routes: dict[str, list[str]]


async def base_sources(settings: ProviderSettings) -> Sources:
    """The environment's provider and the providers file's (ProviderConfigError if bad)."""
    providers: dict[str, ProviderConfig] = {}
    env = env_provider(settings)
    if env is not None:
        providers[env.name] = env
    routes: dict[str, list[str]] = {}
    if settings.providers_path is not None:
        loaded = await asyncio.to_thread(load_providers_file, settings.providers_path)
        providers.update((p.name, p) for p in loaded.providers)
        routes = loaded.routes
    return Sources(providers, routes)


def merge(sources: Sources, rows: list[ProviderRow], secret: str) -> dict[str, Configured]:
    """Every provider by name: the sources', with the admin's rows replacing or laid over
    them. A row that no longer applies is skipped, with the reason in the log."""
    merged = {name: Configured(config) for name, config in sources.providers.items()}
    for row in rows:
        base = sources.providers.get(row.name)
        try:
            merged[row.name] = _apply(row, base, secret)
        except _Skip as exc:
            log.error("admin provider %r: %s; ignored", row.name, exc)
        except ValueError as exc:  # ProviderConfigError: checks made stricter since stored
            log.error("admin provider %r is not valid (%s); ignored", row.name, exc)
    return merged


class _Skip(Exception):
    """An admin row that applies to nothing now."""


def _apply(row: ProviderRow, base: ProviderConfig | None, secret: str) -> Configured:
    """One admin row applied: a provider of its own, or fields over `base`'s."""
    key_error = ""
    api_key: str | None = None
    if row.api_key_encrypted:
        try:
            api_key = decrypt_key(secret, row.api_key_encrypted)
        except ValueError as exc:
            key_error = str(exc)
    if row.kind == PROVIDER:
        config = provider_from_fields(
            {**row.fields, "name": row.name}, source="admin", api_key=api_key or ""
        )
        overrides: tuple[str, ...] = ()
    else:
        if base is None:
            raise _Skip("overrides a provider no longer configured")
        fields = {**provider_fields(base), **row.fields, "name": row.name}
        key = base.api_key if api_key is None else api_key
        config = provider_from_fields(fields, source=base.source, api_key=key)
        overrides = tuple(sorted({*row.fields, *(["api_key"] if row.api_key_encrypted else [])}))
    if key_error:
        # Calling it without its key would fail at best; never with someone else's.
        log.error(
            "provider %r disabled: its stored API key cannot be read: %s", row.name, key_error
        )
        config = replace(config, enabled=False)
    return Configured(config, overrides)


async def configured_providers(
    settings: ProviderSettings, store: ProviderStore
) -> tuple[list[ProviderConfig], dict[str, list[str]]]:
    """Every provider (environment, then file, then admin; later replaces earlier by name,
    disabled ones included) and the routes (the file's, then the admin's per model).

    Raises ProviderConfigError when the providers file is wrong.
    """
    merged, routes = await store.configured(settings)
    return [c.config for c in merged.values()], routes


# --- the admin's rows -----------------------------------------------------------------------


class ProviderStore:
    """The admin's providers, overrides and routes in the database (plain SQL, TxRunner)."""

    def __init__(self, tx: TxRunner) -> None:
        self._tx = tx

    async def rows(self) -> list[ProviderRow]:
        """Every admin row, by name."""
        return await self._tx.read(_read_rows)

    async def version(self) -> int:
        """Bumped by every change: a node reloads when it differs from the one it loaded."""

        def read(tx: Tx) -> int:
            rows, _ = tx.execute(_CONFIG, {"name": VERSION})
            return int(rows[0][0]) if rows else 0

        return await self._tx.read(read)

    async def admin_routes(self) -> dict[str, list[str]]:
        """The routes the admin set (`PUT /admin/api/routes`)."""
        return await self._tx.read(_read_routes)

    async def configured(
        self, settings: ProviderSettings
    ) -> tuple[dict[str, Configured], dict[str, list[str]]]:
        """Every provider by name with its overrides, and the routes (see module doc)."""
        sources = await base_sources(settings)
        rows, admin_routes = await self._tx.read(lambda tx: (_read_rows(tx), _read_routes(tx)))
        return merge(sources, rows, settings.provider_secret), {**sources.routes, **admin_routes}

    # --- views ------------------------------------------------------------------------------

    async def _configured_checked(
        self, settings: ProviderSettings
    ) -> tuple[dict[str, Configured], dict[str, list[str]]]:
        try:
            return await self.configured(settings)
        except ProviderConfigError as exc:
            raise ApiError(500, "invalid_providers_file", str(exc)) from None

    async def list(self, settings: ProviderSettings) -> dict[str, Any]:
        """`{"providers": [...], "routes": {...}}` as the admin API shows them (keys never)."""
        merged, routes = await self._configured_checked(settings)
        return {"providers": [view(c) for c in merged.values()], "routes": routes}

    async def _view(self, settings: ProviderSettings, name: str) -> dict[str, Any]:
        merged, _ = await self._configured_checked(settings)
        found = merged.get(name)
        if found is None:  # stored, but refused when merged: the log says why
            raise ApiError(500, "invalid_provider", f"Provider {name!r} could not be loaded.")
        return view(found)

    # --- changes ----------------------------------------------------------------------------

    async def put(
        self, settings: ProviderSettings, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create or replace the admin's provider `name` (it shadows any other of that name).

        An `api_key` absent or "[redacted]" keeps the stored one; "" or null removes it.
        """
        config = _check(
            lambda: provider_from_fields({**_fields(name, body), "name": name}, source="admin")
        )
        key = _key_change(settings, body)
        # Stored as checked (dialect and numbers settled), so that it reads back the same.
        fields = {k: v for k, v in provider_fields(config).items() if k != "name"}

        def write(tx: Tx) -> None:
            stored = _read_row(tx, name)
            encrypted = stored.api_key_encrypted if (key is _KEEP and stored) else None
            if isinstance(key, str):
                encrypted = key
            _write(tx, name, PROVIDER, fields, encrypted)

        await self._tx.run(write, durable=True)
        log.info("admin provider %r stored", name)
        return await self._view(settings, name)

    async def patch(
        self, settings: ProviderSettings, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Change some fields of provider `name`: the admin's own, or an override laid over
        the environment's or the file's provider of that name. 404 for an unknown name."""
        fields = _fields(name, body)
        key = _key_change(settings, body)
        sources = await base_sources_checked(settings)
        base = sources.providers.get(name)

        def write(tx: Tx) -> None:
            stored = _read_row(tx, name)
            if stored is not None and stored.kind == PROVIDER:
                merged = {**stored.fields, **fields}
                full = {**merged, "name": name}
                source = "admin"
            elif base is not None:
                merged = {**(stored.fields if stored else {}), **fields}
                full = {**provider_fields(base), **merged, "name": name}
                source = base.source
            else:  # unknown, or an override of a provider no longer configured
                raise ApiError(404, "not_found", f"No provider named {name!r}.")
            checked = provider_fields(_check(lambda: provider_from_fields(full, source=source)))
            # Stored as checked (numbers settled, as a PUT's are): only the fields given.
            merged = {k: checked[k] for k in merged}
            kind = stored.kind if stored else OVERRIDE
            encrypted = stored.api_key_encrypted if stored else None
            if key is not _KEEP:
                encrypted = key if isinstance(key, str) else None
            _write(tx, name, kind, merged, encrypted)

        await self._tx.run(write, durable=True)
        log.info("provider %r changed through the admin API: %s", name, ", ".join(sorted(body)))
        return await self._view(settings, name)

    async def delete(self, settings: ProviderSettings, name: str) -> None:
        """Delete the admin's row `name` (a provider, or an override: the file's or the
        environment's provider then applies unchanged). 409 for a provider the admin API
        did not make; 404 for an unknown one."""

        def remove(tx: Tx) -> bool:
            _, count = tx.execute(_DELETE, {"name": name})
            if count:
                _bump(tx)
            return bool(count)

        if await self._tx.run(remove, durable=True):
            log.info("admin provider %r deleted", name)
            return
        sources = await base_sources_checked(settings)
        source = sources.providers.get(name)
        if source is None:
            raise ApiError(404, "not_found", f"No provider named {name!r}.")
        where = "the providers file" if source.source == "file" else "the environment"
        raise ApiError(
            409,
            "provider_not_deletable",
            f"Provider {name!r} comes from {where}: remove it there, or switch it off with "
            'PATCH {"enabled": false}.',
        )

    async def put_routes(
        self, settings: ProviderSettings, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace the admin's routes (`{public model id: [provider names]}`); the file's
        apply to models the admin's do not name. Returns `{"routes": merged}`."""
        try:
            routes = parse_routes(dict(body))
        except ProviderConfigError as exc:
            raise ApiError(422, "invalid_routes", str(exc)) from None

        def write(tx: Tx) -> None:
            value = orjson.dumps(routes).decode()
            tx.execute(_SET_CONFIG, {"name": ROUTES, "value": value, "now": time.time()})
            _bump(tx)

        await self._tx.run(write, durable=True)
        _, merged = await self._configured_checked(settings)
        return {"routes": merged}


async def base_sources_checked(settings: ProviderSettings) -> Sources:
    """`base_sources`, a bad providers file answered as the admin API's 500."""
    try:
        return await base_sources(settings)
    except ProviderConfigError as exc:
        raise ApiError(500, "invalid_providers_file", str(exc)) from None


def view(configured: Configured) -> dict[str, Any]:
    """A provider as the admin API shows it: no key (`"[redacted]"` or null), no passwords
    in its URLs, its source and the fields an admin override sets."""
    config = configured.config
    shown = provider_fields(config)
    shown["base_url"] = _no_password(config.base_url)
    shown["proxy"] = _no_password(config.proxy)
    shown["api_key"] = REDACTED if config.api_key else None
    shown["source"] = config.source
    shown["overrides"] = list(configured.overrides)
    return shown


def _no_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}"))


class _Keep:
    pass


_KEEP = _Keep()  # the stored key stays as it is


def _key_change(settings: ProviderSettings, body: Mapping[str, Any]) -> str | _Keep | None:
    """What a request does to the stored key: keep it, remove it (None), or a new one
    (encrypted). 422 for a key when there is no PROVIDER_SECRET to encrypt it with."""
    if "api_key" not in body or body["api_key"] == REDACTED:
        return _KEEP
    key = body["api_key"]
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise ApiError(422, "invalid_provider", "api_key: must be text.")
    if not settings.provider_secret:
        raise ApiError(
            422,
            "provider_secret_required",
            "api_key: refused, keys are stored only encrypted and PROVIDER_SECRET is not set. "
            "Set PROVIDER_SECRET, or give the key in the providers file (api_key_env).",
        )
    return encrypt_key(settings.provider_secret, key.strip())


def _fields(name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A request's provider fields (no key, no read-only ones); 422 for a wrong name or an
    unknown field."""
    if body.get("name", name) != name:
        raise ApiError(
            422, "invalid_provider", f"name: the body names {body['name']!r}, the path {name!r}."
        )
    fields = {k: v for k, v in body.items() if k not in ("name", "api_key", *READ_ONLY)}
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ApiError(422, "invalid_provider", f"unknown fields: {', '.join(unknown)}.")
    return fields


def _check(build: Callable[[], ProviderConfig]) -> ProviderConfig:
    """`build()`, a refusal answered as 422 `invalid_provider` naming the field."""
    try:
        return build()
    except ProviderConfigError as exc:
        raise ApiError(422, "invalid_provider", f"{exc}.") from None


def _read_rows(tx: Tx) -> list[ProviderRow]:
    rows, _ = tx.execute(_ROWS, {})
    return [ProviderRow(str(n), str(k), _loads(c), e) for n, k, c, e in rows]


def _read_row(tx: Tx, name: str) -> ProviderRow | None:
    rows, _ = tx.execute(_ROW, {"name": name})
    if not rows:
        return None
    kind, config, encrypted = rows[0]
    return ProviderRow(name, str(kind), _loads(config), encrypted)


def _read_routes(tx: Tx) -> dict[str, list[str]]:
    rows, _ = tx.execute(_CONFIG, {"name": ROUTES})
    if not rows:
        return {}
    try:
        return parse_routes(orjson.loads(rows[0][0]))
    except (ValueError, orjson.JSONDecodeError) as exc:
        log.error("the stored routes are not valid (%s); ignored", exc)
        return {}


def _loads(text: str) -> dict[str, Any]:
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


def _write(tx: Tx, name: str, kind: str, fields: dict[str, Any], encrypted: str | None) -> None:
    config = orjson.dumps(fields).decode()
    params = {"name": name, "kind": kind, "config": config, "key": encrypted, "now": time.time()}
    tx.execute(_UPSERT, params)
    _bump(tx)


def _bump(tx: Tx) -> None:
    tx.execute(_BUMP, {"name": VERSION, "now": time.time()})
