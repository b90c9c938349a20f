"""Fulfilment against fakes: ask before re-send, cancels that supersede or wait, after-sales."""

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from config import Settings, ShopConfig, WarehouseConfig
from connectors.base import ShipmentConfirm, ShipRequest, ShipResult, StockChange, WmsOrderState
from connectors.errors import RejectedError, TransientError
from models.clock import FixedClock
from models.domain import (
    HoldReason,
    MasterSku,
    OrderEventKind,
    OrderStatus,
    OutboxMessage,
    OutboxStatus,
    Package,
    ReviewState,
    Shipment,
)
from models.store import Store
from sync.fulfilment import (
    PLATFORM_SHIP,
    SHIP_READS_SETTLE,
    WMS_CANCEL,
    WMS_CREATE,
    CallbackRefused,
    Effects,
    apply_callback,
    react_to_changes,
    route_all,
    route_ready,
)
from sync.outbox import Dispatcher
from tests.factories import make_order
from tests.fakes import FakeMarketplace, FakeWms

SHOP = "tmall-flagship"
SHIP_1001 = {
    "code": f"{SHOP}-1001",
    "platform_order_id": "1001",
    "carrier": "SF",
    "waybill": "SF1",
    "line_ids": [],
    "split": False,
}
"""The waybill of order 1001's delivery order, as a `platform.ship` message carries it."""


@pytest.fixture
def settings() -> Settings:
    shop = ShopConfig.model_validate(
        {
            "code": SHOP,
            "platform": "tmall",
            "api_url": "http://127.0.0.1:1/r",
            "app_key": "k",
            "app_secret": "s",
            "access_token": "t",
        }
    )
    warehouse = WarehouseConfig.model_validate(
        {
            "code": "WH-EAST",
            "api_url": "http://127.0.0.1:1/q",
            "app_key": "k",
            "app_secret": "s",
            "customer_id": "O",
            "provinces": ["浙江"],
            "default_carrier": "SF",
        }
    )
    return Settings(shops=[shop], warehouses=[warehouse])


async def routed_order(store: Store, settings: Settings, order_id: str = "1001") -> str:
    async with store.transaction() as tx:
        await tx.upsert_master_skus([MasterSku(sku="SKU-0001")])
        await tx.upsert_orders([make_order(order_id)])
        await tx.set_review(SHOP, order_id, ReviewState.PASSED)
        stats = await route_ready(tx, settings)
    assert stats.routed == 1
    return f"{SHOP}-{order_id}"


async def test_a_routing_run_carries_its_stock_view_across_batches(
    store: Store, settings: Settings, clock: FixedClock
) -> None:
    """Small batches, one view of stock: each batch's reservations count for the next, so 3
    units route 3 one-unit orders and hold the other 2 (no stock), whatever the batch size."""
    async with store.transaction() as tx:
        await tx.upsert_master_skus([MasterSku(sku="SKU-0001")])
        await tx.upsert_orders([make_order(str(1001 + n)) for n in range(5)])
        for n in range(5):
            await tx.set_review(SHOP, str(1001 + n), ReviewState.PASSED)
        await tx.set_stock("WH-EAST", {"SKU-0001": 3}, clock.now())
    stats = await route_all(store, settings, batch=2)
    assert (stats.routed, stats.held) == (3, 2)
    async with store.transaction() as tx:
        assert await tx.orders_to_route() == []
        (level,) = await tx.stock_levels("WH-EAST")
    assert level.reserved == 3


def dispatcher(
    store: Store, settings: Settings, wms: FakeWms, market: FakeMarketplace
) -> Dispatcher:
    effects = Effects(store, settings, wms_for=lambda _: wms, marketplace_for=lambda _: market)
    return Dispatcher(store, effects.handlers(), owner="test")


async def created_then_crashed(
    store: Store, settings: Settings, clock: FixedClock, wms: FakeWms
) -> str:
    """An order routed, its create claimed and received by the WMS, and then the hub crashed
    before recording it; returns the delivery order's code once its claim expired."""
    code = await routed_order(store, settings)
    async with store.transaction() as tx:
        assert len(await tx.claim_outbox("crashed", 10, timedelta(seconds=1))) == 1
    wms.creates.append(code)  # what that earlier attempt did at the WMS
    clock.advance(timedelta(seconds=2))
    return code


async def test_a_create_that_may_have_arrived_is_asked_for_first(
    store: Store, settings: Settings, clock: FixedClock
) -> None:
    wms, market = FakeWms(), FakeMarketplace(clock=clock)
    code = await created_then_crashed(store, settings, clock, wms)
    await dispatcher(store, settings, wms, market).drain_once()
    assert wms.creates == [code]  # asked, found, not sent again
    async with store.transaction() as tx:
        delivery = await tx.delivery_order(code)
    assert delivery is not None and delivery.state.value == "created"


async def test_a_create_the_wms_holds_as_refused_is_a_dead_letter_not_created(
    store: Store, settings: Settings, clock: FixedClock
) -> None:
    wms, market = FakeWms(), FakeMarketplace(clock=clock)
    code = await created_then_crashed(store, settings, clock, wms)
    wms.cancels.append(code)  # the WMS refused it by itself (REJECT)
    await dispatcher(store, settings, wms, market).drain_once()
    async with store.transaction() as tx:
        delivery = await tx.delivery_order(code)
        (dead,) = await tx.dead_letters()
    assert delivery is not None and delivery.state.value == "pending"
    assert "will not ship it" in dead.last_error and wms.creates == [code]


async def test_cancel_before_the_create_left_supersedes_it(
    store: Store, settings: Settings, clock: FixedClock
) -> None:
    wms, market = FakeWms(), FakeMarketplace(clock=clock)
    code = await routed_order(store, settings)
    async with store.transaction() as tx:
        await tx.upsert_orders(
            [make_order("1001", status=OrderStatus.CANCELLED, modified_minutes=5)]
        )
        assert await react_to_changes(tx, [("1001", OrderEventKind.CANCELLED)], SHOP) == 1
    await dispatcher(store, settings, wms, market).drain_once()
    assert wms.creates == []  # the WMS never heard of it
    async with store.transaction() as tx:
        create = await tx.outbox_by_key(f"{WMS_CREATE}:{code}")
        cancel = await tx.outbox_by_key(f"{WMS_CANCEL}:{code}")
        delivery = await tx.delivery_order(code)
    assert create is not None and create.status == OutboxStatus.SUPERSEDED
    assert cancel is not None and cancel.status == OutboxStatus.DONE
    assert delivery is not None and delivery.state.value == "cancelled"


async def test_waybill_refused_because_the_buyer_cancelled_is_after_sales(
    store: Store, settings: Settings, clock: FixedClock
) -> None:
    wms, market = FakeWms(), FakeMarketplace(clock=clock)
    market.put(make_order("1001", status=OrderStatus.CANCELLED, modified_minutes=9))
    async with store.transaction() as tx:
        await tx.upsert_orders([make_order("1001")])
        await tx.enqueue(
            [
                OutboxMessage(
                    kind=PLATFORM_SHIP,
                    target=SHOP,
                    idempotency_key=f"{PLATFORM_SHIP}:{SHOP}-1001",
                    payload=SHIP_1001,
                )
            ]
        )
    stats = await dispatcher(store, settings, wms, market).drain_once()
    assert stats.done == 1 and stats.dead == 0
    async with store.transaction() as tx:
        held = await tx.held_orders()
    assert [(h.platform_order_id, h.reason) for h in held] == [
        ("1001", HoldReason.AFTER_SALES.value)
    ]


class LaggingMarketplace(FakeMarketplace):
    """Recorded a shipment the hub lost track of: answers "already shipped" to a repeat, while
    its reads still show the order unshipped (JD's order search lags)."""

    async def ship(self, request: ShipRequest) -> ShipResult:
        raise RejectedError("订单已出库 order already shipped", code="10400001")

    reads_shipped_after: int = 1_000
    """How many `shows_shipped` reads still see the previous version."""

    async def shows_shipped(self, request: ShipRequest) -> bool:
        self.reads_shipped_after -= 1
        return self.reads_shipped_after < 0


async def test_already_shipped_to_a_repeat_while_reads_lag_is_asked_again_later(
    store: Store, settings: Settings, clock: FixedClock
) -> None:
    market = LaggingMarketplace(clock=clock)
    market.put(make_order("1001"))
    effects = Effects(
        store, settings, wms_for=lambda _: FakeWms(), marketplace_for=lambda _: market
    )
    ship = effects.handlers()[PLATFORM_SHIP]
    first = OutboxMessage(
        kind=PLATFORM_SHIP,
        target=SHOP,
        idempotency_key="k",
        payload=SHIP_1001,
        attempts=1,
        created_at=clock.now(),
    )
    # Refused while the order reads paid, soon after the shipment: the read may lag behind a
    # cancel or an earlier attempt that landed; asked again later …
    with pytest.raises(TransientError, match="reads paid"):
        await ship(first)
    with pytest.raises(TransientError, match="reads paid"):
        await ship(first.model_copy(update={"attempts": 2}))
    parcel = first.model_copy(update={"payload": {**SHIP_1001, "split": True, "line_ids": ["1"]}})
    with pytest.raises(TransientError, match="reads paid"):
        await ship(parcel)
    # … until the reads have had time to settle: then the refusal counts (a dead letter).
    clock.advance(SHIP_READS_SETTLE)
    with pytest.raises(RejectedError):
        await ship(first.model_copy(update={"attempts": 5}))
    # The lag ends between the connector's check and the handler's look: the order reads
    # shipped, with this waybill, by the second look.
    market.put(make_order("1001", status=OrderStatus.SHIPPED, modified_minutes=5))
    market.reads_shipped_after = 1
    assert await ship(first.model_copy(update={"attempts": 2})) is None


# --- WMS callbacks that are not plain shipments ----------------------------------------------


def parcels(code: str, out_biz_code: str, *waybills: str) -> Shipment:
    """What a confirm of delivery order `code` reports: one SF parcel per waybill, or none."""
    return Shipment(
        delivery_order_code=code,
        warehouse="WH-EAST",
        carrier="SF" if waybills else "",
        waybill=waybills[0] if waybills else "",
        packages=tuple(
            Package(carrier="SF", waybill=w, items=(("SKU-0001", 1),)) for w in waybills
        ),
        shipped_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC),
        out_biz_code=out_biz_code,
    )


def status_confirm(code: str, status: str, state: WmsOrderState) -> ShipmentConfirm:
    return ShipmentConfirm(parcels(code, f"{code}|status"), final=True, status=status, state=state)


@pytest.mark.parametrize(
    ("status", "state"),
    [("REJECT", WmsOrderState.CANCELLED), ("ACCEPT", WmsOrderState.OPEN)],
)
async def test_a_confirm_that_ships_nothing_is_a_status_report(
    store: Store, settings: Settings, status: str, state: WmsOrderState
) -> None:
    """No shipment, no stock taken off, no waybill to the marketplace, the create untouched."""
    code = await routed_order(store, settings)
    async with store.transaction() as tx:
        await tx.set_stock("WH-EAST", {"SKU-0001": 5}, tx.clock.now())
        done = await apply_callback(tx, settings, "WH-EAST", status_confirm(code, status, state))
        assert done == f"status {status} noted"
        assert await tx.shipments_of(code) == []
        delivery = await tx.delivery_order(code)
        assert delivery is not None and delivery.state.value == "pending"
        kinds = Counter(m.kind for m in await tx.outbox_messages())
        (level,) = await tx.stock_levels("WH-EAST")
    assert kinds == {WMS_CREATE: 1} and level.on_hand == 5


async def test_stock_report_items_sharing_a_code_and_sku_are_summed_and_shipments_skipped(
    store: Store, settings: Settings
) -> None:
    code = await routed_order(store, settings)
    report = [  # one SKU in two batches under one message id, then a shipment's own report
        StockChange("WH-EAST", "MSG-1", "SKU-0001", 5, "ADJ-1", "PDRK"),
        StockChange("WH-EAST", "MSG-1", "SKU-0001", 3, "ADJ-1", "PDRK"),
        StockChange("WH-EAST", "MSG-2", "SKU-0001", -1, code, "JYCK"),
    ]
    async with store.transaction() as tx:
        await tx.set_stock("WH-EAST", {"SKU-0001": 10}, tx.clock.now())
        assert await apply_callback(tx, settings, "WH-EAST", report) == "1 stock changes applied"
        (level,) = await tx.stock_levels("WH-EAST")
    assert level.on_hand == 18  # the JYCK line is applied from the order's confirm instead


async def test_a_final_confirm_without_parcels_closes_an_order_its_intermediates_shipped(
    store: Store, settings: Settings
) -> None:
    code = await routed_order(store, settings)
    parcel, final = parcels(code, "OB-1", "SF1"), parcels(code, "OB-2")
    async with store.transaction() as tx:
        with pytest.raises(CallbackRefused):  # nothing shipped before: no waybill to confirm
            await apply_callback(tx, settings, "WH-EAST", ShipmentConfirm(final, True, "DELIVERED"))
        intermediate = ShipmentConfirm(parcel, False, "PARTDELIVERED", (("SKU-0001", 1),))
        assert await apply_callback(tx, settings, "WH-EAST", intermediate) == (
            "intermediate shipment stored"
        )
        closing = ShipmentConfirm(final, True, "DELIVERED")
        assert await apply_callback(tx, settings, "WH-EAST", closing) == "shipment stored"
        assert await apply_callback(tx, settings, "WH-EAST", closing) == "shipment repeated"
        delivery = await tx.delivery_order(code)
        ships = [m for m in await tx.outbox_messages() if m.kind == PLATFORM_SHIP]
        taken = await tx.shipped_quantities(code)
    assert delivery is not None and delivery.state.value == "shipped"
    assert [(m.payload["carrier"], m.payload["waybill"]) for m in ships] == [("SF", "SF1")]
    assert taken == {"SKU-0001": 1}  # the plan's one unit, once


@pytest.mark.parametrize("intermediate_items", [(("SKU-0001", 1),), ()])
async def test_a_final_confirm_without_items_takes_off_only_the_rest_of_the_plan(
    store: Store, settings: Settings, intermediate_items: tuple[tuple[str, int], ...]
) -> None:
    """The plan is 2 units: an intermediate confirm took 1 (or, reporting no items, none); a
    final confirm with a parcel but no items or lines takes off the rest, not the whole plan."""
    async with store.transaction() as tx:
        await tx.upsert_master_skus([MasterSku(sku="SKU-0001")])
        order = make_order("2001")
        two = order.lines[0].model_copy(update={"qty": 2})
        await tx.upsert_orders([order.model_copy(update={"lines": (two,)})])
    code = f"{SHOP}-2001"
    async with store.transaction() as tx:
        await tx.set_review(SHOP, "2001", ReviewState.PASSED)
        assert (await route_ready(tx, settings)).routed == 1
        first = ShipmentConfirm(parcels(code, "OB-1", "SF1"), False, "PARTDELIVERED")
        first = replace(first, shipped_lines=intermediate_items)
        await apply_callback(tx, settings, "WH-EAST", first)
        last = ShipmentConfirm(parcels(code, "OB-2", "SF2"), True, "DELIVERED")
        await apply_callback(tx, settings, "WH-EAST", last)
        taken = await tx.shipped_quantities(code)
    assert taken == {"SKU-0001": 2}
