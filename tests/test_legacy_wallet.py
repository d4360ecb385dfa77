"""A node upgraded from the version that kept its ecash in nutshell's own wallet file."""

from __future__ import annotations

import contextlib
import io
import sqlite3
from pathlib import Path

import databases
from conftest import NodeFactory
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.ecash._cashu import Wallet
from satsrouter.ecash.tokens import parse_token


async def test_an_older_nodes_wallet_file_is_imported_once_with_its_seed(
    node_factory: NodeFactory, local_mint: LocalMint, user_wallet: TestWallet, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    # What an older node left: nutshell's wallet.sqlite3 holding proofs and counters.
    with contextlib.redirect_stdout(io.StringIO()):
        old = await Wallet.with_db(local_mint.url, str(data_dir / "wallet"), name="wallet")
    await old.load_mint()
    (token,) = await user_wallet.mint_tokens(77)
    proofs = parse_token(token).proofs
    await old._expand_short_keyset_ids(proofs)
    await old.redeem(proofs)
    mnemonic = old.mnemonic
    await old.db.engine.dispose()
    with sqlite3.connect(data_dir / "wallet" / "wallet.sqlite3") as db:
        old_counters = dict(db.execute("SELECT id, counter FROM keysets").fetchall())

    running = await node_factory(data_dir=data_dir)
    assert await running.node.wallet.balance() == 77
    slot = await running.node.wallet.loaded_slot(None, "sat")
    assert slot.wallet.mnemonic == mnemonic  # the same seed: old outputs stay restorable
    assert not (data_dir / "wallet" / "wallet.sqlite3").exists()
    url = running.node.settings.effective_database_url
    counters = dict(databases.rows(url, "SELECT id, counter FROM wallet_keysets"))
    assert all(counters[k] >= c for k, c in old_counters.items() if c)
    assert list((data_dir / "wallet").glob("wallet.sqlite3.imported-*"))
    # the imported ecash is spendable, and counters continue after the old ones
    change = await running.node.wallet.issue(77)
    assert await user_wallet.redeem(change) == 77
    await running.stop()
    again = await node_factory(data_dir=data_dir)
    assert await again.node.wallet.balance() == 0  # imported once, not twice
