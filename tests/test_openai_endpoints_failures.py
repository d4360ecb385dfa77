"""The OpenAI-dialect endpoints beyond chat: X-Cashu change, upstream rejections, local
counting when the upstream reports no usage, and mid-stream failures (charged nothing)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from conftest import RunningNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from test_openai_audio import audio_file
from test_openai_endpoints import (
    RESPONSES_INPUT,
    RESPONSES_PROMPT_TOKENS,
    WORDS_10,
    client,
    cost_of,
    funded_token,
    unit_price,
)

from satsrouter.usage import count_tokens


def cashu_client(node: RunningNode, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=node.api, api_key="unused", max_retries=0, default_headers={"X-Cashu": token}
    )


# X-Cashu payments: enough for any reservation below (two images reserve ~86 sat).
VALUE_SAT = 100


def change_sat(cost: int) -> int:
    """The change for VALUE_SAT paying `cost` msat: whole sats (the mint's smallest unit)."""
    return (VALUE_SAT * 1000 - cost) // 1000


def local_cost(model_id: str, prompt: int, completion: int) -> int:
    return math.ceil(prompt * unit_price(model_id, "prompt")) + math.ceil(
        completion * unit_price(model_id, "completion")
    )


# -- X-Cashu: change is the token's value minus the cost ---------------------------------------

# Each call pays with an X-Cashu client and returns (cost it was told, change token).
PaidCall = Callable[[openai.AsyncOpenAI], Awaitable[tuple[int, str]]]


async def _completions(api: openai.AsyncOpenAI) -> tuple[int, str]:
    raw = await api.completions.with_raw_response.create(
        model="test/priced", prompt="four words of prompt", max_tokens=5
    )
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost_of("test/priced", 4, 5)
    return cost_of("test/priced", 4, 5), raw.headers["X-Cashu"]


async def _completions_stream(api: openai.AsyncOpenAI) -> tuple[int, str]:
    stream = await api.completions.create(
        model="test/priced", prompt="four words of prompt", max_tokens=5, stream=True
    )
    chunks = [chunk async for chunk in stream]
    usage = next(c.usage for c in chunks if c.usage is not None)
    cost: int = (usage.model_extra or {})["cost"]["total_msats"]
    assert cost == cost_of("test/priced", 4, 5)
    last = chunks[-1].model_extra or {}
    assert last["change_msats"] == 1000 * change_sat(cost)
    return cost, last["x_cashu_change"]


async def _embeddings(api: openai.AsyncOpenAI) -> tuple[int, str]:
    raw = await api.embeddings.with_raw_response.create(model="test/priced", input="a b c d e")
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost_of("test/priced", 5)
    return cost_of("test/priced", 5), raw.headers["X-Cashu"]


async def _images(api: openai.AsyncOpenAI) -> tuple[int, str]:
    raw = await api.images.with_raw_response.generate(
        model="test/image", prompt="two words", n=2, extra_body={"fake": {"image_usage": True}}
    )
    cost = cost_of("test/image", prompt=2, completion=200, images=2)
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    return cost, raw.headers["X-Cashu"]


async def _audio(api: openai.AsyncOpenAI) -> tuple[int, str]:
    raw = await api.audio.transcriptions.with_raw_response.create(
        model="test/whisper", file=audio_file(), response_format="text"
    )
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == 2100
    return 2100, raw.headers["X-Cashu"]


async def _responses(api: openai.AsyncOpenAI) -> tuple[int, str]:
    raw = await api.responses.with_raw_response.create(
        model="test/priced", input=RESPONSES_INPUT, instructions="be brief"
    )
    cost = cost_of("test/priced", RESPONSES_PROMPT_TOKENS, 10)
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    return cost, raw.headers["X-Cashu"]


async def _responses_stream(api: openai.AsyncOpenAI) -> tuple[int, str]:
    stream = await api.responses.create(
        model="test/priced", input=RESPONSES_INPUT, instructions="be brief", stream=True
    )
    events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.completed" and final.response.usage is not None
    cost: int = (final.response.usage.model_extra or {})["cost"]["total_msats"]
    assert cost == cost_of("test/priced", RESPONSES_PROMPT_TOKENS, 10)
    extra = final.model_extra or {}
    assert extra["change_msats"] == 1000 * change_sat(cost)
    return cost, extra["x_cashu_change"]


@pytest.mark.parametrize(
    "call",
    [
        _completions,
        _completions_stream,
        _embeddings,
        _images,
        _audio,
        _responses,
        _responses_stream,
    ],
    ids=lambda f: f.__name__.lstrip("_"),
)
async def test_x_cashu_change_is_value_minus_cost(
    node: RunningNode, user_wallet: TestWallet, call: PaidCall
) -> None:
    (token,) = await user_wallet.mint_tokens(VALUE_SAT)
    cost, change = await call(cashu_client(node, token))
    assert cost > 0
    assert await user_wallet.redeem(change) == change_sat(cost)
    await node.check_invariants()


# -- a body the upstream rejects: nothing charged, its error in our envelope -----------------

FAIL_400: dict[str, Any] = {"fake": {"fail": "400"}}
FAIL_400_FORM: dict[str, Any] = {"fake": orjson.dumps({"fail": "400"}).decode()}

Rejected = Callable[[openai.AsyncOpenAI], Awaitable[Any]]

REJECTED: dict[str, Rejected] = {
    "completions": lambda api: api.completions.create(
        model="test/priced", prompt="x", extra_body=FAIL_400
    ),
    "completions-stream": lambda api: api.completions.create(
        model="test/priced", prompt="x", stream=True, extra_body=FAIL_400
    ),
    "embeddings": lambda api: api.embeddings.create(
        model="test/priced", input="x", extra_body=FAIL_400
    ),
    "images": lambda api: api.images.generate(
        model="test/image", prompt="x", n=2, extra_body=FAIL_400
    ),
    "transcriptions": lambda api: api.audio.transcriptions.create(
        model="test/whisper", file=audio_file(), extra_body=FAIL_400_FORM
    ),
    "translations": lambda api: api.audio.translations.create(
        model="test/whisper", file=audio_file(), extra_body=FAIL_400_FORM
    ),
    "responses": lambda api: api.responses.create(
        model="test/priced", input="x", extra_body=FAIL_400
    ),
    "responses-stream": lambda api: api.responses.create(
        model="test/priced", input="x", stream=True, extra_body=FAIL_400
    ),
}


@pytest.mark.parametrize("name", list(REJECTED))
async def test_upstream_rejection_is_free_and_in_our_envelope(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream, name: str
) -> None:
    token = await funded_token(node, user_wallet)
    with pytest.raises(openai.BadRequestError) as info:
        await REJECTED[name](client(node, token))
    # The upstream did see it (once), and refused it.
    assert [n for p, n in upstream.stats["paths"].items() if "/models" not in p] == [1]
    envelope = info.value.response.json()
    assert envelope == {
        "error": {
            "message": "fake upstream: scripted 400 error",
            "type": "upstream_rejected",
            "code": 400,
        }
    }
    balance = await node.balance(token)
    assert balance["balance"] == 100_000 and balance["reserved"] == 0
    await node.check_invariants()


@pytest.mark.parametrize("name", ["images", "transcriptions", "responses-stream"])
async def test_upstream_rejection_returns_an_x_cashu_payment_whole(
    node: RunningNode, user_wallet: TestWallet, name: str
) -> None:
    (token,) = await user_wallet.mint_tokens(VALUE_SAT)
    with pytest.raises(openai.BadRequestError) as info:
        await REJECTED[name](cashu_client(node, token))
    assert info.value.body["type"] == "upstream_rejected"  # type: ignore[index]
    assert await user_wallet.redeem(info.value.response.headers["X-Cashu"]) == VALUE_SAT
    await node.check_invariants()


# -- no usage from the upstream: the node's own count, not zero, not the reservation --------

OMIT_USAGE: dict[str, Any] = {"fake": {"omit_usage": True}}
PROMPT = "please count this prompt locally"


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_without_usage_charged_from_local_count(
    node: RunningNode, user_wallet: TestWallet, stream: bool
) -> None:
    token = await funded_token(node, user_wallet)
    api = client(node, token)
    if stream:
        chunks = [
            c
            async for c in await api.completions.create(
                model="test/priced", prompt=PROMPT, stream=True, extra_body=OMIT_USAGE
            )
        ]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        reply = await api.completions.create(
            model="test/priced", prompt=PROMPT, extra_body=OMIT_USAGE
        )
        text, usage = reply.choices[0].text, reply.usage
    assert text == WORDS_10 and usage is not None
    prompt, completion = count_tokens(PROMPT), count_tokens(WORDS_10)
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    cost = local_cost("test/priced", prompt, completion)
    assert (usage.model_extra or {})["cost"]["total_msats"] == cost
    assert 0 < cost < node.node.prices.quote("test/priced", len(PROMPT), None).max_cost_msat
    assert (await node.balance(token))["balance"] == 100_000 - cost
    await node.check_invariants()


@pytest.mark.parametrize(
    ("prompt", "counted"),
    [
        (["first prompt here", "and a second one"], None),
        ([[11, 22, 33, 44], [55, 66]], 6),  # token arrays: their lengths
    ],
)
async def test_completions_of_many_prompts_without_usage_count_every_prompt(
    node: RunningNode, user_wallet: TestWallet, prompt: list[Any], counted: int | None
) -> None:
    token = await funded_token(node, user_wallet)
    reply = await client(node, token).completions.create(
        model="test/priced", prompt=prompt, max_tokens=3, extra_body=OMIT_USAGE
    )
    assert [c.text for c in reply.choices] == ["w1 w2 w3"] * 2 and reply.usage is not None
    if counted is None:
        counted = sum(count_tokens(text) for text in prompt)
    completion = count_tokens("w1 w2 w3w1 w2 w3")  # both choices' text, as relayed
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (counted, completion)
    cost = local_cost("test/priced", counted, completion)
    assert (reply.usage.model_extra or {})["cost"]["total_msats"] == cost
    assert (await node.balance(token))["balance"] == 100_000 - cost
    await node.check_invariants()


async def test_embeddings_without_usage_charged_from_local_count(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    inputs = [PROMPT, "and a second input"]
    reply = await client(node, token).embeddings.create(
        model="test/priced", input=inputs, extra_body=OMIT_USAGE
    )
    assert len(reply.data) == 2
    counted = sum(count_tokens(text) for text in inputs)
    assert reply.usage.prompt_tokens == counted
    cost = local_cost("test/priced", counted, 0)
    assert (reply.usage.model_extra or {})["cost"]["total_msats"] == cost > 0
    assert (await node.balance(token))["balance"] == 100_000 - cost
    await node.check_invariants()


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_without_usage_charged_from_local_count(
    node: RunningNode, user_wallet: TestWallet, stream: bool
) -> None:
    token = await funded_token(node, user_wallet)
    api = client(node, token)
    args: dict[str, Any] = {
        "model": "test/priced",
        "input": PROMPT,
        "instructions": "be brief",
        "extra_body": OMIT_USAGE,
    }
    if stream:
        events = [e async for e in await api.responses.create(stream=True, **args)]
        final = events[-1]
        assert final.type == "response.completed"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        usage = final.response.usage
    else:
        reply = await api.responses.create(**args)
        text, usage = reply.output_text, reply.usage
    assert text == WORDS_10 and usage is not None
    # Instructions and input, counted as text; the reply's words.
    prompt = count_tokens("be brief") + count_tokens(PROMPT)
    completion = count_tokens(WORDS_10)
    assert (usage.input_tokens, usage.output_tokens) == (prompt, completion)
    cost = local_cost("test/priced", prompt, completion)
    assert (usage.model_extra or {})["cost"]["total_msats"] == cost > 0
    assert (await node.balance(token))["balance"] == 100_000 - cost
    await node.check_invariants()


# -- the upstream breaks mid-stream: nothing charged -----------------------------------------

MIDSTREAM: dict[str, Any] = {"fake": {"fail": "drop_midstream", "fail_after_chunks": 3}}


async def test_completions_stream_broken_midway_charges_nothing(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        stream = await client(node, token).completions.create(
            model="test/priced", prompt=PROMPT, stream=True, extra_body=MIDSTREAM
        )
        async for chunk in stream:
            seen.extend(c.text for c in chunk.choices)
    assert "nothing was charged" in info.value.message
    assert "".join(seen) == "w1 w2 w3"  # what came before the break was relayed
    balance = await node.balance(token)
    assert balance["balance"] == 100_000 and balance["reserved"] == 0
    await node.check_invariants()


async def test_responses_stream_broken_midway_charges_nothing(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    stream = await client(node, token).responses.create(
        model="test/priced", input=PROMPT, stream=True, extra_body=MIDSTREAM
    )
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["w1", " w2", " w3"]
    last = events[-1]
    assert last.type == "error" and "nothing was charged" in last.message
    assert not any(e.type == "response.completed" for e in events)
    balance = await node.balance(token)
    assert balance["balance"] == 100_000 and balance["reserved"] == 0
    await node.check_invariants()


async def test_responses_stream_broken_midway_returns_x_cashu_whole(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(VALUE_SAT)
    stream = await cashu_client(node, token).responses.create(
        model="test/priced", input=PROMPT, stream=True, extra_body=MIDSTREAM
    )
    events = [event async for event in stream]
    last = events[-1]
    assert last.type == "error"
    change = (last.model_extra or {})["x_cashu_change"]
    assert await user_wallet.redeem(change) == VALUE_SAT
    await node.check_invariants()


async def test_embeddings_reserve_no_completion(node: RunningNode, user_wallet: TestWallet) -> None:
    # Embeddings generate nothing: 1 sat covers a short input's prompt price, and must not
    # be refused for a completion budget (the model's 256 tokens) that can never be spent.
    token = await funded_token(node, user_wallet, sats=1)
    raw = await client(node, token).embeddings.with_raw_response.create(
        model="test/priced", input="a b c d e"
    )
    cost = cost_of("test/priced", 5)
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    assert (await node.balance(token))["balance"] == 1000 - cost
    await node.check_invariants()
