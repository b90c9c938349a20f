"""The daemon's engine: every periodic job on one APScheduler, each under a lease.

Jobs (names are also their lease names):
- `pull:<shop>` every shop's `poll_interval`; `backfill:<shop>` when the admin API asks;
- `route` after every pull and hint, and every `daemon.route_interval` as a safety net;
- `stock` every `daemon.stock_interval` (the ledger routing and channel stock read);
- `reconcile-inventory:<warehouse>` every `daemon.inventory_reconcile_interval`: the WMS
  snapshot against the ledger, stored as a report;
- `stock-sync` every `daemon.stock_sync_interval` and after each stock reading: channel stock
  computed and changed values written to the outbox (`sync.channel_stock`);
- `tmc:<shop>` for TOP shops every `daemon.tmc_interval` (each message is a hint);
- `erp-purchase` every `erp.poll_interval` with `[erp]`: new audited purchase orders become WMS
  inbound notices (`sync.erp`);
- `tokens` hourly: warns about shop tokens that expire within a week.

A job runs only while its replica holds the job's lease (free, expired, or ours; renewed while
the job runs), so any number of replicas on one PostgreSQL database run each job on one replica
at a time, and a dead replica's jobs move on once its leases expire. A lease left by a crashed
process on this host is taken at once. SQLite is the embedded single-node store: the daemon holds
the `replica` lease for its whole life and a second daemon on the same file refuses to start.

The outbox dispatcher runs continuously beside the scheduler (claims use SKIP LOCKED, so it
needs no lease) and is woken whenever something writes messages. Webhook and TMC hints queue a
targeted fetch of one order; the periodic pull still reconciles everything.

Nothing here overlaps itself: a job asked to run while it runs is run once more right after.
"""

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from config import Settings, ShopConfig, WarehouseConfig
from connectors.base import Erp, Marketplace, MessageSource, Wms
from connectors.registry import marketplace_for as registry_marketplace_for
from connectors.registry import wms_for as registry_wms_for
from models.clock import Clock, SystemClock
from models.store import Store
from sync.channel_stock import STOCK_SYNC_JOB, sync_channel_stock
from sync.erp import ErpEffects, poll_purchase_orders
from sync.errors import HubError
from sync.fulfilment import Effects, route_all
from sync.hints import consume_hints
from sync.leases import keep_lease
from sync.metrics import HubMetrics
from sync.orders import OrderPuller
from sync.outbox import Dispatcher, RetrySchedule
from sync.reconcile import reconcile_inventory
from sync.runtime import ROUTE_JOB, replica_name
from sync.stock import read_stock

log = structlog.get_logger("ecomhub.sync.daemon")

REPLICA_LEASE = "replica"
TOKEN_WARNING = timedelta(days=7)
HINT_CONCURRENCY = 8
TMC_BATCH = 100
FIRST_STOCK_WAIT = 30.0
"""Seconds the first routing waits for the first stock reading (a WMS that is down must not
stop routing for long)."""


async def wait_first(*events: asyncio.Event) -> None:
    """Until any of `events` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def holder_is_dead(holder: str) -> bool:
    """Is `holder` (a `replica_name`) a process on this host that no longer runs?"""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class Daemon:
    """The long-running hub: scheduler, leases, dispatcher and hints (implements `HubControl`).

    `start()` takes the store's replica rules into account and starts every job; `stop()` stops
    taking work, lets in-flight work finish within the grace period, and gives back leases and
    outbox claims so another replica takes them at once."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        owner: str | None = None,
        metrics: HubMetrics | None = None,
        marketplace_for: Callable[[ShopConfig], Marketplace] = registry_marketplace_for,
        wms_for: Callable[[WarehouseConfig], Wms] = registry_wms_for,
        erp_for: Callable[[Settings], Erp] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner or replica_name()
        self.metrics = metrics or HubMetrics()
        self.options = settings.daemon
        self.clock = clock or store.clock or SystemClock()
        self._marketplace_for = marketplace_for
        self._wms_for = wms_for
        self._markets: dict[str, Marketplace] = {}
        self._pullers: dict[str, OrderPuller] = {}
        self._effects = Effects(
            store,
            settings,
            wms_for=wms_for,
            marketplace_for=marketplace_for,
            on_stock_pushed=self.metrics.stock_values_pushed,
        )
        self._erp_effects = ErpEffects(
            store, settings, wms_for=wms_for, erp_for=erp_for, observe=self.metrics.erp_call
        )
        self._dispatcher = Dispatcher(
            store,
            {**self._effects.handlers(), **self._erp_effects.handlers()},
            owner=self.owner,
            schedule=RetrySchedule.from_config(self.options),
            per_target=self.options.per_target,
            claim_ttl=self.options.claim_ttl,
            clock=self.clock,
            on_outcome=self.metrics.outbox_outcome,
        )
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._stopping = asyncio.Event()
        self._dispatch_stop = asyncio.Event()
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._backfills: dict[str, deque[tuple[datetime, datetime]]] = {}
        self._hints: dict[str, set[str]] = {}
        self._hint_ready = asyncio.Event()
        self._stock_read = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._started = False
        self.halted = asyncio.Event()
        """Set when the daemon must stop on its own (it lost its SQLite replica lease)."""
        self.lost = ""

    # --- HubControl ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started and not self._stopping.is_set() and self._scheduler.running

    def request_pull(self, shop: str) -> None:
        self.settings.shop(shop)  # KeyError for an unknown shop, before anything is queued
        self._trigger(f"pull:{shop}", lambda: self._pull(shop))

    def request_backfill(self, shop: str, since: datetime, until: datetime) -> None:
        self.settings.shop(shop)
        self._backfills.setdefault(shop, deque()).append((since, until))
        self._trigger(f"backfill:{shop}", lambda: self._backfill(shop))

    def hint(self, shop: str, platform_order_id: str) -> None:
        self.settings.shop(shop)
        self._hints.setdefault(shop, set()).add(platform_order_id)
        self._hint_ready.set()

    def wake_dispatcher(self) -> None:
        self._dispatcher.wake.set()

    def request_route(self) -> None:
        self._trigger(ROUTE_JOB, self._route)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Check the replica rules, then start every job, the dispatcher and the hint worker."""
        if self.store.backend == "sqlite":
            await self._hold_replica_lease()
            async with self.store.transaction() as tx:
                released = await tx.release_outbox_claims(self.owner, all_but=True)
            if released:
                log.info("took back outbox claims of a stopped process", messages=released)
        now = self.clock.now()
        for shop in self.settings.shops:
            self._every(
                f"pull:{shop.code}",
                shop.poll_interval,
                self._pull_job(shop.code),
                first=now,
            )
            if isinstance(self._marketplace(shop.code), MessageSource):
                self._every(
                    f"tmc:{shop.code}", self.options.tmc_interval, self._tmc_job(shop), first=now
                )
        self._every(ROUTE_JOB, self.options.route_interval, self._route, first=now)
        if self.settings.warehouses:
            self._every("stock", self.options.stock_interval, self._stock, first=now)
        for warehouse in self.settings.warehouses:
            interval = self.options.inventory_reconcile_interval
            self._every(
                f"reconcile-inventory:{warehouse.code}",
                interval,
                self._reconcile_job(warehouse.code),
                first=now + interval,  # after the first stock reading, not beside it
            )
        if self.settings.warehouses and self.settings.shops:
            self._every(
                STOCK_SYNC_JOB,
                self.options.stock_sync_interval,
                self._stock_sync,
                first=now + self.options.stock_sync_interval,
            )
        if self.settings.erp is not None:
            self._every("erp-purchase", self.settings.erp.poll_interval, self._erp_poll, first=now)
        self._every("tokens", timedelta(hours=1), self._check_tokens, first=now)
        self._scheduler.start()
        self._background = [
            asyncio.create_task(
                self._dispatcher.run(
                    self._dispatch_stop, idle=self.options.dispatch_idle.total_seconds()
                ),
                name="dispatcher",
            ),
            asyncio.create_task(self._hint_worker(), name="hints"),
        ]
        if self.store.backend == "sqlite":
            self._background.append(
                asyncio.create_task(self._renew_replica_lease(), name="replica-lease")
            )
        self._started = True
        log.info(
            "daemon started",
            owner=self.owner,
            database=self.store.backend,
            shops=[s.code for s in self.settings.shops],
            warehouses=[w.code for w in self.settings.warehouses],
        )

    async def stop(self) -> None:
        """Stop taking work; give in-flight work the grace period; give back leases and claims."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self.options.grace_period.total_seconds()
        log.info("daemon stopping", in_flight=sorted(self._jobs), grace_seconds=grace)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._dispatch_stop.set()
        self._hint_ready.set()
        pending = [*self._jobs.values(), *self._background]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                log.warning("cancelled at the end of the grace period", task=task.get_name())
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        with contextlib.suppress(Exception):
            async with self.store.transaction() as tx:
                await tx.release_outbox_claims(self.owner)
                leases = await tx.release_leases(self.owner)
            log.info("leases and claims released", leases=leases)
        await self._effects.aclose()
        await self._erp_effects.aclose()
        for market in self._markets.values():
            await market.aclose()
        log.info("daemon stopped")

    async def run(self, stop: asyncio.Event) -> None:
        """`start()`, wait for `stop`, `stop()`."""
        await self.start()
        try:
            await wait_first(stop, self.halted)
        finally:
            await self.stop()
        if self.halted.is_set():
            raise HubError(self.lost)

    # --- scheduling ----------------------------------------------------------------------

    def _every(
        self,
        name: str,
        interval: timedelta,
        work: Callable[[], Awaitable[None]],
        *,
        first: datetime,
    ) -> None:
        async def fire() -> None:
            await self._run_job(name, work)

        self._scheduler.add_job(
            fire,
            "interval",
            seconds=max(interval.total_seconds(), 0.1),
            id=name,
            name=name,
            next_run_time=first,
            # `_run_job` keeps a job from overlapping itself (a tick during a run asks for one
            # more run); a second instance only reaches it, so APScheduler never skips and warns.
            max_instances=2,
            coalesce=True,
            misfire_grace_time=None,
        )

    def _trigger(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run a job now (or once more right after the run in flight)."""
        if self._stopping.is_set():
            return
        if name in self._jobs:
            self._again.add(name)
            return
        asyncio.get_running_loop().create_task(self._run_job(name, work), name=name)

    async def _run_job(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        if self._stopping.is_set():
            return
        if name in self._jobs:
            self._again.add(name)
            return
        task = asyncio.current_task()
        assert task is not None
        self._jobs[name] = task
        try:
            while True:
                self._again.discard(name)
                await self._leased(name, work)
                if name not in self._again or self._stopping.is_set():
                    break
        finally:
            self._jobs.pop(name, None)

    async def _leased(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        logger = log.bind(job=name)
        try:
            acquired = await self._acquire(name)
        except Exception as exc:  # the store is down or restarting: the next tick tries again
            logger.warning("job skipped: its lease could not be taken", error=str(exc)[:300])
            self.metrics.job_finished(name, 0.0, "failed")
            return
        if not acquired:
            logger.debug("another replica holds the lease; skipped")
            self.metrics.job_finished(name, 0.0, "skipped")
            return
        job: asyncio.Future[None] = asyncio.ensure_future(work())
        renew = asyncio.create_task(
            keep_lease(self.store, name, self.owner, self.options.lease_ttl, job)
        )
        started = time.monotonic()
        outcome = "ok"
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            outcome = "failed"
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # shutdown: stop the work too
                job.cancel()
                raise
            # else the lease was lost and `_renew` stopped the work; this runner goes on
        except Exception:
            outcome = "failed"
            logger.exception("job failed")
        finally:
            renew.cancel()
            self.metrics.job_finished(name, time.monotonic() - started, outcome)
            with contextlib.suppress(Exception):
                async with self.store.transaction() as tx:
                    await tx.release_lease(name, self.owner)

    async def _acquire(self, name: str) -> bool:
        ttl = self.options.lease_ttl
        async with self.store.transaction() as tx:
            if await tx.acquire_lease(name, self.owner, ttl):
                return True
            holder = await tx.lease_owner(name)
            if holder is not None and holder_is_dead(holder[0]):
                taken = await tx.acquire_lease(name, self.owner, ttl, take_from=holder[0])
                if taken:
                    log.info("took over the lease of a stopped process", job=name, was=holder[0])
                return taken
        return False

    async def _hold_replica_lease(self) -> None:
        if await self._acquire(REPLICA_LEASE):
            return
        async with self.store.read() as tx:
            holder = await tx.lease_owner(REPLICA_LEASE)
        who = holder[0] if holder else "another process"
        raise HubError(
            f"another `ecomhub run` ({who}) is using this SQLite database. SQLite is the "
            "single-node store: run one daemon per file, or point every replica at PostgreSQL "
            "(database_url = postgresql+psycopg://…) to run several."
        )

    async def _renew_replica_lease(self) -> None:
        every = self.options.lease_ttl.total_seconds() / 3
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), every)
            if self._stopping.is_set():
                return
            try:
                async with self.store.transaction() as tx:
                    kept = await tx.acquire_lease(REPLICA_LEASE, self.owner, self.options.lease_ttl)
            except Exception as exc:
                log.warning("replica lease renewal failed", error=str(exc))
                continue
            if not kept:
                self.lost = (
                    "another `ecomhub run` took this SQLite database's replica lease; "
                    "stopping (SQLite is the single-node store)"
                )
                log.error(self.lost)
                self.halted.set()
                return

    # --- the jobs ------------------------------------------------------------------------

    def _marketplace(self, shop: str) -> Marketplace:
        if shop not in self._markets:
            self._markets[shop] = self._marketplace_for(self.settings.shop(shop))
        return self._markets[shop]

    def _puller(self, shop: str, use: str = "live") -> OrderPuller:
        """One puller per shop and use (live pulls and hints, backfills): a puller keeps
        per-run state, and a backfill may run beside the live pull."""
        key = f"{use}:{shop}"
        if key not in self._pullers:
            self._pullers[key] = OrderPuller(
                self.store,
                self.settings,
                self.settings.shop(shop),
                self._marketplace(shop),
                clock=self.clock,
                owner=self.owner,
            )
        return self._pullers[key]

    def _pull_job(self, shop: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            await self._pull(shop)

        return work

    async def _pull(self, shop: str) -> None:
        run = await self._puller(shop).pull()  # the puller logs the run's figures
        self.metrics.pull_finished(run)
        if run.orders_written:
            self.request_route()

    async def _backfill(self, shop: str) -> None:
        queue = self._backfills.get(shop)
        while queue:
            since, until = queue.popleft()
            run = await self._puller(shop, "backfill").backfill(since, until)
            self.metrics.pull_finished(run)
            self.request_route()

    async def _route(self) -> None:
        if not self._stock_read.is_set():
            await self._first_stock_reading()
        stats = await route_all(self.store, self.settings)
        if stats.routed or stats.held:
            log.info(
                "routed",
                orders=stats.routed,
                delivery_orders=stats.delivery_orders,
                held_no_stock=stats.held,
                by_warehouse=stats.by_warehouse,
            )
        self.wake_dispatcher()

    async def _first_stock_reading(self) -> None:
        """Route on a stock reading when one can be had: an order routed blind goes by region
        alone and may wait in a warehouse that lacks its stock. The reading may be this
        replica's or another's; after `FIRST_STOCK_WAIT` routing goes ahead regardless."""
        wanted = {w.code for w in self.settings.warehouses}
        deadline = time.monotonic() + FIRST_STOCK_WAIT
        while not self._stock_read.is_set() and time.monotonic() < deadline:
            async with self.store.read() as tx:
                if wanted <= await tx.read_warehouses():
                    break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stock_read.wait(), 1.0)
        self._stock_read.set()

    async def _stock(self) -> None:
        try:
            reading = await read_stock(self.settings, self.store, self._wms_for)
        finally:
            self._stock_read.set()
        log.info("stock read", skus=reading.warehouses, failed=reading.failed)
        if reading.warehouses:
            self.request_route()  # orders held for no stock may fit now
            if self.settings.shops:  # cheap: only changed values are enqueued
                self._trigger(STOCK_SYNC_JOB, self._stock_sync)

    async def _stock_sync(self) -> None:
        result = await sync_channel_stock(
            self.settings,
            self.store,
            lambda shop: self._marketplace(shop.code),
            close_markets=False,
        )
        for shop in result.shops:
            if shop.values:
                self.metrics.stock_values_enqueued(shop.shop, shop.values)
        if result.messages:
            self.wake_dispatcher()

    def _reconcile_job(self, warehouse: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            report = await reconcile_inventory(self.settings, self.store, warehouse, self._wms_for)
            self.metrics.reconciled(report)

        return work

    async def _erp_poll(self) -> None:
        poll = await poll_purchase_orders(
            self.store,
            self.settings,
            self._erp_effects.erp(),
            owner=self.owner,
            observe=self.metrics.erp_call,
        )
        if poll.new:
            self.wake_dispatcher()

    def _tmc_job(self, shop: ShopConfig) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            source = self._marketplace(shop.code)
            if isinstance(source, MessageSource):
                while (
                    await consume_hints(
                        shop, source, self, group=shop.tmc_group, quantity=TMC_BATCH
                    )
                    >= TMC_BATCH
                ):
                    pass  # a full batch: more are waiting

        return work

    async def _check_tokens(self) -> None:
        now = self.clock.now()
        for shop in self.settings.shops:
            expires = shop.token_expires_at
            if expires is not None and expires - now < TOKEN_WARNING:
                log.warning(
                    "shop token expires soon: re-authorise the shop",
                    shop=shop.code,
                    expires_at=expires.isoformat(),
                    hours_left=round((expires - now).total_seconds() / 3600, 1),
                )

    async def _hint_worker(self) -> None:
        limit = asyncio.Semaphore(HINT_CONCURRENCY)

        async def fetch(shop: str, order_id: str) -> None:
            async with limit:
                try:
                    fetched = await self._puller(shop, "hint").fetch_one(order_id)
                except Exception as exc:  # a hint is best effort: the pull reconciles
                    log.warning("hinted fetch failed", shop=shop, order=order_id, error=str(exc))
                    return
            if fetched:
                # Route now, not after the batch's slowest fetch; requests coalesce.
                self.request_route()

        # Hints are fetched as they come (HINT_CONCURRENCY at a time), not batch by batch: a
        # hint never waits for the slowest fetch of an earlier one.
        fetching: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                await self._hint_ready.wait()
                self._hint_ready.clear()
                batch, self._hints = self._hints, {}
                if self._stopping.is_set():
                    break
                for shop, orders in batch.items():
                    for order in orders:
                        task = asyncio.create_task(fetch(shop, order))
                        fetching.add(task)
                        task.add_done_callback(fetching.discard)
            if fetching:  # stopping: let the fetches under way finish (within the grace period)
                await asyncio.wait(fetching)
        finally:
            for task in fetching:
                task.cancel()
            if fetching:  # their rollbacks finish before the daemon closes its connections
                await asyncio.wait(fetching)
