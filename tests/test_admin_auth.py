"""Admin authentication: the password (given or generated), sessions, the seed's cookie, limits."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_PASSWORD, NodeFactory, RunningNode, admin_client, eventually
from fastapi import APIRouter
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint

import satsrouter.http as http_pkg
from satsrouter.admin.auth import (
    SESSION_COOKIE,
    AttemptLimiter,
    hash_password,
    verify_password,
)
from satsrouter.http.admin import PREFIX

# The routes that answer without a login: how one logs in, out, and asks whether one is.
OPEN_ROUTES = {f"{PREFIX}/login", f"{PREFIX}/logout", f"{PREFIX}/session"}


def protected_routes() -> list[tuple[str, str]]:
    """Every (method, path) under /admin/api that needs the admin, from the app itself."""
    found: list[tuple[str, str]] = []
    for module_router in _admin_routers():
        for route in module_router.routes:
            path = getattr(route, "path", "")
            if not path.startswith(PREFIX) or path in OPEN_ROUTES:
                continue
            for method in sorted(getattr(route, "methods", set()) - {"HEAD"}):
                found.append((method, path))
    return sorted(set(found))


def _admin_routers() -> list[APIRouter]:
    """Every router any module of satsrouter.http defines (admin ones among them)."""
    routers = []
    for info in pkgutil.iter_modules(http_pkg.__path__):
        module = importlib.import_module(f"satsrouter.http.{info.name}")
        routers += [value for value in vars(module).values() if isinstance(value, APIRouter)]
    return routers


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


PROTECTED = protected_routes()


def test_every_admin_route_is_in_the_table(node: RunningNode) -> None:
    """The table is what the running app serves under /admin/api, no more and no less."""
    served = {
        (method, route.path)
        for route in node.server.config.app.routes
        if getattr(route, "path", "").startswith(PREFIX) and route.path not in OPEN_ROUTES
        for method in getattr(route, "methods", set()) - {"HEAD"}
    }
    assert served == set(PROTECTED)
    assert {path for _, path in PROTECTED} >= {
        f"{PREFIX}/settings",
        f"{PREFIX}/wallet",
        f"{PREFIX}/withdraw",
        f"{PREFIX}/usage",
        f"{PREFIX}/keys",
        f"{PREFIX}/providers",
        f"{PREFIX}/providers/{{name}}",
        f"{PREFIX}/routes",
    }


@pytest.mark.parametrize(
    "cookies",
    [
        pytest.param({}, id="no-cookie"),
        pytest.param({SESSION_COOKIE: "not-a-session"}, id="wrong-session"),
        pytest.param({"admin_password": "wrong"}, id="wrong-password-cookie"),
    ],
)
async def test_every_admin_route_refuses_without_a_valid_login(
    node: RunningNode, cookies: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=node.url, cookies=cookies) as http:
        for method, path in PROTECTED:
            # A fresh count per route: each wrong password cookie is a failed login, and
            # the one past the limit would be a 429 (tested below), not the 401 checked here.
            node.node.admin.limiter = AttemptLimiter()
            resp = await http.request(method, _concrete(path), json={})
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text)
            assert resp.json()["error"]["type"] == "admin_unauthorized"
            # The node answers as it does everywhere: a request id, no secrets echoed.
            assert "x-request-id" in resp.headers


async def test_logged_out_and_expired_sessions_are_refused(node_factory: NodeFactory) -> None:
    running = await node_factory(admin_session_hours=2 / 3600)  # two seconds
    http = await admin_client(running)
    try:
        session = http.cookies[SESSION_COOKIE]
        assert (await http.get(f"{PREFIX}/session")).json() == {"authenticated": True}
        for method, path in PROTECTED:
            resp = await http.request(method, _concrete(path), json={})
            assert resp.status_code != 401, (method, path)

        # Expired: the same cookie, sent after its session ran out, opens nothing.
        async def expired() -> bool:
            resp = await http.get(f"{PREFIX}/session")
            return resp.json() == {"authenticated": False}

        await eventually(expired, within=30)
        for method, path in PROTECTED:
            resp = await http.request(method, _concrete(path), json={})
            assert resp.status_code == 401, (method, path)
    finally:
        await http.aclose()

    # Logged out: the old cookie is dead even when a client keeps sending it.
    http = await admin_client(running)
    try:
        await running.stop()
        running = await node_factory(admin_session_hours=1.0)
        http = await admin_client(running)
        session = http.cookies[SESSION_COOKIE]
        resp = await http.post(f"{PREFIX}/logout")
        assert resp.status_code == 200
        assert SESSION_COOKIE not in http.cookies  # the browser is told to forget it
        async with httpx.AsyncClient(
            base_url=running.url, cookies={SESSION_COOKIE: session}
        ) as stale:
            for method, path in PROTECTED:
                resp = await stale.request(method, _concrete(path), json={})
                assert resp.status_code == 401, (method, path)
    finally:
        await http.aclose()


async def test_login_sets_a_strict_http_only_cookie_that_survives_a_restart(
    node_factory: NodeFactory,
) -> None:
    running = await node_factory()
    async with httpx.AsyncClient(base_url=running.url) as http:
        wrong = await http.post(f"{PREFIX}/login", json={"password": "nope"})
        assert wrong.status_code == 401
        assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
        assert (await http.post(f"{PREFIX}/login", json={})).status_code == 400
        ok = await http.post(f"{PREFIX}/login", json={"password": ADMIN_PASSWORD})
        assert ok.status_code == 200, ok.text
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert ADMIN_PASSWORD not in ok.text
        session = http.cookies[SESSION_COOKIE]
    await running.stop()
    # Sessions live in the database: a restarted node (or a sibling) knows them.
    again = await node_factory()
    async with httpx.AsyncClient(base_url=again.url, cookies={SESSION_COOKIE: session}) as http:
        assert (await http.get(f"{PREFIX}/session")).json() == {"authenticated": True}
        method, path = PROTECTED[0]
        assert (await http.request(method, _concrete(path), json={})).status_code != 401


async def test_the_seed_admin_password_cookie_works_unchanged(node: RunningNode) -> None:
    async with httpx.AsyncClient(
        base_url=node.url, cookies={"admin_password": ADMIN_PASSWORD}
    ) as http:
        assert (await http.get(f"{PREFIX}/session")).json() == {"authenticated": True}
        for method, path in PROTECTED:
            if method == "GET" and "{" not in path:
                resp = await http.get(path)
                assert resp.status_code == 200, (path, resp.text)


async def test_failed_logins_are_rate_limited_per_address(node: RunningNode) -> None:
    limit = node.node.admin.limiter.limit  # AUTH_FAILURE_LIMIT's
    assert limit == 10
    async with httpx.AsyncClient(base_url=node.url) as http:
        codes = [
            (await http.post(f"{PREFIX}/login", json={"password": f"guess-{i}"})).status_code
            for i in range(limit)
        ]
        assert codes == [401] * limit
        limited = await http.post(f"{PREFIX}/login", json={"password": ADMIN_PASSWORD})
        # Over the limit even the right password waits: a guesser learns nothing.
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "too_many_attempts"
        # The seed's cookie form counts against the same limit.
        cookie = await http.get(f"{PREFIX}/session", cookies={"admin_password": ADMIN_PASSWORD})
        assert cookie.status_code == 429


def test_password_hashes_are_salted_scrypt() -> None:
    one, two = hash_password("secret"), hash_password("secret")
    assert one != two and one.startswith("scrypt$")
    assert "secret" not in one
    assert verify_password("secret", one) and verify_password("secret", two)
    assert not verify_password("Secret", one)
    assert not verify_password("secret", "garbage")


async def test_a_generated_password_is_shown_once_and_reset_by_the_cli(
    local_mint: LocalMint, upstream: FakeUpstream, tmp_path: Path
) -> None:
    node = KillableNode(tmp_path, local_mint.url, upstream.url)
    node.env.pop("ADMIN_PASSWORD", None)
    await node.start()
    try:
        shown = re.findall(r"admin password \(shown once[^\n]*\n\s+(\S+)", node.log.read_text())
        assert len(shown) == 1, node.log.read_text()
        password = shown[0]
        stored = node.query("SELECT value FROM node_config WHERE name = 'admin_password_hash'")
        assert stored and password not in stored[0][0]
        async with httpx.AsyncClient(base_url=node.url) as http:
            assert (
                await http.post(f"{PREFIX}/login", json={"password": password})
            ).status_code == 200
            session = http.cookies[SESSION_COOKIE]
    finally:
        await node.stop()

    await node.start()  # a second start shows nothing: the hash is there
    try:
        assert "admin password" not in node.log.read_text()
        code, out = await node.cli("admin", "reset-password")
        assert code == 0, out
        new = out.strip().splitlines()[-1]
        assert new != password
        async with httpx.AsyncClient(base_url=node.url) as http:
            assert (
                await http.post(f"{PREFIX}/login", json={"password": password})
            ).status_code == 401
            assert (await http.post(f"{PREFIX}/login", json={"password": new})).status_code == 200
            # Every earlier session ended with the reset.
            http.cookies.clear()
            http.cookies.set(SESSION_COOKIE, session)
            assert (await http.get(f"{PREFIX}/session")).json() == {"authenticated": False}
    finally:
        await node.stop()
