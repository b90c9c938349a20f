"""Orders out, end to end: pull → route → push to the sandbox WMS → it ships and calls the hub
back over HTTP → the waybill goes back to the marketplace. Every effect exactly once."""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.app import create_app
from api.server import serve
from config import Settings, load_settings
from models.domain import DeliveryState, OutboxStatus
from models.store import Store
from sandbox.server import Sandbox
from sync.catalog import import_catalog
from sync.runtime import pull_shops, push_once, refresh_stock, route

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def hub_http(settings: Settings, store: Store) -> AsyncIterator[int]:
    """The hub's ASGI app on a free loopback port."""
    async with serve(create_app(settings, store)) as port:
        yield port


def hub_settings(sb: Sandbox, tmp_path: Path, database_url: str) -> Settings:
    """The sandbox's config for the hub; the callback URL is the sandbox's `hub_url`."""
    path = tmp_path / "ecomhub.toml"
    path.write_text(sb.hub_config_toml(database_url, "127.0.0.1", 1), encoding="utf-8")
    return load_settings(path, environ={})


def write_catalog(sb: Sandbox, path: Path) -> Path:
    path.write_text(
        "sku,name,barcode,weight_kg\n"
        + "".join(f"{c},{n},{b},{w}\n" for c, n, b, w in sb.world.catalog()),
        encoding="utf-8",
    )
    return path


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


async def diagnose(hub: Store, sb: Sandbox) -> str:
    async with hub.transaction() as tx:
        messages = await tx.outbox_messages()
        states = Counter(
            d["state"] for s in [x async for x in tx.iter_orders()] for d in s.delivery_orders
        )
    outbox = Counter((m.kind, m.status.value) for m in messages)
    errors = {m.last_error for m in messages if m.last_error}
    wms = Counter(c.status for c in sb.qimen.creates)
    return f"deliveries {dict(states)}; outbox {dict(outbox)}; errors {sorted(errors)[:3]}; wms {dict(wms)}; callbacks pending {len(sb.qimen.pending_callbacks)}"


async def everything_confirmed(hub: Store) -> bool:
    async with hub.transaction() as tx:
        messages = await tx.outbox_messages()
        deliveries = [d for s in [x async for x in tx.iter_orders()] for d in s.delivery_orders]
    ships = [m for m in messages if m.kind == "platform.ship"]
    return (
        bool(deliveries)
        and all(d["state"] == DeliveryState.SHIPPED.value for d in deliveries)
        and len(ships) == len(deliveries)
        and all(m.status == OutboxStatus.DONE for m in messages)
    )


async def check_exactly_once(sb: Sandbox, hub: Store) -> None:
    async with hub.transaction() as tx:
        stored = [s async for s in tx.iter_orders()]
        shipments = {
            d["code"]: await tx.shipments_of(d["code"]) for s in stored for d in s.delivery_orders
        }
    codes = [d["code"] for s in stored for d in s.delivery_orders]
    created = Counter(c.code for c in sb.qimen.creates)
    assert set(created) == set(codes)
    assert set(created.values()) == {1}, "a delivery order was created twice in the WMS"
    confirmations = Counter(
        (r.get("tid") or r.get("orderId"), r.get("out_sid") or r.get("logiNo"))
        for r in [*sb.top.shipments, *sb.jd.shipments]
    )
    assert set(confirmations.values()) == {1}, "a waybill was sent to a marketplace twice"
    for s in stored:
        if not s.delivery_orders:
            continue
        truth = sb.world.order(s.order.shop, int(s.order.platform_order_id))
        waybills = {w.waybill for d in s.delivery_orders for w in shipments[d["code"]]}
        assert truth.waybill in waybills, "the marketplace shows a waybill the WMS never gave"
