"""Which database the nodes under test use: SQLite (the default) or Postgres.

`SATSROUTER_TEST_DATABASE=postgres` runs every node the tests start (in-process, in a child
process, or a bare node wallet) on Postgres: each data directory a test uses gets its own
fresh database on the session's throwaway cluster (tests/conftest_pg.py), as it would get its
own `satsrouter.sqlite` file, and the databases are dropped at the end of the test. They
are copies of a template migrated once per session: a node's first start then finds its
schema current, as SQLite's fast migration would leave it, instead of spending half a second
on Alembic each time (the migration from an empty Postgres database is still run by the
tests that ask for `postgres_url`).

`rows()` reads (or changes) a node's database behind its back, whichever it is, for tests
that check what is stored.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
from satsrouter_dev.postgres import LocalPostgres

from satsrouter.store.engine import make_engine, migrate

MODES = ("sqlite", "postgres")
MODE = os.environ.get("SATSROUTER_TEST_DATABASE", "").strip().lower() or "sqlite"
if MODE not in MODES:
    raise SystemExit(f"SATSROUTER_TEST_DATABASE={MODE!r}: expected one of {', '.join(MODES)}")
ON_POSTGRES = MODE == "postgres"

_SQLITE = "sqlite+aiosqlite:///"
_PLACEHOLDER = re.compile(r"\?")
_TEMPLATE = "node_template"
_templates: set[int] = set()  # the clusters (by id) whose template is made


def _in_own_loop(work: Any) -> Any:
    """Await `work` in a loop of its own: callers may sit in the event loop's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()  # a template must have no connection when it is copied


def _template(cluster: LocalPostgres) -> str:
    """The session's migrated, empty database that each node's database is copied from."""
    if id(cluster) not in _templates:
        _in_own_loop(_migrate(cluster.create_database(_TEMPLATE)))
        _templates.add(id(cluster))
    return _TEMPLATE


class TestDatabases:
    """The Postgres databases of one test: one per data directory, dropped at its end."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, cluster: LocalPostgres, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.by_directory: dict[Path, str] = {}
        self.names: list[str] = []

    def new(self) -> str:
        """`DATABASE_URL` of a new database: migrated, empty."""
        name = f"{self.prefix}_{len(self.names) + 1}"
        self.cluster.psql(f"CREATE DATABASE {name} TEMPLATE {_template(self.cluster)}")
        self.names.append(name)
        return self.cluster.url(name)

    def for_directory(self, data_dir: Path) -> str:
        """The database of the node whose data directory is `data_dir` (the same each time)."""
        key = data_dir.resolve()
        if key not in self.by_directory:
            self.by_directory[key] = self.new()
        return self.by_directory[key]

    def drop_all(self) -> None:
        """Drop this test's databases, cutting any connection a node left behind."""
        for name in self.names:
            self.cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.names.clear()
        self.by_directory.clear()


# Set by conftest_pg's autouse fixture for each test when the tests run on Postgres.
current: TestDatabases | None = None


def database_url_for(data_dir: Path) -> str:
    """The `DATABASE_URL` a node on `data_dir` gets in this run ("" = SQLite in `data_dir`)."""
    if current is None:
        return ""
    return current.for_directory(data_dir)


def node_env(data_dir: Path) -> dict[str, str]:
    """The environment that puts a node process on `data_dir` on this run's database."""
    url = database_url_for(data_dir)
    return {"DATABASE_URL": url} if url else {}


def effective_url(database_url: str, data_dir: Path) -> str:
    """The URL a node really uses: `database_url`, else its SQLite file in `data_dir`."""
    return database_url or f"{_SQLITE}{(data_dir / 'satsrouter.sqlite').resolve()}"


def node_database(data_dir: Path) -> str:
    """The URL of the database a node on `data_dir` uses in this run."""
    return effective_url(database_url_for(data_dir), data_dir)


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement (`?` placeholders) on the database at `url`; returns its rows."""
    if url.startswith(_SQLITE):
        with sqlite3.connect(url.removeprefix(_SQLITE)) as db:
            return [tuple(r) for r in db.execute(sql, params).fetchall()]
    numbered = iter(range(1, len(params) + 1))
    pg_sql = _PLACEHOLDER.sub(lambda _: f"${next(numbered)}", sql)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(pg_sql, *params)]
        finally:
            await conn.close()

    result: list[tuple[Any, ...]] = _in_own_loop(fetch())
    return result
