"""Database engines: SQLite (default, WAL) and Postgres, plus running migrations.

The money database must be durable: once a transaction that debits a balance has
committed, the node may hand out the token it paid for, so a power loss must not roll that
commit back (the balance would come back and pay the same value twice). On SQLite every
transaction that records ecash or lets value leave commits with `synchronous=FULL` (in WAL
mode NORMAL syncs only at checkpoints, so the last commits can vanish), and so does this
engine (on SQLite it only migrates: every transaction runs through `store.tx`); the hot
path's reserve and bearer settle commit with NORMAL. On Postgres likewise: durable
transactions commit with `synchronous_commit` on, the hot path's with it off. A Postgres
server must keep `fsync` and `synchronous_commit` on, and a node refuses to start on one
that does not (`check_durable`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# SQLite's sync level for durable commits (see the module docstring); the group commit of
# `store.tx` pays its fsync once per batch of transactions.
SQLITE_SYNCHRONOUS = "FULL"


class NotDurableError(RuntimeError):
    """The database would acknowledge commits that a crash or power loss can undo."""


# A durable transaction on Postgres: its commit waits for the WAL flush (the node's sessions
# start without, see make_engine).
DURABLE = "SET LOCAL synchronous_commit TO on"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def instance_lock_dir(url: str) -> Path | None:
    """Where instances sharing a SQLite file keep their liveness locks (beside the file)."""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or ":memory:" in url:
        return None
    return Path(url.removeprefix(prefix) + ".instances")


def make_engine(url: str) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, a busy timeout and IMMEDIATE transactions.

    Parameters are hidden from SQLAlchemy's logs and from the text of its errors: they are
    tokens, proofs and key hashes (I8), and an error is logged with its message.
    """
    if not is_sqlite(url):
        # Round trips are the hot path's cost here (DESIGN: a paid request is two short
        # transactions). Every session starts with `synchronous_commit` off and a durable
        # transaction turns it on for itself (store/tx.py), one statement instead of one in
        # every hot transaction. No pre-ping (BEGIN; ROLLBACK on every checkout): after a
        # server restart the first transaction on a dead connection fails, before it did
        # anything, and SQLAlchemy then replaces the whole pool.
        return create_async_engine(
            url,
            pool_size=20,
            max_overflow=10,
            hide_parameters=True,
            connect_args={"server_settings": {"synchronous_commit": "off"}},
        )
    if url.startswith("sqlite+aiosqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite+aiosqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # One connection per process: every transaction is a few statements, so queueing them on
    # one connection is faster than SQLite's lock dance between connections of one process.
    engine = create_async_engine(
        url, pool_size=1, max_overflow=0, pool_timeout=60, hide_parameters=True
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions defer the write lock).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def check_durable(engine: AsyncEngine) -> None:
    """Refuse a Postgres server whose commits may not survive a crash (`NotDurableError`).

    `synchronous_commit=off` acknowledges a commit before its WAL is flushed and `fsync=off`
    never flushes: either can undo a debit whose token already left. Any other value of
    `synchronous_commit` (on, local, remote_write, remote_apply) flushes locally first.
    """
    if engine.dialect.name != "postgresql":
        return  # SQLite: our own PRAGMA on every connection
    # A session of our own, without the node's sessions' setting: what the server, the
    # database and the role give a durable transaction.
    plain = create_async_engine(engine.url, poolclass=NullPool)
    try:
        async with plain.connect() as conn:
            settings = {
                name: (await conn.execute(text(f"SHOW {name}"))).scalar_one()
                for name in ("synchronous_commit", "fsync")
            }
    finally:
        await plain.dispose()
    off = [f"{name}={value}" for name, value in settings.items() if value == "off"]
    if off:
        raise NotDurableError(
            f"Postgres runs with {', '.join(off)}: a crash could undo a committed debit "
            "whose token was already paid out. Turn it on (postgresql.conf, or ALTER "
            "DATABASE/ROLE … SET synchronous_commit = on) and start the node again."
        )


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


# The Postgres advisory lock every node takes around its migrations (any constant works, as
# long as every version of the node uses the same one): "satsrtr" in ASCII.
MIGRATION_LOCK_KEY = 0x73617473727472


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision, one process at a time.

    Nodes sharing a Postgres database start in any order, often together: without a lock two
    of them would both find an empty (or older) schema and both create it, and the second
    would fail on a table the first just made. The first takes a transaction-level advisory
    lock and migrates; the others wait for its commit, then find the schema current and do
    nothing. The whole upgrade is one transaction (Alembic joins ours), so the lock lasts
    exactly as long as the migration. SQLite needs no lock: `BEGIN IMMEDIATE` already takes
    the database's write lock first.
    """
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(DURABLE))
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        await conn.run_sync(_upgrade)


async def discard(conn: AsyncConnection | None) -> None:
    """Close a connection kept for a session-scoped thing (a lock, LISTEN) for good: it is
    invalidated, never returned to the pool with that state on it."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()
