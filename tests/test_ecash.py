"""The node's ecash wallet against a real nutshell mint."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest_ecash import wallet_at
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.ecash._cashu import TokenV4
from satsrouter.ecash.errors import EcashError, map_mint_error
from satsrouter.ecash.tokens import parse_token
from satsrouter.ecash.wallet import NodeWallet

# fixtures: local_mint, fee_mint, msat_mint, user_wallet, node_wallet


def _v3(payload: object) -> str:
    return "cashuA" + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _rehome(token: str, mint_url: str) -> str:
    """The same proofs, claiming to come from another mint."""
    t = TokenV4.deserialize(token)
    t.set_mint(mint_url)
    return str(t.serialize())


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, socket.socket]]:
    """A listening socket that nobody should connect to; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    finally:
        sock.close()


def _was_contacted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


# ---- parsing ----


async def test_parse_v4_and_v3_same_proofs(user_wallet: TestWallet, local_mint: LocalMint) -> None:
    [v4] = await user_wallet.mint_tokens(21)
    v3 = await user_wallet.reserialize(v4)
    assert v4.startswith("cashuB") and v3.startswith("cashuA")
    a, b = parse_token(v4), parse_token(v3)
    for t in (a, b):
        assert t.mint == local_mint.url
        assert t.unit == "sat"
        assert t.amount == 21
        assert t.amount_msat == 21_000
        assert len(t.proofs) == 3  # 16 + 4 + 1
    assert a.secret_ys == b.secret_ys
    assert a.raw_hash != b.raw_hash
    assert parse_token("  " + v4 + "\n").raw_hash == a.raw_hash
    secret = a.proofs[0].secret
    assert secret not in repr(a) and secret not in str(a)


async def test_parse_legacy_minted_token(user_wallet: TestWallet) -> None:
    [v3] = await user_wallet.mint_tokens(5, legacy=True)
    assert v3.startswith("cashuA")
    assert parse_token(v3).amount == 5


_PROOF = {"id": "009a1f293253e41e", "amount": 2, "secret": "s1", "C": "02" + "11" * 32}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello",
        "cashuA",
        "cashuB",
        "cashuA!!!not-base64",
        "cashuB" + base64.urlsafe_b64encode(b"\xff\x00garbage").decode(),
        _v3([1, 2, 3]),
        _v3({"token": []}),
        _v3({"token": [{"mint": "http://a.example", "proofs": []}]}),
        _v3(
            {
                "token": [
                    {"mint": "http://a.example", "proofs": [_PROOF]},
                    {"mint": "http://b.example", "proofs": [dict(_PROOF, secret="s2")]},
                ]
            }
        ),
        _v3({"token": [{"mint": "http://a.example", "proofs": [dict(_PROOF, amount=-1)]}]}),
        _v3({"token": [{"mint": "http://a.example", "proofs": [dict(_PROOF, amount="2")]}]}),
        _v3({"token": [{"mint": "http://a.example", "proofs": [dict(_PROOF, C="zz")]}]}),
        _v3({"token": [{"mint": "ftp://a.example", "proofs": [_PROOF]}]}),
        _v3({"token": [{"mint": "http://a.example", "proofs": [_PROOF, _PROOF]}]}),
    ],
)
def test_parse_garbage(text: str) -> None:
    with pytest.raises(EcashError) as info:
        parse_token(text)
    assert info.value.code == "invalid_cashu_token"
    assert info.value.status == 400


def test_parse_unit_not_supported() -> None:
    token = _v3({"token": [{"mint": "http://a.example", "proofs": [_PROOF]}], "unit": "usd"})
    with pytest.raises(EcashError) as info:
        parse_token(token)
    assert info.value.code == "unit_not_supported"


def test_parse_normalises_mint_url() -> None:
    token = _v3({"token": [{"mint": "HTTP://A.Example:3338/", "proofs": [_PROOF]}]})
    parsed = parse_token(token)
    assert parsed.mint == "http://a.example:3338"
    assert parsed.unit == "sat"


# ---- the node wallet ----


async def test_foreign_mint_refused_without_contact(
    user_wallet: TestWallet,
    node_wallet: NodeWallet,
    local_mint: LocalMint,
    silent_listener: tuple[str, socket.socket],
) -> None:
    url, sock = silent_listener
    [token] = await user_wallet.mint_tokens(8)
    foreign = parse_token(_rehome(token, url))
    for call in (node_wallet.receive, node_wallet.proof_state):
        with pytest.raises(EcashError) as info:
            await call(foreign)
        assert info.value.code == "mint_not_accepted"
        assert local_mint.url in info.value.message
    with pytest.raises(EcashError):
        node_wallet.check_accepted(foreign)
    assert not _was_contacted(sock)
    # the real token is untouched and still receivable
    assert await node_wallet.receive(parse_token(token)) == 8


async def test_receive_credits_exactly(user_wallet: TestWallet, node_wallet: NodeWallet) -> None:
    tokens = await user_wallet.mint_tokens(37, count=2)
    before = await node_wallet.balance()
    assert await node_wallet.receive(parse_token(tokens[0])) == 37
    assert await node_wallet.balance() == before + 37
    assert await node_wallet.receive(parse_token(tokens[1])) == 37
    assert await node_wallet.balance() == before + 74


async def test_double_spend_is_refused(user_wallet: TestWallet, node_wallet: NodeWallet) -> None:
    [token] = await user_wallet.mint_tokens(50)
    assert await node_wallet.receive(parse_token(token)) == 50
    balance = await node_wallet.balance()
    for again in (token, await user_wallet.reserialize(token)):
        with pytest.raises(EcashError) as info:
            await node_wallet.receive(parse_token(again))
        assert info.value.code == "cashu_token_already_spent"
        assert info.value.status == 400
    assert await node_wallet.balance() == balance


async def test_proof_state(user_wallet: TestWallet, node_wallet: NodeWallet) -> None:
    [token] = await user_wallet.mint_tokens(12)
    parsed = parse_token(token)
    assert await node_wallet.proof_state(parsed) == "unspent"
    await node_wallet.receive(parsed)
    assert await node_wallet.proof_state(parsed) == "spent"
    assert (
        await node_wallet.proof_state(parse_token(await user_wallet.reserialize(token))) == "spent"
    )


async def test_proof_state_mixed(user_wallet: TestWallet, node_wallet: NodeWallet) -> None:
    [a, b] = await user_wallet.mint_tokens(3, count=2)
    await node_wallet.receive(parse_token(a))
    pa, pb = parse_token(a), parse_token(b)
    mixed = type(pa)(pa.mint, pa.unit, pa.amount + pb.amount, pa.proofs + pb.proofs, "x")
    assert await node_wallet.proof_state(mixed) == "mixed"


async def test_receive_does_not_mutate_token(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    [token] = await user_wallet.mint_tokens(6)
    parsed = parse_token(token)
    ids = [p.id for p in parsed.proofs]
    await node_wallet.receive(parsed)
    assert [p.id for p in parsed.proofs] == ids


async def test_issue_is_redeemable_for_exact_amount(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    [token] = await user_wallet.mint_tokens(100)
    await node_wallet.receive(parse_token(token))
    for amount in (1, 37, 13):  # 37 and 13 need a swap for exact change
        change = await node_wallet.issue(amount)
        assert change.startswith("cashuB")
        assert await user_wallet.redeem(change) == amount
    legacy = await node_wallet.issue(5, legacy=True)
    assert legacy.startswith("cashuA")
    assert parse_token(legacy).amount == 5
    assert await user_wallet.redeem(legacy) == 5
    assert await node_wallet.balance() == 100 - 1 - 37 - 13 - 5


async def test_concurrent_receive_and_issue(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    tokens = await user_wallet.mint_tokens(10, count=12)
    received = await asyncio.gather(*(node_wallet.receive(parse_token(t)) for t in tokens))
    assert received == [10] * 12
    assert await node_wallet.balance() == 120
    changes = await asyncio.gather(*(node_wallet.issue(a) for a in (3, 7, 11, 13, 1)))
    assert await node_wallet.balance() == 120 - 35
    for amount, change in zip((3, 7, 11, 13, 1), changes, strict=True):
        assert await user_wallet.redeem(change) == amount


async def test_issue_insufficient_funds(user_wallet: TestWallet, node_wallet: NodeWallet) -> None:
    with pytest.raises(EcashError) as info:
        await node_wallet.issue(1)
    assert info.value.code == "insufficient_node_funds"
    assert info.value.status == 503
    [token] = await user_wallet.mint_tokens(10)
    await node_wallet.receive(parse_token(token))
    with pytest.raises(EcashError) as info:
        await node_wallet.issue(11)
    assert info.value.code == "insufficient_node_funds"
    assert await node_wallet.balance() == 10


async def test_issued_proofs_are_not_reused(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    [token] = await user_wallet.mint_tokens(8)
    await node_wallet.receive(parse_token(token))
    first = await node_wallet.issue(8)
    with pytest.raises(EcashError):
        await node_wallet.issue(1)
    assert await user_wallet.redeem(first) == 8


async def test_dust_token_refused_on_fee_mint(fee_mint: LocalMint, tmp_path: Path) -> None:
    user = await TestWallet.create(fee_mint.url, tmp_path / "user")
    node = await wallet_at([fee_mint.url], tmp_path / "node")
    await node.start()
    try:
        [dust] = await user.mint_tokens(1)
        [ok] = await user.mint_tokens(10)
        with pytest.raises(EcashError) as info:
            await node.receive(parse_token(dust))
        assert info.value.code == "token_too_small"
        # refused before the swap: the user still owns it
        assert await node.proof_state(parse_token(dust)) == "unspent"
        # 10 sat = 8 + 2: two inputs at 100 ppk each -> 1 sat fee
        assert await node.receive(parse_token(ok)) == 9
        assert await node.balance() == 9
    finally:
        await node.close()


async def test_restart_keeps_balance_and_seed(
    local_mint: LocalMint, user_wallet: TestWallet, tmp_path: Path
) -> None:
    node = await wallet_at([local_mint.url], tmp_path / "node")
    await node.start()
    [token] = await user_wallet.mint_tokens(42)
    await node.receive(parse_token(token))
    mnemonic = node._slots[(local_mint.url, "sat")].wallet.mnemonic
    await node.close()

    again = await wallet_at([local_mint.url], tmp_path / "node")
    await again.start()
    try:
        assert await again.balance() == 42
        assert again._slots[(local_mint.url, "sat")].wallet.mnemonic == mnemonic
        change = await again.issue(42)
        assert await user_wallet.redeem(change) == 42
    finally:
        await again.close()


async def test_mint_down(user_wallet: TestWallet, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    node = await wallet_at([dead], tmp_path / "node")
    await node.start()  # must not raise
    try:
        [token] = await user_wallet.mint_tokens(4)
        with pytest.raises(EcashError) as info:
            await node.receive(parse_token(_rehome(token, dead)))
        assert info.value.code == "mint_unreachable"
        assert info.value.status == 503
        assert await node.balance() == 0
    finally:
        await node.close()


# ---- error mapping ----


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (Exception("Mint Error: Token already spent. (Code: 11001)"), "cashu_token_already_spent"),
        (Exception("Mint Error: Token is pending. (Code: 11002)"), "cashu_token_pending"),
        (Exception("Mint Error: outputs have already been signed (Code: 11003)"), "mint_error"),
        (Exception("Mint Error: keyset id unknown (Code: 12001)"), "invalid_cashu_token"),
        (Exception("Mint Error: quote not paid (Code: 20001)"), "mint_error"),
        (Exception("Mint Error: something odd"), "mint_error"),
        (Exception("DLEQ proof invalid."), "invalid_cashu_token"),
        (httpx.ConnectError("refused"), "mint_unreachable"),
        (httpx.ReadTimeout("slow"), "mint_unreachable"),
        (RuntimeError("boom"), "mint_error"),
    ],
)
def test_map_mint_error(exc: BaseException, code: str) -> None:
    err = map_mint_error(exc)
    assert err.code == code
    assert err.message


async def test_msat_tokens(msat_mint: LocalMint, tmp_path: Path) -> None:
    user = await TestWallet.create(msat_mint.url, tmp_path / "user", unit="msat")
    node = await wallet_at([msat_mint.url], tmp_path / "node")
    await node.start()
    try:
        [token] = await user.mint_tokens(5000)
        parsed = parse_token(token)
        assert (parsed.unit, parsed.amount, parsed.amount_msat) == ("msat", 5000, 5000)
        assert await node.receive(parsed) == 5000
        assert await node.balance(unit="msat") == 5000
        assert await node.balance() == 0  # sat is a separate purse
        change = await node.issue(1234, unit="msat")
        assert parse_token(change).unit == "msat"
        assert await user.redeem(change) == 1234
        assert await node.balance(unit="msat") == 5000 - 1234
    finally:
        await node.close()
