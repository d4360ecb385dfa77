"""A running node: every component wired together, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from satsrouter import __version__, faults
from satsrouter.admin.auth import AdminAuth
from satsrouter.admin.live_settings import LiveSettings
from satsrouter.admin.providers import ProviderStore, configured_providers, env_provider
from satsrouter.admin.ratelimit import (
    AttemptLimiter,
    InFlight,
    KeyLimits,
    RateLimiter,
    close_storage,
    make_storage,
    parse_limits,
)
from satsrouter.billing.dead_tokens import DeadTokens
from satsrouter.billing.keys import Keys
from satsrouter.billing.ledger import Ledger
from satsrouter.billing.payments import Billing
from satsrouter.billing.payouts import Payouts
from satsrouter.billing.quote import PriceBook
from satsrouter.billing.redeem import Redeemer
from satsrouter.billing.revenue import Revenue
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.http.discovery import Discovery, DiscoveryConfig
from satsrouter.identity import npub_of
from satsrouter.lightning.invoices import LightningFunding
from satsrouter.lightning.refunds import LightningRefunds
from satsrouter.logs import secure_logging, set_level
from satsrouter.market.announce import AnnounceConfig, Announcer
from satsrouter.market.catalogue import Catalogue
from satsrouter.market.health import ProviderHealth
from satsrouter.market.rates import LiveRate, PinnedRate, RateSource, select_feeds
from satsrouter.market.routing import Router
from satsrouter.market.sync import CatalogueSync
from satsrouter.metrics import Metrics
from satsrouter.settings import Settings, declared_settings
from satsrouter.store.engine import check_durable, instance_lock_dir, make_engine, migrate
from satsrouter.store.leases import LeasedJob, Leases
from satsrouter.store.liveness import InstanceLocks
from satsrouter.store.signals import Signals
from satsrouter.store.turns import Turns
from satsrouter.store.tx import make_tx_runner
from satsrouter.upstream.client import Upstream
from satsrouter.upstream.provider_file import ProviderConfigError
from satsrouter.upstream.providers import ProviderConfig

log = logging.getLogger(__name__)


class Node:
    """Settings plus the live components built from them."""

    def __init__(self, settings: Settings) -> None:
        # What is in effect: the environment's settings until the admin's overrides are
        # applied (`apply_settings` swaps it). Read it when needed, never keep it; the
        # environment's alone stay in `live_settings.base`.
        self.settings = settings
        self.instance_id = os.urandom(12).hex()
        # The engine migrates (and, on Postgres, carries the runner and the mints' turns);
        # every component that keeps money or ecash is handed the runner and uses nothing
        # else of the database.
        self.engine: AsyncEngine = make_engine(settings.effective_database_url)
        self.in_flight = InFlight()
        # A lone request's brief transactions skip the hop to the database's thread.
        self.tx = make_tx_runner(
            settings.effective_database_url, self.engine, quiet=lambda: self.in_flight.total <= 1
        )
        self.metrics = Metrics(self.tx)  # its own registry: many nodes may share a process
        self.locks = InstanceLocks(instance_lock_dir(settings.effective_database_url))
        self.turns = Turns(settings.effective_database_url, self.engine)
        self.signals = Signals(settings.effective_database_url, self.engine)
        self.ledger = Ledger(self.tx, self.instance_id, self.locks, settings.instance_dead_after)
        self.wallet = NodeWallet(
            settings.cashu_mints,
            self.tx,
            self.instance_id,
            self.ledger.is_dead,
            legacy_dir=settings.data_dir,
            observe_mint_call=self.metrics.mint_call,
            mint_max_concurrency=settings.mint_max_concurrency,
            mint_calls_per_second=settings.mint_calls_per_second,
            turns=self.turns,
            signals=self.signals,
        )
        faults.configure(settings.fault_crash_at)
        self.redeemer = Redeemer(self.tx, self.ledger, self.wallet)
        self.payouts = Payouts(self.tx, self.ledger, self.wallet)
        self.billing = Billing(
            self.ledger,
            self.redeemer,
            self.payouts,
            DeadTokens(settings.dead_token_cache_seconds, settings.dead_token_cache_size),
            mint_wait=settings.mint_busy_wait,
        )
        self.lightning = LightningFunding(self.tx, self.ledger, self.wallet)
        self.lightning_refunds = LightningRefunds(
            self.tx, self.ledger, self.payouts, self.wallet, allow_http=settings.lnurl_allow_http
        )
        self.revenue = Revenue(self.tx, self.payouts, self.wallet, self.lightning_refunds)
        # Rate-limit counters: this process's memory, or Redis shared by several nodes.
        self.rate_storage = make_storage(settings.redis_url)
        self.rate_limiter = RateLimiter(self.rate_storage)
        self.key_limits = KeyLimits(self.tx)
        self.admin = AdminAuth(
            self.tx,
            settings.admin_password,
            settings.admin_session_hours * 3600,
            limiter=AttemptLimiter(settings.auth_failure_limit, self.rate_storage),
            on_failure=self.metrics.admin_login_failed,
        )
        self.keys = Keys(self.tx, self.billing, self.payouts, lightning=self.lightning_refunds)
        self.catalogue = Catalogue()
        # Providers: the upstreams by name, each synced, checked and called on its own. Set
        # (and re-set when the admin changes them) by `set_providers`.
        self.provider_configs: list[ProviderConfig] = []
        self.upstreams: dict[str, Upstream] = {}
        self.catalogue_sync = CatalogueSync(self.catalogue, {}, settings.models_path)
        self.health = ProviderHealth(
            {},
            settings.health_check_interval,
            failures=settings.circuit_failures,
            cooldown=settings.circuit_cooldown_seconds,
            trial_timeout=settings.effective_first_byte_timeout,
        )
        self.metrics.watch_circuits(self.health.circuits)
        self.router = Router(self.health)
        self._tasks: list[asyncio.Task[None]] = []
        self.leases = Leases(self.tx, self.instance_id)
        self.announcer = Announcer(self.tx, self._announce_config)
        self.discovery = Discovery(self._discovery_config, self._own_announcement)
        self.jobs = self._fleet_jobs()
        # The environment's provider at once; the file's and the admin's join at start.
        self.set_providers([c for c in [env_provider(settings)] if c is not None], {})
        self.rate: RateSource = (
            PinnedRate(settings.btc_usd_price)
            if settings.btc_usd_price
            else LiveRate(select_feeds(settings.btc_usd_sources), settings.btc_usd_max_age_seconds)
        )
        self.prices = PriceBook(self.catalogue, self.rate, settings.provider_fee)
        self.live_settings = LiveSettings(
            self.tx, settings, Settings(), declared_settings(), self.apply_settings
        )
        self.provider_store = ProviderStore(self.tx)
        self.provider_reloads = 0  # how often the providers were read and applied
        self._providers_version = -1
        self._npub = npub_of(settings.nsec) if settings.nsec else None

    async def start(self) -> None:
        """Migrate, open the wallet, finish interrupted redemptions, load models, start loops."""
        secure_logging()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await check_durable(self.engine)
        self.locks.hold(self.instance_id)
        await migrate(self.engine)
        # The admin's overrides, before anything reads the settings they change.
        await self.live_settings.refresh()
        await self.key_limits.refresh()
        await self.wallet.start()
        await self.ledger.heartbeat()
        try:
            # Before serving: /v1/info shows the npub of a key generated on first start.
            await self.announcer.load_identity()
        except Exception:
            log.exception("Nostr key not loaded; the announcement retries")
        password = await self.admin.ensure_password()
        if password is not None:
            show_once(password)
        try:
            # What a dead predecessor (or sibling) left half done is taken over now: its
            # lock is free, so none of it is in flight anywhere.
            await self.billing.recover()
        except Exception:
            log.exception("recovery failed; the sweeper retries")
        try:
            settled = await self.lightning_refunds.reconcile()
            if settled:
                log.info("finished %d pending Lightning payouts", settled)
        except Exception:
            log.exception("Lightning payout reconciliation failed; the expiry loop retries")
        if isinstance(self.rate, LiveRate):
            # Bounded by the feeds' short timeout: with every feed down the node still starts
            # and refuses paid requests (503) until the background loop gets a price.
            if await self.rate.refresh() is None:
                log.error("no BTC/USD price yet: paid requests are refused until one arrives")
            self._tasks.append(
                asyncio.create_task(self.rate.run(lambda: self.settings.btc_usd_refresh_seconds))
            )
        # A broken providers file stops the start here, with the file's error.
        if await self.reload_providers(strict=True):
            log.info("serving %d models", len(self.catalogue))
        else:
            log.error("no models yet: the upstream's model list is unavailable; retrying")
        # Each loop reads its interval every round: the admin may change it. These run on
        # every node: each keeps its own memory (catalogue, circuits, settings, limits) or
        # its own liveness (the sweeper's heartbeat, and the work of its own requests).
        loops = [
            self.catalogue_sync.run(lambda: self.settings.models_refresh_seconds),
            self.health.run(),  # first check right away
            self.billing.run_sweeper(lambda: self.settings.sweep_interval),
            self.live_settings.run(lambda: self.settings.settings_refresh_seconds),
            self.run_provider_refresh(lambda: self.settings.settings_refresh_seconds),
            self.key_limits.run(lambda: self.settings.settings_refresh_seconds),
            # Each node's own list: it serves /v1/providers from its memory.
            self.discovery.run(lambda: self.settings.settings_refresh_seconds),
            self.announcer.follow(lambda: self.settings.settings_refresh_seconds),
        ]
        # These once per fleet: the node holding each one's lease runs it.
        loops += [job.run() for job in self.jobs.values()]
        self._tasks += [asyncio.create_task(loop) for loop in loops]

    def _fleet_jobs(self) -> dict[str, LeasedJob]:
        """The jobs one node of the fleet runs at a time, by lease name.

        Each works through the whole database, not this node's memory, so one runner is
        enough; each also checks-and-sets its money steps itself (store/leases.py).
        """

        def leased(
            name: str,
            interval: Callable[[], float],
            body: Callable[[], Awaitable[Any]],
            delay_first: bool = False,
        ) -> LeasedJob:
            ttl = self._lease_ttl
            return LeasedJob(
                self.leases,
                name,
                ttl,
                interval,
                body,
                delay_first=delay_first,
                is_dead=self.ledger.is_dead,
            )

        jobs = [
            leased(
                "invoice-watcher",
                lambda: self.settings.invoice_poll_interval,
                self.lightning.watch_once,
            ),
            leased(
                "lightning-expiry",
                lambda: self.settings.expiry_check_interval,
                self.lightning_refunds.expiry_pass,
            ),
            leased(
                "auto-payout",
                lambda: self.settings.payout_interval,
                lambda: self.revenue.auto_payout_once(self._auto_payout),
                delay_first=True,  # as before leases: the first check one interval in
            ),
            # One announcement per database (market/announce.py): looked at as often as
            # settings are, so a change is published within that time; sent only when due.
            leased(
                "nostr-announce",
                lambda: self.settings.settings_refresh_seconds,
                self.announcer.tick,
            ),
        ]
        return {job.name: job for job in jobs}

    @property
    def npub(self) -> str | None:
        """The node's Nostr identity: `NSEC`'s, or the stored key's once announcing is on."""
        return self.announcer.npub or self._npub

    def _announce_config(self) -> AnnounceConfig:
        s = self.settings
        return AnnounceConfig(
            enabled=s.nostr_announce,
            relays=tuple(s.relays),
            interval=s.nostr_announce_interval,
            nsec=s.nsec,
            name=s.name,
            about=s.description,
            urls=tuple(url for url in (s.http_url, s.onion_url) if url),
            mints=tuple(s.cashu_mints),
            version=__version__,
        )

    def _discovery_config(self) -> DiscoveryConfig:
        s = self.settings
        return DiscoveryConfig(
            enabled=s.nostr_discovery,
            relays=tuple(s.relays),
            ttl=s.nostr_discovery_ttl,
            proxy=s.upstream_proxy,
            allow_loopback=s.nostr_discovery_allow_loopback,
        )

    def _own_announcement(self) -> tuple[str | None, str | None]:
        return self.npub, self.announcer.known_identifier

    @property
    def upstream(self) -> Upstream:
        """The first provider's upstream (the only one on a one-provider node)."""
        return next(iter(self.upstreams.values()))

    def set_providers(self, configs: list[ProviderConfig], routes: dict[str, list[str]]) -> None:
        """Make `configs` the providers: clients for new or changed ones, the sync's sources,
        the health probes and the routing order. Disabled providers leave rotation."""
        enabled = [c for c in configs if c.enabled]
        old = {c.name: c for c in self.provider_configs}
        upstreams: dict[str, Upstream] = {}
        for config in enabled:
            kept = self.upstreams.get(config.name)
            if kept is not None and old.get(config.name) == config:
                upstreams[config.name] = kept
            else:
                upstream = Upstream(
                    config.base_url,
                    config.api_key,
                    dialect=config.dialect,
                    proxy=config.proxy,
                    connect_timeout=config.connect_timeout,
                    first_byte_timeout=config.first_byte_timeout,
                    idle_timeout=config.idle_timeout,
                )
                upstream.set_timeouts(*self.settings.upstream_timeouts)
                upstreams[config.name] = upstream
        retired = [u for name, u in self.upstreams.items() if upstreams.get(name) is not u]
        self.provider_configs = list(configs)
        self.upstreams = upstreams
        probes = {name: _model_list(up) for name, up in upstreams.items()}
        self.catalogue_sync.sources = dict(probes)
        self.catalogue_sync.configs = {c.name: c for c in enabled}
        self.health.set_probes(probes)
        self.router.routes = dict(routes)
        for upstream in retired:
            # Requests in flight on it finish first: close once they had time to.
            task = asyncio.get_running_loop().create_task(_close_later(upstream))
            self._tasks.append(task)

    async def reload_providers(self, *, strict: bool = False) -> bool:
        """Read the providers from every source (environment, file, admin) and apply them;
        the catalogue follows at once (True when it holds models). A broken providers file
        keeps the providers as they were (logged), or raises when `strict`."""
        version = await self.provider_store.version()
        try:
            configs, routes = await configured_providers(self.settings, self.provider_store)
        except ProviderConfigError:
            if strict:
                raise
            log.exception("providers not reloaded; keeping the ones in use")
            return len(self.catalogue) > 0
        self.set_providers(configs, routes)
        self._providers_version = version
        self.provider_reloads += 1
        return await self.catalogue_sync.refresh()

    async def run_provider_refresh(self, interval: Callable[[], float]) -> None:
        """Reload the providers when another node (or the admin on one) changed them."""
        while True:
            await asyncio.sleep(interval())
            try:
                if await self.provider_store.version() != self._providers_version:
                    await self.reload_providers()
            except Exception:
                log.exception("providers refresh failed")

    def _lease_ttl(self) -> float:
        return self.settings.lease_ttl_seconds

    def _auto_payout(self) -> tuple[str, int]:
        """Where automatic revenue payouts go and from what amount (read on every pass)."""
        return self.settings.receive_ln_address, self.settings.payout_threshold_sat

    def apply_settings(self, new: Settings) -> None:
        """Make `new` the settings in effect and push the live ones into the components.

        Handlers and loops read `self.settings` when they need a value; what a component
        holds itself is set here. Settings not declared `live` never differ from the start.
        """
        old, self.settings = self.settings, new
        self.prices.fee = new.provider_fee
        for upstream in self.upstreams.values():
            upstream.set_timeouts(*new.upstream_timeouts)
        self.health.interval = new.health_check_interval
        self.health.failures = new.circuit_failures
        self.health.cooldown = new.circuit_cooldown_seconds
        self.health.trial_timeout = new.effective_first_byte_timeout
        self.admin.session_seconds = new.admin_session_hours * 3600
        if new.auth_failure_limit != old.auth_failure_limit:
            self.admin.limiter.items = parse_limits(new.auth_failure_limit)
        if isinstance(self.rate, LiveRate):
            self.rate.max_age = new.btc_usd_max_age_seconds
        if new.log_level != old.log_level:
            # Only on a change: a node embedded in another program (or tests) keeps the
            # host's logging until the admin asks for something else.
            set_level(new.log_level)

    def rate_status(self) -> dict[str, Any]:
        """The exchange rate in use and where it comes from, for `/v1/info`."""
        status = getattr(self.prices.rate, "status", None)
        if callable(status):
            result: dict[str, Any] = status()
            return result
        try:
            return {"usd_per_btc": str(self.prices.rate.usd_per_btc()), "source": "pinned"}
        except Exception as exc:
            return {"usd_per_btc": None, "error": str(exc)}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for upstream in self.upstreams.values():
            await upstream.close()
        if isinstance(self.rate, LiveRate):
            await self.rate.close()
        await self.lightning_refunds.close()
        with contextlib.suppress(Exception):
            await close_storage(self.rate_storage)
        await self.wallet.close()
        await self.turns.close()
        await self.signals.close()
        with contextlib.suppress(Exception):
            await self.ledger.retire()  # siblings need not wait for our heartbeat to age
        with contextlib.suppress(Exception):
            await self.leases.release_all()  # ... nor for our leases to expire
        self.locks.release()
        await self.tx.close()
        await self.engine.dispose()


def show_once(password: str) -> None:
    """Print a generated admin password on the console, never through logging (I8)."""
    print(
        "\n  satsrouter: admin password (shown once; stored only as a hash):\n"
        f"    {password}\n"
        "  Log in at /admin. `satsrouter admin reset-password` makes a new one.\n",
        file=sys.stderr,
        flush=True,
    )


def _model_list(upstream: Upstream) -> Callable[[], Awaitable[Any]]:
    async def fetch() -> Any:
        return await upstream.get_json("/models")

    return fetch


async def _close_later(upstream: Upstream, grace: float = 600.0) -> None:
    """Close a retired provider's client once requests still using it had time to end."""
    try:
        await asyncio.sleep(grace)
    finally:
        await upstream.close()
