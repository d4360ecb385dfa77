"""The node's own receive path and wallet-database writes, against a real nutshell mint."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from satsrouter.ecash._cashu import BlindedSignature, PrivateKey, Proof, PublicKey, b_dhke
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.receiving import unblind
from satsrouter.ecash.tokens import parse_token
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.ecash.wallet_store import WalletStore, WalletStoreError
from satsrouter.testing.mint import TestWallet

# fixtures: local_mint, user_wallet, node_wallet (conftest_ecash)


def _db(node_wallet: NodeWallet) -> sqlite3.Connection:
    return sqlite3.connect(node_wallet._db_dir / "wallet.sqlite3")


async def test_received_proofs_are_stored_and_verify(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    token = (await user_wallet.mint_tokens(100))[0]
    assert await node_wallet.receive(parse_token(token)) == 100
    slot = await node_wallet.loaded_slot(None, "sat")
    held = slot.wallet.proofs
    assert sum(p.amount for p in held) == 100
    for proof in held:
        # nutshell's own check, from the secret: our shortcut made the same proofs
        assert proof.dleq is not None
        assert b_dhke.carol_verify_dleq(
            secret_msg=proof.secret,
            r=PrivateKey(bytes.fromhex(proof.dleq.r)),
            C=PublicKey(bytes.fromhex(proof.C)),
            e=PrivateKey(bytes.fromhex(proof.dleq.e)),
            s=PrivateKey(bytes.fromhex(proof.dleq.s)),
            A=slot.wallet.keysets[proof.id].public_keys[proof.amount],
        )
    with _db(node_wallet) as db:
        stored = {row[0] for row in db.execute("SELECT secret FROM proofs")}
    assert stored == {p.secret for p in held}


async def test_concurrent_receives_never_share_a_secret(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    tokens = await user_wallet.mint_tokens(21, 12)
    received = await asyncio.gather(*(node_wallet.receive(parse_token(t)) for t in tokens))
    assert sum(received) == 21 * 12
    with _db(node_wallet) as db:
        paths = [row[0] for row in db.execute("SELECT derivation_path FROM proofs")]
        (counter,) = db.execute("SELECT max(counter) FROM keysets").fetchone()
    assert len(paths) == len(set(paths))
    assert counter == len(paths)  # every counter taken was used once, none twice


async def test_a_reused_counter_is_refused_before_the_swap(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    await node_wallet.receive(parse_token((await user_wallet.mint_tokens(8))[0]))
    with _db(node_wallet) as db:
        db.execute("UPDATE keysets SET counter = 0")  # as after a botched restore
    token = (await user_wallet.mint_tokens(8))[0]
    with pytest.raises(EcashError) as caught:
        await node_wallet.receive(parse_token(token))
    assert caught.value.code == "mint_error"
    # the user's token was never swapped: it is still theirs
    assert await node_wallet.proof_state(parse_token(token)) == "unspent"


async def test_unblind_refuses_a_bad_signature(
    user_wallet: TestWallet, node_wallet: NodeWallet
) -> None:
    await node_wallet.receive(parse_token((await user_wallet.mint_tokens(4))[0]))
    slot = await node_wallet.loaded_slot(None, "sat")
    wallet = slot.wallet
    secrets, rs, paths = await wallet.generate_secrets_from_to(10_000, 10_000)
    outputs, rs = wallet._construct_outputs([4], secrets, rs, wallet.keyset_id)
    held = wallet.proofs[0]
    assert held.dleq is not None
    # a signature on something else: its DLEQ proof cannot match our blinded message
    forged = BlindedSignature(
        id=wallet.keyset_id, amount=4, C_=held.C, dleq={"e": held.dleq.e, "s": held.dleq.s}
    )
    with pytest.raises(EcashError, match="did not verify"):
        unblind(wallet, outputs, [forged], rs, secrets, paths)
    wrong_amount = BlindedSignature(id=wallet.keyset_id, amount=8, C_=held.C)
    with pytest.raises(EcashError, match="other than was asked"):
        unblind(wallet, outputs, [wrong_amount], rs, secrets, paths)


async def test_give_away_is_all_or_nothing(
    user_wallet: TestWallet, node_wallet: NodeWallet, tmp_path: Path
) -> None:
    await node_wallet.receive(parse_token((await user_wallet.mint_tokens(3))[0]))
    slot = await node_wallet.loaded_slot(None, "sat")
    held = list(slot.wallet.proofs)
    stranger = Proof(id=held[0].id, amount=1, C=held[0].C, secret="not-ours")
    store = WalletStore(node_wallet._db_dir / "wallet.sqlite3")
    try:
        with pytest.raises(WalletStoreError):
            await store.give_away([held[0], stranger])
        with _db(node_wallet) as db:
            assert db.execute("SELECT count(*) FROM proofs").fetchone()[0] == len(held)
            assert db.execute("SELECT count(*) FROM proofs_used").fetchone()[0] == 0
        await store.give_away(held)
        with _db(node_wallet) as db:
            assert db.execute("SELECT count(*) FROM proofs").fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM proofs_used").fetchone()[0] == len(held)
    finally:
        await store.close()
