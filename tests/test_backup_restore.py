"""The backup and restore procedure of docs/OPERATIONS.md ("Backups"), run as written.

An online backup of a running node (SQLite's backup API, or `pg_dump -Fc` on Postgres),
more traffic after it, then the old backup restored: the node's derivation counters are
behind the mint's. Until `satsrouter wallet restore` walks them forward, the mint refuses
the outputs the node derives (it signed them already); afterwards the node takes in new
tokens again, the ecash received after the backup is back in the wallet, and the audit
shows it as the surplus the docs say to settle.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import databases
import httpx
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet
from satsrouter_dev.postgres import postgres_bin_dir


async def _new_key(node: KillableNode, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        return await http.post("/v1/wallet/create", json={"cashu_token": token})


def _libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _pg_tool(name: str, *argv: str) -> None:
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None
    done = subprocess.run(
        [str(bin_dir / name), *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def _back_up(url: str, backup: Path) -> None:
    """The online backup the docs give: SQLite's backup API, or pg_dump's custom format."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split(":///", 1)[1]) as source, sqlite3.connect(backup) as target:
            source.backup(target)
    else:
        _pg_tool("pg_dump", "-Fc", "-f", str(backup), _libpq(url))


def _restore(url: str, backup: Path) -> None:
    """The backup in place of the database (the node stopped)."""
    if url.startswith("sqlite"):
        database = Path(url.split(":///", 1)[1])
        for suffix in ("", "-wal", "-shm"):  # no stale -wal/-shm beside it
            database.with_name(database.name + suffix).unlink(missing_ok=True)
        backup.rename(database)
        return
    parts = urlsplit(_libpq(url))
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    _pg_tool("psql", "-X", "-q", "-c", f"DROP DATABASE {name} WITH (FORCE)", admin)
    _pg_tool("psql", "-X", "-q", "-c", f"CREATE DATABASE {name}", admin)
    _pg_tool("pg_restore", "--no-owner", "-d", _libpq(url), str(backup))


async def test_an_old_backup_restored_needs_wallet_restore_before_it_takes_tokens(
    local_mint: LocalMint, upstream: FakeUpstream, user_wallet: TestWallet, tmp_path: Path
) -> None:
    node = KillableNode(tmp_path, local_mint.url, upstream.url)
    database = databases.node_database(tmp_path / "node")
    backup = tmp_path / "backup"
    (before,) = await user_wallet.mint_tokens(64)
    (after,) = await user_wallet.mint_tokens(32)
    (later,) = await user_wallet.mint_tokens(16)
    await node.start()
    try:
        first = await _new_key(node, before)
        assert first.status_code == 200, first.text
        _back_up(database, backup)  # while the node runs
        second = await _new_key(node, after)  # counters the backup will not know
        assert second.status_code == 200, second.text
    finally:
        await node.stop()

    _restore(database, backup)
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
