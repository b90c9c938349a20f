"""Orders out: route reviewed orders, send them to the WMS, cancel them, and send waybills back.

Every effect is an outbox message written in the same transaction as the state change that causes
it, and sent by the dispatcher through the handlers built here:

    route (PAID, review passed)  → delivery orders (reserve stock) + `wms.create`
    close / refund before ship   → `wms.cancel` (a pending create of the same order is superseded)
    WMS confirm callback         → shipment, stock change, delivery order shipped + `platform.ship`
                                   (+ `tracking.subscribe` of its waybill when `[kuaidi100]` is set,
                                   + `erp.sales_outbound` when `[erp]` is: `sync.erp`)
    WMS inbound confirm          → `sync.erp.apply_inbound` (stock, and a receipt for the ERP)
    stock sync (sync.channel_stock) → `platform.stock` (its handler lives there)
    courier tracking push        → the shipment delivered / refused (`apply_tracking`)

Exactly once. The WMS does not deduplicate creates, so a create that may have been sent before
(`maybe_sent`) first asks `deliveryorder.query`; only NOT_FOUND sends it again. A cancel waits
while its create is still in flight, so it can never overtake it. The marketplaces answer a repeat
ship with "already shipped", which the connectors check and report as done. Shipments and stock
changes are applied once per outBizCode.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import structlog

from config import Settings, ShopConfig, WarehouseConfig
from connectors.base import (
    CancelOutcome,
    DeliveryLine,
    DeliveryOrderRequest,
    InboundConfirm,
    Marketplace,
    ShipmentConfirm,
    ShipRequest,
    StockChange,
    Tracker,
    TrackingRequest,
    TrackingUpdate,
    Wms,
    WmsOrderState,
)
from connectors.errors import RejectedError, TransientError
from connectors.registry import tracker_for as registry_tracker_for
from models.domain import (
    Address,
    DeliveryState,
    HoldReason,
    Order,
    OrderEventKind,
    OrderStatus,
    OutboxMessage,
    OutboxStatus,
    RefundState,
    ReviewState,
    Shipment,
    StockLevel,
    SyncError,
)
from models.store import DeliveryOrder, NewDeliveryOrder, Store, TrackingMove, Tx, to_fen
from sync.channel_stock import PLATFORM_STOCK, StockPusher
from sync.erp import apply_inbound, record_sales_outbound
from sync.mapping import SkuResolver
from sync.outbox import Handler, Record, maybe_sent
from sync.review import load_resolver
from sync.routing import RouteLine, route

WMS_CREATE = "wms.create"
WMS_CANCEL = "wms.cancel"
PLATFORM_SHIP = "platform.ship"
TRACKING_SUBSCRIBE = "tracking.subscribe"
TRACKING_TARGET = "kuaidi100"
TRACKING_CALLBACK_PATH = "/webhooks/kuaidi100"
"""Where the tracking service pushes to, under `server.callback_base`."""

log = structlog.get_logger("ecomhub.sync.fulfilment")


@dataclass
class RoutingStats:
    routed: int = 0
    held: int = 0
    delivery_orders: int = 0
    by_warehouse: dict[str, int] = field(default_factory=dict)
    last_id: int = 0
    """The highest order id the batch looked at (0: none was ready)."""


def _unit_price_fen(payment: Decimal, units: int) -> int:
    if units <= 0:
        return 0
    return to_fen((payment / units).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def shippable_lines(order: Order, resolver: SkuResolver) -> list[tuple[RouteLine, int]] | None:
    """(route line, unit price in fen) for every line that still ships; None if one is unknown."""
    lines: list[tuple[RouteLine, int]] = []
    for number, line in enumerate(order.lines, start=1):
        if line.refund_state == RefundState.SUCCESS:
            continue
        resolved = resolver.resolve(order.shop, line)
        if resolved is None:
            return None
        units = sum(r.qty for r in resolved)
        price = _unit_price_fen(line.payment or line.price * line.qty, units)
        lines.extend((RouteLine(number, r.sku, r.qty), price) for r in resolved)
    return lines


def refunded_line_numbers(order: Order) -> set[int]:
    """1-based numbers of the order's lines refunded in full (they no longer ship)."""
    return {
        n for n, line in enumerate(order.lines, start=1) if line.refund_state == RefundState.SUCCESS
    }


def _available(levels: Sequence[StockLevel]) -> dict[str, dict[str, int]]:
    available: dict[str, dict[str, int]] = {}
    for level in levels:
        available.setdefault(level.warehouse, {})[level.sku] = level.available
    return available


def _code(order: Order, number: int | None) -> str:
    base = f"{order.shop}-{order.platform_order_id}"
    return base if number is None else f"{base}-{number}"


@dataclass
class RoutingView:
    """What routing decides on: the catalogue and each read warehouse's available stock. Read
    once and carried across the batches of one `route_all` (each batch takes its own orders off
    `available`), and read again after `ROUTING_VIEW_TTL`: reading reservations sums every
    unshipped delivery order, which per batch made routing a big backlog quadratic."""

    resolver: SkuResolver
    available: dict[str, dict[str, int]]
    read_at: float

    @classmethod
    async def read(cls, tx: Tx) -> "RoutingView":
        available = _available(await tx.stock_levels())
        read = await tx.read_warehouses()
        return cls(
            resolver=await load_resolver(tx),
            available={wh: stock for wh, stock in available.items() if wh in read},
            read_at=time.monotonic(),
        )

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.read_at > ROUTING_VIEW_TTL


ROUTING_VIEW_TTL = 5.0
"""Seconds a routing run trusts its view of stock (stock changes and readings land meanwhile)."""


async def route_ready(
    tx: Tx,
    settings: Settings,
    limit: int = 500,
    *,
    view: RoutingView | None = None,
    after_id: int = 0,
) -> RoutingStats:
    """Route every order that is ready (up to `limit`, ids above `after_id`); reserve its stock
    and write its `wms.create` messages."""
    stats = RoutingStats()
    orders = await tx.orders_to_route(limit=limit, after_id=after_id)
    if not orders:
        return stats
    stats.last_id = orders[-1][0]
    if view is None:
        view = await RoutingView.read(tx)
    resolver, available = view.resolver, view.available
    shops = {s.code: s for s in settings.shops}
    routed: list[tuple[int, str, NewDeliveryOrder]] = []
    for order_id, order in orders:
        shop = shops.get(order.shop)
        lines = shippable_lines(order, resolver)
        if shop is None or lines is None:
            continue  # review holds unknown SKUs; a shop removed from the config is left alone
        if not lines:
            continue  # nothing left to ship: the close/cancel path handles it
        prices = {(rl.order_line_no, rl.sku): price for rl, price in lines}
        province = order.receiver.province if order.receiver else ""
        decision = route(
            [rl for rl, _ in lines],
            province,
            settings.warehouses,
            available,
            allow_split=shop.allow_split,
        )
        if not decision.routed:
            await tx.set_review(
                order.shop,
                order.platform_order_id,
                ReviewState.HELD,
                HoldReason.NO_STOCK,
                decision.reason,
            )
            stats.held += 1
            continue
        for warehouse in decision.unknown_stock:
            log.info(
                "routed without a stock reading: by region and priority alone",
                warehouse=warehouse,
                order=order.platform_order_id,
            )
        split = len(decision.assignments) > 1
        new = [
            NewDeliveryOrder(
                _code(order, n if split else None),
                a.warehouse,
                tuple(
                    (rl.order_line_no, rl.sku, rl.qty, prices[(rl.order_line_no, rl.sku)])
                    for rl in a.lines
                ),
            )
            for n, a in enumerate(decision.assignments, start=1)
        ]
        routed.extend((order_id, order.shop, d) for d in new)
        for d in new:
            stock = available.get(d.warehouse)
            if stock is not None:
                for _, sku, qty, _ in d.lines:
                    stock[sku] = stock.get(sku, 0) - qty
            stats.by_warehouse[d.warehouse] = stats.by_warehouse.get(d.warehouse, 0) + 1
        stats.routed += 1
        stats.delivery_orders += len(new)
    # The whole batch in a few statements (one per table), not a handful per order.
    await tx.add_routed(routed)
    await tx.enqueue([_create_message(d.code, d.warehouse) for _, _, d in routed])
    return stats


async def route_all(store: Store, settings: Settings, batch: int = 100) -> RoutingStats:
    """Route everything that is ready, a batch per transaction (small batches: a routing
    transaction holds SQLite's writer, and creates and callbacks wait behind it)."""
    total = RoutingStats()
    view: RoutingView | None = None
    after_id = 0
    while True:
        async with store.transaction() as tx:
            if view is None or view.stale:
                view = await RoutingView.read(tx)
            stats = await route_ready(tx, settings, limit=batch, view=view, after_id=after_id)
        after_id = max(after_id, stats.last_id)
        total.routed += stats.routed
        total.held += stats.held
        total.delivery_orders += stats.delivery_orders
        for warehouse, n in stats.by_warehouse.items():
            total.by_warehouse[warehouse] = total.by_warehouse.get(warehouse, 0) + n
        if stats.last_id == 0:  # nothing above `after_id` is ready
            return total


def _create_message(code: str, warehouse: str) -> OutboxMessage:
    return OutboxMessage(
        kind=WMS_CREATE,
        target=warehouse,
        idempotency_key=f"{WMS_CREATE}:{code}",
        subject=f"do:{code}",
        payload={"code": code},
    )


def _cancel_message(code: str, warehouse: str, *, recreate: bool) -> OutboxMessage:
    return OutboxMessage(
        kind=WMS_CANCEL,
        target=warehouse,
        idempotency_key=f"{WMS_CANCEL}:{code}",
        subject=f"do:{code}",
        payload={"code": code, "recreate": recreate},
    )


_CANCELLING = {OrderEventKind.CANCELLED, OrderEventKind.CLOSED, OrderEventKind.LINE_REFUNDED}


async def react_to_changes(tx: Tx, events: Sequence[tuple[str, OrderEventKind]], shop: str) -> int:
    """After an upsert: cancel the unshipped delivery orders of orders closed or refunded.

    A whole order closed cancels all its open delivery orders; a refunded line cancels the
    delivery order that holds it, and the rest of that delivery order is created again under
    the next code once the cancel succeeds."""
    affected = sorted({order_id for order_id, kind in events if kind in _CANCELLING})
    written = 0
    for order_id in affected:
        stored = await tx.get_order(shop, order_id)
        if stored is None:
            continue
        order = stored.order
        closed = order.status in (OrderStatus.CANCELLED, OrderStatus.CLOSED)
        refunded = refunded_line_numbers(order)
        for delivery in await tx.delivery_orders_of(shop, order_id):
            if delivery.state not in (DeliveryState.PENDING, DeliveryState.CREATED):
                continue
            hit = closed or any(line[0] in refunded for line in delivery.lines)
            if not hit:
                continue
            remaining = [line for line in delivery.lines if line[0] not in refunded]
            await tx.set_delivery_state(delivery.code, DeliveryState.CANCEL_PENDING)
            written += await tx.enqueue(
                [
                    _cancel_message(
                        delivery.code, delivery.warehouse, recreate=bool(remaining) and not closed
                    )
                ]
            )
    return written


class CallbackRefused(Exception):
    """A callback the hub cannot apply as sent: answered with the failure XML (nothing is
    stored), so the WMS sends it again or someone looks at it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def apply_callback(tx: Tx, settings: Settings, warehouse: str, callback: Any) -> str:
    """Store a WMS callback once; returns what it did (for the log and the metrics)."""
    if isinstance(callback, ShipmentConfirm):
        return await _apply_shipment(tx, settings, warehouse, callback)
    if isinstance(callback, InboundConfirm):
        return await apply_inbound(tx, settings, warehouse, callback)
    changes: Sequence[StockChange] = callback
    # One change per (outBizCode, SKU) is what the ledger applies once: items that share both
    # (one per batch of a SKU) are summed first, or all but the first would be dropped.
    summed: dict[tuple[str, str, str], StockChange] = {}
    for change in changes:
        key = (change.warehouse or warehouse, change.out_biz_code, change.sku)
        seen = summed.get(key)
        summed[key] = change if seen is None else replace(seen, delta=seen.delta + change.delta)
    applied = 0
    for (at, out_biz_code, sku), change in summed.items():
        if change.order_type == "JYCK" and await tx.delivery_order(change.order_code):
            # A shipment the hub applies from the order's own deliveryorder.confirm.
            log.info("stock report of a confirmed shipment skipped", code=change.order_code)
            continue
        applied += await tx.apply_stock_change(
            at,
            out_biz_code,
            sku,
            change.delta,
            order_code=change.order_code,
            order_type=change.order_type,
        )
    if applied:
        # New stock may let orders held for no stock ship now.
        await tx.requeue_held(HoldReason.NO_STOCK)
    return f"{applied} stock changes applied"


async def _apply_shipment(
    tx: Tx, settings: Settings, warehouse: str, confirm: ShipmentConfirm
) -> str:
    shipment = confirm.shipment
    if confirm.state is not WmsOrderState.SHIPPED:
        return await _status_report(tx, confirm)
    code = shipment.delivery_order_code
    out_biz_code = shipment.out_biz_code
    if not shipment.packages and not shipment.waybill:
        # A final confirm may carry no parcel when intermediate confirms carried them all.
        earlier = await tx.shipments_of(code)
        if not earlier or not confirm.final:
            raise CallbackRefused(
                "invalid-callback", "a shipped confirm without packages, and none shipped before"
            )
        delivery = await tx.delivery_order(code)
        if delivery is None or delivery.state in (
            DeliveryState.SHIPPED,
            DeliveryState.AFTER_SALES,
        ):
            return "shipment repeated"
        shipment = earlier[0]  # the parcel the marketplace gets
    else:
        if not await tx.add_shipment(shipment):
            return "shipment repeated"
        if settings.kuaidi100 is not None and shipment.waybill:
            await tx.enqueue([_tracking_message(shipment)])
        delivery = await tx.delivery_order(code)
        if delivery is None:
            log.warning("shipment for a delivery order the hub does not know", code=code)
            return "shipment of an unknown delivery order"
        # The WMS shipped it, so it has it: a create still being retried (its answer was lost)
        # is done, and must not be sent again.
        if await tx.settle_outbox(
            f"{WMS_CREATE}:{code}", "settled: the WMS confirmed the shipment"
        ):
            log.info("create settled by the WMS's shipment confirm", code=code)
    # Summed per SKU: the ledger applies one change per (outBizCode, SKU), so two lines of one
    # SKU would otherwise lose the second.
    shipped: dict[str, int] = {}
    for sku, qty in confirm.shipped_lines or await _rest_of_plan(tx, delivery, confirm):
        shipped[sku] = shipped.get(sku, 0) + qty
    for sku, qty in shipped.items():
        await tx.apply_stock_change(
            warehouse, out_biz_code, sku, -qty, order_code=code, order_type="JYCK"
        )
    if not confirm.final:
        return "intermediate shipment stored"
    was_cancelling = delivery.state == DeliveryState.CANCEL_PENDING
    await tx.set_delivery_state(code, DeliveryState.SHIPPED)
    order = await tx.order_of_delivery(code)
    assert order is not None
    if was_cancelling:
        await tx.set_review(
            order.shop,
            order.platform_order_id,
            ReviewState.HELD,
            HoldReason.AFTER_SALES,
            f"{code} shipped before its cancel reached the WMS",
        )
    await record_sales_outbound(
        tx,
        settings,
        code=code,
        shop=order.shop,
        platform_order_id=order.platform_order_id,
        warehouse=delivery.warehouse,
        lines=delivery.lines,
        shipped_at=shipment.shipped_at,
    )
    line_ids = tuple(order.lines[n - 1].line_id for n, _, _, _ in delivery.lines)
    await tx.enqueue(
        [
            OutboxMessage(
                kind=PLATFORM_SHIP,
                target=order.shop,
                idempotency_key=f"{PLATFORM_SHIP}:{code}",
                payload={
                    "code": code,
                    "platform_order_id": order.platform_order_id,
                    "carrier": shipment.carrier,
                    "waybill": shipment.waybill,
                    "line_ids": list(line_ids),
                    "split": code != f"{order.shop}-{order.platform_order_id}",
                },
            )
        ]
    )
    return "shipment stored"


async def _rest_of_plan(
    tx: Tx, delivery: DeliveryOrder, confirm: ShipmentConfirm
) -> list[tuple[str, int]]:
    """What a confirm without lines or items shipped: for a final one, the plan less what its
    intermediate confirms took off already; for an intermediate one we cannot tell (the next
    stock reading does)."""
    if not confirm.final:
        return []
    taken = await tx.shipped_quantities(delivery.code)
    rest: list[tuple[str, int]] = []
    for _, sku, qty, _ in delivery.lines:
        used = min(qty, taken.get(sku, 0))
        taken[sku] = taken.get(sku, 0) - used
        if qty > used:
            rest.append((sku, qty - used))
    return rest


async def _status_report(tx: Tx, confirm: ShipmentConfirm) -> str:
    """A confirm that ships nothing: the WMS still works on the order, or it cancelled, closed
    or refused it. No stock moves and no waybill goes out. A cancel the hub asked for finishes
    through its own message (which asks the WMS, and re-creates remaining lines); a refusal the
    hub did not ask for needs a person."""
    code = confirm.shipment.delivery_order_code
    delivery = await tx.delivery_order(code)
    unasked = delivery is not None and delivery.state in (
        DeliveryState.PENDING,
        DeliveryState.CREATED,
    )
    if confirm.state is WmsOrderState.CANCELLED and unasked:
        log.error(
            "the WMS cancelled or refused a delivery order the hub did not cancel: "
            "re-route or intercept by hand",
            code=code,
            status=confirm.status,
        )
    else:
        log.info("WMS status report", code=code, status=confirm.status)
    return f"status {confirm.status or '?'} noted"


# --- courier tracking ------------------------------------------------------------------------


def _tracking_message(shipment: Shipment) -> OutboxMessage:
    """Subscribe the shipment's waybill (the first package's: the one the marketplace gets)."""
    return OutboxMessage(
        kind=TRACKING_SUBSCRIBE,
        target=TRACKING_TARGET,
        idempotency_key=f"{TRACKING_SUBSCRIBE}:{shipment.carrier}:{shipment.waybill}",
        payload={
            "carrier": shipment.carrier,
            "waybill": shipment.waybill,
            "code": shipment.delivery_order_code,
        },
    )


async def apply_tracking(tx: Tx, update: TrackingUpdate, raw: str = "") -> TrackingMove:
    """Store one tracking push: move the waybill's shipments to delivered / refused (never back
    from a final state). A waybill the hub never shipped is recorded as a sync error, as is a
    tracking the service gave up on; neither is a failure of the push."""
    moved = await tx.move_tracking(update.waybill, update.state)
    problem = ""
    if moved == TrackingMove.UNKNOWN:
        problem = f"tracking push for a waybill the hub never shipped ({update.company})"
    elif update.stopped and not update.state.final:
        problem = f"tracking stopped before delivery: {update.message or update.raw_state}"
    if problem:
        await tx.record_errors(
            [SyncError(source=TRACKING_TARGET, key=update.waybill, reason=problem, raw=raw)]
        )
    return moved


# --- handlers --------------------------------------------------------------------------------


SHIP_READS_SETTLE = timedelta(minutes=2)
"""How long after a shipment a refused waybill confirm of an order that still reads shippable is
asked again rather than counted: longer than a marketplace's reads lag behind its state."""


def _created(code: str, wms_order_id: str) -> Record:
    """The WMS holds delivery order `code` (as `wms_order_id`)."""

    async def record(tx: Tx) -> None:
        await tx.set_delivery_state(
            code,
            DeliveryState.CREATED,
            only_from=[DeliveryState.PENDING],
            wms_order_id=wms_order_id,
        )

    return record


def _request(code: str, order: Order, delivery: Any, carrier: str) -> DeliveryOrderRequest:
    return DeliveryOrderRequest(
        code=code,
        shop=order.shop,
        platform=order.platform.value,
        platform_order_id=order.platform_order_id,
        carrier=carrier,
        created=order.created,
        paid=order.paid_at,
        buyer_nick=order.buyer_nick,
        receiver=order.receiver or Address(),
        lines=tuple(
            DeliveryLine(
                line_no=n,
                sku=sku,
                qty=qty,
                price=Decimal(price) / 100,
                source_order_id=order.platform_order_id,
                source_line_id=order.lines[line_no - 1].line_id,
            )
            for n, (line_no, sku, qty, price) in enumerate(delivery.lines, start=1)
        ),
        total=order.total,
        payment=order.payment,
        post_fee=order.post_fee,
        buyer_remark=order.buyer_remark,
        seller_remark=order.seller_remark,
    )


class Effects:
    """The outbox handlers, with one connector per warehouse and shop (opened lazily)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        wms_for: Callable[[WarehouseConfig], Wms],
        marketplace_for: Callable[[ShopConfig], Marketplace],
        tracker_for: Callable[[Settings], Tracker] = registry_tracker_for,
        on_stock_pushed: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.push_stock = StockPusher(store, self.marketplace, on_stock_pushed)
        self.settings = settings
        self._wms_for = wms_for
        self._marketplace_for = marketplace_for
        self._tracker_for = tracker_for
        self._wms: dict[str, Wms] = {}
        self._markets: dict[str, Marketplace] = {}
        self._tracker: Tracker | None = None

    def handlers(self) -> Mapping[str, Handler]:
        return {
            WMS_CREATE: self.create,
            WMS_CANCEL: self.cancel,
            PLATFORM_SHIP: self.ship,
            TRACKING_SUBSCRIBE: self.subscribe_tracking,
            PLATFORM_STOCK: self.push_stock,
        }

    def wms(self, warehouse: str) -> Wms:
        if warehouse not in self._wms:
            self._wms[warehouse] = self._wms_for(self.settings.warehouse(warehouse))
        return self._wms[warehouse]

    def marketplace(self, shop: str) -> Marketplace:
        if shop not in self._markets:
            self._markets[shop] = self._marketplace_for(self.settings.shop(shop))
        return self._markets[shop]

    def tracker(self) -> Tracker:
        if self._tracker is None:
            if self.settings.kuaidi100 is None:
                raise RejectedError("courier tracking is not configured (no [kuaidi100])")
            self._tracker = self._tracker_for(self.settings)
        return self._tracker

    async def aclose(self) -> None:
        for wms in self._wms.values():
            await wms.aclose()
        for market in self._markets.values():
            await market.aclose()
        if self._tracker is not None:
            await self._tracker.aclose()

    async def create(self, message: OutboxMessage) -> Record | None:
        code = str(message.payload["code"])
        async with self.store.read() as tx:
            delivery = await tx.delivery_order(code)
            order = await tx.order_of_delivery(code)
        if delivery is None or order is None:
            raise RejectedError(f"delivery order {code} is not in the store")
        if delivery.state != DeliveryState.PENDING:
            return None  # cancelled before it was sent: nothing to create
        wms = self.wms(delivery.warehouse)
        if maybe_sent(message):
            status = await wms.query_delivery_order(code)
            if status.state == WmsOrderState.CANCELLED:
                # The WMS has it but refused or cancelled it by itself: it will never ship, and
                # the same code cannot be created again. A person must look.
                raise RejectedError(
                    f"the WMS holds {code} as {status.raw_status or 'cancelled'}: it will not "
                    "ship it; re-route or fix the order in the WMS, then replay"
                )
            if status.state != WmsOrderState.NOT_FOUND:
                return _created(code, status.wms_order_id)
        carrier = self.settings.warehouse(delivery.warehouse).default_carrier
        wms_order_id = await wms.create_delivery_order(_request(code, order, delivery, carrier))
        return _created(code, wms_order_id)

    async def cancel(self, message: OutboxMessage) -> Record | None:
        code = str(message.payload["code"])
        async with self.store.read() as tx:
            create = await tx.outbox_by_key(f"{WMS_CREATE}:{code}")
            delivery = await tx.delivery_order(code)
        if delivery is None:
            raise RejectedError(f"delivery order {code} is not in the store")
        if create is not None and create.status == OutboxStatus.PENDING:
            # Never overtake the create: the WMS would answer "no such order" and then ship it.
            raise TransientError(f"the create of {code} is still in flight")
        if delivery.state == DeliveryState.SHIPPED:
            return None  # the confirm arrived first; the shipment path flagged it for after-sales
        outcome = await self.wms(delivery.warehouse).cancel_delivery_order(
            code, "buyer refund or order closed on the marketplace"
        )

        async def record(tx: Tx) -> None:
            order = await tx.order_of_delivery(code)
            assert order is not None
            if outcome == CancelOutcome.ALREADY_SHIPPED:
                await tx.set_delivery_state(code, DeliveryState.AFTER_SALES)
                await tx.set_review(
                    order.shop,
                    order.platform_order_id,
                    ReviewState.HELD,
                    HoldReason.AFTER_SALES,
                    f"{code} shipped before the cancel: intercept it",
                )
                return
            cancelled = await tx.set_delivery_state(
                code, DeliveryState.CANCELLED, only_from=[DeliveryState.CANCEL_PENDING]
            )
            if cancelled and message.payload.get("recreate"):  # once, with the cancel itself
                await self._recreate(tx, order, delivery)

        return record

    async def _recreate(self, tx: Tx, order: Order, delivery: Any) -> None:
        """The lines of a cancelled delivery order that still ship, under the next code."""
        refunded = refunded_line_numbers(order)
        remaining = tuple(line for line in delivery.lines if line[0] not in refunded)
        if not remaining or order.status in (OrderStatus.CANCELLED, OrderStatus.CLOSED):
            return
        existing = await tx.delivery_orders_of(order.shop, order.platform_order_id)
        code = _code(order, len(existing) + 1)
        await tx.add_delivery_orders(
            order.shop,
            order.platform_order_id,
            [NewDeliveryOrder(code, delivery.warehouse, remaining)],
        )
        await tx.enqueue([_create_message(code, delivery.warehouse)])

    async def ship(self, message: OutboxMessage) -> Record | None:
        payload = message.payload
        shop = self.settings.shop(str(message.target))
        carrier_code = str(payload["carrier"])
        carrier = next((c for c in self.settings.carriers if c.code == carrier_code), None)
        order_id = str(payload["platform_order_id"])
        async with self.store.read() as tx:
            hint = await tx.order_modified(shop.code, order_id)
        market = self.marketplace(shop.code)
        request = ShipRequest(
            platform_order_id=order_id,
            carrier_code=carrier_code,
            carrier_jd_id=carrier.jd_id if carrier else None,
            waybill=str(payload["waybill"]),
            line_ids=tuple(payload["line_ids"]) if payload.get("split") else (),
            modified_hint=hint,
        )
        if maybe_sent(message) and await market.shows_shipped(request):
            log.info(
                "the marketplace already shows the shipment: not sent again",
                shop=shop.code,
                code=payload.get("code"),
            )
            return None
        try:
            await market.ship(request)
        except RejectedError as refusal:
            current = await market.get_order(order_id, modified_hint=hint)
            closed = current is not None and current.status in (
                OrderStatus.CANCELLED,
                OrderStatus.CLOSED,
            )
            if current is not None and not closed:
                # Refused, yet the order reads as if it could ship: the read is behind the
                # platform's own state (JD's order search serves the previous version for a
                # while). Either a shipment landed (a repeat of this message, or another parcel
                # of a split order: JD takes one waybill per order) or the buyer cancelled a
                # moment ago. Look again; while the shipment is recent, ask again later rather
                # than let a stale read decide. A paused order (JD LOCKED) waits for release.
                if (maybe_sent(message) or payload.get("split")) and await market.shows_shipped(
                    request
                ):
                    return None  # it reads shipped with this waybill now
                now = self.store.clock.now()
                recent = now - (message.created_at or now) < SHIP_READS_SETTLE
                if current.status == OrderStatus.PAUSED or (
                    recent and current.status in (OrderStatus.PAID, OrderStatus.PARTLY_SHIPPED)
                ):
                    raise TransientError(
                        f"{refusal}; the order reads {current.status.value}: asking again later"
                    ) from refusal
            # The WMS shipped, but the buyer cancelled on the marketplace meanwhile: that is an
            # after-sales case for a person (intercept the parcel), not a message to retry.
            if current is None or not closed:
                raise
            closed_order = current

            async def after_sales(tx: Tx) -> None:
                await tx.upsert_orders([closed_order])
                await tx.set_review(
                    shop.code,
                    order_id,
                    ReviewState.HELD,
                    HoldReason.AFTER_SALES,
                    f"{payload['code']} shipped ({payload['waybill']}) after the order was "
                    "closed on the marketplace: intercept the parcel",
                )

            return after_sales
        return None

    async def subscribe_tracking(self, message: OutboxMessage) -> None:
        """Subscribe a shipped waybill; the service then pushes to `TRACKING_CALLBACK_PATH`."""
        payload = message.payload
        tracker = self.tracker()
        async with self.store.read() as tx:
            receiver = await tx.receiver_of_delivery(str(payload["code"])) or Address()
        await tracker.subscribe(
            TrackingRequest(
                carrier=str(payload["carrier"]),
                waybill=str(payload["waybill"]),
                callback_url=self.settings.server.callback_base + TRACKING_CALLBACK_PATH,
                phone=receiver.mobile or receiver.phone,
                destination=receiver.city or receiver.province,
            )
        )
