"""Redemptions finished once whatever interrupts them (I6); the sweeper."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import pytest
from conftest import NodeFactory, RunningNode, eventually
from satsrouter_dev.mint import TestWallet
from sqlalchemy import select

from satsrouter.billing.ledger import Ledger
from satsrouter.billing.payouts import Payout, PayoutConflict
from satsrouter.ecash import swap as swap_module
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.tokens import parse_token
from satsrouter.store.tables import instances, payouts, redemptions, reservations, wallet_ops

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_a_redemption_cancelled_during_its_swap_is_still_credited(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    running = await node_factory()
    node = running.node
    (token,) = await user_wallet.mint_tokens(20)
    key_hash = hashlib.sha256(token.encode()).hexdigest()
    (batcher,) = node.wallet._receivers.values()
    request = asyncio.create_task(node.redeemer.redeem(parse_token(token), key_hash, "token"))

    async def at_mint() -> bool:
        return bool(batcher.in_flight)  # its swap is being recorded or is at the mint

    async def credited() -> bool:
        return await node.ledger.total_liabilities() == 20_000

    await eventually(at_mint, within=5, every=0.0005)  # the swap takes ~35 ms: look often
    request.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await request
    # the sweeper passing now must not take the swap's intent for abandoned
    await node.billing.recover()
    # the node holds the ecash, so the balance is there too, once
    await eventually(credited, within=5, every=0.01)
    async with node.engine.connect() as conn:
        state = (await conn.execute(select(redemptions.c.state))).scalar_one()
    assert state == "credited"
    assert (await running.balance(token))["balance"] == 20_000
    await running.check_invariants()
    await running.stop()


async def test_sweeper_releases_only_reservations_of_dead_instances(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    running = await node_factory()
    (token,) = await user_wallet.mint_tokens(10)
    await running.balance(token)  # redeem
    engine = running.node.engine
    account = await running.node.ledger.get_account(
        __import__("hashlib").sha256(token.encode()).hexdigest()
    )
    assert account is not None
    dead = Ledger(running.node.tx, "dead-instance")
    alive = Ledger(running.node.tx, "alive-instance")
    await dead.heartbeat()
    await alive.heartbeat()
    r_dead = await dead.reserve(account.key_hash, "req-dead", 1000, "m")
    r_alive = await alive.reserve(account.key_hash, "req-alive", 2000, "m")
    # The dead instance stopped heartbeating a minute ago.
    async with engine.begin() as conn:
        await conn.execute(
            instances.update()
            .where(instances.c.id == "dead-instance")
            .values(heartbeat_at=time.time() - 60)
        )
    released = await running.node.ledger.sweep(dead_after=30, live_ids=set(), min_age=30)
    assert released == 1
    async with engine.connect() as conn:
        states = dict((await conn.execute(select(reservations.c.id, reservations.c.state))).all())
    assert states == {"req-dead": "released", "req-alive": "active"}
    assert (await running.balance(token))["reserved"] == 2000
    # Settling twice charges once; releasing after settling does nothing.
    assert await alive.settle(r_alive, 500) is not None
    assert await alive.settle(r_alive, 500) is None
    assert await alive.release(r_alive) is False
    assert await dead.release(r_dead) is False
    info = await running.balance(token)
    assert info == {**info, "balance": 9500, "reserved": 0}
    await running.check_invariants()


async def test_sweeper_keeps_live_requests_of_its_own_instance(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    running = await node_factory()
    (token,) = await user_wallet.mint_tokens(10)
    await running.balance(token)
    ledger = running.node.ledger
    key_hash = __import__("hashlib").sha256(token.encode()).hexdigest()
    await ledger.reserve(key_hash, "live-stream", 1000, "m")
    await ledger.reserve(key_hash, "leaked", 1000, "m")
    async with running.node.engine.begin() as conn:
        await conn.execute(reservations.update().values(created_at=time.time() - 3600))
    assert await ledger.sweep(dead_after=30, live_ids={"live-stream"}, min_age=30) == 1
    async with running.node.engine.connect() as conn:
        states = dict((await conn.execute(select(reservations.c.id, reservations.c.state))).all())
    assert states == {"live-stream": "active", "leaked": "released"}


async def test_payout_interrupted_before_issue_is_credited_back_on_restart(
    node_factory: NodeFactory, user_wallet: TestWallet
) -> None:
    first = await node_factory()
    (token,) = await user_wallet.mint_tokens(12)
    await first.balance(token)
    account = await first.node.ledger.get_account(hashlib.sha256(token.encode()).hexdigest())
    assert account is not None
    # Debit recorded, then the process dies before the token is issued.
    step = await first.node.payouts.begin(account.id, "withdraw:crash", None)
    assert (await first.balance(token))["balance"] == 0
    await first.stop()
    async with first.node.engine.begin() as conn:
        await conn.execute(payouts.update().values(updated_at=time.time() - 3600))
    again = await node_factory()
    assert (await again.balance(token))["balance"] == 12_000
    # The interrupted attempt can no longer complete: nothing is paid twice.
    assert not isinstance(step, Payout)
    with pytest.raises(PayoutConflict):
        await again.node.payouts.complete(step, token="cashuBnever")
    await again.check_invariants()


async def test_a_swap_whose_answer_was_lost_is_finished_by_the_sweeper(
    node: RunningNode, user_wallet: TestWallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mint swapped but its answer never arrived (outcome unknown): the user's token is
    spent at the mint, so the node must find out and credit it, in the same process."""
    real = swap_module.post_swap

    async def answer_lost(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise EcashError("mint_unreachable")

    monkeypatch.setattr(swap_module, "post_swap", answer_lost)
    (token,) = await user_wallet.mint_tokens(30)
    async with httpx.AsyncClient(base_url=node.url) as http:
        first = await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {token}"})
        assert first.status_code == 503
        retry = await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {token}"})
        assert retry.status_code == 409  # being redeemed: not "already spent"
        monkeypatch.undo()
        await node.node.billing.recover()  # what the sweeper runs
        info = await http.get("/v1/balance/info", headers={"Authorization": f"Bearer {token}"})
    assert info.json()["balance"] == 30_000
    async with node.node.engine.connect() as conn:
        ops = (await conn.execute(select(wallet_ops.c.state))).scalars().all()
    assert ops == ["done"]
    await node.check_invariants()


async def test_a_payout_cancelled_before_its_token_was_handed_over_is_credited_back(
    node: RunningNode, user_wallet: TestWallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    (token,) = await user_wallet.mint_tokens(40)
    account = await node.node.billing.account(token)
    payouts = node.node.payouts
    at_issue = asyncio.Event()

    async def stuck(*args: Any, **kwargs: Any) -> Any:
        at_issue.set()
        await asyncio.Event().wait()  # the client goes away before the token is chosen

    monkeypatch.setattr(payouts.wallet, "issue", stuck)
    sending = asyncio.create_task(payouts.pay_out(account.id, "withdraw:cancelled", None))
    await asyncio.wait_for(at_issue.wait(), 10)
    await node.node.billing.recover()
    assert (await node.balance(token))["balance"] == 0  # still being sent: left alone
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await node.node.billing.recover()  # nobody sends it any more: the debit comes back
    assert (await node.balance(token))["balance"] == 40_000
    monkeypatch.undo()
    paid = await payouts.pay_out(account.id, "withdraw:cancelled", None)  # may be retried
    assert paid.token is not None and await user_wallet.redeem(paid.token) == 40
    await node.check_invariants()
