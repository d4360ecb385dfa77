"""The real programs the seeds name, unchanged, against a node: every run charged exactly.

Claude Code (npm, pinned) with the seed's two environment variables, paid by an `sk-` key
and by a Cashu token, with its default model, a listed model and one tool round trip; and
the client guide's own examples verbatim (tests/fixtures/seed_002): the OpenAI Python
streaming loop, the Node.js `openai` example and the cURL command.

One node, mint and fake upstream serve the whole module. Claude Code's answers go through
a `CostTap` so the test sees the cost the node reported for each request; the fake
upstream keeps every body it was sent, so each cost is also checked against the price of
the catalogue model it was served by and the usage shown with it.

Marked `clients`: `pytest -m "not clients"` leaves them out locally; `make test` and CI
run them (Node.js, npm and curl from Debian, the npm packages by `npm ci`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import databases
import httpx
import pytest
import pytest_asyncio
from client_programs import CLAUDE, Finished, base_env, claude, ensure_installed, pinned, run
from conftest import BTC_USD, FEE, RunningNode, expected_cost, model_entry, start_node
from cost_tap import CostTap
from satsrouter_dev.fake_upstream import FakeUpstream, default_models, prompt_tokens_of
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.settings import Settings

pytestmark = pytest.mark.clients

SEEDS = Path(__file__).parent / "fixtures" / "seed_002"
SEED_URL = "https://api.routstr.com/v1"
FUNDS_SAT = 10_000  # covers Claude Code's reservations (max_tokens up to 128000)
REPLY_WORDS = 10  # the fake's default reply length
REPLY = " ".join(f"w{i}" for i in range(1, REPLY_WORDS + 1))
# A model the node lists under its catalogue id (the one the report failed with).
LISTED_MODEL = "anthropic/claude-3.5-sonnet"
SECRET = "The secret word is pineapple."


class RecordingUpstream(FakeUpstream):
    """The fake upstream, keeping every request body (the base class keeps only the last)."""

    def __init__(self, **options: Any) -> None:
        self.bodies: list[dict[str, Any]] = []
        super().__init__(**options)

    def record_body(self, body: object) -> None:
        super().record_body(body)
        if isinstance(body, dict):
            self.bodies.append(body)

    def reset(self) -> None:
        super().reset()
        self.bodies.clear()


@dataclasses.dataclass
class Stack:
    """The node, the upstream behind it and the tap in front of it."""

    node: RunningNode
    upstream: RecordingUpstream
    tap: CostTap

    async def balance_msat(self, key: str) -> int:
        balance: int = (await self.node.balance(key))["balance"]
        return balance

    async def new_key(self, wallet: TestWallet) -> str:
        """An `sk-` key funded with FUNDS_SAT."""
        (token,) = await wallet.mint_tokens(FUNDS_SAT)
        async with httpx.AsyncClient(base_url=self.node.url) as http:
            resp = await http.post("/v1/wallet/create", json={"cashu_token": token})
        resp.raise_for_status()
        key: str = resp.json()["api_key"]
        return key


@pytest.fixture(scope="session")
def programs() -> None:
    """The pinned programs, installed (`npm ci` at most once per session)."""
    ensure_installed()


@pytest_asyncio.fixture(scope="module")
async def stack(
    programs: None,
    local_mint: LocalMint,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Stack]:
    upstream = RecordingUpstream(models=default_models())
    await upstream.start()
    # Shared by the module's tests, so not one of a test's own databases (tests/databases.py).
    cluster = request.getfixturevalue("postgres") if databases.ON_POSTGRES else None
    settings = Settings(
        upstream_base_url=upstream.url,
        # Speaking OpenRouter, as a node in front of openrouter.ai does (its default):
        # Claude Code's thinking then travels as OpenRouter's `reasoning`.
        upstream_dialect="openrouter",
        upstream_api_key="upstream-secret",
        upstream_timeout=10.0,
        cashu_mints=[local_mint.url],
        data_dir=tmp_path_factory.mktemp("clients-node"),
        database_url=cluster.create_database("clients") if cluster else "",
        btc_usd_price=BTC_USD,
        provider_fee=FEE,
        drain_timeout=5.0,
    )
    node = await start_node(settings)
    tap = CostTap(node.url)
    await tap.start()
    try:
        yield Stack(node, upstream, tap)
    finally:
        await tap.stop()
        await node.stop()
        await upstream.stop()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The shared stack with the upstream's behaviour, its bodies and the tap cleared."""
    stack.upstream.reset()
    stack.tap.exchanges.clear()
    return stack


def assert_charged_exactly(stack: Stack, spent_msat: int) -> None:
    """The balance dropped by the sum of the costs the node reported, each one exact.

    Each reported cost is the catalogue price of the model the upstream was asked for,
    applied to the usage reported with it; that usage is the fake upstream's own count of
    the prompt it received.
    """
    report = stack.tap.report()
    paid = stack.tap.paid()
    assert paid, f"no response reported a cost:\n{report}"
    assert sum(e.cost_msat or 0 for e in paid) == spent_msat, report
    bodies = stack.upstream.bodies
    assert len(bodies) == len(paid), f"{len(bodies)} upstream requests:\n{report}"
    for exchange, body in zip(paid, bodies, strict=True):
        assert exchange.input_tokens == prompt_tokens_of(body["messages"]), report
        assert exchange.output_tokens is not None, report
        price = model_entry(body["model"])
        cost = expected_cost(price, exchange.input_tokens, exchange.output_tokens)
        assert exchange.cost_msat == cost, report


async def claude_code(
    stack: Stack, tmp_path: Path, credentials: dict[str, str], *args: str, prompt: str
) -> dict[str, Any]:
    """Run Claude Code against the node (through the tap) and check it answered REPLY."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir(exist_ok=True)
    home.mkdir()
    finished = await claude(
        prompt,
        *args,
        # As the seed says: the node's /v1 (Claude Code then asks for /v1/v1/messages).
        base_url=stack.tap.url + "/v1",
        credentials=credentials,
        cwd=work,
        home=home,
    )
    try:
        result = finished.json()
    except ValueError:
        result = {}
    # What Claude Code said, then what the node answered it: the reason comes first.
    context = (
        f"claude exited {finished.returncode}: result={result.get('result')!r} "
        f"api_error_status={result.get('api_error_status')}\n"
        f"requests:\n{stack.tap.report()}\nstderr: {finished.stderr[-2000:]}"
    )
    assert finished.returncode == 0, context
    assert result.get("is_error") is False, context
    assert result.get("result") == REPLY, context
    return result


# -- Claude Code -------------------------------------------------------------------------


async def test_claude_code_version_is_the_pinned_one(programs: None, tmp_path: Path) -> None:
    finished = await run(
        [str(CLAUDE), "--version"],
        cwd=tmp_path,
        env=base_env(tmp_path),
        limit_s=60,
    )
    assert finished.returncode == 0, finished.describe()
    assert finished.stdout.split()[0] == pinned()["@anthropic-ai/claude-code"]


async def test_claude_code_default_model_with_sk_key(
    fresh: Stack, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """No `--model`: Claude Code's own default name must resolve to a catalogue model."""
    fresh.upstream.configure(tool_call="none")  # it declares a dozen tools; answer in text
    key = await fresh.new_key(user_wallet)
    await claude_code(fresh, tmp_path, {"ANTHROPIC_AUTH_TOKEN": key}, prompt="say hello")
    assert_charged_exactly(fresh, FUNDS_SAT * 1000 - await fresh.balance_msat(key))
    await fresh.node.check_invariants()


async def test_claude_code_listed_model_with_cashu_token(
    fresh: Stack, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """A raw Cashu token as `ANTHROPIC_API_KEY`: redeemed once, the change stays its balance."""
    async with httpx.AsyncClient() as http:
        listed = (await http.get(fresh.node.api + "/models")).json()["data"]
    assert LISTED_MODEL in {m["id"] for m in listed}
    fresh.upstream.configure(tool_call="none")
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT)
    await claude_code(
        fresh,
        tmp_path,
        {"ANTHROPIC_API_KEY": token},
        "--model",
        LISTED_MODEL,
        prompt="say hello",
    )
    assert {body["model"] for body in fresh.upstream.bodies} == {LISTED_MODEL}
    assert_charged_exactly(fresh, FUNDS_SAT * 1000 - await fresh.balance_msat(token))
    # The node swapped the proofs at the mint: the user can no longer spend them.
    with pytest.raises(Exception, match=r"(?i)spent"):
        await user_wallet.redeem(token)
    await fresh.node.check_invariants()


async def test_claude_code_tool_round_trip(
    fresh: Stack, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """The model asks for Read of a file; Claude Code reads it, sends it back, and finishes."""
    notes = tmp_path / "work" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text(SECRET + "\n")
    fresh.upstream.configure(tool_call={"name": "Read", "arguments": {"file_path": str(notes)}})
    key = await fresh.new_key(user_wallet)
    await claude_code(
        fresh,
        tmp_path,
        {"ANTHROPIC_AUTH_TOKEN": key},
        "--allowedTools",
        "Read",
        prompt="Read notes.txt and tell me the secret word.",
    )
    bodies = fresh.upstream.bodies
    assert len(bodies) == 2, fresh.tap.report()
    # The second request carries the file's text as the result of the call.
    results = [m for m in bodies[1]["messages"] if m.get("role") == "tool"]
    assert len(results) == 1 and SECRET in str(results[0]["content"])
    assert_charged_exactly(fresh, FUNDS_SAT * 1000 - await fresh.balance_msat(key))
    await fresh.node.check_invariants()


# -- the client guide's examples, verbatim -------------------------------------------------


def from_seed(name: str, *substitutions: tuple[str, str]) -> str:
    """A seed example with only its URL and key replaced (each must occur exactly once)."""
    text = (SEEDS / name).read_text()
    for old, new in substitutions:
        assert text.count(old) == 1, f"{old!r} in {name}"
        text = text.replace(old, new)
    return text


def charge_of(stack: Stack) -> int:
    """The exact cost of the one chat request the upstream saw (a REPLY-long answer)."""
    (body,) = stack.upstream.bodies
    return expected_cost(
        model_entry(body["model"]), prompt_tokens_of(body["messages"]), REPLY_WORDS
    )


async def run_seed(argv: list[str], tmp_path: Path) -> Finished:
    finished = await run(argv, cwd=tmp_path, env=base_env(tmp_path / "home"), limit_s=60)
    assert finished.returncode == 0, finished.describe()
    return finished


async def test_seed_python_streaming_loop(
    fresh: Stack, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """`for chunk in response: if chunk.choices[0].delta.content:` must never IndexError."""
    key = await fresh.new_key(user_wallet)
    script = tmp_path / "seed.py"
    script.write_text(
        from_seed(
            "python_streaming.py",
            (SEED_URL, fresh.node.api),
            ("sk-7f8e9d...", key),
        )
    )
    finished = await run_seed([sys.executable, str(script)], tmp_path)
    assert finished.stdout == REPLY, finished.describe()
    assert FUNDS_SAT * 1000 - await fresh.balance_msat(key) == charge_of(fresh)
    await fresh.node.check_invariants()


async def test_seed_node_openai_example(
    fresh: Stack, user_wallet: TestWallet, tmp_path: Path
) -> None:
    """The Node.js example with a raw cashuA token as `apiKey`, on the pinned npm `openai`."""
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT, legacy=True)
    script = tmp_path / "seed.mjs"
    script.write_text(
        from_seed(
            "node_openai.mjs", (SEED_URL, fresh.node.api), ("'cashuA3s8jKx9...'", repr(token))
        )
    )
    # ESM resolves `import 'openai'` from the script's folder upwards.
    (tmp_path / "node_modules").symlink_to(Path(__file__).parent / "clients" / "node_modules")
    finished = await run_seed(["node", str(script)], tmp_path)
    assert f"content: '{REPLY}'" in finished.stdout, finished.describe()
    assert "finish_reason: 'stop'" in finished.stdout, finished.describe()
    assert FUNDS_SAT * 1000 - await fresh.balance_msat(token) == charge_of(fresh)
    await fresh.node.check_invariants()


async def test_seed_curl_command(fresh: Stack, user_wallet: TestWallet, tmp_path: Path) -> None:
    """The cURL command with `Authorization: Bearer cashuA…`, as Debian's curl runs it."""
    (token,) = await user_wallet.mint_tokens(FUNDS_SAT, legacy=True)
    command = from_seed("curl.sh", (SEED_URL, fresh.node.api), ("cashuA3s8jKx9...", token))
    finished = await run_seed(["sh", "-c", command], tmp_path)
    reply = json.loads(finished.stdout)
    assert reply["choices"][0]["message"]["content"] == REPLY, finished.describe()
    charge = charge_of(fresh)
    assert reply["usage"]["cost"]["total_msats"] == charge
    assert FUNDS_SAT * 1000 - await fresh.balance_msat(token) == charge
    await fresh.node.check_invariants()
