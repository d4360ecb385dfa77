"""The seed's settings admin API: read (secrets redacted), change live, stored, shared.

Real nodes and a real mint: a changed fee is checked on a real paid request, to the msat.
"""

from __future__ import annotations

import asyncio
import logging
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    ADMIN_PASSWORD,
    BTC_USD,
    NodeFactory,
    RunningNode,
    admin_client,
    eventually,
    model_entry,
)
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.settings import declared_settings

SETTINGS = "/admin/api/settings"
PRICED = model_entry("test/priced")
NSEC_HEX = "11" * 32
LIVE = {name for name, declared in declared_settings() if declared.live}


def _msat_per_token(usd: str, fee: Decimal) -> Decimal:
    """What the node charges per token at `fee`, in msat (exact)."""
    return Decimal(usd) * fee * Decimal(100_000_000_000) / BTC_USD


def _cost(fee: Decimal, usage: dict[str, Any]) -> int:
    """The exact msat cost of a test/priced usage at `fee`: each component rounded up."""
    pricing = PRICED["pricing"]
    prompt = math.ceil(usage["prompt_tokens"] * _msat_per_token(pricing["prompt"], fee))
    completion = math.ceil(usage["completion_tokens"] * _msat_per_token(pricing["completion"], fee))
    return prompt + completion


async def _patch(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await http.patch(SETTINGS, json=body)


async def _schema(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    resp = await http.get(f"{SETTINGS}/schema")
    assert resp.status_code == 200, resp.text
    return {entry["name"]: entry for entry in resp.json()["settings"]}


async def _info(node: RunningNode) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{node.api}/info")
        resp.raise_for_status()
        info: dict[str, Any] = resp.json()
        return info


async def test_get_shows_every_setting_and_never_a_secret(
    node_factory: NodeFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'node' / 'secret-name.sqlite'}"
    running = await node_factory(nsec=NSEC_HEX, database_url=database_url)
    http = await admin_client(running)
    try:
        resp = await http.get(SETTINGS)
        schema_resp = await http.get(f"{SETTINGS}/schema")
    finally:
        await http.aclose()
    assert resp.status_code == 200, resp.text
    flat = resp.json()
    assert set(flat) == {name for name, _ in declared_settings()}
    for text in (resp.text, schema_resp.text):
        for secret in ("upstream-secret", NSEC_HEX, ADMIN_PASSWORD, "secret-name"):
            assert secret not in text
    for name in ("upstream_api_key", "nsec", "admin_password", "database_url"):
        assert flat[name] == "[redacted]", name
    # The JSON shapes the contract names: Decimal as text, numbers, lists, paths, null.
    assert flat["provider_fee"] == "1.05"
    assert flat["btc_usd_price"] == str(BTC_USD)
    assert flat["upstream_timeout"] == 3.0
    assert flat["max_body_bytes"] == 8 * 1024 * 1024
    assert flat["cashu_mints"] == running.node.settings.cashu_mints
    assert flat["data_dir"] == str(tmp_path / "node")
    assert flat["models_path"] is None
    assert flat["lnurl_allow_http"] is False

    schema = {entry["name"]: entry for entry in schema_resp.json()["settings"]}
    assert list(schema) == list(flat)
    assert schema["provider_fee"] == {
        "name": "provider_fee",
        "env": "PROVIDER_FEE",
        "doc": "multiplier on upstream prices",
        "type": "decimal",
        "secret": False,
        "editable": True,
        "live": True,
        "source": "default",  # the tests' fee is the default one
        "value": "1.05",
    }
    assert schema["upstream_timeout"]["source"] == "environment"
    assert schema["nsec"] | {"doc": ""} == {
        "name": "nsec",
        "env": "NSEC",
        "doc": "",
        "type": "string",
        "secret": True,
        "editable": False,
        "live": False,
        "source": "environment",
        "value": "[redacted]",
    }
    env_only = {name for name, entry in schema.items() if not entry["editable"]}
    assert {
        "database_url",
        "data_dir",
        "admin_password",
        "fault_crash_at",
        "lnurl_allow_http",
        "cashu_mints",
        "upstream_base_url",
        "upstream_api_key",
        "nsec",
    } <= env_only
    assert {"name", "description", "provider_fee", "upstream_timeout", "log_level"} <= LIVE


async def test_patch_round_trip_and_field_errors(node: RunningNode) -> None:
    http = await admin_client(node)
    try:
        resp = await _patch(
            http,
            {
                "description": "  a changed node  ",
                "provider_fee": "1.5",  # the environment's text
                "upstream_timeout": 7,  # the natural JSON type
                "cors_origins": ["https://a.example/", "https://b.example"],
                "http_url": "https://node.example",
            },
        )
        assert resp.status_code == 200, resp.text
        flat = resp.json()
        assert flat["description"] == "a changed node"
        assert flat["provider_fee"] == "1.5"
        assert flat["upstream_timeout"] == 7.0
        assert flat["cors_origins"] == ["https://a.example", "https://b.example"]
        assert (await http.get(SETTINGS)).json() == flat
        schema = await _schema(http)
        assert schema["description"]["source"] == "admin"
        assert schema["provider_fee"] == schema["provider_fee"] | {
            "source": "admin",
            "value": "1.5",
        }
        # Pushed into the components that hold them.
        assert node.node.prices.fee == Decimal("1.5")
        # The deprecated UPSTREAM_TIMEOUT: first byte and idle, where those are not set.
        upstream = node.node.upstream
        assert (upstream.first_byte_timeout, upstream.idle_timeout) == (7.0, 7.0)

        # Every bad field named; the good one in the same body is not applied either.
        resp = await _patch(
            http,
            {
                "description": "must not be applied",
                "no_such_setting": 1,
                "database_url": "sqlite+aiosqlite:///elsewhere",
                "cashu_mints": ["http://other-mint"],
                "provider_fee": "-1",
                "drain_timeout": "abc",
                "log_level": "LOUD",
                "max_body_bytes": 1.5,
                "name": 5,
                "upstream_timeout": True,
                "sweep_interval": "",
            },
        )
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_settings"
        assert error["code"] == 422
        fields = error["fields"]
        assert set(fields) == {
            "no_such_setting",
            "database_url",
            "cashu_mints",
            "provider_fee",
            "drain_timeout",
            "log_level",
            "max_body_bytes",
            "name",
            "upstream_timeout",
            "sweep_interval",
        }
        assert fields["no_such_setting"] == "unknown setting"
        assert "environment only" in fields["database_url"]
        assert "DATABASE_URL" in fields["database_url"]
        assert fields["provider_fee"] == "must be positive"
        assert "not a number" in fields["drain_timeout"]
        assert "LOUD" in fields["log_level"]
        assert "whole number" in fields["max_body_bytes"]
        assert fields["name"] == "must be text"
        assert "null" in fields["sweep_interval"]
        # Never so small that the admin could not send the change that undoes it.
        resp = await _patch(http, {"max_body_bytes": 100})
        assert resp.json()["error"]["fields"] == {"max_body_bytes": "must be at least 1024"}
        for name in ("provider_fee", "drain_timeout", "log_level"):
            assert name in error["message"]

        resp = await _patch(http, {"provider_fee": "abc"})
        assert resp.status_code == 422
        assert "not a number" in resp.json()["error"]["fields"]["provider_fee"]
        # A combination refused as a whole (the price would go stale between refreshes):
        # both settings named.
        resp = await _patch(http, {"btc_usd_refresh_seconds": 900})
        assert resp.status_code == 422
        assert set(resp.json()["error"]["fields"]) == {
            "btc_usd_refresh_seconds",
            "btc_usd_max_age_seconds",
        }
        # A heartbeat too slow for the death threshold: live nodes would look dead.
        resp = await _patch(http, {"sweep_interval": 20})
        assert resp.status_code == 422
        assert set(resp.json()["error"]["fields"]) == {"instance_dead_after", "sweep_interval"}
        # Not a JSON object: the usual 400.
        assert (await http.patch(SETTINGS, content=b"[1]")).status_code == 400

        assert (await http.get(SETTINGS)).json() == flat  # nothing of it applied
        assert node.node.prices.fee == Decimal("1.5")
        assert (await _info(node))["description"] == "a changed node"
    finally:
        await http.aclose()


async def test_description_and_name_show_at_once(node: RunningNode) -> None:
    http = await admin_client(node)
    try:
        resp = await _patch(http, {"description": "fresh words", "name": "renamed"})
        assert resp.status_code == 200, resp.text
        info = await _info(node)
        assert (info["description"], info["name"]) == ("fresh words", "renamed")
        root = await http.get("/")
        assert root.json()["name"] == "renamed"
        assert (await http.get("/admin/api/node")).json()["name"] == "renamed"
    finally:
        await http.aclose()


async def _models_price(node: RunningNode) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{node.api}/models")
    entry = next(m for m in resp.json()["data"] if m["id"] == "test/priced")
    prices: dict[str, float] = entry["sats_pricing"]
    return prices


async def _chat(node: RunningNode, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url) as http:
        return await http.post(
            "/v1/chat/completions",
            json={
                "model": "test/priced",
                "messages": [{"role": "user", "content": "price me exactly"}],
                "max_tokens": 16,
            },
            headers={"Authorization": f"Bearer {key}"},
        )


async def test_changed_fee_charges_the_next_paid_request_exactly(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    old_fee, new_fee = Decimal("1.05"), Decimal("1.37")
    # Prices cached at the old fee first: the list and the quote must not keep them.
    before = await _models_price(node)
    assert Decimal(str(before["prompt"])) == _msat_per_token("0.00001", old_fee) / 1000
    first = await _chat(node, token)
    assert first.status_code == 200, first.text
    cost_before = int(first.headers["X-Routstr-Cost-Msats"])
    assert cost_before == _cost(old_fee, first.json()["usage"])

    http = await admin_client(node)
    try:
        resp = await _patch(http, {"provider_fee": 1.37})
        assert resp.status_code == 200, resp.text
        assert resp.json()["provider_fee"] == "1.37"
    finally:
        await http.aclose()

    second = await _chat(node, token)
    assert second.status_code == 200, second.text
    usage = second.json()["usage"]
    cost_after = _cost(new_fee, usage)
    assert cost_after != _cost(old_fee, usage)
    assert int(second.headers["X-Routstr-Cost-Msats"]) == cost_after
    assert (await node.balance(token))["balance"] == 100_000 - cost_before - cost_after
    after = await _models_price(node)
    assert Decimal(str(after["prompt"])) == _msat_per_token("0.00001", new_fee) / 1000
    assert Decimal(str(after["completion"])) == _msat_per_token("0.00002", new_fee) / 1000
    await node.check_invariants()


async def test_null_resets_to_the_environment_value(node_factory: NodeFactory) -> None:
    running = await node_factory(description="from the environment")
    http = await admin_client(running)
    try:
        assert (await _patch(http, {"description": "from the admin"})).status_code == 200
        assert (await _info(running))["description"] == "from the admin"
        resp = await _patch(http, {"description": None, "provider_fee": None})
        assert resp.status_code == 200, resp.text
        assert resp.json()["description"] == "from the environment"
        assert (await _info(running))["description"] == "from the environment"
        schema = await _schema(http)
        assert schema["description"]["source"] == "environment"
        assert schema["provider_fee"]["source"] == "default"
    finally:
        await http.aclose()


async def test_override_survives_a_restart(node_factory: NodeFactory) -> None:
    first = await node_factory()
    http = await admin_client(first)
    try:
        resp = await _patch(http, {"description": "kept", "provider_fee": "2"})
        assert resp.status_code == 200, resp.text
    finally:
        await http.aclose()
    await first.stop()

    second = await node_factory()  # same data directory, same environment
    assert (await _info(second))["description"] == "kept"
    assert second.node.prices.fee == Decimal(2)
    http = await admin_client(second)
    try:
        schema = await _schema(http)
        assert schema["description"]["source"] == "admin"
        assert schema["provider_fee"]["value"] == "2"
    finally:
        await http.aclose()


async def test_another_node_on_the_same_database_picks_up_a_change(
    node_factory: NodeFactory,
) -> None:
    first = await node_factory()
    second = await node_factory(settings_refresh_seconds=0.2)
    http = await admin_client(first)
    try:
        resp = await _patch(http, {"description": "said once", "provider_fee": "1.2"})
        assert resp.status_code == 200, resp.text

        async def second_has_it() -> bool:
            return (await _info(second))["description"] == "said once"

        await eventually(second_has_it, within=10)
        assert second.node.prices.fee == Decimal("1.2")

        assert (await _patch(http, {"description": None})).status_code == 200

        async def second_reset() -> bool:
            return (await _info(second))["description"] != "said once"

        await eventually(second_reset, within=10)
        assert (await _info(second))["description"] == first.node.live_settings.base.description
        assert second.node.prices.fee == Decimal("1.2")  # the other override stays
    finally:
        await http.aclose()


async def test_nodes_sharing_postgres_change_settings_at_once(
    node_factory: NodeFactory, postgres_url: str
) -> None:
    """Changes made at the same time on two nodes of one Postgres database: each is kept,
    and both nodes end with all of them."""
    nodes = [
        await node_factory(database_url=postgres_url, settings_refresh_seconds=0.2)
        for _ in range(2)
    ]
    clients = [await admin_client(running) for running in nodes]
    try:
        changes = [
            {"description": "from the first"},
            {"http_url": "https://second.example"},
            {"provider_fee": "1.25"},
            {"name": "both"},
        ]
        answers = await asyncio.gather(
            *(_patch(clients[i % 2], body) for i, body in enumerate(changes))
        )
        assert [a.status_code for a in answers] == [200] * len(changes)
        wanted = {name: value for body in changes for name, value in body.items()}

        for http in clients:

            async def has_all(http: httpx.AsyncClient = http) -> bool:
                flat = (await http.get(SETTINGS)).json()
                return all(flat[name] == value for name, value in wanted.items())

            await eventually(has_all, within=10)
        for running in nodes:
            assert running.node.prices.fee == Decimal("1.25")
            assert (await _info(running))["description"] == "from the first"
    finally:
        for http in clients:
            await http.aclose()


async def test_concurrent_patches_lose_no_field(node: RunningNode) -> None:
    http = await admin_client(node)
    try:
        changes = [
            {"description": "from one"},
            {"http_url": "https://two.example"},
            {"onion_url": "http://three.onion"},
            {"drain_timeout": 4},
            {"upstream_timeout": 9},
            {"name": "five"},
        ]
        answers = await asyncio.gather(*(_patch(http, body) for body in changes))
        assert [a.status_code for a in answers] == [200] * len(changes)
        flat = (await http.get(SETTINGS)).json()
        for body in changes:
            for name, value in body.items():
                assert flat[name] == value, name
        schema = await _schema(http)
        assert {name for name, e in schema.items() if e["source"] == "admin"} == {
            name for body in changes for name in body
        }
    finally:
        await http.aclose()


async def test_body_limit_cors_and_log_level_apply_live(node: RunningNode) -> None:
    http = await admin_client(node)
    root = logging.getLogger()
    level = root.level
    try:
        resp = await _patch(
            http,
            {"max_body_bytes": 2000, "cors_origins": "https://a.example", "log_level": "debug"},
        )
        assert resp.status_code == 200, resp.text
        assert root.level == logging.DEBUG
        big = await http.post("/v1/chat/completions", content=b"x" * 2001)
        assert big.status_code == 413
        assert "2000 bytes" in big.json()["error"]["message"]

        def preflight(origin: str) -> dict[str, str]:
            return {"Origin": origin, "Access-Control-Request-Method": "POST"}

        allowed = await http.options("/v1/chat/completions", headers=preflight("https://a.example"))
        assert allowed.headers["access-control-allow-origin"] == "https://a.example"
        refused = await http.options("/v1/chat/completions", headers=preflight("https://b.example"))
        assert refused.status_code == 400

        resp = await _patch(http, {"max_body_bytes": None, "cors_origins": None})
        assert resp.status_code == 200, resp.text
        assert (await http.post("/v1/chat/completions", content=b"x" * 2001)).status_code != 413
        anywhere = await http.options(
            "/v1/chat/completions", headers=preflight("https://b.example")
        )
        assert anywhere.status_code == 200
    finally:
        await http.aclose()
        root.setLevel(level)


async def test_upstream_timeout_applies_to_the_next_request(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(50)
    slow = {
        "model": "test/priced",
        "messages": [{"role": "user", "content": "slowly"}],
        "max_tokens": 4,
        "fake": {"latency_ms": 1500},  # under the environment's 3 s
    }
    http = await admin_client(node)
    try:
        assert (await _patch(http, {"upstream_timeout": 0.3})).status_code == 200
        resp = await http.post(
            "/v1/chat/completions", json=slow, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status_code == 504, resp.text
        assert (await node.balance(token))["balance"] == 50_000  # nothing charged

        assert (await _patch(http, {"upstream_timeout": None})).status_code == 200
        resp = await http.post(
            "/v1/chat/completions", json=slow, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status_code == 200, resp.text
        cost = int(resp.headers["X-Routstr-Cost-Msats"])
        assert cost == _cost(Decimal("1.05"), resp.json()["usage"])
        assert (await node.balance(token))["balance"] == 50_000 - cost
    finally:
        await http.aclose()
    await node.check_invariants()


@pytest.mark.parametrize("cookie", ["session", "password"])
async def test_settings_need_the_admin(node: RunningNode, cookie: str) -> None:
    """Both ways in work on the settings routes (the 401s are tests/test_admin_auth.py's)."""
    if cookie == "session":
        http = await admin_client(node)
    else:
        http = httpx.AsyncClient(base_url=node.url, cookies={"admin_password": ADMIN_PASSWORD})
    try:
        resp = await _patch(http, {"onion_url": "http://x.onion"})
        assert resp.status_code == 200, resp.text
        assert (await http.get(SETTINGS)).json()["onion_url"] == "http://x.onion"
    finally:
        await http.aclose()
