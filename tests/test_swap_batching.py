"""Receives coalesced into shared swaps (`SwapBatcher`), against a real nutshell mint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import databases
import pytest
from conftest_ecash import wallet_at
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.ecash import swap as receiving
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.tokens import parse_token
from satsrouter.ecash.wallet import NodeWallet

# fixtures: local_mint, fee_mint, user_wallet, node_wallet (conftest_ecash)


@pytest.fixture
def swaps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(inputs, outputs) of every swap the node sends to a mint, in order."""
    seen: list[tuple[int, int]] = []
    real = receiving.post_swap

    async def counting(session: Any, url: str, proofs: Any, outputs: Any) -> Any:
        seen.append((len(proofs), len(outputs)))
        return await real(session, url, proofs, outputs)

    monkeypatch.setattr(receiving, "post_swap", counting)
    yield seen


def _held(tmp_path: Path) -> tuple[int, int, int]:
    """The `node_wallet`'s stored proofs' count and sum, and its keyset's derivation counter."""
    url = databases.node_database(tmp_path / "node")
    ((count, total),) = databases.rows(
        url, "SELECT count(*), coalesce(sum(amount), 0) FROM wallet_proofs WHERE state = 'unspent'"
    )
    ((counter,),) = databases.rows(url, "SELECT max(counter) FROM wallet_keysets")
    return int(count), int(total), int(counter)


async def test_concurrent_receives_share_swaps(
    user_wallet: TestWallet,
    node_wallet: NodeWallet,
    swaps: list[tuple[int, int]],
    tmp_path: Path,
) -> None:
    tokens = await user_wallet.mint_tokens(16, 12)

    async def arrive(i: int, token: str) -> int:
        await asyncio.sleep(0.003 * i)  # spread out: some arrive while a swap is at the mint
        return await node_wallet.receive(parse_token(token))

    received = await asyncio.gather(*(arrive(i, t) for i, t in enumerate(tokens)))
    assert received == [16] * 12
    assert 2 <= len(swaps) < 12
    assert sum(inputs for inputs, _ in swaps) == 12
    count, total, counter = _held(tmp_path)
    assert total == 16 * 12
    assert count == counter == sum(outputs for _, outputs in swaps)
    for token in tokens:
        assert await node_wallet.proof_state(parse_token(token)) == "spent"


async def test_a_spent_token_does_not_fail_the_others_in_its_swap(
    user_wallet: TestWallet,
    node_wallet: NodeWallet,
    swaps: list[tuple[int, int]],
    tmp_path: Path,
) -> None:
    spent = (await user_wallet.mint_tokens(8))[0]
    await node_wallet.receive(parse_token(spent))
    first = len(swaps)
    fresh = await user_wallet.mint_tokens(4, 6)
    # all arrive in the same turn of the event loop: one swap, the spent token in it
    results = await asyncio.gather(
        *(node_wallet.receive(parse_token(t)) for t in fresh[:2]),
        node_wallet.receive(parse_token(spent)),
        *(node_wallet.receive(parse_token(t)) for t in fresh[2:]),
        return_exceptions=True,
    )
    assert results[:2] == [4, 4] and results[3:] == [4] * 4
    assert isinstance(results[2], EcashError)
    assert results[2].code == "cashu_token_already_spent"
    shapes = swaps[first:]
    assert shapes[0][0] == 7  # the shared swap, refused for the spent token...
    assert [inputs for inputs, _ in shapes[1:]] == [1] * 7  # ...then each receive alone
    count, total, counter = _held(tmp_path)
    assert total == 8 + 4 * 6
    for token in fresh:
        assert await node_wallet.proof_state(parse_token(token)) == "spent"
    # The lone swaps reused the refused swaps' secrets (the mint signed none of them): the
    # counters taken and not yet signed for are the ones the next swap will use.
    (batcher,) = node_wallet._receivers.values()
    assert counter - count == len(batcher._unsigned) < shapes[0][1]
    await node_wallet.receive(parse_token((await user_wallet.mint_tokens(64))[0]))
    count, _, counter = _held(tmp_path)
    assert counter - count == len(batcher._unsigned) == 0


async def test_batched_receives_pay_each_their_own_fee(
    fee_mint: LocalMint, tmp_path: Path, swaps: list[tuple[int, int]]
) -> None:
    user = await TestWallet.create(fee_mint.url, tmp_path / "user")
    tokens = await user.mint_tokens(10, 9)
    node = await wallet_at([fee_mint.url], tmp_path / "node")
    await node.start()
    try:
        received = await asyncio.gather(*(node.receive(parse_token(t)) for t in tokens))
        # each is credited as if swapped alone (1 sat per one-proof swap at 100 ppk)...
        assert received == [9] * 9
        # ...and the mint charged each batch once, rounding up once: the rest is the node's
        fees = sum(-(-100 * inputs // 1000) for inputs, _ in swaps)
        assert fees < 9
        assert await node.balance() == 10 * 9 - fees
        count, total, counter = _held(tmp_path)
        assert total == 10 * 9 - fees and count == counter
    finally:
        await node.close()


async def test_through_a_proxy_swaps_go_through_nutshells_client(
    user_wallet: TestWallet,
    node_wallet: NodeWallet,
    swaps: list[tuple[int, int]],
    tmp_path: Path,
) -> None:
    slot = await node_wallet.loaded_slot(None, "sat")
    slot.session = None  # as when a SOCKS/HTTP proxy or Tor is configured
    tokens = await user_wallet.mint_tokens(8, 3)
    received = await asyncio.gather(*(node_wallet.receive(parse_token(t)) for t in tokens))
    assert received == [8, 8, 8]
    assert swaps == []  # not our own client
    _, total, _ = _held(tmp_path)
    assert total == 24
    for token in tokens:
        assert await node_wallet.proof_state(parse_token(token)) == "spent"
