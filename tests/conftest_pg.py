"""Fixtures for tests on Postgres: one throwaway cluster per session, a fresh database per test.

The cluster starts only when a test asks for it (Debian's `postgresql`, which `make test`
installs when missing) and is stopped and deleted at the end of the session.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import databases
import pytest
from satsrouter_dev.postgres import LocalPostgres

_databases = itertools.count(1)
_clusters: list[LocalPostgres] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A Postgres cluster on 127.0.0.1 for the whole session."""
    with LocalPostgres() as cluster:
        _clusters.append(cluster)
        yield cluster


@pytest.fixture
def postgres_url(postgres: LocalPostgres) -> str:
    """`DATABASE_URL` of a new, empty database on the session's cluster."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(autouse=True)
def _nodes_on_postgres(request: pytest.FixtureRequest) -> Iterator[None]:
    """With SATSROUTER_TEST_DATABASE=postgres, the nodes of each test get fresh databases.

    Autouse, so it is set up before (and torn down after) every node a test starts.
    """
    if not databases.ON_POSTGRES:
        yield
        return
    cluster: LocalPostgres = request.getfixturevalue("postgres")
    databases.current = databases.TestDatabases(cluster, f"node{next(_databases)}")
    try:
        yield
    finally:
        owned, databases.current = databases.current, None
        owned.drop_all()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say what the cluster cost to start, when the session started one."""
    for cluster in _clusters:
        terminalreporter.write_line(
            f"postgres: the throwaway cluster started in {cluster.start_seconds:.1f} s "
            "(initdb + pg_ctl start)"
        )
