"""Settings the admin changes while the node runs: checked, stored, applied, shared.

The environment gives every setting its value at start; the admin API may override those
declared `live` (settings.py). An override is stored as JSON in `setting_overrides` and wins
over the environment until it is reset (`null`); every change bumps `settings_version` in
`node_config`, so each node sharing the database sees that something changed with one read
and re-applies the whole set.

A value may be sent as its natural JSON type (`1.2`, `["https://a"]`, `true`) or as the
environment's text (`"1.2"`, `"https://a,https://b"`); either way it goes through the same
parser and check as the environment's, and the result through `Settings.validate()`. A change
is one transaction: it waits for any other change in progress, is checked against what is
stored with it, and is written whole or not at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson

from satsrouter.store.tx import Tx, TxRunner

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
VERSION = "settings_version"  # its row in node_config: bumped by every change

_BUMP = (
    "INSERT INTO node_config (name, value, updated_at) VALUES (:name, '1', :now) "
    "ON CONFLICT (name) DO UPDATE SET "
    "value = CAST(CAST(node_config.value AS INTEGER) + 1 AS TEXT), updated_at = :now"
)
_VERSION = "SELECT value FROM node_config WHERE name = :name"
_ROWS = "SELECT name, value FROM setting_overrides"
_UPSERT = (
    "INSERT INTO setting_overrides (name, value, updated_at) VALUES (:name, :value, :now) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_DELETE = "DELETE FROM setting_overrides WHERE name = :name"

# What a refused value should have been, by kind.
_EXPECTED = {
    "string": "text",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "decimal": 'a number (or its text, e.g. "1.05")',
    "list": "a list of text (or its text, comma separated)",
    "object": "text, as the environment variable takes it",
    "path": "a path, as text",
}


class Declaration(Protocol):
    """What the node declares about one setting (`settings.Declared`)."""

    @property
    def env(self) -> str: ...
    @property
    def doc(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def secret(self) -> bool: ...
    @property
    def live(self) -> bool: ...
    @property
    def parse(self) -> Callable[[str], Any]: ...
    @property
    def check(self) -> Callable[[Any], None] | None: ...


class DeclaredSettings(Protocol):
    """A frozen dataclass of declared settings that can check itself as a whole."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def validate(self) -> None: ...


S = TypeVar("S", bound=DeclaredSettings)


class InvalidSettings(Exception):
    """A change refused: `fields` maps each setting at fault to why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in fields.items()))
        self.fields = fields


def as_json(value: Any) -> Any:
    """A setting's value as the admin API shows it (Decimal and Path as text)."""
    if isinstance(value, (Decimal, Path)):
        return str(value)
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): as_json(item) for key, item in value.items()}
    return value


def shown(declared: Declaration, value: Any) -> Any:
    """`as_json`, with a secret replaced by a marker (or "" when it is not set)."""
    if declared.secret:
        return REDACTED if value else ""
    return as_json(value)


def coerce(declared: Declaration, value: Any) -> Any:
    """A JSON value (natural type or the environment's text) → the setting's value, checked.

    Raises ValueError with the reason it is refused.
    """
    kind = declared.kind
    if isinstance(value, str):
        text = value.strip()
        if not text and kind != "string":
            raise ValueError("is empty; send null to go back to the environment's value")
        result = declared.parse(text)
    elif kind == "boolean" and isinstance(value, bool):
        result = value
    elif kind in ("integer", "number", "decimal") and _is_number(value):
        # Through the environment's parser: the same refusals, the same types.
        result = declared.parse(repr(value))
    elif kind == "list" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        result = declared.parse(",".join(value))
    else:
        raise ValueError(f"must be {_EXPECTED.get(kind, kind)}")
    if declared.check is not None:
        declared.check(result)
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LiveSettings(Generic[S]):
    """The node's settings now: the environment's, with the admin's overrides applied."""

    def __init__(
        self,
        tx: TxRunner,
        base: S,
        defaults: S,
        declared: Sequence[tuple[str, Declaration]],
        apply: Callable[[S], None],
    ) -> None:
        """`base` comes from the environment, `defaults` from nothing; `apply` installs a
        new effective settings object in the node."""
        self._tx = tx
        self.base = base
        self._defaults = defaults
        self._declared = dict(declared)
        self._apply = apply
        self.current = base
        self.overrides: dict[str, Any] = {}  # name → value, those in effect now
        self._version = -1  # of the overrides in effect; -1 before the first load

    # --- views ---------------------------------------------------------------------------

    def flat(self) -> dict[str, Any]:
        """`{name: value}` for every setting, secrets redacted (GET /admin/api/settings)."""
        return {
            name: shown(declared, getattr(self.current, name))
            for name, declared in self._declared.items()
        }

    def schema(self) -> list[dict[str, Any]]:
        """Each setting with its docs, type, whether the admin may change it and where its
        value comes from (`default`, `environment` or `admin`)."""
        return [
            {
                "name": name,
                "env": declared.env,
                "doc": declared.doc,
                "type": declared.kind,
                "secret": declared.secret,
                "editable": declared.live,
                "live": declared.live,
                "source": self._source(name),
                "value": shown(declared, getattr(self.current, name)),
            }
            for name, declared in self._declared.items()
        ]

    def _source(self, name: str) -> str:
        if name in self.overrides:
            return "admin"
        if getattr(self.base, name) != getattr(self._defaults, name):
            return "environment"
        return "default"

    # --- changes -------------------------------------------------------------------------

    async def patch(self, body: Mapping[str, Any]) -> S:
        """Apply `{name: value | null}` (null: back to the environment's value), stored first.

        Raises InvalidSettings naming every field refused; then nothing is stored or applied.
        """
        changes: dict[str, Any] = {}
        refused: dict[str, str] = {}
        for name, value in body.items():
            declared = self._declared.get(name)
            if declared is None:
                refused[name] = "unknown setting"
            elif not declared.live:
                refused[name] = f"set by the environment only ({declared.env})"
            elif value is not None:
                try:
                    changes[name] = coerce(declared, value)
                except ValueError as exc:
                    refused[name] = str(exc)
            else:
                changes[name] = None
        if refused:
            raise InvalidSettings(refused)
        if not changes:
            return self.current
        now = time.time()

        def change(tx: Tx) -> tuple[int, dict[str, Any], S]:
            # The bump comes first: on Postgres it locks the version row, so a concurrent
            # change waits here and is then checked against what this one stored.
            tx.execute(_BUMP, {"name": VERSION, "now": now})
            version, stored = _read(tx)
            values = self._decode(stored, quiet=True)
            for name, value in changes.items():
                if value is None:
                    values.pop(name, None)
                else:
                    values[name] = value
            settings = self._build(values)  # raises: the transaction is undone
            for name, value in changes.items():
                if value is None:
                    tx.execute(_DELETE, {"name": name})
                else:
                    text = orjson.dumps(as_json(value)).decode()
                    tx.execute(_UPSERT, {"name": name, "value": text, "now": now})
            return version, values, settings

        version, values, settings = await self._tx.run(change, durable=True)
        self._install(version, values, settings)
        log.info("settings changed through the admin API: %s", ", ".join(sorted(changes)))
        return self.current

    async def refresh(self) -> bool:
        """Re-apply the stored overrides if they changed since last applied (another node's
        change, or the first load at start). True when something was applied."""
        version, stored = await self._tx.read(_read)
        if version <= self._version:
            return False
        values = self._decode(stored, quiet=False)
        try:
            settings = self._build(values)
        except InvalidSettings as exc:
            # Possible only when this node's environment differs from the one that stored
            # them: keep what runs now rather than fail, and say so once per version.
            log.error("stored settings refused with this environment (%s); keeping current", exc)
            self._version = version
            return False
        return self._install(version, values, settings)

    async def run(self, interval: Callable[[], float]) -> None:
        """Look for changes every `interval()` seconds, forever."""
        while True:
            await asyncio.sleep(interval())
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the stored settings failed; retrying")

    def _decode(self, stored: Mapping[str, str], quiet: bool) -> dict[str, Any]:
        """Stored JSON texts → setting values; a row no longer valid is skipped."""
        values: dict[str, Any] = {}
        for name, text in stored.items():
            declared = self._declared.get(name)
            try:
                if declared is None or not declared.live:
                    raise ValueError("not a setting the admin may change")
                values[name] = coerce(declared, orjson.loads(text))
            except ValueError as exc:
                if not quiet:
                    log.warning("ignoring the stored setting %s: %s", name, exc)
        return values

    def _build(self, values: Mapping[str, Any]) -> S:
        settings = dataclasses.replace(self.base, **values)
        try:
            settings.validate()
        except ValueError as exc:
            names = getattr(exc, "fields", ()) or tuple(values)
            raise InvalidSettings({name: str(exc) for name in names}) from None
        return settings

    def _install(self, version: int, values: dict[str, Any], settings: S) -> bool:
        if version <= self._version:
            return False  # a later change was applied already (they may finish out of order)
        self._version = version
        self.overrides = values
        self.current = settings
        self._apply(settings)
        return True


def _read(tx: Tx) -> tuple[int, dict[str, str]]:
    """The version of the stored overrides and the overrides themselves (name → JSON text)."""
    rows, _ = tx.execute(_VERSION, {"name": VERSION})
    version = int(rows[0][0]) if rows else 0
    stored, _ = tx.execute(_ROWS, {})
    return version, {str(name): str(value) for name, value in stored}
