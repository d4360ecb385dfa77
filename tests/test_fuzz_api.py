"""schemathesis over the whole `/openapi.json`, paid endpoints included, against a real node.

A real mint funds the keys; the fake upstream answers. Every operation of the served document
is fuzzed (positive and negative cases) with a funded key, no credentials, an unknown key or
a bad X-Cashu token, and the admin cookie, except the admin routes that would move the
operator's money, lock the funded key out (withdraw, disable) or replace the providers the
paid endpoints are fuzzed through (provider and route changes). Checked on every answer:
no 5xx, the status, content type, headers and body conform to the document, and a rejected
request (4xx) changed no balance and wrote no journal row. Afterwards every account's
balance equals the sum of its journal and nothing stays reserved.

Bounded: a few examples per operation, derandomised (the same cases on every run), and a
total deadline past which the remaining operations each get only their first examples.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import databases
import httpx
import pytest
import schemathesis
from conftest import ADMIN_PASSWORD, NodeFactory, RunningNode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

EXAMPLES_PER_OPERATION = 30
ALWAYS = 3  # examples every operation runs, even past the deadline
DEADLINE_SECONDS = 80.0
# Moving the operator's money, disabling the funded key, or switching off (or adding) the
# providers everything else is fuzzed through is not what fuzzing is for: test_admin_withdraw,
# test_admin_usage and test_admin_providers cover them.
EXCLUDED = {
    ("POST", "/admin/api/withdraw"),
    ("POST", "/admin/api/keys/{hash_prefix}/disable"),
    ("PUT", "/admin/api/providers/{name}"),
    ("PATCH", "/admin/api/providers/{name}"),
    ("DELETE", "/admin/api/providers/{name}"),
    ("PUT", "/admin/api/routes"),
}
# What the funded key pays for (the check that the paid path was really taken counts them).
CHARGED = {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"}
# Paying a key out changes the ledger on a 2xx: these get a key of their own, so the funded
# key keeps paying for everything else.
PAYOUTS = {"/v1/wallet/withdraw", "/v1/balance/refund", "/v1/wallet/refund"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AUTH_HEADERS = ("authorization", "x-api-key", "x-cashu")
CREDENTIALS = ("key", "key-as-x-api-key", "none", "unknown-key", "bad-x-cashu")

Ledger = tuple[list[tuple[Any, ...]], tuple[Any, ...]]


# Lightning invoices are paid by the test mint's fake backend on its own, and credited by
# the node's watcher whenever it sees them: those credits (journal ref `ln:…`) land between
# any two requests, so they are left out of the before/after comparison.
_ACCOUNTS = """
SELECT id, adjusted, reserved FROM (
  SELECT a.id, a.balance_msat - coalesce(ln.total, 0) AS adjusted,
         a.reserved_msat AS reserved, coalesce(other.n, 0) AS n
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(amount_msat) AS total FROM journal
             WHERE ref LIKE 'ln:%' GROUP BY account_id) ln ON ln.account_id = a.id
  LEFT JOIN (SELECT account_id, count(*) AS n FROM journal
             WHERE ref NOT LIKE 'ln:%' GROUP BY account_id) other ON other.account_id = a.id
) AS ledger WHERE adjusted != 0 OR n > 0 OR reserved != 0 ORDER BY id
"""
_JOURNAL = "SELECT count(*), coalesce(sum(amount_msat), 0) FROM journal WHERE ref NOT LIKE 'ln:%'"


def ledger_state(db: str) -> Ledger:
    """Every account's balance and reservation, and the journal's size and sum (less the
    Lightning funding credits, see above)."""
    return databases.rows(db, _ACCOUNTS), databases.rows(db, _JOURNAL)[0]


def quiet(db: str, within: float = 20.0) -> Ledger:
    """The ledger once no reservation is active (a stream settles after its last byte)."""
    deadline = time.monotonic() + within
    while True:
        state = ledger_state(db)
        if all(reserved == 0 for _, _, reserved in state[0]):
            return state
        assert time.monotonic() < deadline, f"reservations still active: {state[0]}"
        time.sleep(0.01)


def credentials(kind: str, key: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and cookies for one of `CREDENTIALS` (the admin cookie goes with a key)."""
    admin = {"admin_password": ADMIN_PASSWORD}
    if kind == "key":
        return {"Authorization": f"Bearer {key}"}, admin
    if kind == "key-as-x-api-key":
        return {"x-api-key": key}, admin
    if kind == "unknown-key":
        return {"Authorization": "Bearer sk-unknown0000000000000000"}, {}
    if kind == "bad-x-cashu":
        return {"X-Cashu": "cashuBnot-a-token"}, {}
    return {}, {}


def fuzz_operation(
    operation: Any,
    base_url: str,
    db: str,
    key: str,
    models: list[str],
    past_deadline: Callable[[], bool],
    failures: list[str],
) -> int:
    """Run one operation's examples; returns how many requests were sent."""
    sent = 0
    label = f"{operation.method.upper()} {operation.path}"
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, kind=st.sampled_from(CREDENTIALS), model=st.sampled_from(models))
    def run(case: Any, kind: str, model: str) -> None:
        nonlocal sent
        if sent >= ALWAYS and past_deadline():
            return
        # The generated security values would shadow the credentials chosen here.
        for name in list(case.headers or {}):
            if name.lower() in AUTH_HEADERS:
                del case.headers[name]
        case.cookies = {}
        if isinstance(case.body, dict) and model:
            case.body["model"] = model  # reach the paid path, not only 404 model_not_found
        headers, cookies = credentials(kind, key)
        before = quiet(db)
        response = case.call(base_url=base_url, headers=headers, cookies=cookies, timeout=30)
        sent += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures
            failures.append(f"{label} [{kind}] -> {response.status_code}: {str(exc)[:600]}")
            return
        if 400 <= response.status_code < 500:
            after = quiet(db)
            if after != before:
                failures.append(
                    f"{label} [{kind}] -> {response.status_code} moved money: {before} -> {after}"
                )

    run()
    return sent


async def new_key(node: RunningNode, wallet: TestWallet, sats: int) -> str:
    (token,) = await wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=node.url) as http:
        made = await http.post("/v1/wallet/create", json={"cashu_token": token})
    assert made.status_code == 200, made.text
    key: str = made.json()["api_key"]
    return key


PAID = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/responses",
    "/v1/messages",
    "/v1/v1/messages",
]


async def test_openapi_describes_every_public_route(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        document = (await http.get("/openapi.json")).json()
    schemathesis.openapi.from_dict(document).validate()  # valid OpenAPI 3.1
    assert document["openapi"] == "3.1.0"
    app = node.server.config.app
    served = {
        (method.lower(), re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema
        for method in route.methods or ()
    }
    described = {(m, path) for path, ops in document["paths"].items() for m in ops}
    assert described == served
    assert not any(path.startswith("/admin/static") for _, path in described)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "x-api-key")
    assert (schemes["cashu"]["in"], schemes["cashu"]["name"]) == ("header", "X-Cashu")
    assert schemes["adminSession"]["in"] == schemes["adminPassword"]["in"] == "cookie"
    assert schemes["adminPassword"]["name"] == "admin_password"
    for path in PAID:
        op = document["paths"][path]["post"]
        assert op["security"] == [{"bearer": []}, {"apiKey": []}, {"cashu": []}]
        assert op["requestBody"]["required"] is True
        for status in ("400", "401", "402", "413", "429", "502", "503", "504"):
            assert status in op["responses"], (path, status)
        ok = op["responses"]["200"]
        assert "X-Routstr-Cost-Msats" in ok["headers"]
    payment = document["components"]["responses"]["PaymentRequired"]
    assert "X-Cashu" in payment["headers"]
    audio = document["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert list(audio) == ["multipart/form-data"]
    admin = document["paths"]["/admin/api/settings"]["patch"]
    assert admin["security"] == [{"adminSession": []}, {"adminPassword": []}]
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["message", "type", "code"]


@pytest.mark.timeout(240)
async def test_fuzz_the_whole_schema(
    node_factory: NodeFactory, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    upstream.reset()
    # A loaded machine may be slow to generate a long answer: the fuzz is about the API,
    # not about the upstream timeout (test_streaming_and_failures.py has that).
    # Rate limits off: 1,650 requests from one key and one address would be all 429s after
    # the first minute's 60 (the limits have their own tests in test_rate_limits.py).
    node = await node_factory(
        upstream_timeout=30.0, rate_limit="off", auth_failure_limit="off", max_concurrent_per_key=0
    )
    key = await new_key(node, user_wallet, 50_000)
    payout_key = await new_key(node, user_wallet, 300)
    async with httpx.AsyncClient(base_url=node.url) as http:
        document = (await http.get("/openapi.json")).json()
        listed = (await http.get("/v1/models")).json()["data"]
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # the document is valid OpenAPI 3.1 (schemathesis' meta-schema check)
    served = [m["id"] for m in listed]
    models = ["", "no-such/model", "test/priced", "test/flat", "test/image", "test/whisper"]
    models += served[:3]
    db = node.node.settings.effective_database_url

    operations = [result.ok() for result in schema.get_all_operations()]
    todo = [op for op in operations if (op.method.upper(), op.path) not in EXCLUDED]
    assert len(todo) == len(operations) - len(EXCLUDED)
    # The paid endpoints first, while the deadline leaves them all their examples (on a busy
    # machine the admin pages alone could use it up); payouts and settings last: what they
    # change should not shape the rest.
    todo.sort(
        key=lambda op: (
            op.path in PAYOUTS or op.method.upper() == "PATCH",
            op.path not in CHARGED,
            op.path,
        )
    )
    started = time.monotonic()
    failures: list[str] = []

    def fuzz_all() -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in todo:
            counts[f"{op.method.upper()} {op.path}"] = fuzz_operation(
                op,
                node.url,
                db,
                payout_key if op.path in PAYOUTS else key,
                models,
                lambda: time.monotonic() - started > DEADLINE_SECONDS,
                failures,
            )
        return counts

    # The node serves from this event loop; the fuzzer's blocking calls run beside it.
    counts = await asyncio.to_thread(fuzz_all)

    assert not failures, "\n".join(failures[:20])
    assert all(sent >= 1 for sent in counts.values()), counts
    # The paid path was really taken: the funded key paid for some requests.
    kinds = dict(databases.rows(db, "SELECT kind, count(*) FROM journal GROUP BY kind"))
    assert kinds.get("charge", 0) >= 5, kinds
    await node.check_invariants()


async def test_a_history_cursor_past_the_integer_range_is_a_400(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    """Found by the fuzzer: `before` past SQLite's integer range was a 500 (an overflow)."""
    key = await new_key(node, user_wallet, 10)
    async with httpx.AsyncClient(base_url=node.url) as http:
        for before in ("99999999999999999999", "-1"):
            resp = await http.get(
                "/v1/balance/history",
                params={"before": before},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["type"] == "invalid_request"
        ok = await http.get("/v1/balance/history", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and len(ok.json()["entries"]) == 1
