"""A running node: every component wired together, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from sqlalchemy.ext.asyncio import AsyncEngine

from satsrouter.billing.keys import Keys
from satsrouter.billing.ledger import Ledger
from satsrouter.billing.payments import Billing
from satsrouter.billing.payouts import Payouts
from satsrouter.billing.quote import PriceBook
from satsrouter.billing.redeem import Redeemer
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.logs import install_secret_masking
from satsrouter.market.catalogue import Catalogue, Model, load_models_file, parse_models
from satsrouter.market.rates import NoRate, PinnedRate, RateSource
from satsrouter.settings import Settings
from satsrouter.store.engine import make_engine, migrate
from satsrouter.store.tx import make_tx_runner
from satsrouter.upstream.client import Upstream, UpstreamFailure

log = logging.getLogger(__name__)

MODEL_RETRY_SECONDS = 30.0


class Node:
    """Settings plus the live components built from them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance_id = os.urandom(12).hex()
        self.engine: AsyncEngine = make_engine(settings.effective_database_url)
        self.tx = make_tx_runner(settings.effective_database_url, self.engine)
        self.ledger = Ledger(self.engine, self.instance_id, self.tx)
        self.wallet = NodeWallet(settings.cashu_mints, settings.data_dir)
        self.redeemer = Redeemer(self.ledger, self.wallet)
        self.payouts = Payouts(self.ledger, self.wallet)
        self.billing = Billing(self.ledger, self.redeemer, self.payouts)
        self.keys = Keys(self.billing, self.payouts)
        self.upstream = Upstream(
            settings.upstream_base_url, settings.upstream_api_key, settings.upstream_timeout
        )
        self.catalogue = Catalogue()
        rate: RateSource = (
            PinnedRate(settings.btc_usd_price) if settings.btc_usd_price else NoRate()
        )
        self.prices = PriceBook(self.catalogue, rate, settings.provider_fee)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Migrate, open the wallet, finish interrupted redemptions, load models, start loops."""
        install_secret_masking()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await migrate(self.engine)
        await self.wallet.start()
        await self.ledger.heartbeat()
        try:
            recovered = await self.redeemer.recover()
            if recovered:
                log.info("finished %d interrupted redemptions", recovered)
            undone = await self.payouts.recover_cashu(older_than=self.settings.instance_dead_after)
            if undone:
                log.warning("credited back %d Cashu payouts interrupted before issue", undone)
        except Exception:
            log.exception("recovery failed; will retry at next start")
        if not await self.load_models():
            self._tasks.append(asyncio.create_task(self._retry_models()))
        self._tasks.append(
            asyncio.create_task(
                self.billing.run_sweeper(
                    self.settings.sweep_interval, self.settings.instance_dead_after
                )
            )
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.upstream.close()
        await self.wallet.close()
        await self.tx.close()
        await self.engine.dispose()

    async def load_models(self) -> bool:
        """Fetch the upstream's models and apply `MODELS_PATH`; False if nothing loaded."""
        models: dict[str, Model] = {}
        try:
            models.update((m.id, m) for m in parse_models(await self.upstream.get_json("/models")))
        except (UpstreamFailure, ValueError) as exc:
            log.warning("could not load upstream models: %s", exc)
        if self.settings.models_path is not None:
            try:
                models.update((m.id, m) for m in load_models_file(self.settings.models_path))
            except (OSError, ValueError) as exc:
                log.error("could not read MODELS_PATH: %s", exc)
        if not models:
            return False
        self.catalogue.replace(list(models.values()))
        log.info("serving %d models", len(models))
        return True

    async def _retry_models(self) -> None:
        while True:
            await asyncio.sleep(MODEL_RETRY_SECONDS)
            if await self.load_models():
                return
