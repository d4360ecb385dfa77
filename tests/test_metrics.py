"""`/metrics` (Prometheus) and `LOG_FORMAT=json`, on a real node, mint and (fake) upstream.

Scrapes before and after real paid requests: counters and histogram counts move by exactly
the requests made, the books gauges equal what the database holds. Who may scrape. JSON log
lines, their request ids and their masking.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD, NodeFactory, RunningNode, admin_client, start_node
from prometheus_client.parser import text_string_to_metric_families
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.ecash.mint_http import mint_operation
from satsrouter.logs import REDACTED, setup_logging
from satsrouter.settings import Settings

TOKEN = "scrape-token-for-tests"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "count me"}]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(node: RunningNode) -> Samples:
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_counters_move_by_exactly_the_requests_made(
    database: str,
    request: pytest.FixtureRequest,
    node_factory: NodeFactory,
    user_wallet: TestWallet,
    upstream: FakeUpstream,
) -> None:
    upstream.reset()
    url = request.getfixturevalue("postgres_url") if database == "postgres" else ""
    node = await node_factory(metrics_token=TOKEN, database_url=url)
    provider = node.node.settings.upstream_name
    (token,) = await user_wallet.mint_tokens(100)
    mint = node.node.wallet.primary_mint
    swaps_before = value(
        await scrape(node),
        "satsrouter_mint_request_duration_seconds_count",
        mint=mint,
        operation="/v1/swap",
        outcome="2xx",
    )
    assert (await node.balance(token))["balance"] == 100_000  # redeemed: one swap at the mint

    before = await scrape(node)
    assert (
        value(
            before,
            "satsrouter_mint_request_duration_seconds_count",
            mint=mint,
            operation="/v1/swap",
            outcome="2xx",
        )
        == swaps_before + 1
    )
    costs = 0
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=node.url, headers=auth, timeout=30) as http:
        for _ in range(3):
            body = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 5}
            resp = await http.post(CHAT, json=body)
            assert resp.status_code == 200, resp.text
            costs += int(resp.headers["x-routstr-cost-msats"])
        body = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 5, "stream": True}
        async with http.stream("POST", CHAT, json=body) as resp:
            assert resp.status_code == 200
            async for _ in resp.aiter_lines():
                pass
        resp = await http.post("/v1/responses", json={"model": "test/priced", "input": "hi"})
        assert resp.status_code == 200, resp.text
        # Not in the catalogue: counted, under the model "other".
        resp = await http.post(CHAT, json={"model": "no/such-model", "messages": MESSAGES})
        assert resp.status_code == 404, resp.text
        upstream.configure(fail="500")
        try:
            resp = await http.post(CHAT, json={"model": "test/priced", "messages": MESSAGES})
        finally:
            upstream.reset()
        assert resp.status_code == 502, resp.text
    after = await scrape(node)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat_ok = {"endpoint": CHAT, "model": "test/priced", "status": "2xx"}
    assert moved("satsrouter_requests_total", **chat_ok) == 4
    assert moved("satsrouter_request_duration_seconds_count", **chat_ok) == 4
    assert moved("satsrouter_request_duration_seconds_bucket", **chat_ok, le="+Inf") == 4
    assert moved("satsrouter_request_duration_seconds_sum", **chat_ok) > 0
    responses_ok = {"endpoint": "/v1/responses", "model": "test/priced", "status": "2xx"}
    assert moved("satsrouter_requests_total", **responses_ok) == 1
    assert moved("satsrouter_request_duration_seconds_count", **responses_ok) == 1
    failed = {"endpoint": CHAT, "model": "test/priced", "status": "5xx"}
    assert moved("satsrouter_requests_total", **failed) == 1
    assert moved("satsrouter_request_duration_seconds_count", **failed) == 1
    unknown = {"endpoint": CHAT, "model": "other", "status": "4xx"}
    assert moved("satsrouter_requests_total", **unknown) == 1
    assert moved("satsrouter_upstream_errors_total", provider=provider, kind="server_error") == 1
    total_moved = sum(
        value(after, name, **dict(labels)) - value(before, name, **dict(labels))
        for (name, labels) in after
        if name == "satsrouter_requests_total"
    )
    assert total_moved == 7  # nothing else counted (the scrapes are not paid endpoints)
    # No model outside the catalogue ever becomes a label.
    models = {
        dict(labels)["model"] for (name, labels) in after if name == "satsrouter_requests_total"
    }
    assert models == {"test/priced", "other"}

    # The books, read from the database at scrape time.
    balance = (await node.balance(token))["balance"]
    assert balance < 100_000 - costs  # the stream and the responses call were charged too
    assert value(after, "satsrouter_liabilities_msat") == balance
    assert value(after, "satsrouter_liabilities_msat") == await node.node.ledger.total_liabilities()
    assert value(after, "satsrouter_reservations_active") == 0
    assert value(after, "satsrouter_reserved_msat") == 0
    assert value(after, "satsrouter_ecash_held_msat", mint=mint) == 1000 * (
        await node.node.wallet.balance()
    )
    assert value(after, "satsrouter_build_info", version=_version()) == 1
    await node.check_invariants()


def _version() -> str:
    from satsrouter import __version__

    return __version__


async def test_metrics_need_the_token_or_an_admin_login(
    node_factory: NodeFactory, upstream: FakeUpstream
) -> None:
    upstream.reset()
    node = await node_factory(metrics_token=TOKEN)
    async with httpx.AsyncClient(base_url=node.url) as http:
        # From 127.0.0.1, but loopback is not trusted unless METRICS_LOOPBACK says so.
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "metrics_unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "satsrouter_" not in refused.text
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        seed_cookie = await http.get("/metrics", cookies={"admin_password": ADMIN_PASSWORD})
        assert seed_cookie.status_code == 200
        assert "satsrouter_requests" in seed_cookie.text
        bad_cookie = await http.get("/metrics", cookies={"admin_password": "wrong"})
        assert bad_cookie.status_code == 401
    admin = await admin_client(node)
    try:
        assert (await admin.get("/metrics")).status_code == 200
    finally:
        await admin.aclose()
    # Every refused admin password so far (the wrong cookie) was counted, and nothing else.
    samples = await scrape(node)
    assert value(samples, "satsrouter_admin_login_failures_total", reason="wrong_password") == 1
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/admin/api/login", json={"password": "nope"})
        assert resp.status_code == 401
    samples = await scrape(node)
    assert value(samples, "satsrouter_admin_login_failures_total", reason="wrong_password") == 2


async def test_wrong_metrics_tokens_are_rate_limited(
    node_factory: NodeFactory, upstream: FakeUpstream
) -> None:
    upstream.reset()
    node = await node_factory(metrics_token=TOKEN)
    limit = node.node.admin.limiter.limit
    async with httpx.AsyncClient(base_url=node.url) as http:
        for _ in range(limit):
            resp = await http.get("/metrics", headers={"Authorization": "Bearer guess"})
            assert resp.status_code == 401
        resp = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 429
        assert int(resp.headers["retry-after"]) >= 1


async def test_without_a_token_only_the_admin_or_opted_in_loopback(
    node_factory: NodeFactory, upstream: FakeUpstream
) -> None:
    upstream.reset()
    closed = await node_factory()
    async with httpx.AsyncClient(base_url=closed.url) as http:
        assert (await http.get("/metrics")).status_code == 401
        # A bearer means nothing while no METRICS_TOKEN is set.
        assert (
            await http.get("/metrics", headers={"Authorization": "Bearer anything"})
        ).status_code == 401
    admin = await admin_client(closed)
    try:
        assert (await admin.get("/metrics")).status_code == 200
    finally:
        await admin.aclose()

    local = await node_factory(metrics_loopback=True)
    async with httpx.AsyncClient(base_url=local.url) as http:
        assert (await http.get("/metrics")).status_code == 200
        # What a reverse proxy on this host forwards is not local, whatever its address.
        for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
            resp = await http.get("/metrics", headers={header: "203.0.113.7"})
            assert resp.status_code == 401, header


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Logging as `LOG_FORMAT=json satsrouter serve` sets it up, its stream captured;
    restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    access_propagates, access.propagate = access.propagate, True
    setup_logging("INFO", "json")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        access.propagate = access_propagates


def _json_lines(logged: str) -> list[dict[str, Any]]:
    lines = logged.splitlines()
    assert lines, "nothing logged"
    return [json.loads(line) for line in lines]  # every line is one JSON object


async def test_json_logs_carry_request_ids_and_mask_secrets(
    json_log: io.StringIO,
    node_settings: Settings,
    user_wallet: TestWallet,
    upstream: FakeUpstream,
) -> None:
    upstream.reset()
    node = await start_node(node_settings, access_log=True)
    try:
        (token,) = await user_wallet.mint_tokens(20)
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            resp = await http.post(
                CHAT,
                json={"model": "test/priced", "messages": MESSAGES, "max_tokens": 3},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert resp.status_code == 200, resp.text
        request_id = resp.headers["x-request-id"]
        logging.getLogger("satsrouter.tests.metrics").warning("a client sent %s", token)
        try:
            raise ValueError(f"cannot use {token}")
        except ValueError:
            logging.getLogger("satsrouter.tests.metrics").exception("failed")
    finally:
        await node.stop()
    logged = json_log.getvalue()
    entries = _json_lines(logged)
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert entry["time"].endswith("+00:00")
    access = [e for e in entries if e["logger"] == "uvicorn.access" and CHAT in e["message"]]
    assert len(access) == 1
    assert access[0]["request_id"] == request_id
    # Outside a request: no request id.
    (sent,) = [e for e in entries if e["message"].startswith("a client sent")]
    assert "request_id" not in sent
    assert sent["message"] == f"a client sent cashuB{REDACTED}"
    (failed,) = [e for e in entries if e["message"] == "failed"]
    assert failed["level"] == "ERROR"
    assert "ValueError: cannot use cashuB" in failed["exception"]
    assert token[6:22] not in logged


async def test_upstream_errors_are_counted_by_kind(
    node_factory: NodeFactory, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    upstream.reset()
    node = await node_factory(metrics_token=TOKEN)
    provider = node.node.settings.upstream_name
    (token,) = await user_wallet.mint_tokens(50)
    assert (await node.balance(token))["balance"] == 50_000
    before = await scrape(node)
    auth = {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 5}
    async with httpx.AsyncClient(base_url=node.url, headers=auth, timeout=30) as http:
        try:
            for fail, status in (("429", 429), ("400", 400), ("drop", 502)):
                upstream.configure(fail=fail)
                resp = await http.post(CHAT, json=body)
                assert resp.status_code == status, resp.text
            upstream.configure(fail="drop_midstream")
            async with http.stream("POST", CHAT, json={**body, "stream": True}) as resp:
                assert resp.status_code == 200
                events = [line async for line in resp.aiter_lines() if line.startswith("data:")]
            assert any('"error"' in event for event in events)
        finally:
            upstream.reset()
    after = await scrape(node)
    for kind in ("rate_limited", "rejected", "transport", "stream"):
        errors = "satsrouter_upstream_errors_total"
        labels = {"provider": provider, "kind": kind}
        assert value(after, errors, **labels) - value(before, errors, **labels) == 1, kind
    # Nothing was charged for any of them.
    assert (await node.balance(token))["balance"] == 50_000
    assert value(after, "satsrouter_liabilities_msat") == 50_000


def test_mint_operations_are_bounded_labels() -> None:
    assert mint_operation("http://127.0.0.1:3338", "/v1/swap") == "/v1/swap"
    assert (
        mint_operation("https://mint.example/Bitcoin", "/Bitcoin/v1/keys/009a1f293253e41e")
        == "/v1/keys/{id}"
    )
    assert (
        mint_operation("http://127.0.0.1:3338/", "/v1/mint/quote/bolt11/Qx7rT2kL9")
        == "/v1/mint/quote/bolt11/{id}"
    )
    assert mint_operation("http://m", "/" + "/".join(["a1"] * 50)) == "/" + "/".join(["{id}"] * 6)
