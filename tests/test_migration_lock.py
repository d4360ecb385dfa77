"""Nodes that start together on one Postgres database migrate it once, under a lock.

Without the advisory lock in `store.engine.migrate`, two nodes starting at once on an empty
database both create the schema and one of them dies on a table the other just made (seen
in about half of the rounds of three `satsrouter migrate` processes at once).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.script import ScriptDirectory
from conftest import eventually
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from satsrouter.store.engine import MIGRATION_LOCK_KEY, MIGRATIONS_DIR, make_engine, migrate

HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


async def _scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def test_two_nodes_start_at_once_on_a_fresh_postgres_database(
    local_mint: LocalMint, upstream: FakeUpstream, postgres_url: str, tmp_path: Path
) -> None:
    nodes = [
        KillableNode(tmp_path / name, local_mint.url, upstream.url, DATABASE_URL=postgres_url)
        for name in ("a", "b")
    ]
    for node in nodes:
        node.workdir.mkdir()
    try:
        # Both processes are spawned before either is waited for: they migrate together.
        await asyncio.gather(*(node.start() for node in nodes))
        engine = make_engine(postgres_url)
        try:
            assert await _scalar(engine, "SELECT version_num FROM alembic_version") == HEAD
            # One wallet for both: the seed was made once.
            assert await _scalar(engine, "SELECT count(*) FROM wallet_seed") == 1
        finally:
            await engine.dispose()
    finally:
        for node in nodes:
            await node.stop()


async def test_a_migration_waits_for_the_lock_another_node_holds(postgres_url: str) -> None:
    holder, migrating = make_engine(postgres_url), make_engine(postgres_url)
    try:
        async with holder.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            task = asyncio.create_task(migrate(migrating))

            async def waiting() -> bool:
                return bool(
                    await _scalar(
                        holder,
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    )
                )

            await eventually(waiting, within=30)
            assert not task.done()
            # Nothing was created while the lock was held elsewhere.
            assert await _scalar(holder, "SELECT to_regclass('alembic_version')") is None
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            await asyncio.wait_for(task, 60)
        assert await _scalar(holder, "SELECT version_num FROM alembic_version") == HEAD
        # The lock went with the migration's transaction: the next migration does not wait.
        await asyncio.wait_for(migrate(migrating), 30)
    finally:
        await holder.dispose()
        await migrating.dispose()
