"""Canonical domain types: what the hub means by an order, a SKU, a shipment, a stock level.

Frozen pydantic models without I/O. Connectors translate wire formats into these; `sync/` works only
with these; the store converts them to and from rows. Times are timezone-aware UTC; money is
`Decimal` yuan (the store keeps integer fen); provinces are in the short form of `normalize_province`.
"""

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime: convert to UTC at the boundary")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]

_PROVINCE_SUFFIXES = (
    "壮族自治区",
    "回族自治区",
    "维吾尔自治区",
    "特别行政区",
    "自治区",
    "省",
    "市",
)
_PROVINCE_ALIASES = {
    "内蒙": "内蒙古",
    "黑龙": "黑龙江",
    "京": "北京",
    "沪": "上海",
    "津": "天津",
    "渝": "重庆",
}


def normalize_province(name: str | None) -> str:
    """`浙江省` → `浙江`, `北京市` → `北京`, `广西壮族自治区` → `广西`, `内蒙古自治区` → `内蒙古`."""
    if not name:
        return ""
    short = name.strip()
    for suffix in _PROVINCE_SUFFIXES:
        if short.endswith(suffix) and len(short) > len(suffix):
            short = short[: -len(suffix)]
            break
    return _PROVINCE_ALIASES.get(short, short)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Platform(StrEnum):
    TMALL = "tmall"
    JD = "jd"


class OrderStatus(StrEnum):
    """Canonical order states. Each connector maps its platform's states onto these."""

    WAIT_PAY = "wait_pay"
    PAID = "paid"
    """Paid and waiting to ship: the only state that is routed to a warehouse."""
    PAUSED = "paused"
    """Paid but the platform forbids shipping for now (JD LOCKED / POP_ORDER_PAUSE, TOP
    PAID_FORBID_CONSIGN): hold until it returns to PAID."""
    PARTLY_SHIPPED = "partly_shipped"
    SHIPPED = "shipped"
    FINISHED = "finished"
    CLOSED = "closed"
    """Closed before payment: never shipped, nothing to cancel."""
    CANCELLED = "cancelled"
    """Closed after payment (refunded): cancel in the WMS if not shipped yet."""

    @property
    def rank(self) -> int:
        """Lifecycle order, the tie-breaker when two versions share a modified time."""
        return _STATUS_RANK[self]


_STATUS_RANK = {
    OrderStatus.WAIT_PAY: 10,
    OrderStatus.PAID: 20,
    OrderStatus.PAUSED: 21,
    OrderStatus.PARTLY_SHIPPED: 30,
    OrderStatus.SHIPPED: 40,
    OrderStatus.FINISHED: 50,
    OrderStatus.CLOSED: 60,
    OrderStatus.CANCELLED: 60,
}


class RefundState(StrEnum):
    NONE = "none"
    REQUESTED = "requested"
    """A refund is in progress; the line may still ship if the seller refuses."""
    REFUSED = "refused"
    CLOSED = "closed"
    """A refund request was withdrawn or closed: the line ships normally."""
    SUCCESS = "success"
    """Refunded: the line is not shipped."""


class Address(_Frozen):
    name: str = ""
    mobile: str = ""
    phone: str = ""
    province: str = ""
    """Short form (`normalize_province`)."""
    city: str = ""
    district: str = ""
    town: str = ""
    detail: str = ""
    oaid: str = ""

    @property
    def is_complete(self) -> bool:
        return bool(
            self.name and (self.mobile or self.phone or self.oaid) and self.province and self.detail
        )


class OrderLine(_Frozen):
    line_id: str
    """The platform's line id (TOP `oid`; JD has none, so the connector uses the `skuId`)."""
    platform_item_id: str = ""
    platform_sku_id: str = ""
    merchant_code: str = ""
    """商家编码: TOP `outer_sku_id` (or `outer_iid`), JD `outerSkuId`; the key to master SKUs."""
    title: str = ""
    qty: int = Field(ge=0)
    price: Decimal = Decimal("0")
    payment: Decimal = Decimal("0")
    refund_state: RefundState = RefundState.NONE
    platform_status: str = ""


class Order(_Frozen):
    platform: Platform
    shop: str
    platform_order_id: str
    status: OrderStatus
    platform_status: str
    buyer_nick: str = ""
    receiver: Address | None = None
    total: Decimal = Decimal("0")
    payment: Decimal = Decimal("0")
    post_fee: Decimal = Decimal("0")
    discount: Decimal = Decimal("0")
    created: UtcDatetime
    paid_at: UtcDatetime | None = None
    modified: UtcDatetime
    buyer_remark: str = ""
    seller_remark: str = ""
    lines: tuple[OrderLine, ...] = ()

    @property
    def version(self) -> tuple[datetime, int]:
        """Newer wins: the platform's modified time, then the status rank."""
        return (self.modified, self.status.rank)


class OrderEventKind(StrEnum):
    CREATED = "created"
    PAID = "paid"
    ADDRESS_CHANGED = "address_changed"
    LINE_REFUNDED = "line_refunded"
    STATUS_CHANGED = "status_changed"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    SHIPPED = "shipped"


class ReviewState(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    HELD = "held"
    RELEASED = "released"
    """Held, then released by an operator: routed like a passed order."""
    NOT_APPLICABLE = "not_applicable"
    """Never needs review (closed before payment, shipped elsewhere)."""


class HoldReason(StrEnum):
    UNKNOWN_SKU = "unknown_sku"
    MISSING_ADDRESS = "missing_address"
    BUYER_REMARK = "buyer_remark"
    AMOUNT_ABOVE_THRESHOLD = "amount_above_threshold"
    PLATFORM_PAUSED = "platform_paused"
    NO_STOCK = "no_stock"
    AFTER_SALES = "after_sales"
    """The WMS shipped before a cancel reached it: intercept by hand."""


class DeliveryState(StrEnum):
    """A delivery order's life at the hub (one per warehouse an order ships from)."""

    PENDING = "pending"
    """Routed; the create is in the outbox."""
    CREATED = "created"
    """The WMS has it."""
    CANCEL_PENDING = "cancel_pending"
    """A refund or close arrived before shipment; the cancel is in the outbox."""
    CANCELLED = "cancelled"
    SHIPPED = "shipped"
    AFTER_SALES = "after_sales"
    """Shipped before the cancel reached the WMS: intercept by hand."""

    @property
    def reserves_stock(self) -> bool:
        return self in (DeliveryState.PENDING, DeliveryState.CREATED, DeliveryState.CANCEL_PENDING)


class TrackingState(StrEnum):
    """Where a shipped parcel is, as the courier tracking reports it (`shipments.tracking_state`)."""

    SHIPPED = "shipped"
    """With the courier, not yet at a final state (every in-transit state)."""
    DELIVERED = "delivered"
    REFUSED = "refused"
    """Refused by the receiver (拒签) or signed back by the sender (退签)."""

    @property
    def final(self) -> bool:
        return self is not TrackingState.SHIPPED


class BundleComponent(_Frozen):
    sku: str
    qty: int = Field(gt=0)


class MasterSku(_Frozen):
    sku: str = Field(min_length=1)
    name: str = ""
    barcode: str = ""
    weight_kg: Decimal = Decimal("0")
    components: tuple[BundleComponent, ...] = ()

    @property
    def is_bundle(self) -> bool:
        return bool(self.components)


class SkuMapping(_Frozen):
    """An explicit mapping for a platform SKU whose merchant code is not a master SKU.

    `shop` is a shop code or `*` for every shop; `platform_sku` matches a line's platform SKU id
    or its merchant code; one platform unit is `qty` units of `sku` (a master SKU or bundle)."""

    shop: str = "*"
    platform_sku: str
    sku: str
    qty: int = Field(default=1, gt=0)


class Package(_Frozen):
    carrier: str
    waybill: str
    weight_kg: Decimal | None = None
    items: tuple[tuple[str, int], ...] = ()


class Shipment(_Frozen):
    delivery_order_code: str
    warehouse: str
    carrier: str
    waybill: str
    weight_kg: Decimal | None = None
    packages: tuple[Package, ...] = ()
    shipped_at: UtcDatetime
    out_biz_code: str = ""


class StockLevel(_Frozen):
    warehouse: str
    sku: str
    on_hand: int
    reserved: int = 0
    as_of: UtcDatetime | None = None

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class BillLine(_Frozen):
    line_no: int
    waybill: str
    ship_date: str = ""
    origin_province: str = ""
    dest_province: str = ""
    weight_kg: Decimal
    amount: Decimal


class ReconciliationKind(StrEnum):
    OVERCHARGED = "overcharged"
    UNDERCHARGED = "undercharged"
    WEIGHT_MISMATCH = "weight_mismatch"
    DUPLICATE_LINE = "duplicate_line"
    UNKNOWN_WAYBILL = "unknown_waybill"
    NO_RATE = "no_rate"
    NOT_BILLED = "not_billed"
    UNREADABLE_LINE = "unreadable_line"
    MISSING_IN_WMS = "missing_in_wms"
    MISSING_IN_HUB = "missing_in_hub"
    QUANTITY_DIFF = "quantity_diff"


class ReconciliationRow(_Frozen):
    kind: ReconciliationKind
    waybill: str | None = None
    sku: str | None = None
    expected: Decimal | None = None
    actual: Decimal | None = None
    difference: Decimal | None = None
    detail: str = ""


class ReportKind(StrEnum):
    LOGISTICS = "logistics"
    """A courier's freight bill checked against shipments and the rate card; subject: carrier."""
    INVENTORY = "inventory"
    """A WMS stock snapshot checked against the ledger; subject: warehouse."""


class ReconciliationReport(_Frozen):
    """One stored reconciliation: its discrepancy rows and its totals (JSON-ready: counts are
    ints, amounts and weights decimal strings)."""

    id: int | None = None
    kind: ReportKind
    subject: str
    bill_id: int | None = None
    totals: dict[str, Any] = Field(default_factory=dict)
    rows: tuple[ReconciliationRow, ...] = ()
    row_count: int = 0
    """Rows of the report (also when `rows` was not loaded, as in a listing)."""
    created_at: UtcDatetime | None = None


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"
    SUPERSEDED = "superseded"
    """A newer message for the same subject (a newer stock value) replaced it before it was sent."""


class OutboxMessage(_Frozen):
    id: int | None = None
    kind: str
    """What effect: `wms.create`, `wms.cancel`, `platform.ship`, `platform.stock`, `erp.…`."""
    target: str
    """Whom it goes to: a warehouse or shop code (the unit of concurrency limits)."""
    idempotency_key: str
    subject: str | None = None
    """Messages with the same subject supersede each other (latest stock value wins)."""
    payload: dict[str, Any] = Field(default_factory=dict)
    status: OutboxStatus = OutboxStatus.PENDING
    attempts: int = 0
    next_attempt_at: UtcDatetime | None = None
    last_error: str = ""
    ambiguous: bool = False
    """The last attempt may have reached the target: ask before sending again."""
    created_at: UtcDatetime | None = None


class Cursor(_Frozen):
    shop: str
    stream: str
    position: UtcDatetime
    updated_at: UtcDatetime | None = None


class RunStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


class SyncRun(_Frozen):
    id: int | None = None
    job: str
    shop: str | None = None
    started_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    status: RunStatus = RunStatus.RUNNING
    windows: int = 0
    pages: int = 0
    orders_seen: int = 0
    orders_written: int = 0
    errors: int = 0
    message: str = ""


class SyncError(_Frozen):
    """A record that could not be used (malformed order, bad bill line, bad webhook)."""

    source: str
    key: str = ""
    reason: str
    raw: str = ""
    created_at: UtcDatetime | None = None
