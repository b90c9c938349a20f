"""Opening the hub's resources from the settings (shared by the CLI, the daemon and the tests)."""

import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime

from config import Settings, ShopConfig
from connectors.base import Marketplace
from connectors.registry import marketplace_for as registry_marketplace_for
from connectors.registry import wms_for as registry_wms_for
from models.clock import Clock
from models.db import safe_url
from models.domain import SyncRun
from models.store import Store
from sync.channel_stock import PLATFORM_STOCK, STOCK_SYNC_JOB, StockSync, sync_channel_stock
from sync.erp import ErpEffects
from sync.errors import DatabaseNotReady
from sync.fulfilment import Effects, RoutingStats, route_all
from sync.leases import hold_lease
from sync.orders import OrderPuller, PullProgress
from sync.outbox import Dispatcher, DrainStats, RetrySchedule
from sync.stock import StockReading, read_stock


async def open_store(settings: Settings, clock: Clock | None = None) -> Store:
    """Open the store and check it is migrated; raise `DatabaseNotReady` with the fix if not."""
    store = Store.open(settings.database_url, clock)
    try:
        current, head = await store.migration_state()
    except Exception as exc:
        await store.close()
        raise DatabaseNotReady(
            f"cannot reach the database {safe_url(settings.database_url)}: {exc}"
        ) from None
    if current != head:
        await store.close()
        raise DatabaseNotReady(
            f"the database {safe_url(settings.database_url)} is at migration {current or 'none'}, "
            f"the code needs {head}: run `ecomhub db upgrade`"
        )
    return store


async def pull_shops(
    settings: Settings,
    store: Store,
    shops: Sequence[ShopConfig],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Callable[[ShopConfig], PullProgress] | None = None,
    marketplace_for: Callable[[ShopConfig], Marketplace] | None = None,
    owner: str = "",
) -> list[SyncRun]:
    """One pull (or, with `since`, a backfill) of each shop, one after the other."""
    make = marketplace_for or registry_marketplace_for
    runs = []
    for shop in shops:
        marketplace = make(shop)
        try:
            puller = OrderPuller(
                store,
                settings,
                shop,
                marketplace,
                owner=owner,
                progress=progress(shop) if progress else None,
            )
            if since is not None:
                runs.append(await puller.backfill(since, until or store.clock.now()))
            else:
                runs.append(await puller.pull())
        finally:
            await marketplace.aclose()
    return runs


async def refresh_stock(settings: Settings, store: Store) -> StockReading:
    """Read every warehouse's stock into the ledger (routing and channel stock use it)."""
    return await read_stock(settings, store, lambda warehouse: registry_wms_for(warehouse))


ROUTE_JOB = "route"
"""The daemon's routing job, and its lease: one routing run at a time, whoever runs it (a
run trusts its view of stock for a few seconds, so two at once could both spend it)."""


async def route(settings: Settings, store: Store) -> RoutingStats:
    """Route every reviewed order (writes `wms.create` messages; sends nothing), under the
    `route` lease."""
    async with hold_lease(store, ROUTE_JOB, replica_name(), settings.daemon.lease_ttl):
        return await route_all(store, settings)


def effects_for(settings: Settings, store: Store) -> Effects:
    return Effects(
        store,
        settings,
        wms_for=lambda warehouse: registry_wms_for(warehouse),
        marketplace_for=lambda shop: registry_marketplace_for(shop),
    )


def replica_name() -> str:
    """This process's name in leases and claims: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def erp_effects_for(settings: Settings, store: Store) -> ErpEffects:
    return ErpEffects(store, settings, wms_for=lambda warehouse: registry_wms_for(warehouse))


async def push_once(settings: Settings, store: Store, owner: str | None = None) -> DrainStats:
    """Drain the outbox once: everything due now is sent (or scheduled for a retry)."""
    effects = effects_for(settings, store)
    erp_effects = erp_effects_for(settings, store)
    try:
        dispatcher = Dispatcher(
            store,
            {**effects.handlers(), **erp_effects.handlers()},
            owner=owner or replica_name(),
            schedule=RetrySchedule.from_config(settings.daemon),
            per_target=settings.daemon.per_target,
        )
        return await dispatcher.drain_once()
    finally:
        await effects.aclose()
        await erp_effects.aclose()


async def stock_sync_once(
    settings: Settings,
    store: Store,
    shops: Sequence[ShopConfig] | None = None,
    *,
    full: bool = False,
    owner: str | None = None,
) -> tuple[StockSync, DrainStats, int]:
    """One channel stock sync now (under the daemon's `stock-sync` lease), then one outbox drain
    so the values reach the marketplaces. Returns the sync, the drain, and how many stock
    messages are still unsent afterwards (waiting for a retry, or dead letters)."""
    owner = owner or replica_name()
    async with hold_lease(store, STOCK_SYNC_JOB, owner, settings.daemon.lease_ttl):
        result = await sync_channel_stock(
            settings, store, lambda shop: registry_marketplace_for(shop), shops=shops, full=full
        )
    sent = await push_once(settings, store, owner)
    codes = {s.code for s in shops} if shops is not None else {s.code for s in settings.shops}
    async with store.read() as tx:
        depth = await tx.outbox_depth()
    unsent = sum(
        d.pending + d.dead for d in depth if d.kind == PLATFORM_STOCK and d.target in codes
    )
    return result, sent, unsent
