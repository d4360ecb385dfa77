"""Input the node cannot count is priced and charged, or refused with a 400: never a 500, never
free (I3). The tokenizer refuses one message of a million characters and text that spells a
special token; orjson cannot write JSON nested past 254 levels."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import NodeFactory, RunningNode

from satsrouter.billing.metering import (
    count_prompt_tokens,
    count_tokens,
    estimate_prompt_tokens,
    local_usage,
)
from satsrouter.errors import ApiError
from satsrouter.http.errors import MAX_JSON_DEPTH, json_object
from satsrouter.testing.fake_upstream import FakeUpstream
from satsrouter.testing.mint import TestWallet

MODEL = "openai/gpt-4o-mini"  # a 128k context: the long prompt fits, the budget is not cut
LONG = "x" * 1_000_000 + " and more"  # o200k packs a run of x into about 8 per token
SPECIAL = "a message that spells <|endoftext|> and <|endofprompt|>"


def _bodies(text: str) -> dict[str, dict[str, Any]]:
    """One request per endpoint that counts a prompt, carrying `text` as its one message."""
    return {
        "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": text}]},
        "/v1/embeddings": {"model": MODEL, "input": text},
        "/v1/responses": {"model": MODEL, "input": text},
        "/v1/messages": {
            "model": MODEL,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": text}],
        },
    }


async def _post(node: RunningNode, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        return await http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


async def _charged(node: RunningNode, key: str, resp: httpx.Response, before: int) -> int:
    assert resp.status_code == 200, resp.text[:300]
    cost = int(resp.headers["X-Routstr-Cost-Msats"])
    info = await node.balance(key)
    assert cost > 0 and info["balance"] == before - cost and info["reserved"] == 0
    return cost


@pytest.mark.parametrize("omit_usage", [False, True], ids=["usage", "no_usage"])
@pytest.mark.parametrize("text", [LONG, SPECIAL], ids=["million_chars", "special_tokens"])
async def test_uncountable_input_is_charged_on_every_endpoint(
    node: RunningNode, user_wallet: TestWallet, text: str, omit_usage: bool
) -> None:
    (token,) = await user_wallet.mint_tokens(200)
    balance = (await node.balance(token))["balance"]
    for path, body in _bodies(text).items():
        resp = await _post(node, token, path, {**body, "fake": {"omit_usage": omit_usage}})
        balance -= await _charged(node, token, resp, balance)
    await node.check_invariants()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
async def test_uncountable_input_streamed_without_usage_is_charged(
    node: RunningNode, user_wallet: TestWallet, path: str
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    body = {**_bodies(LONG + SPECIAL)[path], "stream": True, "fake": {"omit_usage": True}}
    resp = await _post(node, token, path, body)
    assert resp.status_code == 200 and resp.text.count("total_msats") == 1, resp.text[-500:]
    assert 0 < 100_000 - (await node.balance(token))["balance"]
    await node.check_invariants()


async def test_native_anthropic_upstream_counts_long_input(
    node_factory: NodeFactory, anthropic_upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    anthropic_upstream.reset()
    node = await node_factory(
        upstream_base_url=anthropic_upstream.url, upstream_dialect="anthropic"
    )
    (token,) = await user_wallet.mint_tokens(100)
    body = {**_bodies(LONG + SPECIAL)["/v1/messages"], "fake": {"omit_usage": True}}
    resp = await _post(node, token, "/v1/messages", body)
    await _charged(node, token, resp, 100_000)
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        counted = await http.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth - 1):
        value = [value]
    return value


DEEP = 300  # orjson reads it, but cannot write it back (254 at most)
# Each would be re-serialised or counted as JSON: an alias resolved, tools counted, a
# Responses input walked.
NESTED: dict[str, tuple[str, dict[str, Any]]] = {
    "chat_alias": (
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi", "x": _nested(DEEP)}],
        },
    ),
    "chat_tools_no_usage": (
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(DEEP)}}],
            "fake": {"omit_usage": True},
        },
    ),
    "responses_no_usage": (
        "/v1/responses",
        {"model": MODEL, "input": [_nested(DEEP)], "fake": {"omit_usage": True}},
    ),
    "wallet_create": ("/v1/wallet/create", {"cashu_token": "cashuA", "x": _nested(DEEP)}),
}


@pytest.mark.parametrize("case", NESTED)
async def test_json_nested_too_deep_is_400_and_free(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream, case: str
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    path, body = NESTED[case]
    resp = await _post(node, token, path, body)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["type"] == "invalid_request"
    assert "levels deep" in resp.json()["error"]["message"]
    assert (await node.balance(token))["balance"] == 100_000
    assert all(p.endswith("/models") for p in upstream.stats["paths"])  # nothing forwarded
    # As deep as real bodies go (JSON schemas of tools), and well past it, still served.
    path, body = NESTED["chat_tools_no_usage"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": _nested(100)}}]
    assert (await _post(node, token, path, {**body, "tools": tools})).status_code == 200


def test_json_depth_limit() -> None:
    def body(depth: int) -> bytes:  # an object holding arrays: `depth` levels in all
        return b'{"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert json_object(body(MAX_JSON_DEPTH))
    with pytest.raises(ApiError) as info:
        json_object(body(MAX_JSON_DEPTH + 1))
    assert info.value.status == 400


def test_counts_of_text_the_tokenizer_refuses() -> None:
    # Exact where the text is cut into pieces (before a space, as o200k's pre-tokenizer cuts).
    # Each "hello world " after the first is two tokens, " hello" and " world".
    many, few = count_tokens("hello world " * 200_000), count_tokens("hello world " * 1000)
    assert many - few == 2 * 199_000
    assert count_tokens(LONG) >= len(LONG) // 16
    # Special tokens spelled in user text are text, counted as such.
    assert count_tokens("<|endoftext|>") > 1
    usage = local_usage({"messages": [{"role": "user", "content": LONG}]}, SPECIAL * 1000)
    assert usage.prompt_tokens == count_prompt_tokens({"messages": [{"content": LONG}]})
    assert usage.completion_tokens >= 1000
    # The RIP-05 estimate stays a lower estimate: at most the bytes, and not zero.
    estimate = estimate_prompt_tokens({"messages": [{"content": LONG}]})
    assert 0 < estimate <= len(LONG)
