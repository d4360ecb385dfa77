"""Who may run the node: the admin password (hashed) and dashboard sessions (in the database).

Two ways in, as API.md says. Routstr's tooling sends the password itself in a cookie,
`admin_password=<password>`; it is checked in constant time, and a right answer is
remembered (as an HMAC under a per-process key, never the password) so that each request
does not pay for a scrypt. The dashboard logs in once and gets a session: a random cookie
whose sha256 is stored in `admin_sessions`, so sessions survive restarts and work on every
node that shares the database.

The password is `ADMIN_PASSWORD` when set (the environment wins); otherwise one is generated
on first start, shown once on the console, and kept only as a scrypt hash in `node_config`.
`satsrouter admin reset-password` makes a new one and ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

# Re-exported: the limiter is this module's, built on the shared rate-limit storage.
from satsrouter.admin.ratelimit import AttemptLimiter as AttemptLimiter
from satsrouter.admin.ratelimit import TooManyAttempts as TooManyAttempts
from satsrouter.store.tx import Tx, TxRunner

PASSWORD_HASH = "admin_password_hash"  # its row in node_config
SESSION_COOKIE = "satsrouter_admin"
PASSWORD_COOKIE = "admin_password"  # the seed's form

# scrypt at 16 MiB, ~50 ms: slow for a guesser, fine once per login.
_N, _R, _P = 2**14, 8, 1

_GET_HASH = "SELECT value FROM node_config WHERE name = :name"
_INSERT_HASH = (
    "INSERT INTO node_config (name, value, updated_at) VALUES (:name, :value, :now) "
    "ON CONFLICT (name) DO NOTHING"
)
_SET_HASH = "UPDATE node_config SET value = :value, updated_at = :now WHERE name = :name"
_INSERT_SESSION = (
    "INSERT INTO admin_sessions (id_hash, created_at, expires_at) VALUES (:id, :now, :expires)"
)
_SESSION = "SELECT expires_at FROM admin_sessions WHERE id_hash = :id"
_DELETE_SESSION = "DELETE FROM admin_sessions WHERE id_hash = :id"
_DELETE_EXPIRED = "DELETE FROM admin_sessions WHERE expires_at < :now"
_DELETE_ALL = "DELETE FROM admin_sessions"


def hash_password(password: str) -> str:
    """A salted scrypt hash, as `scrypt$n$r$p$salt$digest` (hex)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a `hash_password` result (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


def new_password() -> str:
    """A password to show once: 24 characters, about 143 bits."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class Session:
    """A dashboard login: the cookie value (given once) and when it expires."""

    token: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminAuth:
    """The admin password and sessions; every check is constant-time and rate limited."""

    def __init__(
        self,
        tx: TxRunner,
        env_password: str = "",
        session_seconds: float = 86_400.0,
        limiter: AttemptLimiter | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._tx = tx
        # Told of each refused check: "wrong_password" or "rate_limited" (the metrics).
        self._on_failure = on_failure or (lambda reason: None)
        self._env_password = env_password
        self.session_seconds = session_seconds
        self.limiter = limiter or AttemptLimiter()
        self._mac_key = os.urandom(32)
        # HMACs of passwords already verified, with the stored hash they matched.
        self._verified: dict[bytes, str] = {}

    @property
    def from_environment(self) -> bool:
        return bool(self._env_password)

    async def ensure_password(self) -> str | None:
        """On first start without ADMIN_PASSWORD: make, store (hashed) and return a password.

        None when there is one already, or the environment sets it. Among several nodes
        starting at once only one stores its password, and only that one returns it.
        """
        if self._env_password:
            return None
        if await self._stored_hash() is not None:
            return None
        password = new_password()
        value = hash_password(password)
        now = time.time()
        params = {"name": PASSWORD_HASH, "value": value, "now": now}
        _, stored = await self._tx.run(lambda tx: tx.execute(_INSERT_HASH, params), durable=True)
        return password if stored == 1 else None

    async def reset_password(self) -> str:
        """A new password (returned once, stored hashed); every session ends."""
        password = new_password()
        value = hash_password(password)
        now = time.time()

        def op(tx: Tx) -> None:
            params = {"name": PASSWORD_HASH, "value": value, "now": now}
            _, updated = tx.execute(_SET_HASH, params)
            if updated != 1:
                tx.execute(_INSERT_HASH, params)
            tx.execute(_DELETE_ALL, {})

        await self._tx.run(op, durable=True)
        self._verified.clear()
        return password

    async def _stored_hash(self) -> str | None:
        rows, _ = await self._tx.read(lambda tx: tx.execute(_GET_HASH, {"name": PASSWORD_HASH}))
        return str(rows[0][0]) if rows else None

    async def password_ok(self, password: str, client: str) -> bool:
        """Check a password (login, or the seed's cookie); failures count against `client`.

        Raises TooManyAttempts before checking anything when `client` is over its limit.
        """
        try:
            await self.limiter.check(client)
        except TooManyAttempts:
            self._on_failure("rate_limited")
            raise
        ok = await self._check(password)
        if not ok:
            await self.limiter.failed(client)
            self._on_failure("wrong_password")
        return ok

    async def _check(self, password: str) -> bool:
        if not password:
            return False
        if self._env_password:
            given = hashlib.sha256(password.encode()).digest()
            return hmac.compare_digest(given, hashlib.sha256(self._env_password.encode()).digest())
        stored = await self._stored_hash()
        if stored is None:
            return False
        mac = hmac.new(self._mac_key, password.encode(), hashlib.sha256).digest()
        if self._verified.get(mac) == stored:  # same password against the same hash
            return True
        if not verify_password(password, stored):
            return False
        if len(self._verified) > 64:
            self._verified.clear()
        self._verified[mac] = stored
        return True

    async def login(self, password: str, client: str) -> Session | None:
        """A new session for the right password; None for a wrong one."""
        if not await self.password_ok(password, client):
            return None
        token = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + self.session_seconds

        def op(tx: Tx) -> None:
            tx.execute(_DELETE_EXPIRED, {"now": now})
            tx.execute(_INSERT_SESSION, {"id": _digest(token), "now": now, "expires": expires})

        await self._tx.run(op, durable=True)
        return Session(token, expires)

    async def session_ok(self, token: str) -> bool:
        """Whether a session cookie belongs to a live session."""
        if not token:
            return False
        rows, _ = await self._tx.read(lambda tx: tx.execute(_SESSION, {"id": _digest(token)}))
        return bool(rows) and float(rows[0][0]) > time.time()

    async def logout(self, token: str) -> None:
        """End a session (nothing happens for an unknown one)."""
        if token:
            await self._tx.run(lambda tx: tx.execute(_DELETE_SESSION, {"id": _digest(token)}))
