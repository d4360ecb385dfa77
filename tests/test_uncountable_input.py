"""Input the node cannot count is priced and charged, or refused with a 400: never a 500, never
free (I3). The tokenizer refuses one message of a million characters and text that spells a
special token; orjson cannot write JSON nested past 254 levels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import NodeFactory, RunningNode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.endpoints.responses import prompt_tokens as responses_prompt_tokens
from satsrouter.errors import ApiError
from satsrouter.jsonbody import MAX_JSON_DEPTH, json_object
from satsrouter.upstream.anthropic_usage import anthropic_text_of, count_anthropic_prompt_tokens
from satsrouter.usage import (
    completion_text_of,
    count_input_images,
    count_prompt_tokens,
    count_tokens,
    delta_text_of,
    estimate_prompt_tokens,
    local_usage,
    reserved_web_searches,
)

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
    body = {"messages": [{"content": LONG}]}
    estimate = estimate_prompt_tokens(body)
    assert 0 < estimate <= len(LONG)
    # Past a model's context it stops counting (the budget cannot shrink further): still a
    # lower estimate, and enough to say the context is full.
    assert 4096 <= estimate_prompt_tokens(body, 4096) < estimate


# Any JSON, in the shapes the counters look for, with the wrong type anywhere.
_KEYS = [
    "messages", "content", "tool_calls", "function", "name", "arguments", "text", "type",
    "choices", "delta", "message", "input", "instructions", "tools", "system", "prompt",
    "reasoning", "thinking", "output", "source", "data", "max_uses", "plugins", "id",
]  # fmt: skip
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.text(max_size=4),
    st.sampled_from(["text", "image", "image_url", "tool_use", "tool_result", "web_search"]),
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner),
    max_leaves=8,
)
_BODIES = st.fixed_dictionaries({}, optional=dict.fromkeys(_KEYS, _JSON))
COUNTERS: dict[str, Callable[[dict[str, Any]], object]] = {
    "chat prompt": count_prompt_tokens,
    "chat completion": completion_text_of,
    "chat chunk": delta_text_of,
    "RIP-05 estimate": estimate_prompt_tokens,
    "input images": count_input_images,
    "web searches": reserved_web_searches,
    "responses prompt": responses_prompt_tokens,
    "anthropic prompt": count_anthropic_prompt_tokens,
    "anthropic answer": anthropic_text_of,
}


def test_malformed_shapes_count_instead_of_crashing() -> None:
    # Each of these crashed the local count (a 500 after the upstream served: nothing charged).
    assert delta_text_of({"choices": True}) == completion_text_of({"choices": 3}) == ""
    answer = {"choices": [{"message": {"tool_calls": [{"function": "f"}, {"function": {}}]}}]}
    assert completion_text_of(answer) == ""
    assert count_prompt_tokens({"messages": [{"role": "user", "tool_calls": 5}]}) == 4
    assert count_input_images({"messages": [{"type": {"image": 1}}, {"type": "image"}]}) == 1


@pytest.mark.parametrize("counter", COUNTERS)
def test_local_counts_never_raise_on_any_json_shape(counter: str) -> None:
    """What the node counts when usage is missing (the client's body, the upstream's answer)
    is read whatever its shape: a malformed one counts for less, it never crashes (I3)."""

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_BODIES)
    def check(body: dict[str, Any]) -> None:
        COUNTERS[counter](body)

    check()
