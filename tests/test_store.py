"""The store contract, run on SQLite and on PostgreSQL (one suite, both backends)."""

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.exc import DBAPIError

from models.clock import FixedClock
from models.domain import (
    BundleComponent,
    Cursor,
    HoldReason,
    MasterSku,
    OrderEventKind,
    OrderStatus,
    OutboxMessage,
    RefundState,
    ReviewState,
    RunStatus,
    SkuMapping,
    SyncError,
    SyncRun,
)
from models.store import NewDeliveryOrder, Store, from_fen, to_fen
from tests.factories import BASE, make_order


async def test_insert_then_read_back_round_trips_every_field(store: Store) -> None:
    order = make_order("1001", lines=3)
    result = await store.upsert_orders([order])
    assert result.inserted == ["1001"]
    stored = await store.get_order("tmall-flagship", "1001")
    assert stored is not None
    assert stored.order == order
    assert stored.review_state == ReviewState.PENDING


async def test_older_version_arriving_later_never_overwrites_newer(store: Store) -> None:
    newer = make_order("1001", status=OrderStatus.SHIPPED, modified_minutes=30)
    older = make_order("1001", status=OrderStatus.PAID, modified_minutes=10)
    await store.upsert_orders([newer])
    result = await store.upsert_orders([older])
    assert result.stale == ["1001"]
    stored = await store.get_order("tmall-flagship", "1001")
    assert stored is not None and stored.order.status == OrderStatus.SHIPPED
    assert stored.order.modified == BASE + timedelta(minutes=30)


async def test_same_modified_time_is_decided_by_status_rank(store: Store) -> None:
    shipped = make_order("1001", status=OrderStatus.SHIPPED, modified_minutes=10)
    paid = make_order("1001", status=OrderStatus.PAID, modified_minutes=10)
    await store.upsert_orders([shipped])
    assert (await store.upsert_orders([paid])).stale == ["1001"]
    await store.upsert_orders([make_order("1002", modified_minutes=10)])
    result = await store.upsert_orders(
        [make_order("1002", status=OrderStatus.SHIPPED, modified_minutes=10)]
    )
    assert result.updated == ["1002"]


async def test_within_one_batch_the_newest_version_wins(store: Store) -> None:
    batch = [
        make_order("1001", modified_minutes=20, status=OrderStatus.SHIPPED),
        make_order("1001", modified_minutes=5),
    ]
    result = await store.upsert_orders(batch)
    assert result.inserted == ["1001"] and result.stale == ["1001"]
    stored = await store.get_order("tmall-flagship", "1001")
    assert stored is not None and stored.order.status == OrderStatus.SHIPPED


async def test_unchanged_order_is_not_rewritten(store: Store, clock: FixedClock) -> None:
    order = make_order("1001")
    await store.upsert_orders([order])
    clock.advance(timedelta(hours=1))
    result = await store.upsert_orders([order])
    assert result.unchanged == ["1001"] and result.written == 0
    assert await _events(store, "1001") == [OrderEventKind.CREATED, OrderEventKind.PAID]


async def test_real_changes_are_recorded_as_events(store: Store) -> None:
    await store.upsert_orders([make_order("1001", status=OrderStatus.WAIT_PAY, paid_at=None)])
    await store.upsert_orders([make_order("1001", modified_minutes=1)])
    moved = make_order("1001", modified_minutes=2)
    moved = moved.model_copy(
        update={"receiver": moved.receiver.model_copy(update={"detail": "新地址"})}  # type: ignore[union-attr]
    )
    await store.upsert_orders([moved])
    await store.upsert_orders(
        [
            make_order(
                "1001", modified_minutes=3, refund=RefundState.SUCCESS, receiver=moved.receiver
            )
        ]
    )
    await store.upsert_orders(
        [make_order("1001", modified_minutes=4, status=OrderStatus.CANCELLED)]
    )
    assert await _events(store, "1001") == [
        OrderEventKind.CREATED,
        OrderEventKind.PAID,
        OrderEventKind.ADDRESS_CHANGED,
        OrderEventKind.LINE_REFUNDED,
        OrderEventKind.CANCELLED,
        OrderEventKind.ADDRESS_CHANGED,
    ]


async def test_bulk_upsert_of_a_large_batch(store: Store) -> None:
    orders = [make_order(str(10_000 + n), lines=1 + n % 3) for n in range(1200)]
    result = await store.upsert_orders(orders)
    assert len(result.inserted) == 1200
    changed = [make_order(str(10_000 + n), lines=1, modified_minutes=5) for n in range(0, 1200, 2)]
    result = await store.upsert_orders(changed + orders[1::2])
    assert len(result.updated) == 600 and len(result.unchanged) == 600
    async with store.transaction() as tx:
        exported = [s async for s in tx.iter_orders(batch=250)]
    assert len(exported) == 1200
    assert exported[0].order.modified == BASE + timedelta(minutes=5)


async def test_money_is_exact_in_fen() -> None:
    assert to_fen(Decimal("0.1") + Decimal("0.2")) == 30
    assert from_fen(to_fen(Decimal("199.99"))) == Decimal("199.99")


async def test_review_hold_and_release(store: Store) -> None:
    await store.upsert_orders([make_order("1001"), make_order("1002")])
    async with store.transaction() as tx:
        assert await tx.set_review(
            "tmall-flagship", "1001", ReviewState.HELD, HoldReason.UNKNOWN_SKU, "SKU-9999"
        )
        held = await tx.held_orders()
    assert [(h.platform_order_id, h.reason, h.detail) for h in held] == [
        ("1001", "unknown_sku", "SKU-9999")
    ]
    async with store.transaction() as tx:
        assert await tx.release_order("tmall-flagship", "1001")
        assert not await tx.release_order("tmall-flagship", "1002")
        assert await tx.held_orders() == []
    stored = await store.get_order("tmall-flagship", "1001")
    assert stored is not None and stored.review_state == ReviewState.RELEASED


async def test_catalog_with_bundles_and_mappings(store: Store) -> None:
    skus = [
        MasterSku(sku="A", name="杯子", barcode="690001", weight_kg=Decimal("0.350")),
        MasterSku(sku="B", name="盖子", weight_kg=Decimal("0.05")),
        MasterSku(
            sku="GIFT",
            name="礼盒",
            components=(BundleComponent(sku="A", qty=2), BundleComponent(sku="B", qty=1)),
        ),
    ]
    async with store.transaction() as tx:
        await tx.upsert_master_skus(skus)
        await tx.upsert_mappings([SkuMapping(platform_sku="5000123", sku="GIFT")])
    async with store.transaction() as tx:
        # re-import replaces, never duplicates
        await tx.upsert_master_skus(skus)
        catalog = await tx.master_skus()
        mappings = await tx.sku_mappings()
    assert catalog == {s.sku: s for s in skus}
    assert mappings == [SkuMapping(shop="*", platform_sku="5000123", sku="GIFT", qty=1)]


async def test_cursor_moves_in_the_same_transaction_as_the_orders(store: Store) -> None:
    cursor = Cursor(shop="tmall-flagship", stream="orders", position=BASE)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.upsert_orders([make_order("1001")])
            await tx.set_cursor(cursor)
            raise RuntimeError("crash before commit")
    async with store.transaction() as tx:
        assert await tx.get_cursor("tmall-flagship", "orders") is None
    assert await store.get_order("tmall-flagship", "1001") is None
    async with store.transaction() as tx:
        await tx.set_cursor(cursor)
        await tx.set_cursor(cursor.model_copy(update={"position": BASE + timedelta(hours=1)}))
    async with store.transaction() as tx:
        found = await tx.get_cursor("tmall-flagship", "orders")
    assert found is not None and found.position == BASE + timedelta(hours=1)


async def test_reads_see_committed_state_without_waiting_for_a_writer(store: Store) -> None:
    """`Store.read()` does not queue behind a write transaction held open by another task (on
    SQLite it reads a WAL snapshot on its own connection), and sees only what was committed."""
    cursor = Cursor(shop="tmall-flagship", stream="orders", position=BASE)
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow_writer() -> None:
        async with store.transaction() as tx:
            await tx.set_cursor(cursor)
            writing.set()
            await release.wait()

    writer = asyncio.create_task(slow_writer())
    await writing.wait()
    async with asyncio.timeout(5):
        async with store.read() as tx:
            assert await tx.get_cursor("tmall-flagship", "orders") is None
    release.set()
    await writer
    async with store.read() as tx:
        found = await tx.get_cursor("tmall-flagship", "orders")
    assert found is not None and found.position == BASE
    if store.backend == "postgresql":  # a write through read() is refused, not committed
        with pytest.raises(DBAPIError, match="read-only"):
            async with store.read() as tx:
                await tx.set_cursor(cursor.model_copy(update={"position": BASE + timedelta(1)}))


async def test_light_lookups_of_an_order(store: Store) -> None:
    """What a ship confirm and a tracking subscription need, without reading the lines."""
    order = make_order("1001", modified_minutes=7)
    async with store.transaction() as tx:
        await tx.upsert_orders([order])
        await tx.add_delivery_orders(
            "tmall-flagship", "1001", [NewDeliveryOrder("tmall-flagship-1001", "WH-EAST", ())]
        )
    async with store.read() as tx:
        assert await tx.order_modified("tmall-flagship", "1001") == order.modified
        assert await tx.order_modified("tmall-flagship", "404") is None
        assert await tx.receiver_of_delivery("tmall-flagship-1001") == order.receiver
        assert await tx.receiver_of_delivery("nothing") is None


async def test_runs_and_errors_are_recorded(store: Store, clock: FixedClock) -> None:
    async with store.transaction() as tx:
        run_id = await tx.start_run("pull", "tmall-flagship", owner="replica-1")
    clock.advance(timedelta(seconds=5))
    async with store.transaction() as tx:
        await tx.finish_run(
            SyncRun(
                id=run_id,
                job="pull",
                shop="tmall-flagship",
                started_at=BASE,
                status=RunStatus.PARTIAL,
                pages=3,
                orders_seen=250,
                orders_written=240,
                errors=1,
            )
        )
        await tx.record_errors(
            [SyncError(source="tmall-flagship", key="1009", reason="bad money", raw="{}")], run_id
        )
    async with store.transaction() as tx:
        runs = await tx.runs(shop="tmall-flagship")
        errors = await tx.recent_errors("tmall-flagship")
        summaries = await tx.shop_summaries(["tmall-flagship"])
    assert runs[0].status == RunStatus.PARTIAL and runs[0].orders_written == 240
    assert runs[0].finished_at == clock.now()
    assert [e.reason for e in errors] == ["bad money"]
    assert summaries[0].errors == 1 and summaries[0].last_run == runs[0]


async def test_outbox_idempotency_key_and_supersede(store: Store) -> None:
    def stock(key: str, qty: int) -> OutboxMessage:
        return OutboxMessage(
            kind="platform.stock",
            target="tmall-flagship",
            idempotency_key=key,
            subject="tmall-flagship:5000123",
            payload={"qty": qty},
        )

    async with store.transaction() as tx:
        assert await tx.enqueue([stock("s1", 5)]) == 1
        assert await tx.enqueue([stock("s1", 5)]) == 0
        assert await tx.enqueue([stock("s2", 4)]) == 1
        depth = await tx.outbox_depth()
    assert [(d.target, d.kind, d.pending) for d in depth] == [
        ("tmall-flagship", "platform.stock", 1)
    ]


async def test_leases_free_expired_or_ours(store: Store, clock: FixedClock) -> None:
    ttl = timedelta(seconds=30)
    async with store.transaction() as tx:
        assert await tx.acquire_lease("pull:tmall-flagship", "a", ttl)
        assert not await tx.acquire_lease("pull:tmall-flagship", "b", ttl)
        assert await tx.acquire_lease("pull:tmall-flagship", "a", ttl)  # renew
    clock.advance(timedelta(seconds=31))
    async with store.transaction() as tx:
        assert await tx.acquire_lease("pull:tmall-flagship", "b", ttl)
        owner = await tx.lease_owner("pull:tmall-flagship")
        await tx.release_lease("pull:tmall-flagship", "a")  # not a's any more: no effect
        assert await tx.lease_owner("pull:tmall-flagship") == owner
        await tx.release_lease("pull:tmall-flagship", "b")
        assert await tx.lease_owner("pull:tmall-flagship") is None
    assert owner is not None and owner[0] == "b"


async def _events(store: Store, order_id: str) -> list[OrderEventKind]:
    async with store.transaction() as tx:
        return await tx.order_events("tmall-flagship", order_id)
