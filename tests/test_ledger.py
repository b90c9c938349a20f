"""The stock ledger: readings, stock changes applied once, reservations by delivery orders."""

from datetime import timedelta

from models.clock import FixedClock
from models.domain import DeliveryState
from models.store import NewDeliveryOrder, Store
from tests.factories import make_order


async def test_readings_and_changes_applied_once(store: Store, clock: FixedClock) -> None:
    async with store.transaction() as tx:
        await tx.set_stock("WH-EAST", {"A": 10, "B": 3}, clock.now())
        assert await tx.apply_stock_change("WH-EAST", "CHG-1", "A", -2, order_type="PTCK")
        assert not await tx.apply_stock_change("WH-EAST", "CHG-1", "A", -2)  # repeated callback
        assert await tx.apply_stock_change("WH-EAST", "CHG-1", "B", 5)  # same code, other SKU
        assert await tx.apply_stock_change("WH-WEST", "CHG-9", "C", 4)  # never read before
        levels = {(s.warehouse, s.sku): s.on_hand for s in await tx.stock_levels()}
        assert await tx.read_warehouses() == {"WH-EAST", "WH-WEST"}
    assert levels == {("WH-EAST", "A"): 8, ("WH-EAST", "B"): 8, ("WH-WEST", "C"): 4}
    clock.advance(timedelta(minutes=5))
    async with store.transaction() as tx:
        await tx.set_stock("WH-EAST", {"A": 7}, clock.now())  # a reading is absolute
        (a,) = [s for s in await tx.stock_levels("WH-EAST") if s.sku == "A"]
    assert a.on_hand == 7 and a.as_of == clock.now()


async def test_unshipped_delivery_orders_reserve_stock(store: Store, clock: FixedClock) -> None:
    await store.upsert_orders([make_order("1001", lines=2)])
    async with store.transaction() as tx:
        await tx.set_stock("WH-EAST", {"A": 10}, clock.now())
        await tx.add_delivery_orders(
            "tmall-flagship",
            "1001",
            [
                NewDeliveryOrder("tmall-flagship-1001-1", "WH-EAST", ((1, "A", 2, 9950),)),
                NewDeliveryOrder("tmall-flagship-1001-2", "WH-WEST", ((2, "B", 3, 9950),)),
            ],
        )
        levels = {(s.warehouse, s.sku): (s.on_hand, s.reserved) for s in await tx.stock_levels()}
        assert levels == {("WH-EAST", "A"): (10, 2), ("WH-WEST", "B"): (0, 3)}
        assert await tx.set_delivery_state(
            "tmall-flagship-1001-1", DeliveryState.CREATED, wms_order_id="W1"
        )
        assert not await tx.set_delivery_state(
            "tmall-flagship-1001-1", DeliveryState.CANCELLED, only_from=[DeliveryState.PENDING]
        )
        await tx.set_delivery_state("tmall-flagship-1001-1", DeliveryState.SHIPPED)
        await tx.set_delivery_state("tmall-flagship-1001-2", DeliveryState.CANCELLED)
        assert await tx.reserved() == {}
        orders = await tx.delivery_orders_of("tmall-flagship", "1001")
    assert [(d.code, d.state, d.wms_order_id) for d in orders] == [
        ("tmall-flagship-1001-1", DeliveryState.SHIPPED, "W1"),
        ("tmall-flagship-1001-2", DeliveryState.CANCELLED, ""),
    ]
    stored = await store.get_order("tmall-flagship", "1001")
    assert stored is not None and [d["state"] for d in stored.delivery_orders] == [
        "shipped",
        "cancelled",
    ]
