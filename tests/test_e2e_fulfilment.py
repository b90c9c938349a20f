"""Orders out, end to end: pull → route → push to the sandbox WMS → it ships and calls the hub
back over HTTP → the waybill goes back to the marketplace. Every effect exactly once."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.app import create_app
from api.server import serve
from config import Settings
from models.store import Store
from sandbox.server import Sandbox
from sync.catalog import import_catalog
from sync.runtime import pull_shops, push_once, refresh_stock, route
from tests.e2e import (
    check_exactly_once,
    diagnose,
    everything_confirmed,
    hub_settings,
    write_catalog,
)

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def hub_http(settings: Settings, store: Store) -> AsyncIterator[int]:
    """The hub's ASGI app on a free loopback port."""
    async with serve(create_app(settings, store)) as port:
        yield port


async def test_orders_reach_the_wms_once_and_waybills_come_back(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    async with Sandbox(seed=3, profile="calm", backlog=80, backlog_days=0.5, ship_delay=0.2) as sb:
        settings = hub_settings(sb, tmp_path, database_url)
        hub = Store.open(database_url)
        try:
            async with hub_http(settings, hub) as port:
                sb.hub_url = f"http://127.0.0.1:{port}"
                await import_catalog(hub, settings, write_catalog(sb, tmp_path / "catalog.csv"))
                await pull_shops(settings, hub, settings.shops)
                reading = await refresh_stock(settings, hub)
                assert set(reading.warehouses) == {w.code for w in settings.warehouses}
                routed = await route(settings, hub)
                assert routed.routed > 20
                for _ in range(150):
                    await push_once(settings, hub)
                    if await everything_confirmed(hub):
                        break
                    await asyncio.sleep(0.2)
                assert await everything_confirmed(hub), await diagnose(hub, sb)
            await check_exactly_once(sb, hub)
        finally:
            await hub.close()
