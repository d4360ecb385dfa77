"""The OpenAI-dialect endpoints beyond chat, with the official SDK: each charged exactly the
published price × the fake upstream's usage (header, `usage.cost` and the balance agree).

Audio is in `test_openai_audio.py`; X-Cashu change, rejections, local counting and failures
in `test_openai_endpoints_failures.py`."""

from __future__ import annotations

import base64
import math
import struct
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from conftest import FEE, RunningNode, model_entry, msat_per_token
from satsrouter_dev.fake_media import embedding_of
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.usage import count_tokens

WORDS_10 = " ".join(f"w{i}" for i in range(1, 11))


def client(node: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.api, api_key=key, max_retries=0)


def unit_price(model_id: str, field: str) -> Decimal:
    """What the node charges per token (or per image / request) of `field`, in exact msat."""
    return msat_per_token(model_entry(model_id)["pricing"].get(field, "0"))


def cost_of(model_id: str, prompt: int = 0, completion: int = 0, images: int = 0) -> int:
    """The exact msat cost: each component rounded up, as the node publishes it."""
    return (
        math.ceil(prompt * unit_price(model_id, "prompt"))
        + math.ceil(completion * unit_price(model_id, "completion"))
        + math.ceil(unit_price(model_id, "request"))
        + math.ceil(images * unit_price(model_id, "image"))
    )


async def funded_token(node: RunningNode, wallet: TestWallet, sats: int = 100) -> str:
    """A token redeemed into a key's balance (so every later drop is one request's cost)."""
    (token,) = await wallet.mint_tokens(sats)
    assert (await node.balance(token))["balance"] == sats * 1000
    return token


async def assert_charged(node: RunningNode, key: str, before: int, cost: int) -> None:
    info = await node.balance(key)
    assert info["balance"] == before - cost
    assert info["reserved"] == 0


def float32_vector(embedding: list[float] | str) -> list[float]:
    """An embedding as floats: base64 of little-endian float32 decoded as OpenAI sends it."""
    if isinstance(embedding, list):
        return embedding
    data = base64.b64decode(embedding)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def body_cost(raw: Any) -> int:
    """`usage.cost.total_msats` of a raw SDK response's JSON body."""
    total: int = orjson.loads(raw.http_response.content)["usage"]["cost"]["total_msats"]
    return total


# -- legacy completions --------------------------------------------------------------------


async def test_completions_charged_the_reported_usage(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).completions.with_raw_response.create(
        model="test/priced", prompt="count these four words", max_tokens=6
    )
    reply = raw.parse()
    assert reply.choices[0].text == "w1 w2 w3 w4 w5 w6"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 6)
    cost = cost_of("test/priced", 4, 6)
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    assert (reply.usage.model_extra or {})["cost"]["total_msats"] == cost
    assert int(raw.headers["X-Routstr-Balance-Msats"]) == 100_000 - cost
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


async def test_completions_stream_cost_in_the_final_usage_chunk(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    stream = await client(node, token).completions.create(
        model="test/priced", prompt=["first prompt here", "second"], max_tokens=3, stream=True
    )
    chunks = [chunk async for chunk in stream]
    # One choice per prompt; the node asked the upstream for usage on the client's behalf.
    texts = {
        i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    }
    assert texts == {0: "w1 w2 w3", 1: "w1 w2 w3"}
    assert upstream.stats["last_request"]["stream_options"] == {"include_usage": True}
    # Not asked for: no usage-only chunk; the last finish chunk carries usage and cost.
    assert all(chunk.choices for chunk in chunks)
    final = chunks[-1]
    assert final.choices[0].finish_reason == "length" and final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 6)
    cost = cost_of("test/priced", 4, 6)
    assert (final.usage.model_extra or {})["cost"]["total_msats"] == cost
    await assert_charged(node, token, 100_000, cost)

    # On the wire: the chunk with the usage comes last, then exactly one `[DONE]`.
    body = {"model": "test/priced", "prompt": "again", "max_tokens": 2, "stream": True}
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post(
            "/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    events = [e for e in resp.text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]" and resp.text.count("[DONE]") == 1
    last = orjson.loads(events[-2].removeprefix("data: "))
    assert last["usage"]["cost"]["total_msats"] == cost_of("test/priced", 1, 2)
    await assert_charged(node, token, 100_000 - cost, cost_of("test/priced", 1, 2))
    await node.check_invariants()


# -- embeddings ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["float", "base64", None])
@pytest.mark.parametrize(
    ("text", "tokens"), [("one two three", 3), (["alpha beta", "gamma delta epsilon"], 5)]
)
async def test_embeddings_charged_prompt_tokens_only(
    node: RunningNode,
    user_wallet: TestWallet,
    upstream: FakeUpstream,
    encoding: str | None,
    text: str | list[str],
    tokens: int,
) -> None:
    token = await funded_token(node, user_wallet)
    extra: dict[str, Any] = {} if encoding is None else {"encoding_format": encoding}
    raw = await client(node, token).embeddings.with_raw_response.create(
        model="test/priced", input=text, **extra
    )
    reply = raw.parse()
    # The SDK asks for base64 by default and decodes it; asked for explicitly, base64 is
    # the caller's to decode. Either way the node passed the upstream's vectors through.
    sent = upstream.stats["last_request"]["encoding_format"]
    assert sent == (encoding or "base64")
    inputs = 1 if isinstance(text, str) else len(text)
    vectors = [float32_vector(d.embedding) for d in reply.data]
    assert vectors == [embedding_of(i) for i in range(inputs)]
    assert all(isinstance(d.embedding, str) for d in reply.data) == (encoding == "base64")
    cost = cost_of("test/priced", prompt=tokens)
    assert reply.usage.prompt_tokens == tokens
    published = (reply.usage.model_extra or {})["cost"]
    assert published["total_msats"] == published["input_msats"] == cost
    assert published["output_msats"] == 0
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


# -- images ----------------------------------------------------------------------------------


async def test_images_charged_per_image(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    prompt = "a small orange square"
    raw = await client(node, token).images.with_raw_response.generate(
        model="test/image", prompt=prompt, n=2, size="256x256"
    )
    reply = raw.parse()
    assert reply.data is not None and len(reply.data) == 2
    assert all(item.b64_json for item in reply.data)
    # No usage from the upstream: the image price twice, and the prompt as counted here.
    prompt_tokens = count_tokens(prompt)
    cost = cost_of("test/image", prompt=prompt_tokens, images=2)
    published = orjson.loads(raw.http_response.content)["usage"]["cost"]
    assert published["image_msats"] == 2 * 10_500
    assert published["input_msats"] == math.ceil(prompt_tokens * unit_price("test/image", "prompt"))
    assert published["total_msats"] == cost
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    assert upstream.stats["last_request"]["size"] == "256x256"
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


async def test_images_with_token_usage_add_the_token_components(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    reply = await client(node, token).images.generate(
        model="test/image",
        prompt="three little words",
        n=2,
        extra_body={"fake": {"image_usage": True}},
    )
    assert reply.usage is not None
    # The fake's gpt-image usage: prompt words in, 100 tokens out per image.
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (3, 200)
    cost = cost_of("test/image", prompt=3, completion=200, images=2)
    published = (reply.usage.model_extra or {})["cost"]
    assert published["image_msats"] == 2 * 10_500
    assert published["output_msats"] == math.ceil(200 * unit_price("test/image", "completion"))
    assert published["total_msats"] == cost
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


@pytest.mark.parametrize(
    ("size", "quality", "usd"),
    [
        ("1024x1024", "hd", "0.08"),
        ("1024x1024", "standard", "0.04"),
        ("1792x1024", "hd", "0.12"),
        ("512x512", "standard", "0.02"),  # no variant: the model's image_output price
    ],
)
async def test_images_priced_by_size_and_quality_as_published(
    node: RunningNode, user_wallet: TestWallet, size: str, quality: str, usd: str
) -> None:
    key = "1024x1024/hd" if (size, quality) == ("1024x1024", "hd") else size
    async with httpx.AsyncClient(base_url=node.url) as http:
        listed = (await http.get("/v1/models/test/dalle")).json()
    per_image_msat = math.ceil(msat_per_token(usd))
    if usd != "0.02":
        assert Decimal(listed["image_pricing"][key]) == Decimal(usd) * FEE
        assert Decimal(str(listed["sats_image_pricing"][key])) * 1000 == per_image_msat
    # Two images reserve exactly two images (no prompt or context on top), so a token
    # worth just that pays; the change is the rest.
    sats = -(-2 * per_image_msat // 1000)
    (token,) = await user_wallet.mint_tokens(sats)
    api = openai.AsyncOpenAI(
        base_url=node.api, api_key="unused", max_retries=0, default_headers={"X-Cashu": token}
    )
    raw = await api.images.with_raw_response.generate(
        model="test/dalle",
        prompt="a cat",
        n=2,
        size=size,  # type: ignore[arg-type]
        quality=quality,  # type: ignore[arg-type]
    )
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == 2 * per_image_msat
    published = orjson.loads(raw.http_response.content)["usage"]["cost"]
    assert published["image_msats"] == 2 * per_image_msat
    change = raw.headers.get("X-Cashu")
    left = sats * 1000 - 2 * per_image_msat
    assert (await user_wallet.redeem(change) if change else 0) == left // 1000
    await node.check_invariants()


# -- Responses API ---------------------------------------------------------------------------

RESPONSES_INPUT = "tell me some words"  # fake: 4 + 4 words, + 2 words of instructions
RESPONSES_PROMPT_TOKENS = 10


async def test_responses_charged_the_reported_usage(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).responses.with_raw_response.create(
        model="test/priced", input=RESPONSES_INPUT, instructions="be brief", max_output_tokens=32
    )
    reply = raw.parse()
    assert reply.output_text == WORDS_10
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (RESPONSES_PROMPT_TOKENS, 10)
    cost = cost_of("test/priced", RESPONSES_PROMPT_TOKENS, 10)
    assert (reply.usage.model_extra or {})["cost"]["total_msats"] == cost
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


@pytest.mark.parametrize(
    ("limit", "words", "ending"), [(32, 10, "completed"), (4, 4, "incomplete")]
)
async def test_responses_stream_cost_in_the_final_event(
    node: RunningNode, user_wallet: TestWallet, limit: int, words: int, ending: str
) -> None:
    token = await funded_token(node, user_wallet)
    stream = await client(node, token).responses.create(
        model="test/priced",
        input=RESPONSES_INPUT,
        instructions="be brief",
        max_output_tokens=limit,
        stream=True,
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    # Cut short by max_output_tokens, the stream ends with response.incomplete instead.
    assert kinds[0] == "response.created" and kinds[-1] == f"response.{ending}"
    assert kinds.count(f"response.{ending}") == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == " ".join(WORDS_10.split()[:words])
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    usage = final.response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (10, words)
    cost = cost_of("test/priced", RESPONSES_PROMPT_TOKENS, words)
    assert (usage.model_extra or {})["cost"]["total_msats"] == cost
    # Every event is relayed in order: sequence numbers have no gap.
    assert [e.sequence_number for e in events] == list(range(len(events)))
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()
