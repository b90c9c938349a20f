"""The contracts `sync/` programs against. Connectors implement them in canonical types only.

A marketplace connector is built from a `ShopConfig` (one instance per shop) and a WMS connector
from a `WarehouseConfig`; `sync/` picks the class from `MARKETPLACES` / `WMSES` by the config's
`platform` / `wms` value and never sees a wire format. Every method raises only the
`connectors.errors` tree.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable

from models.domain import Address, Order, Shipment, SyncError, TrackingState


@dataclass(frozen=True)
class OrderPage:
    """One page of an order search over a modified-time window.

    `orders` are the well-formed orders of the page; `errors` the malformed ones (with their raw
    payload and reason), so one bad order never stops the page. `total` is the number of orders
    the whole window holds, as the platform reported it with this page."""

    orders: tuple[Order, ...]
    errors: tuple[SyncError, ...] = ()
    total: int = 0
    page: int = 1
    page_size: int = 100

    @property
    def records(self) -> int:
        """What the page holds, well-formed or not."""
        return len(self.orders) + len(self.errors)

    @property
    def window_total(self) -> int:
        """`total`, unless the page itself disproves it: a total lower than the page's own
        records (missing, or stale) says nothing, and a full page may have more behind it."""
        held = self.records
        if self.total >= held:
            return self.total
        return held + 1 if held >= self.page_size else held


@dataclass(frozen=True)
class ShipRequest:
    platform_order_id: str
    carrier_code: str
    """The hub's carrier code (TOP `company_code`)."""
    carrier_jd_id: int | None
    waybill: str
    line_ids: tuple[str, ...] = ()
    """Lines this waybill covers when an order ships in parts (TOP `sub_tid`); empty = all."""
    modified_hint: datetime | None = None
    """The order's last modified time, for platforms that can only re-read by a window (JD)."""


@dataclass(frozen=True)
class ShipResult:
    already_shipped: bool = False
    """The platform said the order was shipped before; the connector checked it shows shipped."""


@dataclass(frozen=True)
class Listing:
    """One sellable unit on a marketplace, keyed the way its stock API needs."""

    shop: str
    item_id: str
    sku_id: str
    """Empty for an item without SKUs."""
    merchant_code: str
    quantity: int | None = None


@dataclass(frozen=True)
class StockUpdate:
    listing: Listing
    quantity: int


@dataclass(frozen=True)
class StockResult:
    done: tuple[StockUpdate, ...] = ()
    failed: tuple[tuple[StockUpdate, str], ...] = field(default=())


class Marketplace(Protocol):
    """A marketplace shop: orders in, waybills and stock out."""

    platform: str
    page_size: int
    """Orders per search page the connector asks for (≤ the platform's maximum)."""

    async def search_orders(
        self, start: datetime, end: datetime, page: int, page_size: int
    ) -> OrderPage:
        """Orders modified in [start, end] (inclusive, whole seconds), newest first.

        `start`/`end` are aware datetimes; the window is at most the shop's max window. Raises
        `RateLimited` when a ban outlasts the transport's wait cap, `AuthError` on bad credentials.
        """
        ...

    async def get_order(
        self, platform_order_id: str, *, modified_hint: datetime | None = None
    ) -> Order | None:
        """The current version of one order (a targeted fetch after a webhook hint).

        `modified_hint` (a time at or before the order's last modification, e.g. the hint's
        event time) is for platforms that can only re-read an order by a search window (JD);
        others ignore it. None when the platform does not know the order (or, on a window-only
        platform, when no hint is given or the order is not found near it)."""
        ...

    async def ship(self, request: ShipRequest) -> ShipResult:
        """Tell the marketplace the order shipped with this waybill.

        Idempotent in effect: a repeat for an order the platform already shows shipped returns
        `ShipResult(already_shipped=True)`; one it shows unshipped raises `RejectedError`."""
        ...

    async def shows_shipped(self, request: ShipRequest) -> bool:
        """Does the marketplace already show this shipment (the order, or the request's lines,
        shipped; with the same waybill where the platform tells)? Asked before sending a ship
        confirm that an earlier attempt may have delivered."""
        ...

    async def listings(self) -> Sequence[Listing]:
        """Every listing of the shop with its merchant code."""
        ...

    async def update_stock(self, updates: Sequence[StockUpdate]) -> StockResult:
        """Set absolute sellable quantities (batched as the platform allows)."""
        ...

    async def aclose(self) -> None: ...


# --- message services (hints) ---------------------------------------------------------------


@dataclass(frozen=True)
class PlatformMessage:
    """One message of a marketplace's message service (TOP TMC), read into canonical form.

    A message is only a hint that an order changed: the hub re-reads the order itself. One that
    names no order (an item or other topic) has an empty `platform_order_id`; one the connector
    could not read has a `problem` and no order."""

    message_id: str
    """The id to confirm the message by; empty only when the message had none (unconfirmable)."""
    topic: str
    """The platform's own topic name (e.g. `taobao_trade_TradeBuyerPay`), for logs."""
    shop: str
    platform_order_id: str = ""
    published: datetime | None = None
    problem: str = ""
    """Why the message could not be read; empty for a well-formed message."""


@runtime_checkable
class MessageSource(Protocol):
    """A marketplace's message queue, consumed by polling with explicit confirmation.

    Delivery is at least once: a message consumed but not confirmed (or confirmed as failed)
    comes back on a later consume. A connector that has one implements this next to
    `Marketplace`; `isinstance(connector, MessageSource)` tells the daemon whether to poll it."""

    async def consume_messages(self, group: str, quantity: int) -> list[PlatformMessage]:
        """Up to `quantity` messages due for the consumer group `group` (the platform may clamp
        `quantity` to its own limits). An empty list when none is waiting."""
        ...

    async def confirm_messages(
        self, group: str, ok_ids: Sequence[str], failed_ids: Sequence[str]
    ) -> None:
        """Acknowledge handled messages (never delivered again) and report failed ones (delivered
        again on a later consume). Does nothing when both are empty."""
        ...


# --- warehouses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryLine:
    line_no: int
    sku: str
    """Master SKU: the WMS `itemCode`."""
    qty: int
    price: Decimal
    source_order_id: str
    """The marketplace order id (`sourceOrderCode`)."""
    source_line_id: str = ""
    """The marketplace line id (`subSourceOrderCode`)."""


@dataclass(frozen=True)
class DeliveryOrderRequest:
    """Everything a WMS needs to ship one delivery order (a snapshot taken when routed)."""

    code: str
    """The hub's delivery-order code, `<shop>-<order id>[-n]`: the idempotency key."""
    shop: str
    platform: str
    """tmall | jd: the WMS `sourcePlatformCode` is derived from it (TB, JD)."""
    platform_order_id: str
    carrier: str
    """The warehouse's default carrier: the `logisticsCode` asked for."""
    created: datetime
    paid: datetime | None
    buyer_nick: str
    receiver: Address
    lines: tuple[DeliveryLine, ...]
    total: Decimal = Decimal("0")
    payment: Decimal = Decimal("0")
    post_fee: Decimal = Decimal("0")
    buyer_remark: str = ""
    seller_remark: str = ""


class WmsOrderState(StrEnum):
    NOT_FOUND = "not_found"
    OPEN = "open"
    """Known and not shipped yet (NEW, ACCEPT, EXCEPTION …)."""
    SHIPPED = "shipped"
    """DELIVERED or PARTDELIVERED."""
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class WmsOrderStatus:
    state: WmsOrderState
    wms_order_id: str = ""
    raw_status: str = ""


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    """Cancelled now, or it was cancelled already, or the WMS never had it."""
    ALREADY_SHIPPED = "already_shipped"
    """Too late: flag the order for after-sales (intercept)."""


@dataclass(frozen=True)
class StockChange:
    """One line of a `stockchange.report`: applied once per (warehouse, out_biz_code, sku)."""

    warehouse: str
    out_biz_code: str
    sku: str
    delta: int
    order_code: str = ""
    order_type: str = ""


@dataclass(frozen=True)
class ShipmentConfirm:
    """A `deliveryorder.confirm`: what the WMS really shipped."""

    shipment: Shipment
    final: bool
    """confirmType 0 (final) or 1 (intermediate)."""
    status: str
    shipped_lines: tuple[tuple[str, int], ...] = ()
    """(itemCode, actual qty) per order line."""
    state: WmsOrderState = WmsOrderState.SHIPPED
    """What the status means. Only a SHIPPED confirm is a shipment; a confirm reporting that the
    WMS cancelled, closed or refused the order, or that it is still open, is a status report."""


@dataclass(frozen=True)
class InboundLine:
    line_no: str
    sku: str
    planned: int
    received: int
    inventory_type: str = "ZP"


@dataclass(frozen=True)
class InboundConfirm:
    """An `entryorder.confirm`: goods received against an inbound (purchase) order."""

    warehouse: str
    entry_order_code: str
    out_biz_code: str
    final: bool
    status: str
    lines: tuple[InboundLine, ...]


Callback = ShipmentConfirm | tuple[StockChange, ...] | InboundConfirm


class Wms(Protocol):
    """One warehouse's WMS. Creates are NOT deduplicated by the WMS: the caller asks
    `query_delivery_order` before sending a create that may have arrived before."""

    warehouse: str

    async def create_delivery_order(self, request: DeliveryOrderRequest) -> str:
        """Send the create; returns the WMS's order id. `AmbiguousError` when it may have
        arrived (timeout, dropped connection, 5xx, a late answer)."""
        ...

    async def query_delivery_order(self, code: str) -> WmsOrderStatus:
        """What the WMS knows of a delivery order (`ORDER_NOT_EXIST` → NOT_FOUND)."""
        ...

    async def cancel_delivery_order(self, code: str, reason: str) -> CancelOutcome:
        """Cancel before shipment. A failure is checked with a query: shipped → ALREADY_SHIPPED,
        cancelled or unknown → CANCELLED, anything else raises (retried later)."""
        ...

    async def inventory(self, skus: Sequence[str]) -> dict[str, int]:
        """Physical on-hand quantity (sound stock) per SKU the WMS knows, asked in batches."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class InboundOrderLine:
    line_no: str
    """The source document's line id (a purchase order's entry id): the `orderLineNo` the WMS
    echoes in its `entryorder.confirm`."""
    sku: str
    qty: int


@dataclass(frozen=True)
class InboundOrderRequest:
    """An inbound (purchase receipt) notice: goods the warehouse should expect."""

    code: str
    """The hub's code for it (a purchase order's number): the idempotency key."""
    supplier: str
    created: datetime
    lines: tuple[InboundOrderLine, ...]
    order_type: str = "CGRK"
    """Qimen `orderType`: CGRK = purchase inbound."""
    remark: str = ""


@runtime_checkable
class InboundWms(Protocol):
    """A WMS that takes inbound notices (`entryorder.create`) and answers `entryorder.confirm`
    callbacks (`InboundConfirm`). Like delivery-order creates, inbound creates are NOT
    deduplicated by the WMS: the caller asks `query_entry_order` before sending one that may have
    arrived before. `isinstance(wms, InboundWms)` tells the hub whether a WMS has this."""

    async def create_entry_order(self, request: InboundOrderRequest) -> str:
        """Send the create; returns the WMS's entry-order id. `AmbiguousError` when it may have
        arrived (timeout, dropped connection, 5xx, a late answer)."""
        ...

    async def query_entry_order(self, code: str) -> WmsOrderStatus:
        """What the WMS knows of an inbound order (`ORDER_NOT_EXIST` → NOT_FOUND; received or
        not, anything it knows is OPEN or, once cancelled, CANCELLED)."""
        ...


class WmsCallbacks(Protocol):
    """Verifies and reads what a WMS calls back with, and renders the answers it expects."""

    def verify(self, query: Mapping[str, str], body: bytes) -> bool: ...

    def parse(self, query: Mapping[str, str], body: bytes) -> Callback:
        """Raises `BadPayload` for a callback it cannot read."""
        ...

    def success(self) -> tuple[str, str]:
        """(body, content type) of the success answer."""
        ...

    def failure(self, code: str, message: str) -> tuple[str, str]: ...


# --- courier tracking -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingRequest:
    """Ask the courier-tracking service to push every change of one waybill to `callback_url`."""

    carrier: str
    """The hub's carrier code (the WMS `logisticsCode`); the connector maps it to its own name."""
    waybill: str
    callback_url: str
    phone: str = ""
    """The receiver's phone; sent only to couriers that require it (SF)."""
    destination: str = ""
    """The receiver's city or province, as a hint for the tracker."""


@dataclass(frozen=True)
class TrackingUpdate:
    """One push of the tracking service, read into canonical form."""

    waybill: str
    company: str
    """The tracking service's own name of the courier (for logs; the hub keys on the waybill)."""
    state: TrackingState
    raw_state: str
    """The service's own state code (Kuaidi100 `state`), for logs and after-sales."""
    stopped: bool = False
    """The service stopped tracking this waybill (a final state, or it gave up)."""
    message: str = ""
    """Why it stopped, when it gave up (Kuaidi100 `abort`: "3天查询无记录" …); else empty."""
    detail: str = ""
    """The newest tracking event's text."""


class Tracker(Protocol):
    """A courier-tracking service (Kuaidi100): subscribe a waybill, then it pushes to the hub."""

    async def subscribe(self, request: TrackingRequest) -> None:
        """Subscribe once. Idempotent in effect: a waybill the service already tracks counts as
        subscribed. `RejectedError` for a request it will never accept (bad number, unknown
        courier), `AuthError` for a bad key, `TransientError` to try again later."""
        ...

    async def aclose(self) -> None: ...


class TrackingCallbacks(Protocol):
    """Verifies and reads the tracking service's pushes, and renders the answers it expects."""

    def verify(self, param: str, sign: str) -> bool:
        """The push's signature over its raw `param` (constant-time compare)."""
        ...

    def parse(self, param: str) -> TrackingUpdate:
        """Raises `BadPayload` for a push it cannot read."""
        ...

    def success(self) -> tuple[str, str]:
        """(body, content type) of the success answer."""
        ...

    def failure(self, message: str) -> tuple[str, str]: ...


# --- ERP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurchaseOrderLine:
    entry_id: str
    """The ERP's id of the purchase order line (K3Cloud `FPOOrderEntry_FEntryId`)."""
    sku: str
    """Material number = master SKU."""
    qty: int
    unit: str = ""
    received: int = 0
    """What the ERP shows received against this line so far."""


@dataclass(frozen=True)
class PurchaseOrder:
    """An audited, open purchase order as the ERP reports it."""

    number: str
    """The ERP's bill number (`FBillNo`): the inbound notice's code."""
    erp_id: str
    """The ERP's internal id (`FID`), which receipt lines link to."""
    supplier: str
    purchase_org: str
    lines: tuple[PurchaseOrderLine, ...]
    approved_at: datetime | None = None
    problem: str = ""
    """Why the hub cannot use this order (e.g. a fractional quantity); empty when it can."""


@dataclass(frozen=True)
class ReceiptLine:
    entry_id: str
    """The purchase-order line this quantity is received against."""
    sku: str
    qty: int
    unit: str = ""


@dataclass(frozen=True)
class PurchaseReceipt:
    """A purchase receipt (K3Cloud `STK_InStock`) linked to its purchase order's lines, so the ERP
    writes the received quantity back to the order."""

    number: str
    purchase_order: str
    purchase_order_id: str
    supplier: str
    stock: str
    """The ERP stock number of the receiving warehouse."""
    received_at: datetime
    lines: tuple[ReceiptLine, ...]
    note: str = ""


@dataclass(frozen=True)
class SalesOutboundLine:
    sku: str
    qty: int
    price: Decimal
    """Unit price paid, tax included."""


@dataclass(frozen=True)
class SalesOutbound:
    """A sales outbound document (K3Cloud `SAL_OUTSTOCK`): what one delivery order shipped."""

    number: str
    """The delivery-order code (the document's `FBillNo`)."""
    customer: str
    stock: str
    shipped_at: datetime
    lines: tuple[SalesOutboundLine, ...]
    note: str = ""
    """The marketplace order id."""


class ErpDocumentKind(StrEnum):
    RECEIPT = "receipt"
    SALES_OUTBOUND = "sales_outbound"


@dataclass(frozen=True)
class ErpDocument:
    """A document the ERP holds: its number, its internal id and its status (K3Cloud
    `FDocumentStatus`: Z draft, A created, B reviewing, C audited, D re-audit)."""

    number: str
    erp_id: str
    status: str = ""


class Erp(Protocol):
    """An ERP: purchase orders in; purchase receipts and sales outbound documents out.

    Saves are NOT deduplicated by the ERP: after an ambiguous failure the caller asks
    `find_document` before saving the same number again. Every method raises only the
    `connectors.errors` tree; `AuthError` when the ERP refuses the credentials (after one fresh
    login), `RejectedError` (with the ERP's messages) for a document it will not take."""

    kind: str

    async def open_purchase_order_numbers(self, since: datetime | None = None) -> list[str]:
        """The bill numbers of every audited purchase order that is not closed (approved at or
        after `since`), oldest number first."""
        ...

    async def purchase_orders(self, numbers: Sequence[str]) -> list[PurchaseOrder]:
        """These purchase orders with their lines (numbers the ERP does not know are left out;
        one it holds but the hub cannot use comes back with a `problem`)."""
        ...

    async def save_receipt(self, receipt: PurchaseReceipt) -> ErpDocument:
        """Save, submit and audit a purchase receipt in one call."""
        ...

    async def save_sales_outbound(self, document: SalesOutbound) -> ErpDocument:
        """Save, submit and audit a sales outbound document in one call."""
        ...

    async def find_document(self, kind: ErpDocumentKind, number: str) -> ErpDocument | None:
        """The document of this kind and bill number, or None when the ERP has none."""
        ...

    async def audit_document(self, kind: ErpDocumentKind, document: ErpDocument) -> ErpDocument:
        """Submit and audit a saved document that is not audited (its automatic audit failed)."""
        ...

    async def aclose(self) -> None: ...
