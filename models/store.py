"""The central store: every query of the hub lives here, and converts rows ↔ domain types.

Use `Store.transaction()` to group writes that must land together (orders with their cursor, a route
with its outbox message):

    async with store.transaction() as tx:
        result = await tx.upsert_orders(orders)
        await tx.set_cursor(Cursor(shop=..., stream="orders", position=...))

Each `Store` convenience method opens its own short transaction. Hot paths (order upserts, stock
reads) use multi-row statements; nothing here issues one round trip per row in a loop.
"""

import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import (
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from models import tables as t
from models.clock import Clock, SystemClock
from models.db import create_engine, current_revision, head_revision
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
    RefundState,
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

    async def claim_outbox(
        self,
        owner: str,
        limit: int,
        ttl: timedelta,
        *,
        targets: Sequence[str] | None = None,
        exclude_targets: Sequence[str] = (),
    ) -> list[OutboxMessage]:
        """Claim due messages for `owner` until `ttl` from now, oldest first.

        The claim counts as an attempt and is committed before anything is sent, so a message with
        `attempts > 0` may have reached its target (a crash between send and record): its handler
        must ask before sending again. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several
        dispatchers claim side by side; the conditional UPDATE guards both backends."""
        now = self.clock.now()
        claimable = and_(
            t.outbox.c.status == OutboxStatus.PENDING.value,
            t.outbox.c.next_attempt_at <= now,
            or_(t.outbox.c.claimed_until.is_(None), t.outbox.c.claimed_until < now),
        )
        query = select(t.outbox.c.id).where(claimable).order_by(t.outbox.c.id).limit(limit)
        if targets is not None:
            query = query.where(t.outbox.c.target.in_(list(targets)))
        if exclude_targets:
            query = query.where(t.outbox.c.target.not_in(list(exclude_targets)))
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = [row.id for row in await self.connection.execute(query)]
        if not ids:
            return []
        rows = await self.connection.execute(
            update(t.outbox)
            .where(t.outbox.c.id.in_(ids), claimable)
            .values(
                claimed_by=owner,
                claimed_until=now + ttl,
                attempts=t.outbox.c.attempts + 1,
                updated_at=now,
            )
            .returning(*t.outbox.c)
        )
        return sorted((_outbox_from_row(r) for r in rows), key=lambda m: m.id or 0)

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
                next_attempt_at=now,
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
        now = self.clock.now()
        order_id = (
            await self.connection.execute(
                select(t.orders.c.id).where(
                    t.orders.c.shop == shop, t.orders.c.platform_order_id == platform_order_id
                )
            )
        ).scalar_one()
        await self.connection.execute(
            insert(t.delivery_orders),
            [
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
                for d in orders
            ],
        )
        lines = [
            {
                "code": d.code,
                "line_no": number,
                "order_line_no": order_line_no,
                "sku": sku,
                "qty": qty,
                "price_fen": price_fen,
            }
            for d in orders
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
        self, shops: Sequence[str] | None = None, limit: int = 500
    ) -> list[Order]:
        """Paid orders that passed review (or were released) and have no delivery order yet."""
        routed = select(t.delivery_orders.c.order_id).where(
            t.delivery_orders.c.order_id == t.orders.c.id
        )
        query = (
            select(t.orders)
            .where(
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
        return [_order_from_rows(row, lines.get(row.id, [])) for row in rows]

    async def order_of_delivery(self, code: str) -> Order | None:
        row = (
            await self.connection.execute(
                select(t.orders)
                .join(t.delivery_orders, t.delivery_orders.c.order_id == t.orders.c.id)
                .where(t.delivery_orders.c.code == code)
            )
        ).first()
        if row is None:
            return None
        return _order_from_rows(row, (await self._lines_of([row.id])).get(row.id, []))

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
        async with self.engine.begin() as connection:
            yield Tx(connection, self.clock)

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
