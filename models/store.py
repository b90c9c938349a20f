"""The central store: every query of the hub lives here, and converts rows ↔ domain types.

Use `Store.transaction()` to group writes that must land together (orders with their cursor, a route
with its outbox message):

    async with store.transaction() as tx:
        result = await tx.upsert_orders(orders)
        await tx.set_cursor(Cursor(shop=..., stream="orders", position=...))

Each `Store` convenience method opens its own short transaction. Hot paths (order upserts, stock
reads) use multi-row statements; nothing here issues one round trip per row in a loop.
"""

import asyncio
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Literal, NamedTuple, cast

from sqlalchemy import (
    Row,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from models import tables as t
from models.clock import Clock, SystemClock
from models.db import READ_ONLY, create_engine, current_revision, head_revision
from models.domain import (
    Address,
    BundleComponent,
    Cursor,
    DeliveryState,
    HoldReason,
    MasterSku,
    Order,
    OrderEventKind,
    OrderLine,
    OrderStatus,
    OutboxMessage,
    OutboxStatus,
    Package,
    ReconciliationKind,
    ReconciliationReport,
    ReconciliationRow,
    RefundState,
    ReportKind,
    ReviewState,
    RunStatus,
    Shipment,
    SkuMapping,
    StockLevel,
    SyncError,
    SyncRun,
    TrackingState,
)

# SQLite allows 32766 bound parameters per statement; keep multi-row statements well below.
_CHUNK = 500


def to_fen(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_fen(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


def to_grams(kg: Decimal | None) -> int | None:
    if kg is None:
        return None
    return int((kg * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_grams(grams: int | None) -> Decimal | None:
    if grams is None:
        return None
    return (Decimal(grams) / 1000).quantize(Decimal("0.001"))


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def content_hash(order: Order) -> str:
    return hashlib.sha256(order.model_dump_json().encode()).hexdigest()


@dataclass
class UpsertResult:
    """What one versioned upsert did, per natural key."""

    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """An older version than the stored one arrived: ignored."""
    events: list[tuple[str, OrderEventKind]] = field(default_factory=list)

    @property
    def written(self) -> int:
        return len(self.inserted) + len(self.updated)


@dataclass(frozen=True)
class HeldOrder:
    shop: str
    platform_order_id: str
    reason: str
    detail: str
    modified: datetime


@dataclass(frozen=True)
class ShopSummary:
    shop: str
    cursor: datetime | None
    orders: int
    held: int
    errors: int
    last_run: SyncRun | None
    auth_failed_at: datetime | None
    auth_message: str


@dataclass(frozen=True)
class StoredListing:
    """One channel listing as the hub knows it (`listings`): keyed by (shop, item, sku id)."""

    shop: str
    item_id: str
    sku_id: str
    merchant_code: str
    sku: str | None
    source: str
    platform_quantity: int | None
    last_seen: datetime


@dataclass(frozen=True)
class ListingSummary:
    shop: str
    listings: int
    mapped: int
    pushed: int
    last_push: datetime | None


@dataclass(frozen=True)
class LedgerSummary:
    warehouse: str
    skus: int
    on_hand: int
    as_of: datetime | None


@dataclass(frozen=True)
class OutboxDepth:
    target: str
    kind: str
    pending: int
    dead: int
    oldest_pending: datetime | None


@dataclass(frozen=True)
class ReviewDecision:
    shop: str
    platform_order_id: str
    state: ReviewState
    reason: HoldReason | None = None
    detail: str = ""
    shipped_elsewhere: bool = False


@dataclass(frozen=True)
class NewDeliveryOrder:
    code: str
    warehouse: str
    lines: tuple[tuple[int, str, int, int], ...]
    """(order line number, master SKU, qty, unit price in fen)."""


@dataclass(frozen=True)
class DeliveryOrder:
    code: str
    shop: str
    warehouse: str
    state: DeliveryState
    wms_order_id: str
    lines: tuple[tuple[int, str, int, int], ...]


class TrackingMove(StrEnum):
    """What a tracking update did to the shipments of its waybill."""

    MOVED = "moved"
    UNCHANGED = "unchanged"
    """In transit, or already at a final state (a repeated push)."""
    UNKNOWN = "unknown"
    """No shipment has this waybill."""


class Parcel(NamedTuple):
    """One waybill of a stored shipment, as a freight bill sees it."""

    waybill: str
    carrier: str
    weight_kg: Decimal | None
    """The WMS's weight of this package (the shipment's when it has one package)."""
    province: str
    """The order's receiver province (short form), "" when unknown."""
    shipped_at: datetime | None
    """Only where asked for (`unbilled_parcels`)."""
    delivery_order_code: str
    main: bool
    """The shipment's first waybill (the one indexed and sent to the marketplace)."""


class BillLineRow(NamedTuple):
    """One readable freight-bill line as stored (weights in grams, money in fen)."""

    line_no: int
    waybill: str
    ship_date: str
    origin_province: str
    dest_province: str
    weight_g: int
    amount_fen: int


@functools.lru_cache(maxsize=8192)
def _kg(grams: int | None) -> Decimal | None:
    """`from_grams`, remembered: a million parcels share a few thousand weights."""
    return from_grams(grams)


def _parcels(row: Row[Any], with_time: bool = False) -> list[Parcel]:
    """The parcels of one `_parcel_query` row (unpacked by position: a bill has a million)."""
    values = cast(tuple[Any, ...], row)
    if with_time:
        _, waybill, carrier, weight_g, raw, code, province, shipped_at = values
    else:
        _, waybill, carrier, weight_g, raw, code, province = values
        shipped_at = None
    province = province or ""
    if isinstance(raw, str):  # SQLite hands the JSON text over: decode only multi-parcel ones
        packages = json.loads(raw) if raw.count('"waybill"') > 1 else []
    else:
        packages = raw or []
    if len(packages) < 2:  # one parcel: its weight is the shipment's
        return [Parcel(waybill, carrier, _kg(weight_g), province, shipped_at, code, True)]
    return [
        Parcel(
            package["waybill"],
            package.get("carrier") or carrier,
            None if package.get("weight_kg") is None else Decimal(str(package["weight_kg"])),
            province,
            shipped_at,
            code,
            package["waybill"] == waybill,
        )
        for package in packages
    ]


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


@dataclass(frozen=True)
class StoredOrder:
    """An order as stored, with the hub's own state around it (for export and the admin API)."""

    order: Order
    review_state: ReviewState
    hold_reason: str | None
    hold_detail: str
    shipped_elsewhere: bool
    delivery_orders: tuple[dict[str, str], ...]

    def export(self) -> dict[str, Any]:
        o = self.order
        return {
            "shop": o.shop,
            "platform": o.platform.value,
            "platform_order_id": o.platform_order_id,
            "status": o.status.value,
            "platform_status": o.platform_status,
            "created": o.created.isoformat(),
            "paid_at": o.paid_at.isoformat() if o.paid_at else None,
            "modified": o.modified.isoformat(),
            "buyer_nick": o.buyer_nick,
            "receiver": o.receiver.model_dump() if o.receiver else None,
            "total": str(o.total),
            "payment": str(o.payment),
            "post_fee": str(o.post_fee),
            "discount": str(o.discount),
            "buyer_remark": o.buyer_remark,
            "seller_remark": o.seller_remark,
            "review_state": self.review_state.value,
            "hold_reason": self.hold_reason,
            "shipped_elsewhere": self.shipped_elsewhere,
            "lines": [
                {
                    "line_id": line.line_id,
                    "platform_item_id": line.platform_item_id,
                    "platform_sku_id": line.platform_sku_id,
                    "merchant_code": line.merchant_code,
                    "title": line.title,
                    "qty": line.qty,
                    "price": str(line.price),
                    "payment": str(line.payment),
                    "refund_state": line.refund_state.value,
                }
                for line in o.lines
            ],
            "delivery_orders": list(self.delivery_orders),
        }


def _order_values(order: Order, now: datetime) -> dict[str, Any]:
    return {
        "shop": order.shop,
        "platform": order.platform.value,
        "platform_order_id": order.platform_order_id,
        "status": order.status.value,
        "platform_status": order.platform_status,
        "status_rank": order.status.rank,
        "modified": order.modified,
        "content_hash": content_hash(order),
        "created": order.created,
        "paid_at": order.paid_at,
        "buyer_nick": order.buyer_nick,
        "receiver": order.receiver.model_dump() if order.receiver else None,
        "province": order.receiver.province if order.receiver else "",
        "total_fen": to_fen(order.total),
        "payment_fen": to_fen(order.payment),
        "post_fee_fen": to_fen(order.post_fee),
        "discount_fen": to_fen(order.discount),
        "buyer_remark": order.buyer_remark,
        "seller_remark": order.seller_remark,
        "updated_at": now,
    }


def _line_values(order_id: int, order: Order) -> list[dict[str, Any]]:
    return [
        {
            "order_id": order_id,
            "line_no": number,
            "line_id": line.line_id,
            "platform_item_id": line.platform_item_id,
            "platform_sku_id": line.platform_sku_id,
            "merchant_code": line.merchant_code,
            "title": line.title,
            "qty": line.qty,
            "price_fen": to_fen(line.price),
            "payment_fen": to_fen(line.payment),
            "refund_state": line.refund_state.value,
            "platform_status": line.platform_status,
        }
        for number, line in enumerate(order.lines, start=1)
    ]


def _order_from_rows(row: Row[Any], lines: Sequence[Row[Any]]) -> Order:
    receiver = Address(**row.receiver) if row.receiver else None
    return Order(
        platform=row.platform,
        shop=row.shop,
        platform_order_id=row.platform_order_id,
        status=OrderStatus(row.status),
        platform_status=row.platform_status,
        buyer_nick=row.buyer_nick,
        receiver=receiver,
        total=from_fen(row.total_fen),
        payment=from_fen(row.payment_fen),
        post_fee=from_fen(row.post_fee_fen),
        discount=from_fen(row.discount_fen),
        created=row.created,
        paid_at=row.paid_at,
        modified=row.modified,
        buyer_remark=row.buyer_remark,
        seller_remark=row.seller_remark,
        lines=tuple(
            OrderLine(
                line_id=line.line_id,
                platform_item_id=line.platform_item_id,
                platform_sku_id=line.platform_sku_id,
                merchant_code=line.merchant_code,
                title=line.title,
                qty=line.qty,
                price=from_fen(line.price_fen),
                payment=from_fen(line.payment_fen),
                refund_state=RefundState(line.refund_state),
                platform_status=line.platform_status,
            )
            for line in lines
        ),
    )


def _events_for(old: Order | None, new: Order) -> list[OrderEventKind]:
    """The business-relevant changes between two versions, for the later stages."""
    if old is None:
        events = [OrderEventKind.CREATED]
        if new.status in (OrderStatus.PAID, OrderStatus.PAUSED):
            events.append(OrderEventKind.PAID)
        return events
    events = []
    if old.status != new.status:
        by_status = {
            OrderStatus.PAID: OrderEventKind.PAID,
            OrderStatus.CLOSED: OrderEventKind.CLOSED,
            OrderStatus.CANCELLED: OrderEventKind.CANCELLED,
            OrderStatus.SHIPPED: OrderEventKind.SHIPPED,
        }
        paid_now = new.status == OrderStatus.PAID and old.status == OrderStatus.WAIT_PAY
        if new.status in by_status and (new.status != OrderStatus.PAID or paid_now):
            events.append(by_status[new.status])
        else:
            events.append(OrderEventKind.STATUS_CHANGED)
    if old.receiver != new.receiver:
        events.append(OrderEventKind.ADDRESS_CHANGED)
    old_refunds = {line.line_id: line.refund_state for line in old.lines}
    if any(
        line.refund_state == RefundState.SUCCESS
        and old_refunds.get(line.line_id) != RefundState.SUCCESS
        for line in new.lines
    ):
        events.append(OrderEventKind.LINE_REFUNDED)
    return events


WebhookStatus = Literal["accepted", "rejected"]


@dataclass(frozen=True)
class WebhookDelivery:
    """One row of the webhook inbox: a delivery the hub received, by (source, delivery id)."""

    source: str
    delivery_id: str
    payload: str
    status: str
    received_at: datetime


class PurchaseState(StrEnum):
    """A purchase order's life at the hub (`erp_purchase_orders.state`)."""

    PENDING = "pending"
    """Seen in the ERP; its inbound notice is in the outbox."""
    NOTIFIED = "notified"
    """The WMS has the inbound notice."""
    RECEIVING = "receiving"
    """Part of it arrived (an intermediate confirm)."""
    RECEIVED = "received"
    """The WMS's final confirm arrived."""


class DocumentState(StrEnum):
    """An ERP document the hub writes (receipt, sales outbound)."""

    PENDING = "pending"
    """Recorded; its save is in the outbox."""
    SAVED = "saved"
    """The ERP has it (saved and audited)."""


@dataclass(frozen=True)
class ErpPurchaseLine:
    entry_id: str
    sku: str
    unit: str
    qty: int
    received: int = 0


@dataclass(frozen=True)
class ErpPurchaseOrder:
    number: str
    erp_id: str
    warehouse: str
    supplier: str
    purchase_org: str
    lines: tuple[ErpPurchaseLine, ...]
    state: PurchaseState = PurchaseState.PENDING
    wms_order_id: str = ""
    approved_at: datetime | None = None


@dataclass(frozen=True)
class ErpReceipt:
    """One WMS receipt (`entryorder.confirm`) of a purchase order, as the ERP document to save."""

    number: str
    purchase_order: str
    warehouse: str
    out_biz_code: str
    final: bool
    lines: tuple[tuple[str, str, int, str], ...]
    """(purchase-order entry id, SKU, quantity, unit)."""
    received_at: datetime
    state: DocumentState = DocumentState.PENDING
    erp_id: str = ""


@dataclass(frozen=True)
class ErpSalesOutbound:
    """One shipped delivery order, as the ERP sales outbound document to save."""

    number: str
    shop: str
    platform_order_id: str
    warehouse: str
    lines: tuple[tuple[str, int, int], ...]
    """(SKU, quantity shipped, unit price in fen)."""
    shipped_at: datetime
    state: DocumentState = DocumentState.PENDING
    erp_id: str = ""


@dataclass(frozen=True)
class ErpSummary:
    purchase_orders: dict[str, int]
    """Count per `PurchaseState` value."""
    receipts: dict[str, int]
    sales_outbounds: dict[str, int]


class Tx:
    """One open transaction on the store. Obtain it from `Store.transaction()`."""

    def __init__(self, connection: AsyncConnection, clock: Clock) -> None:
        self.connection = connection
        self.clock = clock

    @property
    def _dialect(self) -> str:
        return self.connection.dialect.name

    def _upsert(self, table: Table) -> Any:
        """An INSERT that supports ON CONFLICT on both backends."""
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)

    # --- orders ------------------------------------------------------------------------------

    async def upsert_orders(self, orders: Sequence[Order]) -> UpsertResult:
        """Store each order unless the stored version is newer or identical.

        Newer means a later platform `modified`, then a higher status rank. An update is also
        guarded in SQL, so a concurrent writer with a newer version is never overwritten.
        """
        result = UpsertResult()
        latest: dict[tuple[str, str], Order] = {}
        for order in orders:
            key = (order.shop, order.platform_order_id)
            if key in latest and latest[key].version > order.version:
                result.stale.append(order.platform_order_id)
                continue
            latest[key] = order
        if not latest:
            return result
        now = self.clock.now()
        existing = await self._existing_orders(list(latest))
        to_insert: list[Order] = []
        to_update: list[tuple[int, Order, Order]] = []
        for key, order in latest.items():
            found = existing.get(key)
            if found is None:
                to_insert.append(order)
                continue
            order_id, stored_hash, stored = found
            if stored.version > order.version:
                result.stale.append(order.platform_order_id)
            elif stored_hash == content_hash(order):
                result.unchanged.append(order.platform_order_id)
            else:
                to_update.append((order_id, stored, order))
        events: list[dict[str, Any]] = []
        for order, order_id in await self._insert_orders(to_insert, now):
            result.inserted.append(order.platform_order_id)
            for kind in _events_for(None, order):
                events.append({"order_id": order_id, "kind": kind.value, "created_at": now})
                result.events.append((order.platform_order_id, kind))
        for order_id, stored, order in to_update:
            if await self._update_order(order_id, order, now):
                result.updated.append(order.platform_order_id)
                for kind in _events_for(stored, order):
                    events.append({"order_id": order_id, "kind": kind.value, "created_at": now})
                    result.events.append((order.platform_order_id, kind))
            else:
                result.stale.append(order.platform_order_id)
        for chunk in _chunks(events):
            await self.connection.execute(insert(t.order_events), list(chunk))
        return result

    async def _existing_orders(
        self, keys: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str, Order]]:
        # Per shop with a plain IN list: SQLite answers a row-value `(shop, id) IN (…)` with a
        # table scan, this one from the unique index.
        by_shop: dict[str, list[str]] = {}
        for shop, order_id in keys:
            by_shop.setdefault(shop, []).append(order_id)
        found: dict[tuple[str, str], tuple[int, str, Order]] = {}
        for shop, order_ids in by_shop.items():
            for chunk in _chunks(order_ids):
                rows = (
                    await self.connection.execute(
                        select(t.orders).where(
                            t.orders.c.shop == shop,
                            t.orders.c.platform_order_id.in_(list(chunk)),
                        )
                    )
                ).all()
                lines = await self._lines_of([row.id for row in rows])
                for row in rows:
                    found[(row.shop, row.platform_order_id)] = (
                        row.id,
                        row.content_hash,
                        _order_from_rows(row, lines.get(row.id, [])),
                    )
        return found

    async def _lines_of(self, order_ids: list[int]) -> dict[int, list[Row[Any]]]:
        lines: dict[int, list[Row[Any]]] = {}
        for chunk in _chunks(order_ids):
            rows = await self.connection.execute(
                select(t.order_lines)
                .where(t.order_lines.c.order_id.in_(list(chunk)))
                .order_by(t.order_lines.c.order_id, t.order_lines.c.line_no)
            )
            for row in rows:
                lines.setdefault(row.order_id, []).append(row)
        return lines

    async def _insert_orders(self, orders: list[Order], now: datetime) -> list[tuple[Order, int]]:
        inserted: list[tuple[Order, int]] = []
        for chunk in _chunks(orders):
            values = [
                {
                    **_order_values(o, now),
                    "review_state": ReviewState.PENDING.value,
                    "hold_reason": None,
                    "hold_detail": "",
                    "shipped_elsewhere": False,
                    "first_seen_at": now,
                }
                for o in chunk
            ]
            rows = await self.connection.execute(
                insert(t.orders).returning(
                    t.orders.c.id, t.orders.c.shop, t.orders.c.platform_order_id
                ),
                values,
            )
            ids = {(r.shop, r.platform_order_id): r.id for r in rows}
            pairs = [(o, ids[(o.shop, o.platform_order_id)]) for o in chunk]
            line_values = [v for o, order_id in pairs for v in _line_values(order_id, o)]
            for line_chunk in _chunks(line_values):
                await self.connection.execute(insert(t.order_lines), list(line_chunk))
            inserted.extend(pairs)
        return inserted

    async def _update_order(self, order_id: int, order: Order, now: datetime) -> bool:
        table = t.orders
        newer_or_same = or_(
            table.c.modified < order.modified,
            and_(table.c.modified == order.modified, table.c.status_rank <= order.status.rank),
        )
        updated = await self.connection.execute(
            update(table)
            .where(table.c.id == order_id, newer_or_same)
            .values(
                **_order_values(order, now),
                # A held order that changed (address fixed, unpaused, line refunded) is reviewed
                # again; an operator's release stands.
                review_state=case(
                    (table.c.review_state == ReviewState.HELD.value, ReviewState.PENDING.value),
                    else_=table.c.review_state,
                ),
            )
        )
        if updated.rowcount != 1:
            return False
        await self.connection.execute(
            delete(t.order_lines).where(t.order_lines.c.order_id == order_id)
        )
        if order.lines:
            await self.connection.execute(insert(t.order_lines), _line_values(order_id, order))
        return True

    async def get_order(self, shop: str, platform_order_id: str) -> StoredOrder | None:
        row = (
            await self.connection.execute(
                select(t.orders).where(
                    t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id
                )
            )
        ).first()
        if row is None:
            return None
        return (await self._stored([row]))[0]

    async def _stored(self, rows: Sequence[Row[Any]]) -> list[StoredOrder]:
        ids = [row.id for row in rows]
        lines = await self._lines_of(ids)
        deliveries: dict[int, list[dict[str, str]]] = {}
        for chunk in _chunks(ids):
            result = await self.connection.execute(
                select(
                    t.delivery_orders.c.order_id,
                    t.delivery_orders.c.code,
                    t.delivery_orders.c.warehouse,
                    t.delivery_orders.c.state,
                )
                .where(t.delivery_orders.c.order_id.in_(list(chunk)))
                .order_by(t.delivery_orders.c.code)
            )
            for d in result:
                deliveries.setdefault(d.order_id, []).append(
                    {"code": d.code, "warehouse": d.warehouse, "state": d.state}
                )
        return [
            StoredOrder(
                order=_order_from_rows(row, lines.get(row.id, [])),
                review_state=ReviewState(row.review_state),
                hold_reason=row.hold_reason,
                hold_detail=row.hold_detail,
                shipped_elsewhere=row.shipped_elsewhere,
                delivery_orders=tuple(deliveries.get(row.id, [])),
            )
            for row in rows
        ]

    async def iter_orders(
        self, shop: str | None = None, batch: int = 500
    ) -> AsyncIterator[StoredOrder]:
        """Every stored order in id order, fetched in batches (constant memory)."""
        last_id = 0
        while True:
            query = select(t.orders).where(t.orders.c.id > last_id)
            if shop is not None:
                query = query.where(t.orders.c.shop == shop)
            rows = (await self.connection.execute(query.order_by(t.orders.c.id).limit(batch))).all()
            if not rows:
                return
            for stored in await self._stored(rows):
                yield stored
            last_id = rows[-1].id

    async def set_review(
        self,
        shop: str,
        platform_order_id: str,
        state: ReviewState,
        reason: HoldReason | None = None,
        detail: str = "",
    ) -> bool:
        result = await self.connection.execute(
            update(t.orders)
            .where(t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id)
            .values(
                review_state=state.value,
                hold_reason=reason.value if reason else None,
                hold_detail=detail,
                updated_at=self.clock.now(),
            )
        )
        return result.rowcount == 1

    async def pending_review(
        self,
        shops: Sequence[str] | None = None,
        limit: int = 5000,
        *,
        only: Sequence[str] | None = None,
    ) -> list[Order]:
        """Orders waiting for review that can be decided now (not those still unpaid)."""
        query = (
            select(t.orders)
            .where(
                t.orders.c.review_state == ReviewState.PENDING.value,
                t.orders.c.status != OrderStatus.WAIT_PAY.value,
            )
            .order_by(t.orders.c.id)
            .limit(limit)
        )
        if shops is not None:
            query = query.where(t.orders.c.shop.in_(list(shops)))
        if only is not None:
            query = query.where(t.orders.c.platform_order_id.in_(list(only)))
        rows = (await self.connection.execute(query)).all()
        lines = await self._lines_of([row.id for row in rows])
        return [_order_from_rows(row, lines.get(row.id, [])) for row in rows]

    async def requeue_held(self, reason: HoldReason) -> int:
        """Send orders held for `reason` back to review (after the cause was fixed in bulk)."""
        result = await self.connection.execute(
            update(t.orders)
            .where(
                t.orders.c.review_state == ReviewState.HELD.value,
                t.orders.c.hold_reason == reason.value,
            )
            .values(review_state=ReviewState.PENDING.value, updated_at=self.clock.now())
        )
        return int(result.rowcount)

    async def set_reviews(self, decisions: Sequence[ReviewDecision]) -> None:
        """Record many review outcomes in one executemany (the review pass's hot path)."""
        if not decisions:
            return
        now = self.clock.now()
        statement = (
            update(t.orders)
            .where(
                t.orders.c.shop == bindparam("b_shop"),
                t.orders.c.platform_order_id == bindparam("b_order"),
            )
            .values(
                review_state=bindparam("b_state"),
                hold_reason=bindparam("b_reason"),
                hold_detail=bindparam("b_detail"),
                shipped_elsewhere=bindparam("b_elsewhere"),
                updated_at=now,
            )
        )
        await self.connection.execute(
            statement,
            [
                {
                    "b_shop": d.shop,
                    "b_order": d.platform_order_id,
                    "b_state": d.state.value,
                    "b_reason": d.reason.value if d.reason else None,
                    "b_detail": d.detail,
                    "b_elsewhere": d.shipped_elsewhere,
                }
                for d in decisions
            ],
        )

    async def held_orders(self, shop: str | None = None) -> list[HeldOrder]:
        query = select(
            t.orders.c.shop,
            t.orders.c.platform_order_id,
            t.orders.c.hold_reason,
            t.orders.c.hold_detail,
            t.orders.c.modified,
        ).where(t.orders.c.review_state == ReviewState.HELD.value)
        if shop is not None:
            query = query.where(t.orders.c.shop == shop)
        rows = await self.connection.execute(query.order_by(t.orders.c.shop, t.orders.c.modified))
        return [
            HeldOrder(r.shop, r.platform_order_id, r.hold_reason or "", r.hold_detail, r.modified)
            for r in rows
        ]

    async def release_order(self, shop: str, platform_order_id: str) -> bool:
        """Mark a held order released; the review step then routes it. False if it was not held."""
        result = await self.connection.execute(
            update(t.orders)
            .where(
                t.orders.c.shop == shop,
                t.orders.c.platform_order_id == platform_order_id,
                t.orders.c.review_state == ReviewState.HELD.value,
            )
            .values(
                review_state=ReviewState.RELEASED.value,
                hold_reason=None,
                hold_detail="",
                updated_at=self.clock.now(),
            )
        )
        return result.rowcount == 1

    async def order_events(self, shop: str, platform_order_id: str) -> list[OrderEventKind]:
        rows = await self.connection.execute(
            select(t.order_events.c.kind)
            .join(t.orders, t.orders.c.id == t.order_events.c.order_id)
            .where(t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id)
            .order_by(t.order_events.c.id)
        )
        return [OrderEventKind(r.kind) for r in rows]

    async def record_errors(self, errors: Sequence[SyncError], run_id: int | None = None) -> None:
        now = self.clock.now()
        values = [
            {
                "source": e.source,
                "key": e.key,
                "reason": e.reason,
                "raw": e.raw,
                "run_id": run_id,
                "created_at": e.created_at or now,
            }
            for e in errors
        ]
        for chunk in _chunks(values):
            await self.connection.execute(insert(t.sync_errors), list(chunk))

    async def recent_errors(self, source: str | None = None, limit: int = 50) -> list[SyncError]:
        query = select(t.sync_errors).order_by(t.sync_errors.c.id.desc()).limit(limit)
        if source is not None:
            query = query.where(t.sync_errors.c.source == source)
        rows = await self.connection.execute(query)
        return [
            SyncError(
                source=r.source, key=r.key, reason=r.reason, raw=r.raw, created_at=r.created_at
            )
            for r in rows
        ]

    # --- catalog -----------------------------------------------------------------------------

    async def upsert_master_skus(self, skus: Sequence[MasterSku]) -> int:
        now = self.clock.now()
        values = [
            {
                "sku": s.sku,
                "name": s.name,
                "barcode": s.barcode,
                "weight_g": to_grams(s.weight_kg) or 0,
                "updated_at": now,
            }
            for s in skus
        ]
        for chunk in _chunks(values):
            statement = self._upsert(t.master_skus).values(list(chunk))
            await self.connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[t.master_skus.c.sku],
                    set_={
                        "name": statement.excluded.name,
                        "barcode": statement.excluded.barcode,
                        "weight_g": statement.excluded.weight_g,
                        "updated_at": statement.excluded.updated_at,
                    },
                )
            )
        names = [s.sku for s in skus]
        for chunk in _chunks(names):
            await self.connection.execute(
                delete(t.bundle_components).where(t.bundle_components.c.bundle_sku.in_(chunk))
            )
        components = [
            {"bundle_sku": s.sku, "component_sku": c.sku, "qty": c.qty}
            for s in skus
            for c in s.components
        ]
        for chunk in _chunks(components):
            await self.connection.execute(insert(t.bundle_components), list(chunk))
        return len(skus)

    async def upsert_mappings(self, mappings: Sequence[SkuMapping]) -> int:
        values = [
            {"shop": m.shop, "platform_sku": m.platform_sku, "sku": m.sku, "qty": m.qty}
            for m in mappings
        ]
        for chunk in _chunks(values):
            statement = self._upsert(t.sku_mappings).values(list(chunk))
            await self.connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[t.sku_mappings.c.shop, t.sku_mappings.c.platform_sku],
                    set_={"sku": statement.excluded.sku, "qty": statement.excluded.qty},
                )
            )
        return len(mappings)

    async def master_skus(self) -> dict[str, MasterSku]:
        components: dict[str, list[BundleComponent]] = {}
        for row in await self.connection.execute(
            select(t.bundle_components).order_by(
                t.bundle_components.c.bundle_sku, t.bundle_components.c.component_sku
            )
        ):
            components.setdefault(row.bundle_sku, []).append(
                BundleComponent(sku=row.component_sku, qty=row.qty)
            )
        rows = await self.connection.execute(select(t.master_skus).order_by(t.master_skus.c.sku))
        return {
            r.sku: MasterSku(
                sku=r.sku,
                name=r.name,
                barcode=r.barcode,
                weight_kg=from_grams(r.weight_g) or Decimal(0),
                components=tuple(components.get(r.sku, ())),
            )
            for r in rows
        }

    async def sku_mappings(self) -> list[SkuMapping]:
        rows = await self.connection.execute(
            select(t.sku_mappings).order_by(t.sku_mappings.c.shop, t.sku_mappings.c.platform_sku)
        )
        return [
            SkuMapping(shop=r.shop, platform_sku=r.platform_sku, sku=r.sku, qty=r.qty) for r in rows
        ]

    # --- cursors, runs, shop state -----------------------------------------------------------

    async def get_cursor(self, shop: str, stream: str) -> Cursor | None:
        row = (
            await self.connection.execute(
                select(t.cursors).where(t.cursors.c.shop == shop, t.cursors.c.stream == stream)
            )
        ).first()
        if row is None:
            return None
        return Cursor(
            shop=row.shop, stream=row.stream, position=row.position, updated_at=row.updated_at
        )

    async def set_cursor(self, cursor: Cursor) -> None:
        statement = self._upsert(t.cursors).values(
            shop=cursor.shop,
            stream=cursor.stream,
            position=cursor.position,
            updated_at=self.clock.now(),
        )
        await self.connection.execute(
            statement.on_conflict_do_update(
                index_elements=[t.cursors.c.shop, t.cursors.c.stream],
                set_={
                    "position": statement.excluded.position,
                    "updated_at": statement.excluded.updated_at,
                },
            )
        )

    async def start_run(self, job: str, shop: str | None = None, owner: str = "") -> int:
        row = await self.connection.execute(
            insert(t.sync_runs)
            .values(
                job=job,
                shop=shop,
                owner=owner,
                started_at=self.clock.now(),
                status=RunStatus.RUNNING.value,
            )
            .returning(t.sync_runs.c.id)
        )
        return int(row.scalar_one())

    async def finish_run(self, run: SyncRun) -> None:
        if run.id is None:
            raise ValueError("run has no id")
        await self.connection.execute(
            update(t.sync_runs)
            .where(t.sync_runs.c.id == run.id)
            .values(
                finished_at=run.finished_at or self.clock.now(),
                status=run.status.value,
                windows=run.windows,
                pages=run.pages,
                orders_seen=run.orders_seen,
                orders_written=run.orders_written,
                errors=run.errors,
                message=run.message,
            )
        )

    async def runs(
        self, job: str | None = None, shop: str | None = None, limit: int = 20
    ) -> list[SyncRun]:
        query = select(t.sync_runs).order_by(t.sync_runs.c.id.desc()).limit(limit)
        if job is not None:
            query = query.where(t.sync_runs.c.job == job)
        if shop is not None:
            query = query.where(t.sync_runs.c.shop == shop)
        return [_run_from_row(r) for r in await self.connection.execute(query)]

    async def flag_auth_failure(self, shop: str, message: str) -> None:
        now = self.clock.now()
        statement = self._upsert(t.shop_state).values(
            shop=shop, auth_failed_at=now, auth_message=message, updated_at=now
        )
        await self.connection.execute(
            statement.on_conflict_do_update(
                index_elements=[t.shop_state.c.shop],
                set_={
                    "auth_failed_at": statement.excluded.auth_failed_at,
                    "auth_message": statement.excluded.auth_message,
                    "updated_at": statement.excluded.updated_at,
                },
            )
        )

    async def clear_auth_failure(self, shop: str) -> None:
        await self.connection.execute(
            update(t.shop_state)
            .where(t.shop_state.c.shop == shop)
            .values(auth_failed_at=None, auth_message="", updated_at=self.clock.now())
        )

    # --- outbox (writing and counting; the dispatcher's claim lives with it) -----------------

    async def enqueue(self, messages: Sequence[OutboxMessage]) -> int:
        """Write messages; a message whose idempotency key exists already is skipped.

        Returns how many were new. Messages with a `subject` supersede the pending ones of the same
        subject (a newer stock value replaces a queued older one)."""
        if not messages:
            return 0
        now = self.clock.now()
        keys = [m.idempotency_key for m in messages]
        subjects = [m.subject for m in messages if m.subject]
        for chunk in _chunks(subjects):
            await self.connection.execute(
                update(t.outbox)
                .where(
                    t.outbox.c.subject.in_(list(chunk)),
                    t.outbox.c.idempotency_key.not_in(keys),
                    t.outbox.c.status == OutboxStatus.PENDING.value,
                    t.outbox.c.claimed_by.is_(None),
                )
                .values(status=OutboxStatus.SUPERSEDED.value, updated_at=now, done_at=now)
            )
        values = [
            {
                "kind": m.kind,
                "target": m.target,
                "idempotency_key": m.idempotency_key,
                "subject": m.subject,
                "payload": m.payload,
                "status": OutboxStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": m.next_attempt_at or now,
                "last_error": "",
                "ambiguous": False,
                "created_at": now,
                "updated_at": now,
            }
            for m in messages
        ]
        new = 0
        for chunk in _chunks(values):
            statement = self._upsert(t.outbox).values(list(chunk))
            # RETURNING, not rowcount: psycopg reports -1 for a multi-row INSERT … ON CONFLICT.
            result = await self.connection.execute(
                statement.on_conflict_do_nothing(
                    index_elements=[t.outbox.c.idempotency_key]
                ).returning(t.outbox.c.id)
            )
            new += len(result.all())
        return new

    async def _pending_targets(self) -> list[str]:
        """The targets with pending messages: a loose index scan (one seek per target on
        `ix_outbox_target_due`), so it costs the same with ten pending messages or a million."""
        rows = await self.connection.execute(
            text(
                "WITH RECURSIVE pending(target) AS ("
                " SELECT (SELECT min(target) FROM outbox WHERE status = :pending)"
                " UNION ALL"
                " SELECT (SELECT min(o.target) FROM outbox o"
                "         WHERE o.status = :pending AND o.target > p.target)"
                " FROM pending p WHERE p.target IS NOT NULL"
                ") SELECT target FROM pending WHERE target IS NOT NULL"
            ),
            {"pending": OutboxStatus.PENDING.value},
        )
        return [row.target for row in rows]

    async def claim_outbox(
        self,
        owner: str,
        limit: int,
        ttl: timedelta,
        *,
        targets: Sequence[str] | None = None,
        per_target: int | None = None,
        in_flight: Mapping[str, int] | None = None,
        exclude_ids: Sequence[int] = (),
    ) -> list[OutboxMessage]:
        """Claim due messages for `owner` until `ttl` from now, longest due first; with `per_target`,
        no more of a target than its free send slots (`per_target` less what `in_flight` says
        the dispatcher is sending to it), so nothing claimed waits for a slot while its claim
        ages.

        The claim counts as an attempt and is committed before anything is sent, so a message with
        `attempts > 0` may have reached its target (a crash between send and record): its handler
        must ask before sending again. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several
        dispatchers claim side by side; the conditional UPDATE guards both backends."""
        now = self.clock.now()
        unclaimed = or_(t.outbox.c.claimed_until.is_(None), t.outbox.c.claimed_until < now)
        claimable = and_(
            t.outbox.c.status == OutboxStatus.PENDING.value,
            t.outbox.c.next_attempt_at <= now,
            unclaimed,
        )
        if exclude_ids:  # the claimer's own sends under way (their claims may have expired)
            claimable = and_(claimable, t.outbox.c.id.not_in(list(exclude_ids)))
        # Each target is read on its own, up to its free slots: however deep one target's
        # backlog (a slow warehouse, a throttled shop), the others' due messages are claimed.
        busy = in_flight or {}
        room = {
            target: limit if per_target is None else min(limit, per_target - busy.get(target, 0))
            for target in await self._pending_targets()
            if targets is None or target in targets
        }
        branches = []
        for target, free in room.items():
            if free <= 0:
                continue
            branch = (
                select(t.outbox.c.id, t.outbox.c.next_attempt_at)
                .where(claimable, t.outbox.c.target == target)
                .order_by(t.outbox.c.next_attempt_at, t.outbox.c.id)
                .limit(free)
            )
            if self._dialect == "postgresql":
                branch = branch.with_for_update(skip_locked=True)
            branches.append(select(branch.subquery()))
        if not branches:
            return []
        candidates = list(await self.connection.execute(union_all(*branches)))
        candidates.sort(key=lambda row: (row.next_attempt_at, row.id))
        ids = [row.id for row in candidates[:limit]]
        if not ids:
            return []
        rows = await self.connection.execute(
            update(t.outbox)
            # Not `claimable`: given `status` SQLite walks `ix_outbox_due` (every pending message)
            # instead of the primary key. The rows are locked since the select (the SQLite write
            # lock, PostgreSQL's FOR UPDATE), so "still unclaimed" is guard enough.
            .where(t.outbox.c.id.in_(ids), unclaimed)
            .values(
                claimed_by=owner,
                claimed_until=now + ttl,
                attempts=t.outbox.c.attempts + 1,
                updated_at=now,
            )
            .returning(*t.outbox.c)
        )
        return sorted((_outbox_from_row(r) for r in rows), key=lambda m: m.id or 0)

    async def extend_outbox_claims(
        self, owner: str, message_ids: Sequence[int], ttl: timedelta
    ) -> int:
        """Keep `owner`'s claims of messages it is still sending for `ttl` from now."""
        if not message_ids:
            return 0
        result = await self.connection.execute(
            update(t.outbox)
            # No `status` term: given one, SQLite walks every pending message by `ix_outbox_due`
            # instead of the primary key; a settled message has no `claimed_by` anyway.
            .where(t.outbox.c.id.in_(list(message_ids)), t.outbox.c.claimed_by == owner)
            .values(claimed_until=self.clock.now() + ttl)
        )
        return int(result.rowcount)

    async def complete_outbox(self, message_id: int, owner: str) -> bool:
        now = self.clock.now()
        result = await self.connection.execute(
            update(t.outbox)
            .where(t.outbox.c.id == message_id, t.outbox.c.claimed_by == owner)
            .values(
                status=OutboxStatus.DONE.value,
                claimed_by=None,
                claimed_until=None,
                last_error="",
                ambiguous=False,
                updated_at=now,
                done_at=now,
            )
        )
        return result.rowcount == 1

    async def settle_outbox(self, idempotency_key: str, reason: str) -> bool:
        """Mark a message done because its target shows the effect already (a WMS confirming
        the shipment of an order whose create is still being retried), whether or not a
        dispatcher holds it; that dispatcher's own outcome then finds its claim gone."""
        now = self.clock.now()
        result = await self.connection.execute(
            update(t.outbox)
            .where(
                t.outbox.c.idempotency_key == idempotency_key,
                t.outbox.c.status.in_([OutboxStatus.PENDING.value, OutboxStatus.DEAD.value]),
            )
            .values(
                status=OutboxStatus.DONE.value,
                claimed_by=None,
                claimed_until=None,
                last_error=reason,
                ambiguous=False,
                updated_at=now,
                done_at=now,
            )
        )
        return result.rowcount == 1

    async def retry_outbox(
        self,
        message_id: int,
        owner: str,
        error: str,
        next_attempt_at: datetime | None,
        *,
        ambiguous: bool,
    ) -> bool:
        """Record a failed attempt: try again at `next_attempt_at`, or dead-letter it (None)."""
        now = self.clock.now()
        values: dict[str, Any] = {
            "claimed_by": None,
            "claimed_until": None,
            "last_error": error[:2000],
            "ambiguous": ambiguous,
            "updated_at": now,
        }
        if next_attempt_at is None:
            values.update(status=OutboxStatus.DEAD.value, done_at=now)
        else:
            values.update(next_attempt_at=next_attempt_at)
        result = await self.connection.execute(
            update(t.outbox)
            .where(t.outbox.c.id == message_id, t.outbox.c.claimed_by == owner)
            .values(**values)
        )
        return result.rowcount == 1

    async def release_outbox_claims(self, owner: str, *, all_but: bool = False) -> int:
        """Give back unfinished claims (on shutdown), so another dispatcher takes them at once.
        With `all_but`, give back everyone's claims except `owner`'s: the only replica of an
        embedded database knows every other claim belongs to a process that died."""
        claimed = t.outbox.c.claimed_by != owner if all_but else t.outbox.c.claimed_by == owner
        result = await self.connection.execute(
            update(t.outbox)
            .where(
                claimed,
                t.outbox.c.claimed_by.is_not(None),
                t.outbox.c.status == OutboxStatus.PENDING.value,
            )
            .values(claimed_by=None, claimed_until=None, updated_at=self.clock.now())
        )
        return int(result.rowcount)

    async def dead_letters(self, limit: int = 200) -> list[OutboxMessage]:
        rows = await self.connection.execute(
            select(t.outbox)
            .where(t.outbox.c.status == OutboxStatus.DEAD.value)
            .order_by(t.outbox.c.id)
            .limit(limit)
        )
        return [_outbox_from_row(r) for r in rows]

    async def replay_dead(self, ids: Sequence[int] | None) -> list[int]:
        """Send dead letters again (all of them when `ids` is None); returns the ids revived.

        Attempts are not reset: the message may have reached its target before, so its handler
        still asks before sending again."""
        now = self.clock.now()
        statement = (
            update(t.outbox)
            .where(t.outbox.c.status == OutboxStatus.DEAD.value)
            .values(
                status=OutboxStatus.PENDING.value,
                # Due since it was written, so it goes before the target's backlog, not after.
                next_attempt_at=t.outbox.c.created_at,
                claimed_by=None,
                claimed_until=None,
                done_at=None,
                updated_at=now,
            )
            .returning(t.outbox.c.id)
        )
        if ids is not None:
            statement = statement.where(t.outbox.c.id.in_(list(ids)))
        return sorted(row.id for row in await self.connection.execute(statement))

    async def outbox_message(self, message_id: int) -> OutboxMessage | None:
        row = (
            await self.connection.execute(select(t.outbox).where(t.outbox.c.id == message_id))
        ).first()
        return _outbox_from_row(row) if row else None

    async def outbox_messages(
        self, kind: str | None = None, status: OutboxStatus | None = None
    ) -> list[OutboxMessage]:
        query = select(t.outbox).order_by(t.outbox.c.id)
        if kind is not None:
            query = query.where(t.outbox.c.kind == kind)
        if status is not None:
            query = query.where(t.outbox.c.status == status.value)
        return [_outbox_from_row(r) for r in await self.connection.execute(query)]

    async def next_outbox_due(self) -> datetime | None:
        """When the earliest pending message becomes due (for a dispatcher's sleep)."""
        value = (
            await self.connection.execute(
                select(func.min(t.outbox.c.next_attempt_at)).where(
                    t.outbox.c.status == OutboxStatus.PENDING.value
                )
            )
        ).scalar()
        return value if isinstance(value, datetime) else None

    async def outbox_depth(self) -> list[OutboxDepth]:
        rows = await self.connection.execute(
            select(
                t.outbox.c.target,
                t.outbox.c.kind,
                t.outbox.c.status,
                func.count(),
                func.min(t.outbox.c.created_at),
            )
            .where(t.outbox.c.status.in_([OutboxStatus.PENDING.value, OutboxStatus.DEAD.value]))
            .group_by(t.outbox.c.target, t.outbox.c.kind, t.outbox.c.status)
        )
        depth: dict[tuple[str, str], dict[str, Any]] = {}
        for target, kind, status, count, oldest in rows:
            entry = depth.setdefault((target, kind), {"pending": 0, "dead": 0, "oldest": None})
            entry[status] = count
            if status == OutboxStatus.PENDING.value:
                entry["oldest"] = oldest  # min() keeps the column type, so this is aware UTC
        return [
            OutboxDepth(target, kind, v["pending"], v["dead"], v["oldest"])
            for (target, kind), v in sorted(depth.items())
        ]

    # --- delivery orders ---------------------------------------------------------------------

    async def add_delivery_orders(
        self, shop: str, platform_order_id: str, orders: Sequence[NewDeliveryOrder]
    ) -> None:
        """Record routed delivery orders and their lines (they reserve stock from now on)."""
        order_id = (
            await self.connection.execute(
                select(t.orders.c.id).where(
                    t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id
                )
            )
        ).scalar_one()
        await self.add_routed([(order_id, shop, d) for d in orders])

    async def add_routed(self, routed: Sequence[tuple[int, str, NewDeliveryOrder]]) -> None:
        """`add_delivery_orders` for many orders at once, by their store ids (order id, shop,
        delivery order): one statement per table for a whole routing batch."""
        if not routed:
            return
        now = self.clock.now()
        heads = [
            {
                "code": d.code,
                "order_id": order_id,
                "shop": shop,
                "warehouse": d.warehouse,
                "state": DeliveryState.PENDING.value,
                "wms_order_id": "",
                "created_at": now,
                "updated_at": now,
            }
            for order_id, shop, d in routed
        ]
        for chunk in _chunks(heads):
            await self.connection.execute(insert(t.delivery_orders), list(chunk))
        lines = [
            {
                "code": d.code,
                "line_no": number,
                "order_line_no": order_line_no,
                "sku": sku,
                "qty": qty,
                "price_fen": price_fen,
            }
            for _, _, d in routed
            for number, (order_line_no, sku, qty, price_fen) in enumerate(d.lines, start=1)
        ]
        for chunk in _chunks(lines):
            await self.connection.execute(insert(t.delivery_order_lines), list(chunk))

    async def set_delivery_state(
        self,
        code: str,
        state: DeliveryState,
        *,
        only_from: Sequence[DeliveryState] | None = None,
        wms_order_id: str | None = None,
    ) -> bool:
        """Move a delivery order to `state` (only from `only_from` states when given)."""
        values: dict[str, Any] = {"state": state.value, "updated_at": self.clock.now()}
        if wms_order_id is not None:
            values["wms_order_id"] = wms_order_id
        statement = update(t.delivery_orders).where(t.delivery_orders.c.code == code)
        if only_from is not None:
            statement = statement.where(t.delivery_orders.c.state.in_([s.value for s in only_from]))
        return (await self.connection.execute(statement.values(**values))).rowcount == 1

    async def delivery_orders_of(self, shop: str, platform_order_id: str) -> list[DeliveryOrder]:
        rows = (
            await self.connection.execute(
                select(t.delivery_orders)
                .join(t.orders, t.orders.c.id == t.delivery_orders.c.order_id)
                .where(t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id)
                .order_by(t.delivery_orders.c.created_at, t.delivery_orders.c.code)
            )
        ).all()
        return await self._delivery_orders(rows)

    async def delivery_order(self, code: str) -> DeliveryOrder | None:
        rows = (
            await self.connection.execute(
                select(t.delivery_orders).where(t.delivery_orders.c.code == code)
            )
        ).all()
        found = await self._delivery_orders(rows)
        return found[0] if found else None

    async def _delivery_orders(self, rows: Sequence[Row[Any]]) -> list[DeliveryOrder]:
        codes = [r.code for r in rows]
        lines: dict[str, list[tuple[int, str, int, int]]] = {}
        for chunk in _chunks(codes):
            for line in await self.connection.execute(
                select(t.delivery_order_lines)
                .where(t.delivery_order_lines.c.code.in_(list(chunk)))
                .order_by(t.delivery_order_lines.c.code, t.delivery_order_lines.c.line_no)
            ):
                lines.setdefault(line.code, []).append(
                    (line.order_line_no, line.sku, line.qty, line.price_fen)
                )
        return [
            DeliveryOrder(
                code=r.code,
                shop=r.shop,
                warehouse=r.warehouse,
                state=DeliveryState(r.state),
                wms_order_id=r.wms_order_id,
                lines=tuple(lines.get(r.code, ())),
            )
            for r in rows
        ]

    async def orders_to_route(
        self, shops: Sequence[str] | None = None, limit: int = 500, after_id: int = 0
    ) -> list[tuple[int, Order]]:
        """Paid orders that passed review (or were released) and have no delivery order yet, by
        id, from `after_id` on (a routing run goes on from its last batch instead of reading the
        orders it routed again), with their store ids."""
        routed = select(t.delivery_orders.c.order_id).where(
            t.delivery_orders.c.order_id == t.orders.c.id
        )
        query = (
            select(t.orders)
            .where(
                t.orders.c.id > after_id,
                t.orders.c.review_state.in_([ReviewState.PASSED.value, ReviewState.RELEASED.value]),
                t.orders.c.status == OrderStatus.PAID.value,
                ~routed.exists(),
            )
            .order_by(t.orders.c.id)
            .limit(limit)
        )
        if shops is not None:
            query = query.where(t.orders.c.shop.in_(list(shops)))
        rows = (await self.connection.execute(query)).all()
        lines = await self._lines_of([row.id for row in rows])
        return [(row.id, _order_from_rows(row, lines.get(row.id, []))) for row in rows]

    async def _order_row_of_delivery(self, code: str) -> Row[Any] | None:
        return (
            await self.connection.execute(
                select(t.orders)
                .join(t.delivery_orders, t.delivery_orders.c.order_id == t.orders.c.id)
                .where(t.delivery_orders.c.code == code)
            )
        ).first()

    async def order_of_delivery(self, code: str) -> Order | None:
        row = await self._order_row_of_delivery(code)
        if row is None:
            return None
        return _order_from_rows(row, (await self._lines_of([row.id])).get(row.id, []))

    async def receiver_of_delivery(self, code: str) -> Address | None:
        """The receiver of the order a delivery order ships (one row; no lines read)."""
        row = await self._order_row_of_delivery(code)
        return None if row is None else _order_from_rows(row, []).receiver

    async def order_modified(self, shop: str, platform_order_id: str) -> datetime | None:
        """The platform's modified time of the stored version of an order."""
        return cast(
            datetime | None,
            (
                await self.connection.execute(
                    select(t.orders.c.modified).where(
                        t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id
                    )
                )
            ).scalar(),
        )

    async def add_shipment(self, shipment: Shipment) -> bool:
        """Record a WMS shipment once per (warehouse, outBizCode); False for a repeat."""
        statement = (
            self._upsert(t.shipments)
            .values(
                delivery_order_code=shipment.delivery_order_code,
                warehouse=shipment.warehouse,
                out_biz_code=shipment.out_biz_code,
                carrier=shipment.carrier,
                waybill=shipment.waybill,
                weight_g=to_grams(shipment.weight_kg),
                packages=[p.model_dump(mode="json") for p in shipment.packages],
                shipped_at=shipment.shipped_at,
                tracking_state="shipped",
                created_at=self.clock.now(),
            )
            .on_conflict_do_nothing(
                index_elements=[t.shipments.c.warehouse, t.shipments.c.out_biz_code]
            )
            .returning(t.shipments.c.id)
        )
        return (await self.connection.execute(statement)).first() is not None

    async def shipments_of(self, delivery_order_code: str) -> list[Shipment]:
        rows = await self.connection.execute(
            select(t.shipments)
            .where(t.shipments.c.delivery_order_code == delivery_order_code)
            .order_by(t.shipments.c.id)
        )
        return [
            Shipment(
                delivery_order_code=r.delivery_order_code,
                warehouse=r.warehouse,
                carrier=r.carrier,
                waybill=r.waybill,
                weight_kg=from_grams(r.weight_g),
                packages=tuple(Package.model_validate(p) for p in r.packages),
                shipped_at=r.shipped_at,
                out_biz_code=r.out_biz_code,
            )
            for r in rows
        ]

    async def delivery_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(shop, delivery state) → (orders, delivery orders), for live views."""
        d = t.delivery_orders
        rows = await self.connection.execute(
            select(d.c.shop, d.c.state, func.count(d.c.order_id.distinct()), func.count()).group_by(
                d.c.shop, d.c.state
            )
        )
        return {(shop, state): (int(orders), int(n)) for shop, state, orders, n in rows}

    async def outbox_counts(self, kind: str) -> dict[tuple[str, str], int]:
        """(target, status) → messages of one kind, for live views."""
        o = t.outbox
        rows = await self.connection.execute(
            select(o.c.target, o.c.status, func.count())
            .where(o.c.kind == kind)
            .group_by(o.c.target, o.c.status)
        )
        return {(target, status): int(n) for target, status, n in rows}

    async def outbox_by_key(self, idempotency_key: str) -> OutboxMessage | None:
        row = (
            await self.connection.execute(
                select(t.outbox).where(t.outbox.c.idempotency_key == idempotency_key)
            )
        ).first()
        return _outbox_from_row(row) if row else None

    # --- tracking ----------------------------------------------------------------------------

    async def move_tracking(self, waybill: str, state: TrackingState) -> TrackingMove:
        """Move every shipment with `waybill` from SHIPPED to a final `state`; a final state is
        never left, and an in-transit `state` changes nothing."""
        known = await self.tracking_state(waybill)
        if known is None:
            return TrackingMove.UNKNOWN
        if not state.final or known.final:
            return TrackingMove.UNCHANGED
        result = await self.connection.execute(
            update(t.shipments)
            .where(
                t.shipments.c.waybill == waybill,
                t.shipments.c.tracking_state == TrackingState.SHIPPED.value,
            )
            .values(tracking_state=state.value)
        )
        return TrackingMove.MOVED if result.rowcount else TrackingMove.UNCHANGED

    async def tracking_state(self, waybill: str) -> TrackingState | None:
        """The tracking state of `waybill`'s shipments (the furthest one); None if none has it."""
        rows = await self.connection.execute(
            select(t.shipments.c.tracking_state).where(t.shipments.c.waybill == waybill)
        )
        states = [TrackingState(r.tracking_state) for r in rows]
        if not states:
            return None
        return next((s for s in states if s.final), TrackingState.SHIPPED)

    # --- stock ledger ------------------------------------------------------------------------

    async def set_stock(self, warehouse: str, levels: Mapping[str, int], as_of: datetime) -> None:
        """Record a WMS reading: `levels[sku]` units physically on hand at `as_of`."""
        now = self.clock.now()
        values = [
            {"warehouse": warehouse, "sku": sku, "on_hand": qty, "as_of": as_of, "updated_at": now}
            for sku, qty in levels.items()
        ]
        for chunk in _chunks(values):
            statement = self._upsert(t.stock_ledger).values(list(chunk))
            await self.connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[t.stock_ledger.c.warehouse, t.stock_ledger.c.sku],
                    set_={
                        "on_hand": statement.excluded.on_hand,
                        "as_of": statement.excluded.as_of,
                        "updated_at": statement.excluded.updated_at,
                    },
                )
            )

    async def apply_stock_change(
        self,
        warehouse: str,
        out_biz_code: str,
        sku: str,
        delta: int,
        *,
        order_code: str = "",
        order_type: str = "",
    ) -> bool:
        """Apply one stock change once per (warehouse, outBizCode, SKU); False if seen before."""
        now = self.clock.now()
        statement = (
            self._upsert(t.stock_changes)
            .values(
                warehouse=warehouse,
                out_biz_code=out_biz_code,
                sku=sku,
                delta=delta,
                order_code=order_code,
                order_type=order_type,
                created_at=now,
            )
            .on_conflict_do_nothing(
                index_elements=[
                    t.stock_changes.c.warehouse,
                    t.stock_changes.c.out_biz_code,
                    t.stock_changes.c.sku,
                ]
            )
            .returning(t.stock_changes.c.id)
        )
        if (await self.connection.execute(statement)).first() is None:
            return False
        ledger = self._upsert(t.stock_ledger).values(
            warehouse=warehouse, sku=sku, on_hand=delta, as_of=now, updated_at=now
        )
        await self.connection.execute(
            ledger.on_conflict_do_update(
                index_elements=[t.stock_ledger.c.warehouse, t.stock_ledger.c.sku],
                set_={"on_hand": t.stock_ledger.c.on_hand + delta, "updated_at": now},
            )
        )
        return True

    async def stock_levels(self, warehouse: str | None = None) -> list[StockLevel]:
        """On hand from the ledger and reserved by unshipped delivery orders, per (warehouse, SKU)."""
        reserved = await self.reserved(warehouse)
        query = select(t.stock_ledger).order_by(t.stock_ledger.c.warehouse, t.stock_ledger.c.sku)
        if warehouse is not None:
            query = query.where(t.stock_ledger.c.warehouse == warehouse)
        levels = {
            (r.warehouse, r.sku): StockLevel(
                warehouse=r.warehouse,
                sku=r.sku,
                on_hand=r.on_hand,
                reserved=reserved.pop((r.warehouse, r.sku), 0),
                as_of=r.as_of,
            )
            for r in await self.connection.execute(query)
        }
        for (wh, sku), qty in reserved.items():  # reserved where the ledger has no reading
            levels[(wh, sku)] = StockLevel(warehouse=wh, sku=sku, on_hand=0, reserved=qty)
        return [levels[key] for key in sorted(levels)]

    async def reserved(self, warehouse: str | None = None) -> dict[tuple[str, str], int]:
        reserving = [s.value for s in DeliveryState if s.reserves_stock]
        query = (
            select(
                t.delivery_orders.c.warehouse,
                t.delivery_order_lines.c.sku,
                func.sum(t.delivery_order_lines.c.qty),
            )
            .join(t.delivery_orders, t.delivery_orders.c.code == t.delivery_order_lines.c.code)
            .where(t.delivery_orders.c.state.in_(reserving))
            .group_by(t.delivery_orders.c.warehouse, t.delivery_order_lines.c.sku)
        )
        if warehouse is not None:
            query = query.where(t.delivery_orders.c.warehouse == warehouse)
        return {(wh, sku): int(qty) for wh, sku, qty in await self.connection.execute(query)}

    async def read_warehouses(self) -> set[str]:
        """Warehouses whose stock the hub has read at least once."""
        rows = await self.connection.execute(select(t.stock_ledger.c.warehouse).distinct())
        return {r.warehouse for r in rows}

    # --- channel listings and the stock pushed to them ---------------------------------------

    async def upsert_listings(
        self, listings: Sequence[StoredListing], *, keep_existing: bool = False
    ) -> None:
        """Insert or refresh listings. `keep_existing` (listings learnt from orders) never
        overwrites what the platform's own listing said."""
        values = [
            {
                "shop": li.shop,
                "item_id": li.item_id,
                "sku_id": li.sku_id,
                "merchant_code": li.merchant_code,
                "sku": li.sku,
                "source": li.source,
                "platform_quantity": li.platform_quantity,
                "last_seen": li.last_seen,
            }
            for li in listings
        ]
        keys = [t.listings.c.shop, t.listings.c.item_id, t.listings.c.sku_id]
        for chunk in _chunks(values):
            statement = self._upsert(t.listings).values(list(chunk))
            if keep_existing:
                await self.connection.execute(statement.on_conflict_do_nothing(index_elements=keys))
                continue
            await self.connection.execute(
                statement.on_conflict_do_update(
                    index_elements=keys,
                    set_={
                        name: statement.excluded[name]
                        for name in (
                            "merchant_code",
                            "sku",
                            "source",
                            "platform_quantity",
                            "last_seen",
                        )
                    },
                )
            )

    async def order_listings(
        self, shop: str, since: datetime | None = None
    ) -> list[tuple[str, str, str]]:
        """(item id, sku id, merchant code) of every distinct line in the shop's orders stored or
        changed since `since` (all of them without it)."""
        query = (
            select(
                t.order_lines.c.platform_item_id,
                t.order_lines.c.platform_sku_id,
                t.order_lines.c.merchant_code,
            )
            .join(t.orders, t.orders.c.id == t.order_lines.c.order_id)
            .where(t.orders.c.shop == shop, t.order_lines.c.platform_item_id != "")
            .distinct()
        )
        if since is not None:
            query = query.where(t.orders.c.updated_at >= since)
        return [(r[0], r[1], r[2]) for r in await self.connection.execute(query)]

    async def listings(self, shop: str | None = None) -> list[StoredListing]:
        query = select(t.listings).order_by(
            t.listings.c.shop, t.listings.c.item_id, t.listings.c.sku_id
        )
        if shop is not None:
            query = query.where(t.listings.c.shop == shop)
        return [
            StoredListing(
                shop=r.shop,
                item_id=r.item_id,
                sku_id=r.sku_id,
                merchant_code=r.merchant_code,
                sku=r.sku,
                source=r.source,
                platform_quantity=r.platform_quantity,
                last_seen=r.last_seen,
            )
            for r in await self.connection.execute(query)
        ]

    async def listing_keys(self, shop: str) -> list[tuple[str, str, str, str | None]]:
        """(item id, sku id, merchant code, master SKU) of every listing of the shop: the lean
        read a stock sync makes every minute."""
        rows = await self.connection.execute(
            select(
                t.listings.c.item_id,
                t.listings.c.sku_id,
                t.listings.c.merchant_code,
                t.listings.c.sku,
            ).where(t.listings.c.shop == shop)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def set_listing_skus(self, shop: str, skus: Mapping[tuple[str, str], str | None]) -> None:
        """Record the master SKU each (item, sku id) listing resolves to now."""
        if not skus:
            return
        statement = (
            update(t.listings)
            .where(
                t.listings.c.shop == bindparam("b_shop"),
                t.listings.c.item_id == bindparam("b_item"),
                t.listings.c.sku_id == bindparam("b_sku_id"),
            )
            .values(sku=bindparam("b_master"))
        )
        rows = [
            {"b_shop": shop, "b_item": item, "b_sku_id": sku_id, "b_master": master}
            for (item, sku_id), master in skus.items()
        ]
        for chunk in _chunks(rows):
            await self.connection.execute(statement, list(chunk))

    async def stock_pushes(self, shop: str) -> dict[tuple[str, str], int]:
        """The last quantity pushed to each (item, sku id) listing of the shop."""
        rows = await self.connection.execute(
            select(
                t.stock_pushes.c.item_id, t.stock_pushes.c.sku_id, t.stock_pushes.c.quantity
            ).where(t.stock_pushes.c.shop == shop)
        )
        return {(r[0], r[1]): r[2] for r in rows}

    async def record_stock_pushes(
        self, shop: str, pushed: Sequence[tuple[str, str, int]], message_id: int
    ) -> None:
        """Remember (item, sku id, quantity) as pushed by outbox message `message_id`; a row
        written by a newer message is never overwritten by an older one."""
        now = self.clock.now()
        values = [
            {
                "shop": shop,
                "item_id": item,
                "sku_id": sku_id,
                "quantity": qty,
                "message_id": message_id,
                "pushed_at": now,
            }
            for item, sku_id, qty in pushed
        ]
        for chunk in _chunks(values):
            statement = self._upsert(t.stock_pushes).values(list(chunk))
            await self.connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[
                        t.stock_pushes.c.shop,
                        t.stock_pushes.c.item_id,
                        t.stock_pushes.c.sku_id,
                    ],
                    set_={
                        "quantity": statement.excluded.quantity,
                        "message_id": statement.excluded.message_id,
                        "pushed_at": statement.excluded.pushed_at,
                    },
                    where=t.stock_pushes.c.message_id <= statement.excluded.message_id,
                )
            )

    async def stock_available(self) -> dict[str, int]:
        """Per master SKU: on hand in every warehouse minus what unshipped orders reserve."""
        available: dict[str, int] = {}
        rows = await self.connection.execute(
            select(t.stock_ledger.c.sku, func.sum(t.stock_ledger.c.on_hand)).group_by(
                t.stock_ledger.c.sku
            )
        )
        for sku, qty in rows:
            available[sku] = int(qty)
        for (_, sku), qty in (await self.reserved()).items():
            available[sku] = available.get(sku, 0) - qty
        return available

    async def pending_payloads(self, kind: str, target: str) -> dict[str, dict[str, Any]]:
        """Subject → payload of the pending messages of one kind and target."""
        rows = await self.connection.execute(
            select(t.outbox.c.subject, t.outbox.c.payload).where(
                t.outbox.c.kind == kind,
                t.outbox.c.target == target,
                t.outbox.c.status == OutboxStatus.PENDING.value,
                t.outbox.c.subject.is_not(None),
            )
        )
        return {r.subject: r.payload for r in rows}

    async def subject_order(self, subject: str, message_id: int) -> tuple[bool, bool]:
        """(is there a newer message of this subject, is an older one claimed right now) — a
        message of an ordered subject is stale in the first case and must wait in the second."""
        now = self.clock.now()
        same = t.outbox.c.subject == subject
        newer = select(t.outbox.c.id).where(same, t.outbox.c.id > message_id).limit(1)
        older = (
            select(t.outbox.c.id)
            .where(
                same,
                t.outbox.c.id < message_id,
                t.outbox.c.status == OutboxStatus.PENDING.value,
                t.outbox.c.claimed_until > now,
            )
            .limit(1)
        )
        has_newer = (await self.connection.execute(newer)).first() is not None
        has_older = (await self.connection.execute(older)).first() is not None
        return has_newer, has_older

    async def listing_summaries(self) -> list[ListingSummary]:
        counts = {
            shop: (int(n), int(mapped or 0))
            for shop, n, mapped in await self.connection.execute(
                select(
                    t.listings.c.shop,
                    func.count(),
                    func.sum(case((t.listings.c.sku.is_not(None), 1), else_=0)),
                ).group_by(t.listings.c.shop)
            )
        }
        pushes = {
            shop: (int(n), last)
            for shop, n, last in await self.connection.execute(
                select(
                    t.stock_pushes.c.shop, func.count(), func.max(t.stock_pushes.c.pushed_at)
                ).group_by(t.stock_pushes.c.shop)
            )
        }
        return [
            ListingSummary(
                shop=shop,
                listings=counts.get(shop, (0, 0))[0],
                mapped=counts.get(shop, (0, 0))[1],
                pushed=pushes.get(shop, (0, None))[0],
                last_push=pushes.get(shop, (0, None))[1],
            )
            for shop in sorted(set(counts) | set(pushes))
        ]

    async def ledger_summaries(self) -> list[LedgerSummary]:
        rows = await self.connection.execute(
            select(
                t.stock_ledger.c.warehouse,
                func.count(),
                func.sum(t.stock_ledger.c.on_hand),
                func.max(t.stock_ledger.c.as_of),
            )
            .group_by(t.stock_ledger.c.warehouse)
            .order_by(t.stock_ledger.c.warehouse)
        )
        return [
            LedgerSummary(warehouse=wh, skus=int(n), on_hand=int(total or 0), as_of=as_of)
            for wh, n, total, as_of in rows
        ]

    # --- leases ------------------------------------------------------------------------------

    async def acquire_lease(
        self, name: str, owner: str, ttl: timedelta, *, take_from: str | None = None
    ) -> bool:
        """Take or renew the lease when it is free, expired, or already ours; `take_from` names
        a holder known to be dead (a crashed process on this host), whose lease is taken at once
        rather than after it expires."""
        now = self.clock.now()
        takeable = or_(t.leases.c.owner == owner, t.leases.c.expires_at < now)
        if take_from is not None:
            takeable = or_(takeable, t.leases.c.owner == take_from)
        statement = self._upsert(t.leases).values(
            name=name, owner=owner, acquired_at=now, expires_at=now + ttl
        )
        result = await self.connection.execute(
            statement.on_conflict_do_update(
                index_elements=[t.leases.c.name],
                set_={
                    "owner": statement.excluded.owner,
                    "acquired_at": statement.excluded.acquired_at,
                    "expires_at": statement.excluded.expires_at,
                },
                where=takeable,
            ).returning(t.leases.c.name)
        )
        return result.first() is not None

    async def release_lease(self, name: str, owner: str) -> None:
        await self.connection.execute(
            delete(t.leases).where(t.leases.c.name == name, t.leases.c.owner == owner)
        )

    async def release_leases(self, owner: str) -> int:
        """Give back every lease `owner` holds (a replica shutting down)."""
        result = await self.connection.execute(
            delete(t.leases).where(t.leases.c.owner == owner).returning(t.leases.c.name)
        )
        return len(result.all())

    async def leases(self) -> list[tuple[str, str, datetime]]:
        """Every lease: (name, owner, expires at)."""
        rows = await self.connection.execute(select(t.leases).order_by(t.leases.c.name))
        return [(r.name, r.owner, r.expires_at) for r in rows]

    async def lease_owner(self, name: str) -> tuple[str, datetime] | None:
        row = (
            await self.connection.execute(select(t.leases).where(t.leases.c.name == name))
        ).first()
        return (row.owner, row.expires_at) if row else None

    # --- status ------------------------------------------------------------------------------

    async def shop_summaries(self, shops: Sequence[str]) -> list[ShopSummary]:
        counts = {
            (shop, state): n
            for shop, state, n in await self.connection.execute(
                select(t.orders.c.shop, t.orders.c.review_state, func.count()).group_by(
                    t.orders.c.shop, t.orders.c.review_state
                )
            )
        }
        errors: dict[str, int] = {
            source: n
            for source, n in await self.connection.execute(
                select(t.sync_errors.c.source, func.count()).group_by(t.sync_errors.c.source)
            )
        }
        state = {r.shop: r for r in await self.connection.execute(select(t.shop_state))}
        summaries = []
        for shop in shops:
            cursor = await self.get_cursor(shop, "orders")
            last = await self.runs(shop=shop, limit=1)
            total = sum(n for (s, _), n in counts.items() if s == shop)
            summaries.append(
                ShopSummary(
                    shop=shop,
                    cursor=cursor.position if cursor else None,
                    orders=total,
                    held=counts.get((shop, ReviewState.HELD.value), 0),
                    errors=errors.get(shop, 0),
                    last_run=last[0] if last else None,
                    auth_failed_at=state[shop].auth_failed_at if shop in state else None,
                    auth_message=state[shop].auth_message if shop in state else "",
                )
            )
        return summaries

    # --- admin API ---------------------------------------------------------------------------

    async def run_errors(
        self, run_ids: Sequence[int], per_run: int = 20
    ) -> dict[int, list[SyncError]]:
        """The first `per_run` records each run skipped (malformed orders …), oldest first; the
        run's `errors` figure has the full count."""
        if not run_ids:
            return {}
        numbered = (
            select(
                t.sync_errors,
                func.row_number()
                .over(partition_by=t.sync_errors.c.run_id, order_by=t.sync_errors.c.id)
                .label("n"),
            )
            .where(t.sync_errors.c.run_id.in_(list(run_ids)))
            .subquery()
        )
        rows = await self.connection.execute(
            select(numbered)
            .where(numbered.c.n <= per_run)
            .order_by(numbered.c.run_id, numbered.c.id)
        )
        found: dict[int, list[SyncError]] = {}
        for r in rows:
            found.setdefault(r.run_id, []).append(
                SyncError(
                    source=r.source, key=r.key, reason=r.reason, raw=r.raw, created_at=r.created_at
                )
            )
        return found

    # --- webhook inbox -----------------------------------------------------------------------

    async def record_webhook(
        self, source: str, delivery_id: str, payload: str, status: WebhookStatus
    ) -> bool:
        """Store one webhook delivery once per (source, delivery id). False when that delivery
        was stored before (a retry or a replay): the caller must not act on it again."""
        statement = (
            self._upsert(t.webhook_inbox)
            .values(
                source=source,
                delivery_id=delivery_id,
                payload=payload,
                status=status,
                received_at=self.clock.now(),
            )
            .on_conflict_do_nothing(
                index_elements=[t.webhook_inbox.c.source, t.webhook_inbox.c.delivery_id]
            )
            .returning(t.webhook_inbox.c.id)
        )
        return (await self.connection.execute(statement)).first() is not None

    async def webhook_deliveries(
        self, source: str | None = None, limit: int = 200
    ) -> list[WebhookDelivery]:
        """Stored deliveries, oldest first."""
        query = select(t.webhook_inbox).order_by(t.webhook_inbox.c.id).limit(limit)
        if source is not None:
            query = query.where(t.webhook_inbox.c.source == source)
        return [
            WebhookDelivery(
                source=r.source,
                delivery_id=r.delivery_id,
                payload=r.payload,
                status=r.status,
                received_at=r.received_at,
            )
            for r in await self.connection.execute(query)
        ]

    # --- reconciliation ----------------------------------------------------------------------

    async def bill_id(self, carrier: str, sha256: str) -> int | None:
        """The stored bill of `carrier` with this content hash, if any."""
        row = (
            await self.connection.execute(
                select(t.bills.c.id).where(t.bills.c.carrier == carrier, t.bills.c.sha256 == sha256)
            )
        ).first()
        return None if row is None else int(row.id)

    async def add_bill(self, carrier: str, sha256: str, filename: str) -> int | None:
        """Store a new bill (lines and period follow); None when this content is stored already
        (a concurrent import of the same file won)."""
        statement = (
            self._upsert(t.bills)
            .values(
                carrier=carrier,
                sha256=sha256,
                filename=filename,
                line_count=0,
                imported_at=self.clock.now(),
            )
            .on_conflict_do_nothing(index_elements=[t.bills.c.carrier, t.bills.c.sha256])
            .returning(t.bills.c.id)
        )
        row = (await self.connection.execute(statement)).first()
        return None if row is None else int(row.id)

    async def add_bill_lines(self, bill_id: int, lines: Sequence[Sequence[Any]]) -> None:
        """The readable lines of a bill: one driver-level executemany of plain tuples (a bill
        may have a million lines; SQLAlchemy's per-value processing would dominate). Each line
        starts with the fields of a `BillLineRow`, in order; what follows is not stored."""
        if not lines:
            return
        columns = ("bill_id", *BillLineRow._fields)
        width = len(BillLineRow._fields)
        mark = "?" if self._dialect == "sqlite" else "%s"
        await self.connection.exec_driver_sql(
            f"INSERT INTO {t.bill_lines.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})",
            [(bill_id, *line[:width]) for line in lines],
        )

    async def finish_bill(
        self, bill_id: int, line_count: int, period: tuple[str, str] | None
    ) -> None:
        start, end = period if period is not None else (None, None)
        await self.connection.execute(
            update(t.bills)
            .where(t.bills.c.id == bill_id)
            .values(line_count=line_count, period_start=start, period_end=end)
        )

    def _parcel_query(self, *extra: Any) -> Any:
        return select(
            t.shipments.c.id,
            t.shipments.c.waybill,
            t.shipments.c.carrier,
            t.shipments.c.weight_g,
            type_coerce(t.shipments.c.packages, Text).label("packages"),  # see `_parcels`
            t.shipments.c.delivery_order_code,
            t.orders.c.province,
            *extra,
        ).select_from(
            t.shipments.outerjoin(
                t.delivery_orders,
                t.delivery_orders.c.code == t.shipments.c.delivery_order_code,
            ).outerjoin(t.orders, t.orders.c.id == t.delivery_orders.c.order_id)
        )

    async def parcels_of_bill_lines(
        self, bill_id: int, first_line: int, last_line: int
    ) -> dict[str, Parcel]:
        """The parcels whose waybill is both a shipment's first waybill and on a stored line
        `first_line`…`last_line` of the bill, by waybill (the first shipment wins when the WMS
        reported one waybill twice). A join in the database: no waybill travels as a parameter."""
        lines = (
            select(t.bill_lines.c.waybill)
            .where(
                t.bill_lines.c.bill_id == bill_id,
                t.bill_lines.c.line_no.between(first_line, last_line),
            )
            .scalar_subquery()
        )
        query = self._parcel_query().where(t.shipments.c.waybill.in_(lines))
        found: dict[str, Parcel] = {}
        for row in await self.connection.execute(query.order_by(t.shipments.c.id)):
            for parcel in _parcels(row):
                if parcel.main:
                    found.setdefault(parcel.waybill, parcel)
        return found

    async def unbilled_parcels(
        self, bill_id: int, carrier: str, start: datetime, end: datetime
    ) -> list[Parcel]:
        """The parcels of `carrier` shipped in [start, end) that may be missing from the bill:
        single-parcel shipments whose waybill no line of the bill has (the anti-join runs in
        the database), and every parcel of multi-parcel shipments (their further waybills are
        checked by the caller)."""
        billed = select(t.bill_lines.c.waybill).where(t.bill_lines.c.bill_id == bill_id)
        in_period = (t.shipments.c.shipped_at >= start, t.shipments.c.shipped_at < end)
        parcels_of = func.json_array_length(t.shipments.c.packages)
        single = self._parcel_query(t.shipments.c.shipped_at).where(
            *in_period,
            t.shipments.c.carrier == carrier,
            func.coalesce(parcels_of, 0) < 2,
            t.shipments.c.waybill.not_in(billed),
        )
        multi = self._parcel_query(t.shipments.c.shipped_at).where(*in_period, parcels_of >= 2)
        found: list[Parcel] = []
        for query in (single, multi):
            for row in await self.connection.execute(query.order_by(t.shipments.c.id)):
                found.extend(p for p in _parcels(row, with_time=True) if p.carrier == carrier)
        return found

    async def add_report(self, report: ReconciliationReport) -> int:
        """Store a report and its rows; returns its id."""
        report_id = (
            await self.connection.execute(
                insert(t.reconciliation_reports)
                .values(
                    kind=report.kind.value,
                    subject=report.subject,
                    bill_id=report.bill_id,
                    totals=report.totals,
                    created_at=report.created_at or self.clock.now(),
                )
                .returning(t.reconciliation_reports.c.id)
            )
        ).scalar_one()
        values = [
            {
                "report_id": report_id,
                "kind": row.kind.value,
                "waybill": row.waybill,
                "sku": row.sku,
                "expected": _decimal_text(row.expected),
                "actual": _decimal_text(row.actual),
                "difference": _decimal_text(row.difference),
                "detail": row.detail,
            }
            for row in report.rows
        ]
        for chunk in _chunks(values, 5000):
            await self.connection.execute(insert(t.reconciliation_rows), list(chunk))
        return int(report_id)

    async def report_of_bill(self, bill_id: int) -> ReconciliationReport | None:
        row = (
            await self.connection.execute(
                select(t.reconciliation_reports.c.id)
                .where(t.reconciliation_reports.c.bill_id == bill_id)
                .order_by(t.reconciliation_reports.c.id.desc())
                .limit(1)
            )
        ).first()
        return None if row is None else await self.report(int(row.id))

    async def report(self, report_id: int) -> ReconciliationReport | None:
        """One stored report with its rows (in the order they were written)."""
        head = (
            await self.connection.execute(
                select(t.reconciliation_reports).where(t.reconciliation_reports.c.id == report_id)
            )
        ).first()
        if head is None:
            return None
        rows = tuple(
            ReconciliationRow(
                kind=ReconciliationKind(r.kind),
                waybill=r.waybill,
                sku=r.sku,
                expected=_decimal(r.expected),
                actual=_decimal(r.actual),
                difference=_decimal(r.difference),
                detail=r.detail,
            )
            for r in await self.connection.execute(
                select(t.reconciliation_rows)
                .where(t.reconciliation_rows.c.report_id == report_id)
                .order_by(t.reconciliation_rows.c.id)
            )
        )
        return ReconciliationReport(
            id=head.id,
            kind=ReportKind(head.kind),
            subject=head.subject,
            bill_id=head.bill_id,
            totals=head.totals,
            rows=rows,
            row_count=len(rows),
            created_at=head.created_at,
        )

    async def reports(
        self, kind: ReportKind | None = None, subject: str | None = None, limit: int = 50
    ) -> list[ReconciliationReport]:
        """Stored reports, newest first, without their rows (`row_count` says how many)."""
        counts = (
            select(
                t.reconciliation_rows.c.report_id,
                func.count().label("row_count"),
            )
            .group_by(t.reconciliation_rows.c.report_id)
            .subquery()
        )
        query = (
            select(t.reconciliation_reports, counts.c.row_count)
            .select_from(
                t.reconciliation_reports.outerjoin(
                    counts, counts.c.report_id == t.reconciliation_reports.c.id
                )
            )
            .order_by(t.reconciliation_reports.c.id.desc())
            .limit(limit)
        )
        if kind is not None:
            query = query.where(t.reconciliation_reports.c.kind == kind.value)
        if subject is not None:
            query = query.where(t.reconciliation_reports.c.subject == subject)
        return [
            ReconciliationReport(
                id=r.id,
                kind=ReportKind(r.kind),
                subject=r.subject,
                bill_id=r.bill_id,
                totals=r.totals,
                row_count=r.row_count or 0,
                created_at=r.created_at,
            )
            for r in await self.connection.execute(query)
        ]

    # --- ERP: purchase orders, receipts, sales outbound documents ----------------------------

    async def known_purchase_orders(self, numbers: Sequence[str]) -> set[str]:
        """Which of these purchase orders the hub has seen before."""
        found: set[str] = set()
        for chunk in _chunks(list(numbers)):
            rows = await self.connection.execute(
                select(t.erp_purchase_orders.c.number).where(
                    t.erp_purchase_orders.c.number.in_(list(chunk))
                )
            )
            found.update(r.number for r in rows)
        return found

    async def add_purchase_order(self, order: ErpPurchaseOrder) -> bool:
        """Record a purchase order and its lines once; False when it was recorded before."""
        now = self.clock.now()
        statement = (
            self._upsert(t.erp_purchase_orders)
            .values(
                number=order.number,
                erp_id=order.erp_id,
                warehouse=order.warehouse,
                supplier=order.supplier,
                purchase_org=order.purchase_org,
                state=order.state.value,
                wms_order_id=order.wms_order_id,
                approved_at=order.approved_at,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[t.erp_purchase_orders.c.number])
            .returning(t.erp_purchase_orders.c.number)
        )
        if (await self.connection.execute(statement)).first() is None:
            return False
        if order.lines:
            await self.connection.execute(
                insert(t.erp_purchase_lines),
                [
                    {
                        "number": order.number,
                        "entry_id": line.entry_id,
                        "sku": line.sku,
                        "unit": line.unit,
                        "qty": line.qty,
                        "received": line.received,
                    }
                    for line in order.lines
                ],
            )
        return True

    async def purchase_order(self, number: str) -> ErpPurchaseOrder | None:
        head = (
            await self.connection.execute(
                select(t.erp_purchase_orders).where(t.erp_purchase_orders.c.number == number)
            )
        ).first()
        if head is None:
            return None
        lines = await self.connection.execute(
            select(t.erp_purchase_lines)
            .where(t.erp_purchase_lines.c.number == number)
            .order_by(t.erp_purchase_lines.c.entry_id)
        )
        return ErpPurchaseOrder(
            number=head.number,
            erp_id=head.erp_id,
            warehouse=head.warehouse,
            supplier=head.supplier,
            purchase_org=head.purchase_org,
            state=PurchaseState(head.state),
            wms_order_id=head.wms_order_id,
            approved_at=head.approved_at,
            lines=tuple(
                ErpPurchaseLine(r.entry_id, r.sku, r.unit, r.qty, r.received) for r in lines
            ),
        )

    async def set_purchase_state(
        self,
        number: str,
        state: PurchaseState,
        *,
        only_from: Sequence[PurchaseState] | None = None,
        wms_order_id: str | None = None,
    ) -> bool:
        values: dict[str, Any] = {"state": state.value, "updated_at": self.clock.now()}
        if wms_order_id:
            values["wms_order_id"] = wms_order_id
        query = update(t.erp_purchase_orders).where(t.erp_purchase_orders.c.number == number)
        if only_from is not None:
            query = query.where(t.erp_purchase_orders.c.state.in_([s.value for s in only_from]))
        return (await self.connection.execute(query.values(**values))).rowcount == 1

    async def add_received(self, number: str, received: Mapping[str, int]) -> None:
        """Add received quantities to a purchase order's lines, by entry id."""
        for entry_id, qty in received.items():
            await self.connection.execute(
                update(t.erp_purchase_lines)
                .where(
                    t.erp_purchase_lines.c.number == number,
                    t.erp_purchase_lines.c.entry_id == entry_id,
                )
                .values(received=t.erp_purchase_lines.c.received + qty)
            )

    async def add_receipt(self, receipt: ErpReceipt) -> bool:
        """Record a receipt once per (warehouse, outBizCode); False for a repeated confirm."""
        now = self.clock.now()
        statement = (
            self._upsert(t.erp_receipts)
            .values(
                number=receipt.number,
                purchase_order=receipt.purchase_order,
                warehouse=receipt.warehouse,
                out_biz_code=receipt.out_biz_code,
                final=receipt.final,
                lines=[list(line) for line in receipt.lines],
                received_at=receipt.received_at,
                state=receipt.state.value,
                erp_id=receipt.erp_id,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(
                index_elements=[t.erp_receipts.c.warehouse, t.erp_receipts.c.out_biz_code]
            )
            .returning(t.erp_receipts.c.number)
        )
        return (await self.connection.execute(statement)).first() is not None

    async def receipt_seen(self, warehouse: str, out_biz_code: str) -> bool:
        row = (
            await self.connection.execute(
                select(t.erp_receipts.c.number).where(
                    t.erp_receipts.c.warehouse == warehouse,
                    t.erp_receipts.c.out_biz_code == out_biz_code,
                )
            )
        ).first()
        return row is not None

    async def receipts_of(self, purchase_order: str) -> list[ErpReceipt]:
        rows = await self.connection.execute(
            select(t.erp_receipts)
            .where(t.erp_receipts.c.purchase_order == purchase_order)
            .order_by(t.erp_receipts.c.created_at, t.erp_receipts.c.number)
        )
        return [_receipt_from_row(r) for r in rows]

    async def receipt(self, number: str) -> ErpReceipt | None:
        row = (
            await self.connection.execute(
                select(t.erp_receipts).where(t.erp_receipts.c.number == number)
            )
        ).first()
        return _receipt_from_row(row) if row else None

    async def set_receipt_saved(self, number: str, erp_id: str) -> None:
        await self.connection.execute(
            update(t.erp_receipts)
            .where(t.erp_receipts.c.number == number)
            .values(state=DocumentState.SAVED.value, erp_id=erp_id, updated_at=self.clock.now())
        )

    async def shipped_quantities(self, delivery_order_code: str) -> dict[str, int]:
        """Units the WMS reported shipped for a delivery order, per SKU (its stock changes)."""
        rows = await self.connection.execute(
            select(t.stock_changes.c.sku, func.sum(t.stock_changes.c.delta))
            .where(
                t.stock_changes.c.order_code == delivery_order_code,
                t.stock_changes.c.delta < 0,
            )
            .group_by(t.stock_changes.c.sku)
            .order_by(t.stock_changes.c.sku)
        )
        return {sku: -int(total) for sku, total in rows}

    async def add_sales_outbound(self, document: ErpSalesOutbound) -> bool:
        """Record a sales outbound document once per delivery order; False when it exists."""
        now = self.clock.now()
        statement = (
            self._upsert(t.erp_sales_outbounds)
            .values(
                number=document.number,
                shop=document.shop,
                platform_order_id=document.platform_order_id,
                warehouse=document.warehouse,
                lines=[list(line) for line in document.lines],
                shipped_at=document.shipped_at,
                state=document.state.value,
                erp_id=document.erp_id,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[t.erp_sales_outbounds.c.number])
            .returning(t.erp_sales_outbounds.c.number)
        )
        return (await self.connection.execute(statement)).first() is not None

    async def sales_outbound(self, number: str) -> ErpSalesOutbound | None:
        row = (
            await self.connection.execute(
                select(t.erp_sales_outbounds).where(t.erp_sales_outbounds.c.number == number)
            )
        ).first()
        if row is None:
            return None
        return ErpSalesOutbound(
            number=row.number,
            shop=row.shop,
            platform_order_id=row.platform_order_id,
            warehouse=row.warehouse,
            lines=tuple((str(s), int(q), int(p)) for s, q, p in row.lines),
            shipped_at=row.shipped_at,
            state=DocumentState(row.state),
            erp_id=row.erp_id,
        )

    async def set_sales_outbound_saved(self, number: str, erp_id: str) -> None:
        await self.connection.execute(
            update(t.erp_sales_outbounds)
            .where(t.erp_sales_outbounds.c.number == number)
            .values(state=DocumentState.SAVED.value, erp_id=erp_id, updated_at=self.clock.now())
        )

    async def erp_summary(self) -> ErpSummary:
        """Counts by state of the purchase orders, receipts and sales documents."""
        counts: list[dict[str, int]] = []
        for table in (t.erp_purchase_orders, t.erp_receipts, t.erp_sales_outbounds):
            rows = await self.connection.execute(
                select(table.c.state, func.count()).group_by(table.c.state)
            )
            counts.append({state: int(n) for state, n in rows})
        return ErpSummary(*counts)


def _receipt_from_row(row: Row[Any]) -> ErpReceipt:
    return ErpReceipt(
        number=row.number,
        purchase_order=row.purchase_order,
        warehouse=row.warehouse,
        out_biz_code=row.out_biz_code,
        final=row.final,
        lines=tuple((str(e), str(s), int(q), str(u)) for e, s, q, u in row.lines),
        received_at=row.received_at,
        state=DocumentState(row.state),
        erp_id=row.erp_id,
    )


def _outbox_from_row(row: Row[Any]) -> OutboxMessage:
    return OutboxMessage(
        id=row.id,
        kind=row.kind,
        target=row.target,
        idempotency_key=row.idempotency_key,
        subject=row.subject,
        payload=row.payload,
        status=OutboxStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        ambiguous=row.ambiguous,
        created_at=row.created_at,
    )


def _run_from_row(row: Row[Any]) -> SyncRun:
    return SyncRun(
        id=row.id,
        job=row.job,
        shop=row.shop,
        started_at=row.started_at,
        finished_at=row.finished_at,
        status=RunStatus(row.status),
        windows=row.windows,
        pages=row.pages,
        orders_seen=row.orders_seen,
        orders_written=row.orders_written,
        errors=row.errors,
        message=row.message,
    )


class Store:
    """The hub's central store on SQLite or PostgreSQL. One per process; share it."""

    def __init__(self, engine: AsyncEngine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock: Clock = clock or SystemClock()
        # SQLite has one writer at a time. Transactions of this process queue here, in the
        # event loop, rather than in SQLite's busy handler, which sleeps and polls; other
        # processes still wait in that handler (BEGIN IMMEDIATE, models.db).
        self._writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._writer_task: asyncio.Task[Any] | None = None

    @classmethod
    def open(cls, database_url: str, clock: Clock | None = None, **engine_args: Any) -> "Store":
        return cls(create_engine(database_url, **engine_args), clock)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        me = asyncio.current_task()
        if self._writer is None or self._writer_task is me:
            # PostgreSQL, or a transaction opened inside another one of the same task (which
            # SQLite cannot grant; its busy timeout reports that instead of hanging here).
            async with self.engine.begin() as connection:
                yield Tx(connection, self.clock)
            return
        async with self._writer:
            self._writer_task = me
            try:
                async with self.engine.begin() as connection:
                    yield Tx(connection, self.clock)
            finally:
                self._writer_task = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """A transaction that only reads. On SQLite it is a WAL snapshot on its own connection:
        it neither queues behind this process's writers nor takes the database's write lock
        from other processes (a deferred BEGIN; `models.db`). Writing through it is a bug."""
        # PostgreSQL: a READ ONLY transaction, which refuses writes.
        option = READ_ONLY if self._writer is not None else "postgresql_readonly"
        async with self.engine.connect() as connection:
            reader = await connection.execution_options(**{option: True})
            async with reader.begin():
                yield Tx(reader, self.clock)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def migration_state(self) -> tuple[str | None, str | None]:
        """(current revision, head revision)."""
        return await current_revision(self.engine), head_revision()

    # Convenience wrappers: one short transaction each.

    async def upsert_orders(self, orders: Sequence[Order]) -> UpsertResult:
        async with self.transaction() as tx:
            return await tx.upsert_orders(orders)

    async def get_order(self, shop: str, platform_order_id: str) -> StoredOrder | None:
        async with self.transaction() as tx:
            return await tx.get_order(shop, platform_order_id)
