"""A throwaway Redis for the session, started only when a test asks for it (Debian's
`redis-server`, which `make test` installs when missing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from satsrouter_dev.redis_server import LocalRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """`redis-server` on 127.0.0.1 on a free port, for the whole session."""
    with LocalRedis() as server:
        yield server
