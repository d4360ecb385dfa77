"""The providers admin API through the real app: list, create, override, delete, routes.

Keys are checked never to come back in an answer nor to be stored in clear (the table is
read directly), and refused without PROVIDER_SECRET.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import databases
import pytest
from conftest import NodeFactory, RunningNode, admin_client

from satsrouter.admin.providers import ProviderStore, configured_providers

PROVIDERS = "/admin/api/providers"
SECRET = "test provider secret, long and random enough"
FILE_KEY = "sk-file-key-0123456789"
ADMIN_KEY = "sk-admin-key-9876543210"

PROVIDERS_FILE = """
[[provider]]
name = "remote"
base_url = "https://remote.example/v1"
api_key_env = "SATSROUTER_TEST_REMOTE_KEY"
fee = "1.2"

[[provider]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
dialect = "ollama"
default_pricing = { prompt = "0.0000001", completion = "0.0000002" }

[routes]
"openai/gpt-4o-mini" = ["remote", "upstream"]
"""


@pytest.fixture
def providers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SATSROUTER_TEST_REMOTE_KEY", FILE_KEY)
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS_FILE)
    return path


def stored_rows(running: RunningNode) -> list[tuple[Any, ...]]:
    """The `providers` table as it is on disk."""
    return databases.rows(
        running.node.settings.effective_database_url,
        "SELECT name, kind, config, api_key_encrypted FROM providers ORDER BY name",
    )


def by_name(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in listing["providers"]}


async def test_every_source_is_listed_and_admin_changes_are_stored_encrypted(
    node_factory: NodeFactory, providers_file: Path
) -> None:
    running = await node_factory(providers_path=providers_file, provider_secret=SECRET)
    http = await admin_client(running)
    try:
        listing = (await http.get(PROVIDERS)).json()
        providers = by_name(listing)
        assert list(providers) == ["upstream", "remote", "local"]
        assert providers["upstream"]["source"] == "environment"
        assert providers["upstream"]["api_key"] == "[redacted]"  # "upstream-secret"
        assert providers["remote"] == {
            "name": "remote",
            "base_url": "https://remote.example/v1",
            "dialect": "openai",
            "fee": "1.2",
            "enabled": True,
            "proxy": "",
            "connect_timeout": None,
            "first_byte_timeout": None,
            "idle_timeout": None,
            "model_prefix": "",
            "models": {},
            "default_context": 8192,
            "default_pricing": {},
            "api_key": "[redacted]",
            "source": "file",
            "overrides": [],
        }
        assert providers["local"]["api_key"] is None
        assert providers["local"]["dialect"] == "ollama"
        assert listing["routes"] == {"openai/gpt-4o-mini": ["remote", "upstream"]}

        # A provider of the admin's own, its key sent in clear once.
        body = {
            "base_url": "https://mine.example/v1/",
            "api_key": ADMIN_KEY,
            "fee": 1.25,
            "proxy": "socks5h://user:proxy-password@127.0.0.1:9050",
            "idle_timeout": 30,
            "model_prefix": "mine/",
        }
        resp = await http.put(f"{PROVIDERS}/mine", json=body)
        assert resp.status_code == 200, resp.text
        mine = resp.json()
        assert mine["api_key"] == "[redacted]" and mine["source"] == "admin"
        assert (mine["base_url"], mine["fee"], mine["idle_timeout"]) == (
            "https://mine.example/v1",
            "1.25",
            30.0,
        )
        assert mine["proxy"] == "socks5h://user:[redacted]@127.0.0.1:9050"
        assert running.node.provider_reloads == 2  # the start, then this change

        # A file provider switched off: an override, the admin's fields over the file's.
        resp = await http.patch(f"{PROVIDERS}/remote", json={"enabled": False})
        assert resp.status_code == 200, resp.text
        assert resp.json()["enabled"] is False
        assert resp.json()["source"] == "file" and resp.json()["overrides"] == ["enabled"]
        assert resp.json()["fee"] == "1.2"  # the file's, untouched

        # What the node will load: every source merged, keys in clear for the upstream.
        providers_now, routes = await configured_providers(
            running.node.settings, ProviderStore(running.node.tx)
        )
        loaded = {p.name: p for p in providers_now}
        assert list(loaded) == ["upstream", "remote", "local", "mine"]
        assert loaded["mine"].api_key == ADMIN_KEY and loaded["mine"].fee == Decimal("1.25")
        assert loaded["remote"].api_key == FILE_KEY and loaded["remote"].enabled is False
        assert loaded["upstream"].api_key == "upstream-secret"
        assert routes == {"openai/gpt-4o-mini": ["remote", "upstream"]}

        # Nothing the node answered carries a key; the database holds none in clear.
        full = (await http.get(PROVIDERS)).text
        for secret in (ADMIN_KEY, FILE_KEY, "upstream-secret", "proxy-password"):
            assert secret not in full and secret not in str(mine)
        rows = stored_rows(running)
        assert [(name, kind) for name, kind, _, _ in rows] == [
            ("mine", "provider"),
            ("remote", "override"),
        ]
        assert all(ADMIN_KEY not in str(column) for row in rows for column in row)
        assert all(FILE_KEY not in str(column) for row in rows for column in row)
        assert rows[0][3] and rows[1][3] is None  # encrypted, and the override has none
        assert "api_key" not in rows[0][2]

        # Deleting the override brings the file's provider back as it is.
        resp = await http.delete(f"{PROVIDERS}/remote")
        assert resp.status_code == 200 and resp.json() == {"deleted": "remote"}
        assert by_name((await http.get(PROVIDERS)).json())["remote"]["enabled"] is True
        # The file's and the environment's own cannot be deleted; unknown ones are 404.
        for name in ("remote", "upstream"):
            resp = await http.delete(f"{PROVIDERS}/{name}")
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["type"] == "provider_not_deletable"
        assert (await http.delete(f"{PROVIDERS}/nobody")).status_code == 404
        assert (await http.patch(f"{PROVIDERS}/nobody", json={"enabled": False})).status_code == 404

        resp = await http.delete(f"{PROVIDERS}/mine")
        assert resp.status_code == 200
        assert "mine" not in by_name((await http.get(PROVIDERS)).json())
        assert stored_rows(running) == []
        assert running.node.provider_reloads == 5
    finally:
        await http.aclose()


async def test_keys_are_kept_replaced_or_removed(node_factory: NodeFactory) -> None:
    running = await node_factory(provider_secret=SECRET)
    http = await admin_client(running)
    store = ProviderStore(running.node.tx)

    async def key_of(name: str) -> str:
        providers, _ = await configured_providers(running.node.settings, store)
        return next(p.api_key for p in providers if p.name == name)

    try:
        assert await store.version() == 0
        base = {"base_url": "http://127.0.0.1:11434/v1", "dialect": "ollama"}
        assert (await http.put(f"{PROVIDERS}/x", json={**base, "api_key": "k1"})).status_code == 200
        assert await store.version() == 1  # what other nodes on the database watch
        # Sent back as shown ("[redacted]"), or left out: the stored key stays.
        shown = (await http.get(PROVIDERS)).json()["providers"][-1]
        resp = await http.put(f"{PROVIDERS}/x", json={**shown, "default_context": 4096})
        assert resp.status_code == 200, resp.text
        assert resp.json()["default_context"] == 4096
        assert await key_of("x") == "k1"
        assert (await http.patch(f"{PROVIDERS}/x", json={"fee": "2"})).status_code == 200
        assert await key_of("x") == "k1"
        assert (await http.patch(f"{PROVIDERS}/x", json={"api_key": "k2"})).status_code == 200
        assert await key_of("x") == "k2"
        resp = await http.patch(f"{PROVIDERS}/x", json={"api_key": None})
        assert resp.status_code == 200 and resp.json()["api_key"] is None
        assert await key_of("x") == ""

        # The environment's provider replaced by name: the admin's wins, whole.
        resp = await http.put(f"{PROVIDERS}/upstream", json={"base_url": "https://u.example"})
        assert resp.status_code == 200
        assert (resp.json()["source"], resp.json()["api_key"]) == ("admin", None)
        # An override of the environment's provider may carry a key of its own.
        await http.delete(f"{PROVIDERS}/upstream")
        resp = await http.patch(f"{PROVIDERS}/upstream", json={"api_key": "env-replaced"})
        assert resp.json()["overrides"] == ["api_key"] and resp.json()["source"] == "environment"
        assert await key_of("upstream") == "env-replaced"
    finally:
        await http.aclose()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"base_url": "not a url"}, "base_url"),
        ({"base_url": "http://[::1"}, "base_url"),
        ({"base_url": "https://a.example", "proxy": "socks5://h:port"}, "proxy"),
        ({}, "base_url: must be text (required)"),
        ({"base_url": "https://a.example", "dialect": "soap"}, "dialect"),
        ({"base_url": "https://a.example", "fee": -1}, "fee"),
        ({"base_url": "https://a.example", "connect_timeout": 0}, "connect_timeout"),
        ({"base_url": "https://a.example", "enabled": "no"}, "enabled"),
        ({"base_url": "https://a.example", "api_key_env": "X"}, "unknown fields: api_key_env"),
        ({"base_url": "https://a.example", "name": "other"}, "name"),
        ({"base_url": "https://a.example", "default_pricing": {"promt": "1"}}, "promt"),
        ({"base_url": "https://a.example", "api_key": 5}, "api_key"),
    ],
)
async def test_a_wrong_provider_is_refused_naming_the_field(
    node: RunningNode, body: dict[str, Any], needle: str
) -> None:
    http = await admin_client(node)
    try:
        resp = await http.put(f"{PROVIDERS}/a", json=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["type"] == "invalid_provider"
        assert needle in resp.json()["error"]["message"]
        assert stored_rows(node) == []
        assert node.node.provider_reloads == 1  # the start only
    finally:
        await http.aclose()


async def test_without_a_secret_no_key_is_stored(node: RunningNode) -> None:
    http = await admin_client(node)
    try:
        body = {"base_url": "https://a.example", "api_key": ADMIN_KEY}
        resp = await http.put(f"{PROVIDERS}/a", json=body)
        assert resp.status_code == 422
        error = resp.json()["error"]
        assert error["type"] == "provider_secret_required" and "PROVIDER_SECRET" in error["message"]
        assert ADMIN_KEY not in resp.text
        resp = await http.patch(f"{PROVIDERS}/upstream", json={"api_key": ADMIN_KEY})
        assert resp.status_code == 422
        assert stored_rows(node) == []
        # Without a key the provider is taken.
        resp = await http.put(f"{PROVIDERS}/a", json={"base_url": "https://a.example"})
        assert resp.status_code == 200 and resp.json()["api_key"] is None
        assert [row[0] for row in stored_rows(node)] == ["a"]
        # A refused PATCH changes nothing.
        resp = await http.patch(f"{PROVIDERS}/a", json={"fee": 0})
        assert resp.status_code == 422 and "fee" in resp.json()["error"]["message"]
        assert by_name((await http.get(PROVIDERS)).json())["a"]["fee"] is None
    finally:
        await http.aclose()


async def test_admin_routes_lie_over_the_files(
    node_factory: NodeFactory, providers_file: Path
) -> None:
    running = await node_factory(providers_path=providers_file)
    http = await admin_client(running)
    try:
        routes = {"openai/gpt-4o-mini": ["local"], "meta/llama": ["local", "remote"]}
        resp = await http.put("/admin/api/routes", json=routes)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"routes": routes}
        _, merged = await configured_providers(
            running.node.settings, ProviderStore(running.node.tx)
        )
        assert merged == routes
        resp = await http.put("/admin/api/routes", json={"m": []})
        assert resp.status_code == 422 and resp.json()["error"]["type"] == "invalid_routes"
        # Emptied, the file's routes apply again.
        resp = await http.put("/admin/api/routes", json={})
        assert resp.json() == {"routes": {"openai/gpt-4o-mini": ["remote", "upstream"]}}
    finally:
        await http.aclose()


async def test_a_broken_providers_file_is_a_500_that_says_why(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    path = tmp_path / "providers.toml"
    path.write_text('[[provider]]\nname = "a"\nbase_url = "https://a.example"\n')
    running = await node_factory(providers_path=path)
    path.write_text('[[provider]]\nname = "a"\n')  # broken while the node runs
    http = await admin_client(running)
    try:
        resp = await http.get(PROVIDERS)
        assert resp.status_code == 500
        assert resp.json()["error"]["type"] == "invalid_providers_file"
        assert "base_url" in resp.json()["error"]["message"]
    finally:
        await http.aclose()
