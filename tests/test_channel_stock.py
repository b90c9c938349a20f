"""Channel stock against fakes: the formula, bundles, policy, pushes only on change, order of
values (supersede, stale never after newer), full resync, listings from orders."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest

from config import Settings, ShopConfig
from connectors.base import Listing, StockResult, StockUpdate
from connectors.errors import TransientError
from models.clock import FixedClock
from models.domain import BundleComponent, MasterSku, OutboxMessage, OutboxStatus, SkuMapping
from models.store import NewDeliveryOrder, Store
from sync.channel_stock import (
    PLATFORM_STOCK,
    StockPolicy,
    StockPusher,
    sellable,
    stock_subject,
    sync_channel_stock,
)
from sync.mapping import SkuResolver
from sync.outbox import Dispatcher
from tests.factories import make_order, make_settings
from tests.fakes import FakeMarketplace

SHOP = "tmall-flagship"


@dataclass
class Shelf(FakeMarketplace):
    """A marketplace with listings that records every stock call it gets."""

    shelf: list[Listing] = field(default_factory=list)
    stock_calls: list[list[tuple[str, str, int]]] = field(default_factory=list)
    shown: dict[tuple[str, str], int] = field(default_factory=dict)

    async def listings(self) -> Sequence[Listing]:
        return list(self.shelf)

    async def update_stock(self, updates: Sequence[StockUpdate]) -> StockResult:
        self.stock_calls.append(
            [(u.listing.item_id, u.listing.sku_id, u.quantity) for u in updates]
        )
        for u in updates:
            self.shown[(u.listing.item_id, u.listing.sku_id)] = u.quantity
        return StockResult(done=tuple(updates))


def listing(item: str, sku_id: str, code: str) -> Listing:
    return Listing(shop=SHOP, item_id=item, sku_id=sku_id, merchant_code=code)


@pytest.fixture
def settings() -> Settings:
    base = make_settings()
    shop = base.shops[0].model_copy(update={"safety_stock": 1, "stock_ratio": 0.5})
    return base.model_copy(update={"shops": [shop]})


@pytest.fixture
def shelf() -> Shelf:
    return Shelf(
        shelf=[
            listing("100", "1001", "A"),
            listing("100", "1002", "B"),
            listing("200", "", "BUNDLE"),  # an item without SKUs, sold as a bundle
            listing("300", "3001", "PACK2"),  # mapped: one unit is 2 × A
            listing("400", "4001", "GIFT"),  # unknown: never pushed
        ]
    )


async def catalog(store: Store, clock: FixedClock) -> None:
    async with store.transaction() as tx:
        await tx.upsert_master_skus(
            [
                MasterSku(sku="A"),
                MasterSku(sku="B"),
                MasterSku(
                    sku="BUNDLE",
                    components=(BundleComponent(sku="A", qty=2), BundleComponent(sku="B", qty=1)),
                ),
            ]
        )
        await tx.upsert_mappings([SkuMapping(shop="*", platform_sku="PACK2", sku="A", qty=2)])
        await tx.set_stock("WH-EAST", {"A": 21, "B": 9}, clock.now())


async def run(
    settings: Settings, store: Store, shelf: Shelf, *, full: bool = False
) -> tuple[int, int]:
    """One sync and one drain: (values enqueued, messages sent)."""
    result = await sync_channel_stock(settings, store, lambda _: shelf, full=full)
    dispatcher = Dispatcher(
        store, {PLATFORM_STOCK: StockPusher(store, lambda _: shelf)}, owner="test"
    )
    stats = await dispatcher.drain_once()
    return result.values, stats.done


def test_policy_floor_safety_ratio_cap_and_threshold() -> None:
    policy = StockPolicy(safety_stock=2, ratio=Decimal("0.7"), max_stock=50, zero_below=3)
    assert policy.base(12) == 7  # floor((12 − 2) × 0.7)
    assert policy.base(2) == 0 and policy.base(-5) == 0  # never negative
    assert policy.publish(policy.base(102)) == 50  # 70, capped
    assert policy.publish(2) == 0 and policy.publish(3) == 3  # below the threshold: 0
    exact = StockPolicy.of(ShopConfig.model_validate({**_shop(), "stock_ratio": 0.29}))
    assert exact.base(100) == 29  # the ratio as written: 100 × 0.29 is not 28.999…


def _shop() -> dict[str, object]:
    return {"code": SHOP, "platform": "tmall", "api_url": "http://x/", "app_key": "k"} | {
        "app_secret": "s",
        "access_token": "t",
    }


def test_bundles_take_the_scarcest_component() -> None:
    skus = {
        "A": MasterSku(sku="A"),
        "B": MasterSku(sku="B"),
        "KIT": MasterSku(
            sku="KIT", components=(BundleComponent(sku="A", qty=3), BundleComponent(sku="B", qty=1))
        ),
        "DOUBLE": MasterSku(
            sku="DOUBLE",
            components=(BundleComponent(sku="KIT", qty=1), BundleComponent(sku="A", qty=1)),
        ),
    }
    resolver = SkuResolver(skus, [SkuMapping(platform_sku="P2", sku="A", qty=2)])
    policy = StockPolicy()
    available = {"A": 10, "B": 5}

    def value(code: str) -> int:
        parts = resolver.resolve_key(SHOP, "", code)
        assert parts is not None
        return sellable(policy, parts, available)

    assert value("A") == 10
    assert value("KIT") == 3  # min(10 // 3, 5 // 1)
    assert value("DOUBLE") == 2  # A is needed 4 times per unit (nested bundle): 10 // 4
    assert value("P2") == 5  # a 2-pack of A
    assert resolver.resolve_key(SHOP, "", "NOPE") is None


async def test_values_follow_the_formula_and_are_pushed_once(
    store: Store, clock: FixedClock, settings: Settings, shelf: Shelf
) -> None:
    await catalog(store, clock)
    values, sent = await run(settings, store, shelf)
    # base(A) = floor((21 − 1) × 0.5) = 10, base(B) = floor((9 − 1) × 0.5) = 4
    # BUNDLE = min(10 // 2, 4 // 1) = 4; PACK2 = 10 // 2 = 5; GIFT is unknown
    assert shelf.shown == {
        ("100", "1001"): 10,
        ("100", "1002"): 4,
        ("200", ""): 4,
        ("300", "3001"): 5,
    }
    assert (values, sent) == (4, 3)  # three items, the two SKUs of item 100 in one call
    assert sorted(len(c) for c in shelf.stock_calls) == [1, 1, 2]
    async with store.transaction() as tx:
        stored = {(li.item_id, li.sku_id): li.sku for li in await tx.listings(SHOP)}
        assert await tx.stock_pushes(SHOP) == shelf.shown
    assert stored[("400", "4001")] is None and stored[("300", "3001")] == "A"

    shelf.stock_calls.clear()
    assert await run(settings, store, shelf) == (0, 0)  # nothing changed: nothing pushed
    assert shelf.stock_calls == []


async def test_orders_lower_and_stock_changes_raise_only_what_moved(
    store: Store, clock: FixedClock, settings: Settings, shelf: Shelf
) -> None:
    await catalog(store, clock)
    await run(settings, store, shelf)
    shelf.stock_calls.clear()
    await store.upsert_orders([make_order("9001")])
    async with store.transaction() as tx:  # a routed order reserves 4 × B
        await tx.add_delivery_orders(
            SHOP, "9001", [NewDeliveryOrder("tmall-flagship-9001", "WH-EAST", ((1, "B", 4, 100),))]
        )
    await run(settings, store, shelf)
    # B: floor((9 − 4 − 1) × 0.5) = 2; the bundle follows B; A and the 2-pack did not move
    assert sorted(shelf.stock_calls) == [[("100", "1002", 2)], [("200", "", 2)]]

    shelf.stock_calls.clear()
    async with store.transaction() as tx:
        assert await tx.apply_stock_change("WH-EAST", "CHG-1", "A", 20)  # A: 41 on hand
    await run(settings, store, shelf)
    assert sorted(shelf.stock_calls) == [[("100", "1001", 20)], [("300", "3001", 10)]]


async def test_full_resync_pushes_every_mapped_listing(
    store: Store, clock: FixedClock, settings: Settings, shelf: Shelf
) -> None:
    await catalog(store, clock)
    await run(settings, store, shelf)
    shelf.stock_calls.clear()
    shelf.shown.clear()  # e.g. someone edited the stock by hand on the platform
    values, sent = await run(settings, store, shelf, full=True)
    assert (values, sent) == (4, 3)
    assert len(shelf.shown) == 4


async def test_policy_cap_and_zero_below(store: Store, clock: FixedClock, shelf: Shelf) -> None:
    base = make_settings()
    shop = base.shops[0].model_copy(update={"max_stock": 6, "zero_below": 5})
    settings = base.model_copy(update={"shops": [shop]})
    await catalog(store, clock)
    await run(settings, store, shelf)
    # A 21 → capped at 6; B 9 → 6; BUNDLE min(10, 9) → 6; PACK2 10 → 6 … then B drops to 4
    assert set(shelf.shown.values()) == {6}
    async with store.transaction() as tx:
        await tx.set_stock("WH-EAST", {"A": 21, "B": 4}, clock.now())
    await run(settings, store, shelf)
    assert shelf.shown[("100", "1002")] == 0 and shelf.shown[("200", "")] == 0


async def test_a_newer_value_supersedes_a_queued_one(
    store: Store, clock: FixedClock, settings: Settings, shelf: Shelf
) -> None:
    await catalog(store, clock)
    await run(settings, store, shelf)
    shelf.stock_calls.clear()
    async with store.transaction() as tx:
        await tx.apply_stock_change("WH-EAST", "CHG-1", "A", 10)
    await sync_channel_stock(settings, store, lambda _: shelf)
    async with store.transaction() as tx:
        await tx.apply_stock_change("WH-EAST", "CHG-2", "A", -20)
    values, _ = await run(settings, store, shelf)
    assert values == 3  # A 11 on hand: A 5, the bundle 2, the 2-pack 2
    async with store.transaction() as tx:
        states = [
            m.status
            for m in await tx.outbox_messages(PLATFORM_STOCK)
            if m.subject == stock_subject(SHOP, "100")
        ]
    assert states[-2:] == [OutboxStatus.SUPERSEDED, OutboxStatus.DONE]
    assert sorted(shelf.stock_calls) == [
        [("100", "1001", 5)],
        [("200", "", 2)],
        [("300", "3001", 2)],
    ]


async def test_a_stale_value_never_lands_after_a_newer_one(
    store: Store, clock: FixedClock, settings: Settings, shelf: Shelf
) -> None:
    """Two replicas: A is sending the older value (slowly) when B claims the newer one."""
    await catalog(store, clock)
    await run(settings, store, shelf)
    shelf.stock_calls.clear()
    gate = asyncio.Event()
    slow = Shelf(shelf=shelf.shelf, shown=shelf.shown, stock_calls=shelf.stock_calls)

    async def held(updates: Sequence[StockUpdate]) -> StockResult:
        await gate.wait()
        return await Shelf.update_stock(slow, updates)

    slow.update_stock = held  # type: ignore[method-assign]
    pusher = StockPusher(store, lambda _: slow)
    subject = stock_subject(SHOP, "100")

    async def claim(owner: str) -> OutboxMessage:
        async with store.transaction() as tx:
            claimed = await tx.claim_outbox(owner, 10, timedelta(minutes=1))
        (found,) = [m for m in claimed if m.subject == subject]
        return found

    async with store.transaction() as tx:
        await tx.apply_stock_change("WH-EAST", "CHG-1", "A", 10)  # A → 15
    await sync_channel_stock(settings, store, lambda _: shelf)
    older = await claim("replica-a")
    sending = asyncio.create_task(pusher(older))  # A: checks passed, stuck in the call
    await asyncio.sleep(0.05)
    async with store.transaction() as tx:
        await tx.apply_stock_change("WH-EAST", "CHG-2", "A", -20)  # A → 5
    await sync_channel_stock(settings, store, lambda _: shelf)
    newer = await claim("replica-b")  # the claimed older one was not superseded
    assert (newer.id or 0) > (older.id or 0)
    with pytest.raises(TransientError):  # B waits while A's older push is in flight …
        await pusher(newer)
    gate.set()
    record = await sending
    assert record is not None
    async with store.transaction() as tx:  # as the dispatcher records a sent message
        await record(tx)
        assert await tx.complete_outbox(older.id or 0, "replica-a")
    record = await pusher(newer)
    assert record is not None
    async with store.transaction() as tx:
        await record(tx)
    assert await pusher(older) is None  # … a redelivery of the older one is dropped, not sent
    item_100 = [c for c in shelf.stock_calls if c[0][0] == "100"]
    assert item_100 == [[("100", "1001", 15)], [("100", "1001", 5)]]
    async with store.transaction() as tx:
        await tx.record_stock_pushes(SHOP, [("100", "1001", 15)], older.id or 0)  # a late record
        assert (await tx.stock_pushes(SHOP))[("100", "1001")] == 5  # keeps the newer one


async def test_listings_come_from_orders_too_and_nothing_runs_before_a_reading(
    store: Store, clock: FixedClock, settings: Settings
) -> None:
    empty = Shelf()
    result = await sync_channel_stock(settings, store, lambda _: empty)
    assert result.skipped and not result.shops  # no reading: never publish zeros everywhere
    await catalog(store, clock)
    order = make_order("9001", lines=2)
    lines = tuple(
        line.model_copy(update={"platform_item_id": "700", "merchant_code": code})
        for line, code in zip(order.lines, ("A", "B"), strict=True)
    )
    await store.upsert_orders([order.model_copy(update={"lines": lines})])
    result = await sync_channel_stock(settings, store, lambda _: empty)
    assert result.shops[0].listings == 2 and result.shops[0].values == 2
    async with store.transaction() as tx:
        found = {(li.item_id, li.sku_id, li.source, li.sku) for li in await tx.listings(SHOP)}
    assert found == {("700", "500001", "order", "A"), ("700", "500002", "order", "B")}
