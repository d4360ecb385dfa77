"""Rate limits: per key (or client IP), headers, 429 with nothing reserved, shared through
Redis, per-key overrides, failed authentications per IP, trusted proxies, in-flight caps."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import ADMIN_PASSWORD, NodeFactory, RunningNode, admin_client, eventually
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet, free_port
from satsrouter_dev.redis_server import LocalRedis

from satsrouter.admin.ratelimit import parse_limits
from satsrouter.http.client_ip import client_ip

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {
    "model": "test/priced",
    "messages": [{"role": "user", "content": "limit me"}],
    "max_tokens": 5,
}


async def new_key(node: RunningNode, wallet: TestWallet, sats: int = 100) -> str:
    (token,) = await wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=node.url) as http:
        made = await http.post("/v1/wallet/create", json={"cashu_token": token})
    assert made.status_code == 200, made.text
    key: str = made.json()["api_key"]
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def reservations(node: RunningNode) -> int:
    found, _ = await node.node.tx.read(
        lambda tx: tx.execute("SELECT count(*) FROM reservations", {})
    )
    return int(found[0][0])


def prefix_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


async def test_limits_enforced_with_headers_and_nothing_reserved(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(rate_limit="5/minute;100/hour")
    key = await new_key(node, user_wallet)
    async with httpx.AsyncClient(base_url=node.url) as http:
        for sent in range(1, 6):
            before = time.time()
            resp = await http.post(CHAT, json=BODY, headers=bearer(key))
            assert resp.status_code == 200, resp.text
            # The tightest window: the minute's, with the fewest left.
            assert resp.headers["x-ratelimit-limit"] == "5"
            assert resp.headers["x-ratelimit-remaining"] == str(5 - sent)
            reset = int(resp.headers["x-ratelimit-reset"])
            assert before < reset <= before + 61
        balance = await node.balance(key)
        reserved_rows = await reservations(node)

        refused = await http.post(CHAT, json=BODY, headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limited"
        assert refused.headers["x-ratelimit-limit"] == "5"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "x-request-id" in refused.headers
        # Nothing reserved, nothing charged: the balance and the reservations are as before.
        assert await node.balance(key) == balance
        assert await reservations(node) == reserved_rows
    await node.check_invariants()


async def test_x_cashu_token_is_not_redeemed_when_limited(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(rate_limit="2/minute")
    async with httpx.AsyncClient(base_url=node.url) as http:
        for _ in range(2):
            (token,) = await user_wallet.mint_tokens(20)
            paid = await http.post(CHAT, json=BODY, headers={"X-Cashu": token})
            assert paid.status_code == 200, paid.text
            assert paid.headers["x-ratelimit-remaining"] in ("1", "0")
        (token,) = await user_wallet.mint_tokens(20)
        refused = await http.post(CHAT, json=BODY, headers={"X-Cashu": token})
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limited"
        assert "x-cashu" not in refused.headers
    # Still the payer's: the mint redeems it for its full value.
    assert await user_wallet.redeem(token) == 20
    await node.check_invariants()


async def test_limits_are_shared_through_redis(
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    user_wallet: TestWallet,
    redis_server: LocalRedis,
) -> None:
    upstream.reset()
    redis.Redis.from_url(redis_server.url).flushdb()
    one = await node_factory(rate_limit="4/minute", redis_url=redis_server.url)
    two = await node_factory(rate_limit="4/minute", redis_url=redis_server.url)
    key = await new_key(one, user_wallet)
    async with httpx.AsyncClient() as http:
        codes = []
        for node in (one, two, one, two):
            resp = await http.post(f"{node.url}{CHAT}", json=BODY, headers=bearer(key))
            codes.append(resp.status_code)
        assert codes == [200] * 4
        assert resp.headers["x-ratelimit-remaining"] == "0"
        for node in (one, two):
            refused = await http.post(f"{node.url}{CHAT}", json=BODY, headers=bearer(key))
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
    await one.check_invariants()


async def test_two_node_processes_share_the_counters_through_redis(
    local_mint: LocalMint,
    upstream: FakeUpstream,
    user_wallet: TestWallet,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    """Two `satsrouter serve` processes on one database and one Redis: one set of counters."""
    upstream.reset()
    redis.Redis.from_url(redis_server.url).flushdb()
    shared = {"RATE_LIMIT": "4/minute", "REDIS_URL": redis_server.url}
    one = KillableNode(tmp_path / "one", local_mint.url, upstream.url, **shared)
    # The second process serves the first one's data: the same keys, another port.
    two = KillableNode(
        tmp_path / "two",
        local_mint.url,
        upstream.url,
        DATA_DIR=str(tmp_path / "one" / "node"),
        **shared,
    )
    for workdir in (one.workdir, two.workdir):
        workdir.mkdir()
    await one.start()
    try:
        await two.start()
        (token,) = await user_wallet.mint_tokens(100)
        async with httpx.AsyncClient() as http:
            made = await http.post(f"{one.url}/v1/wallet/create", json={"cashu_token": token})
            assert made.status_code == 200, made.text
            key = made.json()["api_key"]
            codes = []
            for node in (one, two, one, two):
                resp = await http.post(f"{node.url}{CHAT}", json=BODY, headers=bearer(key))
                codes.append(resp.status_code)
            assert codes == [200] * 4
            for node in (two, one):
                refused = await http.post(f"{node.url}{CHAT}", json=BODY, headers=bearer(key))
                assert refused.status_code == 429, refused.text
                assert refused.headers["x-ratelimit-remaining"] == "0"
                assert int(refused.headers["retry-after"]) >= 1
    finally:
        await two.stop()
        await one.stop()
    one.check_books()


async def test_failed_authentication_is_limited_per_ip_and_shared_with_admin_login(
    node_factory: NodeFactory,
    upstream: FakeUpstream,
    user_wallet: TestWallet,
    redis_server: LocalRedis,
) -> None:
    upstream.reset()
    redis.Redis.from_url(redis_server.url).flushdb()
    node = await node_factory(auth_failure_limit="3/minute", redis_url=redis_server.url)
    key = await new_key(node, user_wallet)
    async with httpx.AsyncClient(base_url=node.url) as http:
        codes = [
            (await http.post(CHAT, json=BODY, headers=bearer(f"sk-guess-{i}"))).status_code
            for i in range(3)
        ]
        assert codes == [401] * 3
        # Over the limit even a right key waits, and the mint and ledger are not asked.
        limited = await http.post(CHAT, json=BODY, headers=bearer(key))
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "too_many_attempts"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # One count per IP: the admin login from the same address is refused too.
        login = await http.post("/admin/api/login", json={"password": ADMIN_PASSWORD})
        assert login.status_code == 429
    # Through Redis, another node sees the same count (its check asks the storage).
    other = await node_factory(auth_failure_limit="3/minute", redis_url=redis_server.url)
    async with httpx.AsyncClient(base_url=other.url) as http:
        login = await http.post("/admin/api/login", json={"password": ADMIN_PASSWORD})
        assert login.status_code == 429


async def test_per_key_override_via_the_admin_api(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(rate_limit="2/minute")
    key = await new_key(node, user_wallet)
    admin = await admin_client(node)
    try:
        bad = await admin.patch(f"/admin/api/keys/{prefix_of(key)}", json={"rate_limit": "lots"})
        assert bad.status_code == 400
        patched = await admin.patch(
            f"/admin/api/keys/{prefix_of(key)}", json={"rate_limit": "4/minute"}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["rate_limit"] == "4/minute"
        listed = (await admin.get("/admin/api/keys")).json()["keys"]
        assert [k["rate_limit"] for k in listed if k["hash_prefix"] == prefix_of(key)] == [
            "4/minute"
        ]
        async with httpx.AsyncClient(base_url=node.url) as http:
            for _ in range(4):
                resp = await http.post(CHAT, json=BODY, headers=bearer(key))
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-ratelimit-limit"] == "4"
            assert (await http.post(CHAT, json=BODY, headers=bearer(key))).status_code == 429

        # Back to the node's limit: a new window of 2 (its own counter, never hit).
        reset = await admin.patch(f"/admin/api/keys/{prefix_of(key)}", json={"rate_limit": None})
        assert reset.status_code == 200 and reset.json()["rate_limit"] is None
        async with httpx.AsyncClient(base_url=node.url) as http:
            resp = await http.post(CHAT, json=BODY, headers=bearer(key))
            assert resp.headers["x-ratelimit-limit"] == "2"
    finally:
        await admin.aclose()
    # Stored: a node started later on the same database reads the override.
    await admin_override_survives(node_factory, key)


async def admin_override_survives(node_factory: NodeFactory, key: str) -> None:
    node = await node_factory(rate_limit="2/minute")
    admin = await admin_client(node)
    try:
        await admin.patch(f"/admin/api/keys/{prefix_of(key)}", json={"rate_limit": "7/hour"})
    finally:
        await admin.aclose()
    later = await node_factory(rate_limit="2/minute")
    key_hash = hashlib.sha256(key.encode()).hexdigest()
    assert later.node.key_limits.get(key_hash) == parse_limits("7/hour")


async def test_trusted_proxy_forwarded_for_only_from_a_trusted_peer(
    node_factory: NodeFactory, upstream: FakeUpstream
) -> None:
    upstream.reset()
    behind = await node_factory(rate_limit="2/minute", trusted_proxies=["127.0.0.0/8"])
    async with httpx.AsyncClient(base_url=behind.url) as http:

        async def status(client: str) -> int:
            headers = {"X-Forwarded-For": f"{client}, 127.0.0.1"}
            return (await http.post(CHAT, json=BODY, headers=headers)).status_code

        # Unauthenticated: 402, counted against the client the proxy names.
        assert [await status("203.0.113.5") for _ in range(3)] == [402, 402, 429]
        assert await status("203.0.113.6") == 402

    exposed = await node_factory(rate_limit="2/minute", trusted_proxies=["10.0.0.0/8"])
    async with httpx.AsyncClient(base_url=exposed.url) as http:
        codes = [
            (
                await http.post(CHAT, json=BODY, headers={"X-Forwarded-For": f"198.51.100.{i}"})
            ).status_code
            for i in range(3)
        ]
        # Forged headers from an untrusted peer change nothing: one client, 127.0.0.1.
        assert codes == [402, 402, 429]


def test_client_ip_reads_forwarded_for_right_to_left() -> None:
    peer = ("10.0.0.2", 5555)
    assert client_ip(peer, "1.2.3.4", []) == "10.0.0.2"
    assert client_ip(peer, "1.2.3.4", ["192.168.0.0/16"]) == "10.0.0.2"
    assert client_ip(peer, "1.2.3.4", ["10.0.0.0/8"]) == "1.2.3.4"
    # A client's forged first hop is skipped: the last untrusted hop is the client.
    assert client_ip(peer, "6.6.6.6, 1.2.3.4, 10.0.0.9", ["10.0.0.0/8"]) == "1.2.3.4"
    assert client_ip(peer, "not-an-ip", ["10.0.0.0/8"]) == "10.0.0.2"
    assert client_ip(None, None, []) == "unknown"


async def test_concurrent_requests_per_key_are_capped(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    node = await node_factory(max_concurrent_per_key=2, upstream_timeout=30.0)
    key = await new_key(node, user_wallet)
    slow = {**BODY, "fake": {"latency_ms": 1500}}
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        running = [
            asyncio.create_task(http.post(CHAT, json=slow, headers=bearer(key))) for _ in range(2)
        ]

        async def both_in_flight() -> bool:
            return node.node.in_flight.running(prefix_full(key)) == 2

        await eventually(both_in_flight, within=10, every=0.02)
        balance = await node.balance(key)
        refused = await http.post(CHAT, json=BODY, headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "too_many_concurrent"
        assert refused.headers["retry-after"] == "1"
        assert await node.balance(key) == balance  # the two running hold their reservations
        assert [r.status_code for r in await asyncio.gather(*running)] == [200, 200]
        # Slots are given back: the next request runs.
        assert (await http.post(CHAT, json=BODY, headers=bearer(key))).status_code == 200
    await node.check_invariants()


def prefix_full(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.parametrize("text", ["", "off", "OFF"])
def test_off_means_unlimited(text: str) -> None:
    assert parse_limits(text) == ()


def test_limits_sorted_shortest_window_first() -> None:
    items = parse_limits("10000/day;60/minute;1000/hour")
    assert [item.amount for item in items] == [60, 1000, 10000]
    with pytest.raises(ValueError):
        parse_limits("sixty a minute")


async def test_a_redis_outage_limits_nothing_rather_than_refusing(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    node = await node_factory(rate_limit="1/minute", auth_failure_limit="1/minute", redis_url=down)
    key = await new_key(node, user_wallet)
    async with httpx.AsyncClient(base_url=node.url) as http:
        for _ in range(2):
            resp = await http.post(CHAT, json=BODY, headers=bearer(key))
            assert resp.status_code == 200, resp.text
            assert "x-ratelimit-limit" not in resp.headers
        for _ in range(2):
            wrong = await http.post(CHAT, json=BODY, headers=bearer("sk-wrong"))
            assert wrong.status_code == 401
    await node.check_invariants()
