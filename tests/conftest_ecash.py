"""Fixtures for ecash tests: real nutshell mints, a user wallet, a node wallet.

Import these into a test module (`from conftest_ecash import *`) or list this module
in the root conftest's `pytest_plugins`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import databases
import pytest
import pytest_asyncio
from satsrouter_dev.mint import LocalMint, TestWallet

from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.engine import make_engine, migrate
from satsrouter.store.tx import make_tx_runner


@pytest.fixture(scope="session")
def local_mint() -> Iterator[LocalMint]:
    """A fee-free mint for the whole session."""
    with LocalMint() as mint:
        yield mint


@pytest.fixture(scope="session")
def fee_mint() -> Iterator[LocalMint]:
    """A mint charging 100 ppk per input proof (1 sat for a one-proof swap)."""
    with LocalMint(input_fee_ppk=100) as mint:
        yield mint


@pytest_asyncio.fixture(scope="session")
async def user_wallet(
    local_mint: LocalMint, tmp_path_factory: pytest.TempPathFactory
) -> TestWallet:
    """A user's wallet at `local_mint`, for minting tokens and redeeming change."""
    return await TestWallet.create(local_mint.url, tmp_path_factory.mktemp("user-wallet"))


async def _never_dead(instance_id: str) -> bool:
    return False


async def wallet_at(mints: list[str], directory: Path) -> NodeWallet:
    """A node wallet on its own (migrated) database for `directory`, not started.

    Opened twice on the same directory it is the same wallet (seed, proofs, counters), as a
    restarted node's would be.
    """
    url = databases.node_database(directory)  # SQLite in `directory`, or Postgres
    engine = make_engine(url)
    await migrate(engine)
    await engine.dispose()
    return NodeWallet(mints, make_tx_runner(url, engine), "test-" + directory.name, _never_dead)


@pytest_asyncio.fixture
async def node_wallet(local_mint: LocalMint, tmp_path: Path) -> AsyncIterator[NodeWallet]:
    """A fresh node wallet accepting only `local_mint`."""
    wallet = await wallet_at([local_mint.url], tmp_path / "node")
    await wallet.start()
    try:
        yield wallet
    finally:
        await wallet.close()
        await wallet.tx.close()


@pytest.fixture(scope="session")
def msat_mint() -> Iterator[LocalMint]:
    """A fee-free mint with keysets for both sat and msat."""
    with LocalMint(
        extra_env={
            "MINT_BACKEND_BOLT11_MSAT": "FakeWallet",
            "MINT_DERIVATION_PATH_LIST": "[\"m/0'/0'/0'\", \"m/0'/1'/0'\"]",
        }
    ) as mint:
        yield mint
