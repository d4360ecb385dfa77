"""No token, key, proof or upstream password ever reaches a log line, not even a fragment (I8).

A whole paid session runs with the root logger at DEBUG and the access log on, on SQLite and
on Postgres; then every 16-character window of every token, key and proof (secret and C)
that took part is searched for in everything logged or printed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from conftest import RunningNode, start_node
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from satsrouter.ecash._cashu import TokenV3, TokenV4
from satsrouter.logs import (
    QUIET_LOGGERS,
    REDACTED,
    JsonFormatter,
    mask_secrets,
    secure_logging,
    setup_logging,
)
from satsrouter.settings import Settings
from satsrouter.store.engine import make_engine

MESSAGES = [{"role": "user", "content": "secret test"}]
WINDOW = 16


class _Capture(logging.Handler):
    """Every record, formatted as a production handler would (tracebacks included), as text
    and as `LOG_FORMAT=json` writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.json = JsonFormatter()
        self.lines: list[str] = []
        self.json_lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.json_lines.append(self.json.format(record))


@pytest.fixture
def debug_log() -> Iterator[_Capture]:
    """Logging as `LOG_LEVEL=DEBUG satsrouter serve` sets it up, captured; restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict]
    levels = [logger.level for logger in loggers]
    # uvicorn stops the access log's propagation for good in every server started without
    # it (the other tests' nodes); `serve --access-log` leaves it propagating to our handler.
    access = logging.getLogger("uvicorn.access")
    access_propagates, access.propagate = access.propagate, True
    setup_logging("DEBUG")
    capture = _Capture()
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for logger, logger_level in zip(loggers, levels, strict=True):
            logger.setLevel(logger_level)
        access.propagate = access_propagates


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def logged_node(
    request: pytest.FixtureRequest,
    debug_log: _Capture,
    node_settings: Settings,
    upstream: FakeUpstream,
) -> AsyncIterator[RunningNode]:
    """A node with its access log on, on each database, started with the log captured."""
    upstream.reset()
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    running = await start_node(
        dataclasses.replace(node_settings, database_url=url), access_log=True
    )
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stop()


def _proof_fields(token: str) -> list[str]:
    """The secret and C of every proof in a token."""
    parsed = (
        TokenV4.deserialize(token) if token.startswith("cashuB") else TokenV3.deserialize(token)
    )
    return [field for p in parsed.proofs for field in (p.secret, p.C)]


def _stored_strings(node: RunningNode) -> list[str]:
    """Every opaque string of 32+ characters in the SQLite files under the node's DATA_DIR."""
    found: list[str] = []
    for path in node.node.settings.data_dir.rglob("*"):
        if path.is_file() and path.read_bytes()[:16] == b"SQLite format 3\x00":
            found += _strings_in(path)
    return found


def _strings_in(path: Path) -> list[str]:
    found: list[str] = []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                found += [v for v in row if isinstance(v, str) and _opaque(v)]
    finally:
        conn.close()
    return found


async def _stored_strings_pg(node: RunningNode) -> list[str]:
    """The same for the node's own database when it is Postgres."""
    found: list[str] = []
    async with node.node.engine.connect() as conn:
        tables = (
            await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ).scalars()
        for table in list(tables):
            rows = await conn.execute(text(f'SELECT * FROM "{table}"'))
            found += [v for row in rows for v in row if isinstance(v, str) and _opaque(v)]
    return found


def _opaque(value: str) -> bool:
    """Shaped like a key, a hash, a proof or a token: long, no spaces, letters and digits."""
    return (
        len(value) >= 32
        and " " not in value
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and not value.startswith(("http://", "https://", "{", "["))
    )


def _leaks(secrets: dict[str, str], logged: str) -> list[str]:
    """Which secrets have a 16-character window in `logged` (named, never shown)."""
    leaked = []
    for name, secret in secrets.items():
        for start in range(max(1, len(secret) - WINDOW + 1)):
            if secret[start : start + WINDOW] in logged:
                leaked.append(f"{name} (window at {start} of {len(secret)})")
                break
    return leaked


async def _chat(
    http: httpx.AsyncClient, headers: dict[str, str], *, stream: bool
) -> tuple[httpx.Response, str | None]:
    """One paid chat request; returns the response and any X-Cashu change it carried."""
    body = {"model": "test/priced", "messages": MESSAGES, "max_tokens": 3, "stream": stream}
    if not stream:
        resp = await http.post("/v1/chat/completions", json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        return resp, resp.headers.get("x-cashu")
    change = None
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and "x_cashu_change" in line:
                change = json.loads(line[6:])["x_cashu_change"]
    return resp, change


async def test_a_paid_session_at_debug_logs_no_fragment_of_a_secret(
    logged_node: RunningNode,
    user_wallet: TestWallet,
    upstream: FakeUpstream,
    debug_log: _Capture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    node = logged_node
    tokens = await user_wallet.mint_tokens(40, count=9)
    for_key, for_query_key, as_key, x_cashu, x_stream, topup, spent, failed, _ = tokens
    issued: list[str] = []  # tokens the node paid out: change, withdrawals
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        created = await http.post("/v1/wallet/create", json={"cashu_token": for_key})
        key = created.json()["api_key"]
        # The Routstr form puts the token in the query string, where the access log sees it.
        by_query = await http.get(
            "/v1/balance/create", params={"initial_balance_token": for_query_key}
        )
        query_key = by_query.json()["api_key"]

        for stream in (False, True):
            await _chat(http, {"Authorization": f"Bearer {key}"}, stream=stream)
            await _chat(http, {"Authorization": f"Bearer {as_key}"}, stream=stream)
        _, change = await _chat(http, {"X-Cashu": x_cashu}, stream=False)
        _, stream_change = await _chat(http, {"X-Cashu": x_stream}, stream=True)
        assert change and stream_change
        issued += [change, stream_change]
        again = await http.post("/v1/balance/refund", headers={"X-Cashu": x_cashu})
        assert again.json()["token"] == change

        added = await http.post(
            "/v1/wallet/topup",
            json={"cashu_token": topup},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert added.status_code == 200, added.text
        part = await http.post(
            "/v1/wallet/withdraw", json={"amount": 5}, headers={"Authorization": f"Bearer {key}"}
        )
        rest = await http.post("/v1/balance/refund", headers={"x-api-key": query_key})
        whole = await http.post("/v1/balance/refund", headers={"Authorization": f"Bearer {as_key}"})
        for resp in (part, rest, whole):
            assert resp.status_code == 200, resp.text
            issued.append(resp.json()["token"])

        # Failures log too: a token spent twice, an unknown key, an upstream error.
        assert (await http.post("/v1/wallet/create", json={"cashu_token": spent})).is_success
        twice = await http.post("/v1/wallet/create", json={"cashu_token": spent})
        assert twice.status_code == 400
        unknown = await http.get(
            "/v1/balance/info", headers={"Authorization": "Bearer sk-" + "7" * 48}
        )
        assert unknown.status_code == 401
        upstream.configure(fail="500")
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "test/priced", "messages": MESSAGES},
            headers={"X-Cashu": failed},
        )
        assert resp.status_code >= 500
        issued.append(resp.headers["x-cashu"])  # the whole value back
        upstream.reset()
    await node.check_invariants()

    secrets: dict[str, str] = {"upstream key": "upstream-secret"}
    for i, token in enumerate(tokens + issued):
        secrets[f"token {i}"] = token
        for j, field in enumerate(_proof_fields(token)):
            secrets[f"token {i} proof field {j}"] = field
    secrets |= {"key": key, "query key": query_key}
    stored = _stored_strings(node)  # the node's wallet; on SQLite its database too
    if node.node.engine.dialect.name == "postgresql":
        stored += await _stored_strings_pg(node)
    assert len(stored) > 20, "expected the node's proofs and hashes among what it stores"
    # Whatever the node keeps (its own proofs, key hashes, ...) must stay out of the log too.
    secrets |= {f"stored value {i}": value for i, value in enumerate(stored)}

    out, err = capfd.readouterr()
    logged = "\n".join(debug_log.lines + debug_log.json_lines) + out + err
    assert len(debug_log.lines) > 20, "expected the node to log at DEBUG"
    assert any("/v1/chat/completions" in line for line in debug_log.lines), "no access log"
    assert any("GET /v1/balance/create?[query hidden]" in line for line in debug_log.lines)
    # No SQL, no rows, no URLs or headers from the libraries, even at DEBUG.
    quiet = [line for line in debug_log.lines if line.split()[1].startswith(QUIET_LOGGERS)]
    assert quiet == []
    assert _leaks(secrets, logged) == []
    # And that is the sources' doing: the masking, a backstop, found nothing to hide.
    assert REDACTED not in logged


def test_mask_secrets() -> None:
    line = "got cashuBo2F0gaJhaUgA2 and sk-abcdef0123456789 and Bearer xyz123"
    masked = mask_secrets(line)
    assert "cashuBo2F0gaJhaUgA2" not in masked
    assert "sk-abcdef0123456789" not in masked
    assert "xyz123" not in masked


async def test_masking_leaves_no_tail_of_a_truncated_token(user_wallet: TestWallet) -> None:
    (token,) = await user_wallet.mint_tokens(127)  # seven proofs: a long token
    assert len(token) > 400
    # How SQLAlchemy shows a long parameter: its first and last 150 characters.
    line = f"[generated in 0.00012s] ('{token[:150]} ... ({len(token) - 300} characters "
    line += f"truncated) ... {token[-150:]}', 7)"
    assert _leaks({"token": token}, mask_secrets(line)) == []
    for field in _proof_fields(token):  # a proof's secret or C alone, without its token
        assert _leaks({"field": field}, mask_secrets(f"proof {field}: spent")) == []


async def test_tracebacks_are_masked(user_wallet: TestWallet) -> None:
    (token,) = await user_wallet.mint_tokens(3)
    secure_logging()
    logger = logging.getLogger("satsrouter.tests.traceback")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        try:
            raise ValueError(f"cannot use {token} or its tail {token[-60:]}")
        except ValueError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(capture)
    (logged,) = capture.lines
    assert "ValueError: cannot use cashu" in logged  # the traceback is there, masked
    assert _leaks({"token": token}, logged) == []


async def test_json_log_lines_are_masked(user_wallet: TestWallet) -> None:
    """LOG_FORMAT=json: message, exception and stack come from the masked record."""
    (token,) = await user_wallet.mint_tokens(3)
    secure_logging()
    logger = logging.getLogger("satsrouter.tests.json")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        logger.warning("redeeming %s for key sk-%s", token, "4" * 48, stack_info=True)
        try:
            raise ValueError(f"cannot use {token} or its tail {token[-60:]}")
        except ValueError:
            logger.exception("request failed with %s", token)
    finally:
        logger.removeHandler(capture)
    warned, failed = (json.loads(line) for line in capture.json_lines)
    assert warned["message"] == f"redeeming cashuB{REDACTED} for key sk-{REDACTED}"
    assert warned["level"] == "WARNING" and warned["logger"] == "satsrouter.tests.json"
    assert "stack" in warned
    assert failed["message"] == f"request failed with cashuB{REDACTED}"
    assert "ValueError: cannot use cashuB" in failed["exception"]
    logged = "\n".join(capture.json_lines)
    assert _leaks({"token": token, "key": "sk-" + "4" * 48}, logged) == []


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_database_errors_do_not_show_parameters(
    database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if database == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    )
    engine = make_engine(url)
    secret = "cashuB" + "q7" * 40
    try:
        with pytest.raises(DBAPIError) as info:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO nowhere VALUES (:v)"), {"v": secret})
    finally:
        await engine.dispose()
    assert "nowhere" in str(info.value)
    assert secret[6:22] not in str(info.value)
