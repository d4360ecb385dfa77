"""A request that asks for several completions (`n`, `best_of`, a batch of prompts) or images
(`n`) reserves for all of them and is charged for all of them: the settlement is never capped
by the reservation.

The fake upstream honours `n` as OpenAI does: n choices, usage counting every completion (and
every `best_of` candidate), the prompt once."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from conftest import RunningNode, expected_cost, model_entry, msat_per_token
from satsrouter_dev.fake_upstream import FakeUpstream, prompt_tokens_of
from satsrouter_dev.mint import TestWallet
from sqlalchemy import select

from satsrouter.store.tables import reservations
from satsrouter.usage import count_tokens

MESSAGES = [{"role": "user", "content": "three answers please"}]
PRICED = model_entry("test/priced")
# Priced by completion only: a reservation for one completion cannot cover two.
FLAT = model_entry("test/flat")


async def _reservation(node: RunningNode, request_id: str) -> tuple[int, int | None]:
    """(reserved, charged) msat of one request's reservation."""
    async with node.node.engine.connect() as conn:
        row = (
            await conn.execute(
                select(reservations.c.amount_msat, reservations.c.charged_msat).where(
                    reservations.c.id == request_id
                )
            )
        ).one()
    return int(row[0]), row[1]


async def _post(node: RunningNode, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url) as http:
        return await http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


async def _charged_in_full(node: RunningNode, resp: httpx.Response, cost: int) -> None:
    """`cost` charged, reserved beforehand in full (not capped), and the balance says so."""
    assert resp.status_code == 200, resp.text
    if resp.headers["content-type"].startswith("text/event-stream"):
        assert f'"total_msats":{cost},' in resp.text  # the final usage chunk's cost
    else:
        assert int(resp.headers["X-Routstr-Cost-Msats"]) == cost
    reserved, charged = await _reservation(node, resp.headers["x-request-id"])
    assert charged == cost <= reserved
    await node.check_invariants()


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_n_completions_are_reserved_and_charged(
    node: RunningNode, user_wallet: TestWallet, stream: bool
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    body = {"model": "test/flat", "messages": MESSAGES, "n": 3, "max_tokens": 8}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    resp = await _post(node, token, "/v1/chat/completions", body)
    if stream:
        assert resp.text.count('"delta":{"content":"w1"') == 3  # every choice reached the client
    else:
        assert len(resp.json()["choices"]) == 3
    # Each choice used its whole budget: three times what one choice may cost.
    cost = expected_cost(FLAT, prompt_tokens_of(MESSAGES), 3 * 8)
    await _charged_in_full(node, resp, cost)
    assert (await node.balance(token))["balance"] == 100_000 - cost


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_n_without_upstream_usage_counts_every_choice(
    node: RunningNode, user_wallet: TestWallet, stream: bool
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    body = {
        "model": "test/flat",
        "messages": MESSAGES,
        "n": 4,
        "max_tokens": 30,  # room for the node's own count of the fake's ten words
        "stream": stream,
        "fake": {"omit_usage": True},
    }
    resp = await _post(node, token, "/v1/chat/completions", body)
    completion = 4 * count_tokens(" ".join(f"w{i}" for i in range(1, 11)))
    assert completion > 30  # more than one choice's budget
    prompt = 4 + count_tokens(MESSAGES[0]["content"])
    await _charged_in_full(node, resp, expected_cost(FLAT, prompt, completion))


@pytest.mark.parametrize(
    ("prompt", "asked", "returned", "generated"),
    [
        ("one two", {"n": 2, "best_of": 5}, 2, 5),  # best_of candidates are all billed
        (["one", "two", "three"], {"n": 2}, 6, 6),  # a batch: n for each prompt
    ],
)
async def test_completions_every_candidate_is_reserved_and_charged(
    node: RunningNode,
    user_wallet: TestWallet,
    prompt: str | list[str],
    asked: dict[str, int],
    returned: int,
    generated: int,
) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    body = {"model": "test/flat", "prompt": prompt, "max_tokens": 7, **asked}
    resp = await _post(node, token, "/v1/completions", body)
    assert len(resp.json()["choices"]) == returned
    await _charged_in_full(node, resp, expected_cost(FLAT, 0, generated * 7))  # prompt free


async def test_image_n_is_reserved_and_charged_per_image_and_token(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(200)
    body = {"model": "test/image", "prompt": "four cats", "n": 4, "fake": {"image_usage": True}}
    resp = await _post(node, token, "/v1/images/generations", body)
    assert len(resp.json()["data"]) == 4
    image = model_entry("test/image")
    # 4 images at the `image` price, 2 prompt words, 100 output tokens per image.
    cost = expected_cost(image, 2, 400) + math.ceil(4 * msat_per_token(image["pricing"]["image"]))
    await _charged_in_full(node, resp, cost)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {"model": "test/priced", "messages": MESSAGES, "n": 129}, "n"),
        ("/v1/completions", {"model": "test/priced", "prompt": "x", "best_of": 10**6}, "best_of"),
        ("/v1/images/generations", {"model": "test/image", "prompt": "x", "n": 11}, "n"),
        ("/v1/chat/completions", {"model": "test/priced", "messages": MESSAGES, "n": 0}, "n"),
    ],
)
async def test_absurd_n_is_refused_before_anything_is_reserved(
    node: RunningNode,
    user_wallet: TestWallet,
    upstream: FakeUpstream,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    (token,) = await user_wallet.mint_tokens(10)
    resp = await _post(node, token, path, body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request", 400)
    assert f"`{field}`" in error["message"]
    assert (await node.balance(token))["balance"] == 10_000
    assert all(p.endswith("/models") for p in upstream.stats["paths"])  # nothing forwarded


async def test_n_at_the_bound_is_served(node: RunningNode, user_wallet: TestWallet) -> None:
    (token,) = await user_wallet.mint_tokens(100)
    body = {"model": "test/flat", "messages": MESSAGES, "n": 128, "max_tokens": 1}
    resp = await _post(node, token, "/v1/chat/completions", body)
    assert len(resp.json()["choices"]) == 128
    await _charged_in_full(node, resp, expected_cost(FLAT, prompt_tokens_of(MESSAGES), 128))


# -- batches: a completions `prompt` list or an embeddings `input` list ----------------------


async def test_completions_batch_budget_is_not_cut_by_the_sum_of_its_prompts(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    # Each prompt leaves room for the completion; all of them together would fill the context
    # twice over, which must not shrink any one completion's budget (RIP-05 is per prompt).
    (token,) = await user_wallet.mint_tokens(300)
    prompt = "w " * 3000
    body = {"model": "test/priced", "prompt": [prompt, prompt], "max_tokens": 10}
    resp = await _post(node, token, "/v1/completions", body)
    await _charged_in_full(node, resp, expected_cost(PRICED, 6000, 20))


async def test_embeddings_batch_may_fill_the_context_once_per_input(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    (token,) = await user_wallet.mint_tokens(300)
    inputs = ["w " * 3000] * 3  # 9000 tokens in all, more than the 4096 context
    resp = await _post(node, token, "/v1/embeddings", {"model": "test/priced", "input": inputs})
    assert len(resp.json()["data"]) == 3
    await _charged_in_full(node, resp, expected_cost(PRICED, 9000, 0))
