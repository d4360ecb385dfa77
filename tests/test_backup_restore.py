"""The backup and restore procedure of docs/OPERATIONS.md ("Backups"), run as written.

An online SQLite backup of a running node, more traffic after it, then the old backup
restored: the node's derivation counters are behind the mint's. Until `satsrouter wallet
restore` walks them forward, the mint refuses the outputs the node derives (it signed them
already); afterwards the node takes in new tokens again, the ecash received after the
backup is back in the wallet, and the audit shows it as the surplus the docs say to settle.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet


async def _new_key(node: KillableNode, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        return await http.post("/v1/wallet/create", json={"cashu_token": token})


async def test_an_old_backup_restored_needs_wallet_restore_before_it_takes_tokens(
    local_mint: LocalMint, upstream: FakeUpstream, user_wallet: TestWallet, tmp_path: Path
) -> None:
    node = KillableNode(tmp_path, local_mint.url, upstream.url)
    database = tmp_path / "node" / "satsrouter.sqlite"
    backup = tmp_path / "backup.sqlite"
    (before,) = await user_wallet.mint_tokens(64)
    (after,) = await user_wallet.mint_tokens(32)
    (later,) = await user_wallet.mint_tokens(16)
    await node.start()
    try:
        first = await _new_key(node, before)
        assert first.status_code == 200, first.text
        # SQLite's online backup, as the docs say, while the node runs.
        with sqlite3.connect(database) as source, sqlite3.connect(backup) as target:
            source.backup(target)
        second = await _new_key(node, after)  # counters the backup will not know
        assert second.status_code == 200, second.text
    finally:
        await node.stop()

    # Restore the old backup in place (no stale -wal/-shm beside it).
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    backup.rename(database)
    assert node.query("SELECT count(*) FROM wallet_ops WHERE state = 'pending'") == [(0,)]

    # Without `wallet restore` the node derives outputs the mint already signed.
    await node.start()
    try:
        refused = await _new_key(node, later)
        assert refused.status_code == 502, refused.text
        assert refused.json()["error"]["type"] == "mint_error"
    finally:
        await node.stop()

    code, out = await node.cli("wallet", "restore")
    assert code == 0, out
    assert "taken back (32 sat)" in out  # the second key's ecash, which the backup missed
    code, report = await node.cli("wallet", "audit")
    assert code == 1  # 32 sat of ecash that no balance stands for: settled by hand
    assert "difference:          32000 msat" in report, report

    await node.start()
    try:
        taken = await _new_key(node, later)  # the token refused above was left unspent
        assert taken.status_code == 200, taken.text
    finally:
        await node.stop()
