"""Channel stock end to end against the sandbox: listings from TOP and JD, orders lower the
published stock, a WMS stock-change callback raises it, nothing is sent when nothing changed, a
full resync repairs the platforms, TOP batches ≤ 20 SKUs per call; and `ecomhub sync inventory`."""

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from config import Settings, ShopConfig
from connectors.base import Marketplace
from connectors.registry import marketplace_for
from models.store import Store
from sandbox.server import Sandbox
from sandbox.world import Listing as WorldListing
from sync.catalog import import_catalog
from sync.channel_stock import sync_channel_stock
from sync.fulfilment import Effects
from sync.outbox import Dispatcher
from sync.runtime import effects_for, pull_shops, refresh_stock, route
from tests.e2e import MAIN, hub_settings, poll, write_catalog, write_hub_config
from tests.test_e2e_fulfilment import hub_http

pytestmark = pytest.mark.slow

STOCK_METHODS = {"taobao.skus.quantity.update", "taobao.item.quantity.update"}
JD_STOCK = "jingdong.stock.write.updateSkuStock"


@pytest.fixture
async def hub_store(store: Store, database_url: str) -> AsyncIterator[Store]:
    """The migrated, emptied database of `store`, on the system clock (the sandbox's time)."""
    hub = Store.open(database_url)
    yield hub
    await hub.close()


class Counting(httpx.AsyncBaseTransport):
    """The real network, counting the platform methods called (and each TOP SKU batch)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.methods: Counter[str] = Counter()
        self.batches: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs((await request.aread()).decode())
        method = form.get("method", [""])[0]
        self.methods[method] += 1
        if method == "taobao.skus.quantity.update":
            self.batches.append(len(form["skuid_quantities"][0].split(";")))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def stock_calls(self) -> int:
        return sum(n for m, n in self.methods.items() if m in STOCK_METHODS or m == JD_STOCK)


class Hub:
    """The engine's stock pieces wired to the sandbox with a counting transport."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.net = Counting()

    def market(self, shop: ShopConfig) -> Marketplace:
        return marketplace_for(shop, transport=self.net)

    async def sync(self, *, full: bool = False) -> int:
        """One stock sync and one drain; returns the values enqueued."""
        result = await sync_channel_stock(self.settings, self.store, self.market, full=full)
        effects = Effects(
            self.store,
            self.settings,
            wms_for=lambda w: effects_for(self.settings, self.store).wms(w.code),
            marketplace_for=self.market,
        )
        try:
            stats = await Dispatcher(self.store, effects.handlers(), owner="t").drain_once()
        finally:
            await effects.aclose()
        assert stats.dead == 0 and stats.retried == 0, stats
        return result.values


def published(sb: Sandbox) -> dict[tuple[str, str], int]:
    """(shop, merchant code) → the quantity each catalogue listing shows."""
    codes = {c for c, *_ in sb.world.catalog()}
    return {
        (li.shop, li.merchant_code): li.quantity
        for shop in sb.world.shops.values()
        for li in shop.listings
        if li.merchant_code in codes
    }


async def available(store: Store) -> dict[str, int]:
    async with store.transaction() as tx:
        return await tx.stock_available()


async def test_channel_stock_follows_orders_and_the_wms(
    hub_store: Store, database_url: str, tmp_path: Path
) -> None:
    store = hub_store
    async with Sandbox(seed=11, profile="calm", backlog=60, backlog_days=0.5, ship_delay=60) as sb:
        settings = hub_settings(sb, tmp_path, database_url)
        hub = Hub(settings, store)
        async with hub_http(settings, store) as port:
            sb.hub_url = f"http://127.0.0.1:{port}"
            await import_catalog(store, settings, write_catalog(sb, tmp_path / "catalog.csv"))
            await refresh_stock(settings, store)

            # First sync: every catalogue listing of both shops gets on hand − reserved.
            values = await hub.sync()
            stock = await available(store)
            assert published(sb) == {(shop, code): stock[code] for shop, code in published(sb)}
            assert values == len(published(sb))
            assert hub.net.methods["jingdong.sku.read.searchSkuList"] >= 1
            async with store.transaction() as tx:
                jd = await tx.listings("jd-flagship")
            assert len(jd) == len(sb.world.shops["jd-flagship"].listings)

            # Nothing changed: no platform call at all.
            calls = hub.net.stock_calls()
            assert await hub.sync() == 0 and hub.net.stock_calls() == calls

            # Orders routed to the WMS reserve stock: their SKUs go down, the others stay.
            before = published(sb)
            await pull_shops(settings, store, settings.shops)
            assert (await route(settings, store)).routed > 5
            async with store.transaction() as tx:
                reserved = Counter[str]()
                for (_, sku), qty in (await tx.reserved()).items():
                    reserved[sku] += qty
            calls = hub.net.stock_calls()
            await hub.sync()
            after = published(sb)
            for shop, code in after:
                assert after[(shop, code)] == max(before[(shop, code)] - reserved[code], 0)
            lowered = {c for (shop, c), qty in after.items() if qty < before[(shop, c)]}
            assert lowered and hub.net.stock_calls() - calls <= 2 * len(lowered)

            # A WMS stock change reaches the hub by callback and raises the channels.
            code = "SKU-0003"
            warehouse = settings.warehouses[0].code
            stock = await available(store)
            await sb.qimen.report_stock_change(warehouse, code, 25)
            assert await poll(lambda: _moved(store, code, stock[code] + 25), within=10)
            await hub.sync()
            assert {q for (_, c), q in published(sb).items() if c == code} == {stock[code] + 25}

            # A full resync repairs whatever the platforms show.
            for shop in sb.world.shops.values():
                for li in shop.listings:
                    li.quantity = 999
            values = await hub.sync(full=True)
            assert values == len(published(sb))
            stock = await available(store)
            assert all(q == max(stock[c], 0) for (_, c), q in published(sb).items())
            assert hub.net.batches and max(hub.net.batches) <= 20
        await hub.net.aclose()


async def _moved(store: Store, sku: str, expected: int) -> bool:
    return (await available(store)).get(sku) == expected


async def test_top_batches_at_most_20_skus_per_call(
    hub_store: Store, database_url: str, tmp_path: Path
) -> None:
    store = hub_store
    async with Sandbox(seed=12, profile="calm", backlog=0, backlog_days=0.1) as sb:
        settings = hub_settings(sb, tmp_path, database_url)
        settings = settings.model_copy(update={"shops": [settings.shop("tmall-flagship")]})
        # One item with 25 SKUs (a shoe in every size): 2 calls, 20 + 5.
        codes = [c for c, *_ in sb.world.catalog()][:25]
        shop = sb.world.shops["tmall-flagship"]
        for n, code in enumerate(codes):
            shop.listings.append(
                WorldListing(
                    "tmall-flagship", 699_000, 5_990_000 + n, code, "鞋", "", Decimal(9), 0
                )
            )
        hub = Hub(settings, store)
        await import_catalog(store, settings, write_catalog(sb, tmp_path / "catalog.csv"))
        await refresh_stock(settings, store)
        await hub.sync()
        stock = await available(store)
        assert [li.quantity for li in shop.listings if li.item_id == 699_000] == [
            stock[c] for c in codes
        ]
        hub.net.batches.clear()
        hub.net.methods.clear()
        await hub.sync(full=True)
        items = {li.item_id for li in shop.listings if li.sku_id is not None}
        assert max(hub.net.batches) == 20 and 5 in hub.net.batches
        assert hub.net.methods["taobao.skus.quantity.update"] == len(items) + 1
        await hub.net.aclose()


async def test_cli_sync_inventory(sqlite_url: str, tmp_path: Path) -> None:
    """The command itself (SQLite only: a CLI start costs ~2 s, the engine is covered above)."""
    store = Store.open(sqlite_url)
    async with Sandbox(seed=13, profile="calm", backlog=0, backlog_days=0.1) as sb:
        config = write_hub_config(sb, tmp_path / "ecomhub.toml", sqlite_url)
        await import_catalog(
            store, hub_settings(sb, tmp_path, sqlite_url), write_catalog(sb, tmp_path / "c.csv")
        )
        args = [sys.executable, str(MAIN), "--config", str(config), "sync", "inventory"]
        first = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await first.communicate()
        assert first.returncode == 0, err.decode()
        text = out.decode()
        assert "tmall-flagship:" in text and "jd-flagship:" in text and "dead letters 0" in text
        stock = await available(store)
        assert all(q == stock[c] for (_, c), q in published(sb).items())
        again = await asyncio.create_subprocess_exec(
            *args, "--shop", "jd-flagship", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await again.communicate()
        assert again.returncode == 0
        assert "jd-flagship: 30 listings (2 unmapped), 0 values" in out.decode()
        assert "tmall-flagship" not in out.decode()
    await store.close()
