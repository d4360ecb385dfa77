"""Usage figures and keys for the operator, from the ledger: exact against real paid requests."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from conftest import NodeFactory, RunningNode, admin_client
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.admin.usage import DAY_SECONDS, OperatorUsage
from satsrouter.billing.balances import credit_tx, open_account_tx

MESSAGES = [{"role": "user", "content": "count my words for the usage page"}]


def prefix_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def today() -> str:
    return datetime.now(UTC).date().isoformat()


async def new_key(node: RunningNode, wallet: TestWallet, sats: int = 100) -> str:
    (token,) = await wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=node.url) as http:
        made = await http.post("/v1/wallet/create", json={"cashu_token": token})
    assert made.status_code == 200, made.text
    key: str = made.json()["api_key"]
    return key


def client(node: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)


async def rows(node: RunningNode, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Rows of a query on the node's database (what the ledger recorded)."""
    found, _ = await node.node.tx.read(lambda tx: tx.execute(sql, params or {}))
    return found


async def recorded_days(node: RunningNode) -> dict[str, dict[str, int]]:
    """The figures per UTC day, from the reservation rows themselves (whatever day it is)."""
    days: dict[str, dict[str, int]] = {}
    for state, settled_at, charged, prompt, completion, error in await rows(
        node,
        "SELECT state, settled_at, charged_msat, input_tokens, output_tokens, error "
        "FROM reservations WHERE settled_at IS NOT NULL",
    ):
        day = datetime.fromtimestamp(float(settled_at), UTC).date().isoformat()
        entry = days.setdefault(day, figures(0, 0, [], 0))
        entry["requests"] += 1
        entry["errors"] += int(state == "released" and error is not None)
        entry["input_tokens"] += int(prompt or 0)
        entry["output_tokens"] += int(completion or 0)
        entry["revenue_msat"] += int(charged or 0) if state == "charged" else 0
    return days


def check_by_day(by_day: list[dict[str, Any]], recorded: dict[str, dict[str, int]]) -> None:
    """Every day the requests ended on shows its own figures; every other day, zeros."""
    for entry in by_day:
        figures_of_day = {k: v for k, v in entry.items() if k != "day"}
        assert figures_of_day == recorded.get(entry["day"], figures(0, 0, [], 0)), entry
    assert set(recorded) <= {entry["day"] for entry in by_day}


async def charged_sum(node: RunningNode) -> int:
    """Revenue as the journal has it: every charge row, over every account."""
    (row,) = await rows(
        node, "SELECT coalesce(sum(amount_msat), 0) FROM journal WHERE kind = 'charge'"
    )
    return -int(row[0])


async def paid_traffic(
    node: RunningNode, wallet: TestWallet, upstream: FakeUpstream
) -> dict[str, Any]:
    """Real paid requests on two models (a stream, an X-Cashu one) and a failed one.

    Returns what the clients were told: usage per model, and the key.
    """
    key = await new_key(node, wallet)
    api = client(node, key)
    seen: dict[str, list[tuple[int, int]]] = {"test/priced": [], "test/flat": []}
    for max_tokens in (3, 5, 7):
        reply = await api.chat.completions.create(
            model="test/priced", messages=MESSAGES, max_tokens=max_tokens
        )
        assert reply.usage is not None
        seen["test/priced"].append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
    stream = await api.chat.completions.create(
        model="test/flat",
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    final = None
    async for chunk in stream:
        final = chunk
    assert final is not None and final.usage is not None
    seen["test/flat"].append((final.usage.prompt_tokens, final.usage.completion_tokens))
    # Paid per request with X-Cashu: an account of its own, not listed among keys by default.
    (token,) = await wallet.mint_tokens(50)
    per_request = openai.AsyncOpenAI(
        base_url=node.api, api_key="unused", max_retries=0, default_headers={"X-Cashu": token}
    )
    reply = await per_request.chat.completions.create(
        model="test/flat", messages=MESSAGES, max_tokens=4
    )
    assert reply.usage is not None
    seen["test/flat"].append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
    # The upstream fails: nothing is charged, the request counts as an error.
    upstream.configure(fail="500")
    with pytest.raises(openai.APIStatusError) as failed:
        await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=4)
    assert failed.value.status_code == 502
    upstream.configure(fail=None)
    return {"key": key, "seen": seen}


def figures(
    requests: int, errors: int, usages: list[tuple[int, int]], revenue: int
) -> dict[str, int]:
    return {
        "requests": requests,
        "errors": errors,
        "input_tokens": sum(prompt for prompt, _ in usages),
        "output_tokens": sum(completion for _, completion in usages),
        "revenue_msat": revenue,
    }


async def test_usage_and_keys_match_the_paid_requests(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    started = time.time()
    traffic = await paid_traffic(node, user_wallet, upstream)
    finished = time.time()
    key, seen = traffic["key"], traffic["seen"]
    revenue = await charged_sum(node)
    by_model_revenue = dict(
        await rows(
            node,
            "SELECT model, sum(charged_msat) FROM reservations WHERE state = 'charged' "
            "GROUP BY model",
        )
    )
    assert revenue > 0 and revenue == sum(int(v) for v in by_model_revenue.values())
    priced, flat = seen["test/priced"], seen["test/flat"]
    provider = node.node.settings.upstream_name

    admin = await admin_client(node)
    try:
        resp = await admin.get("/admin/api/usage", params={"days": 3})
        assert resp.status_code == 200, resp.text
        usage = resp.json()
        keys = (await admin.get("/admin/api/keys")).json()
        xcashu = (await admin.get("/admin/api/keys", params={"kind": "xcashu"})).json()
        assert (await admin.get("/admin/api/usage", params={"days": 0})).status_code == 400
        assert (await admin.get("/admin/api/keys", params={"kind": "nope"})).status_code == 400
    finally:
        await admin.aclose()

    all_usages = priced + flat
    assert usage["totals"] == figures(6, 1, all_usages, revenue)
    assert usage["by_model"] == [
        {"model": model, **figures(count, errors, seen[model], int(by_model_revenue[model]))}
        for model, count, errors in sorted(
            [("test/priced", 4, 1), ("test/flat", 2, 0)],
            key=lambda m: -int(by_model_revenue[m[0]]),
        )
    ]
    assert usage["by_provider"] == [{"provider": provider, **usage["totals"]}]
    # By day, as the rows say: right even when the requests ran across midnight UTC.
    assert len(usage["by_day"]) == 3
    check_by_day(usage["by_day"], await recorded_days(node))
    assert (
        datetime.fromtimestamp(usage["since"], UTC).date().isoformat() == usage["by_day"][0]["day"]
    )

    # The records behind the figures: the endpoint, the provider, why the failure failed.
    recorded = await rows(
        node, "SELECT state, endpoint, provider, error FROM reservations ORDER BY created_at"
    )
    assert {(r[1], r[2]) for r in recorded} == {("/chat/completions", provider)}
    assert [r[3] for r in recorded if r[0] == "released"] == ["upstream_error"]
    assert all(r[3] is None for r in recorded if r[0] == "charged")

    # The key: its balance, its spending, its last use; the X-Cashu account only on request.
    (listed,) = [k for k in keys["keys"] if k["hash_prefix"] == prefix_of(key)]
    balance = await node.balance(key)
    (key_spent,) = await rows(
        node,
        "SELECT -sum(amount_msat) FROM journal j JOIN accounts a ON a.id = j.account_id "
        "WHERE a.key_hash = :kh AND j.kind = 'charge'",
        {"kh": hashlib.sha256(key.encode()).hexdigest()},
    )
    assert listed["kind"] == "key" and listed["disabled"] is False and listed["parent"] is None
    assert listed["balance_msat"] == balance["balance"] == 100_000 - int(key_spent[0])
    assert listed["reserved_msat"] == 0 and listed["total_requests"] == 4
    assert listed["total_spent_msat"] == int(key_spent[0])
    assert started <= listed["last_used_at"] <= finished
    assert listed["mint_url"] and listed["unit"] == "sat" and listed["expires_at"] is None
    assert keys["total"] == len(keys["keys"]) and all(k["kind"] != "xcashu" for k in keys["keys"])
    (per_request,) = xcashu["keys"]
    assert per_request["kind"] == "xcashu" and per_request["total_requests"] == 1
    assert listed["total_spent_msat"] + per_request["total_spent_msat"] == revenue
    await node.check_invariants()


async def test_a_disabled_key_pays_for_nothing_and_keeps_its_balance(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    key = await new_key(node, user_wallet)
    api = client(node, key)
    await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=3)
    async with httpx.AsyncClient(base_url=node.url) as http:
        made = await http.post(
            "/v1/balance/child-key", headers={"Authorization": f"Bearer {key}"}, json={"count": 1}
        )
        assert made.status_code == 200, made.text
    (child,) = made.json()["api_keys"]
    before = await node.balance(key)
    (reservations_before,) = await rows(node, "SELECT count(*) FROM reservations")

    admin = await admin_client(node)
    try:
        off = await admin.post(f"/admin/api/keys/{prefix_of(key)}/disable")
        assert off.status_code == 200, off.text
        assert off.json()["disabled"] is True
        assert off.json()["balance_msat"] == before["balance"]
        for refused in (key, child):
            with pytest.raises(openai.PermissionDeniedError) as info:
                await client(node, refused).chat.completions.create(
                    model="test/priced", messages=MESSAGES, max_tokens=3
                )
            assert info.value.status_code == 403
            assert info.value.body["type"] == "key_disabled"  # type: ignore[index]
        # Nothing was reserved, nothing moved; the owner still sees the balance.
        assert await rows(node, "SELECT count(*) FROM reservations") == [reservations_before]
        assert await node.balance(key) == before
        # No new money into a key that cannot spend it.
        (token,) = await user_wallet.mint_tokens(10)
        async with httpx.AsyncClient(base_url=node.url) as http:
            topup = await http.post(
                "/v1/balance/topup",
                headers={"Authorization": f"Bearer {key}"},
                json={"cashu_token": token},
            )
        assert topup.status_code == 403 and topup.json()["error"]["type"] == "key_disabled"
        assert await user_wallet.redeem(token) == 10  # refused before redeeming: still good
        # Disabling twice is the same; the key is listed as disabled.
        again = await admin.post(f"/admin/api/keys/{prefix_of(key)[:8]}/disable")
        assert again.json() == off.json()
        listed = (await admin.get("/admin/api/keys")).json()["keys"]
        by_prefix = {k["hash_prefix"]: k for k in listed}
        assert by_prefix[prefix_of(key)]["disabled"] is True
        assert by_prefix[prefix_of(child)]["parent"] == prefix_of(key)
        assert by_prefix[prefix_of(child)]["kind"] == "child"

        on = await admin.post(f"/admin/api/keys/{prefix_of(key)}/enable")
        assert on.status_code == 200 and on.json()["disabled"] is False
        for allowed in (key, child):
            await client(node, allowed).chat.completions.create(
                model="test/priced", messages=MESSAGES, max_tokens=3
            )
        assert (await node.balance(key))["balance"] < before["balance"]

        # A child key disabled on its own: refused; its parent is not.
        assert (await admin.post(f"/admin/api/keys/{prefix_of(child)}/disable")).status_code == 200
        with pytest.raises(openai.PermissionDeniedError):
            await client(node, child).chat.completions.create(
                model="test/priced", messages=MESSAGES, max_tokens=3
            )
        await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=3)

        # Disabled again, its owner can still take the money out: nothing is trapped.
        await admin.post(f"/admin/api/keys/{prefix_of(key)}/disable")
        left = (await node.balance(key))["balance"]
        async with httpx.AsyncClient(base_url=node.url) as http:
            paid = await http.post("/v1/balance/refund", headers={"Authorization": f"Bearer {key}"})
        assert paid.status_code == 200, paid.text
        assert await user_wallet.redeem(paid.json()["token"]) == left // 1000

        missing = await admin.post("/admin/api/keys/00000000ffffffff/disable")
        assert missing.status_code == 404
        bad = await admin.post("/admin/api/keys/xyz/disable")
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request"
    finally:
        await admin.aclose()
    await node.check_invariants()


async def test_days_are_utc_days_and_sweeps_count_as_errors(node: RunningNode) -> None:
    """A request counts on the UTC day it ended, to the boundary; a swept one is an error."""
    tx = node.node.tx
    noon = (time.time() // DAY_SECONDS) * DAY_SECONDS + DAY_SECONDS / 2
    midnight = noon - DAY_SECONDS / 2

    def setup(t: Any) -> int:
        account = open_account_tx(t, "f" * 64, "key", "http://mint", "sat", noon)
        credit_tx(t, account, 10_000, "credit", "test", noon)
        for rid, settled_at, charged in (
            ("before", midnight - 0.001, 100),  # yesterday, by a millisecond
            ("at", midnight, 200),  # today, from its first instant
        ):
            t.execute(
                "INSERT INTO reservations (id, account_id, amount_msat, charged_msat, state, "
                "instance_id, model, provider, created_at, settled_at, input_tokens, "
                "output_tokens) VALUES (:id, :a, 500, :c, 'charged', 'i', 'm', 'p', :s, :s, "
                "2, 3)",
                {"id": rid, "a": account, "c": charged, "s": settled_at},
            )
        return account

    await tx.run(setup)
    ledger = node.node.ledger
    await ledger.reserve("f" * 64, "gone", 1000, "m", provider="p", endpoint="/completions")
    # Its process is this one but no live request holds it: the sweeper releases it.
    assert await ledger.sweep(30.0, set(), min_age=0.0) == 1
    (error,) = await rows(node, "SELECT error FROM reservations WHERE id = 'gone'")
    assert error == ("recovered",)

    report = await OperatorUsage(tx).figures(2, now=noon)
    assert report["since"] == midnight - DAY_SECONDS
    yesterday, today_ = report["by_day"]
    assert yesterday == {"day": yesterday["day"], **figures(1, 0, [(2, 3)], 100)}
    # Today: the one charged at midnight and the swept one (released now, no tokens).
    assert today_ == {"day": today(), **figures(2, 1, [(2, 3)], 200)}
    assert report["by_provider"] == [{"provider": "p", **figures(3, 1, [(2, 3)] * 2, 300)}]


async def test_usage_and_disabling_on_postgres(
    node_factory: NodeFactory, postgres_url: str, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    upstream.reset()
    node = await node_factory(database_url=postgres_url)
    traffic = await paid_traffic(node, user_wallet, upstream)
    key, seen = traffic["key"], traffic["seen"]
    revenue = await charged_sum(node)
    admin = await admin_client(node)
    try:
        usage = (await admin.get("/admin/api/usage", params={"days": 2})).json()
        assert usage["totals"] == figures(6, 1, seen["test/priced"] + seen["test/flat"], revenue)
        assert len(usage["by_day"]) == 2
        check_by_day(usage["by_day"], await recorded_days(node))
        listed = (await admin.get("/admin/api/keys", params={"kind": "key,xcashu"})).json()
        assert {k["kind"] for k in listed["keys"]} == {"key", "xcashu"} and listed["total"] == 2
        off = await admin.post(f"/admin/api/keys/{prefix_of(key)}/disable")
        assert off.json()["disabled"] is True
        with pytest.raises(openai.PermissionDeniedError):
            await client(node, key).chat.completions.create(
                model="test/priced", messages=MESSAGES, max_tokens=3
            )
        assert (await node.balance(key))["balance"] == off.json()["balance_msat"]
    finally:
        await admin.aclose()
    await node.check_invariants()


async def test_each_failure_is_recorded_with_its_code(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    key = await new_key(node, user_wallet)
    api = client(node, key)
    cases = [
        ("500", False, "upstream_error"),
        ("timeout", False, "upstream_timeout"),
        ("429", False, "rate_limited_upstream"),
        ("400", False, "upstream_rejected"),
        ("drop_midstream", True, "upstream_error"),
    ]
    try:
        for fail, stream, _ in cases:
            upstream.configure(fail=fail)
            with pytest.raises(openai.APIError):
                reply = await api.chat.completions.create(
                    model="test/priced", messages=MESSAGES, max_tokens=5, stream=stream
                )
                if stream:
                    async for _ in reply:  # type: ignore[union-attr]
                        pass
    finally:
        upstream.configure(fail=None)
    recorded = await rows(node, "SELECT state, error FROM reservations ORDER BY created_at")
    assert recorded == [("released", code) for _, _, code in cases]
    admin = await admin_client(node)
    try:
        usage = (await admin.get("/admin/api/usage", params={"days": 1})).json()
    finally:
        await admin.aclose()
    assert usage["totals"] == figures(5, 5, [], 0)
    assert (await node.balance(key))["balance"] == 100_000
    await node.check_invariants()
