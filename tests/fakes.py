"""In-memory fakes of the connector protocols, for engine tests (STYLE 13: fakes, not mocks).

`FakeMarketplace` behaves like the platforms where it matters to the engine: results newest first,
whole-second inclusive windows, a reported total, a maximum page size, and knobs for drift (orders
modified while a client pages), visibility latency and injected errors. tests/test_fakes.py tests it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from connectors.base import (
    CancelOutcome,
    DeliveryOrderRequest,
    Listing,
    OrderPage,
    ShipRequest,
    ShipResult,
    StockResult,
    StockUpdate,
    WmsOrderState,
    WmsOrderStatus,
)
from connectors.errors import ConnectorError, RejectedError
from models.clock import FixedClock
from models.domain import Order, OrderStatus, SyncError


@dataclass
class FakeMarketplace:
    platform: str = "tmall"
    page_size: int = 100
    clock: FixedClock = field(default_factory=FixedClock)
    orders: dict[str, Order] = field(default_factory=dict)
    visible_from: dict[str, datetime] = field(default_factory=dict)
    malformed: list[tuple[datetime, SyncError]] = field(default_factory=list)
    failures: list[ConnectorError] = field(default_factory=list)
    """Raised, one per call, before answering the next search calls."""
    on_page: Callable[["FakeMarketplace", int], None] | None = None
    """Called after each page is served (to simulate drift)."""
    calls: list[tuple[datetime, datetime, int]] = field(default_factory=list)
    shipped: list[ShipRequest] = field(default_factory=list)
    reports_totals: bool = True
    """False: every page says total 0 (an answer without `total_results`)."""

    def put(self, order: Order, visible_after: timedelta = timedelta(0)) -> None:
        self.orders[order.platform_order_id] = order
        self.visible_from[order.platform_order_id] = order.modified + visible_after

    def modify(self, order_id: str, modified: datetime, **changes: object) -> None:
        order = self.orders[order_id].model_copy(update={"modified": modified, **changes})
        self.put(order)

    def _window(self, start: datetime, end: datetime) -> list[Order]:
        now = self.clock.now()
        found = [
            o
            for o in self.orders.values()
            if start <= o.modified <= end and self.visible_from[o.platform_order_id] <= now
        ]
        return sorted(found, key=lambda o: (o.modified, o.platform_order_id), reverse=True)

    async def search_orders(
        self, start: datetime, end: datetime, page: int, page_size: int
    ) -> OrderPage:
        if page_size > 100:
            raise RejectedError("page_size over 100", code="41")
        if end - start > timedelta(days=1):
            raise RejectedError("window over one day", code="41")
        self.calls.append((start, end, page))
        if self.failures:
            raise self.failures.pop(0)
        window = self._window(start, end)
        errors = tuple(e for t, e in self.malformed if start <= t <= end and page == 1)
        chosen = tuple(window[(page - 1) * page_size : page * page_size])
        result = OrderPage(
            orders=chosen,
            errors=errors,
            total=len(window) if self.reports_totals else 0,
            page=page,
            page_size=page_size,
        )
        if self.on_page is not None:
            self.on_page(self, page)
        return result

    async def get_order(
        self, platform_order_id: str, *, modified_hint: datetime | None = None
    ) -> Order | None:
        return self.orders.get(platform_order_id)

    async def ship(self, request: ShipRequest) -> ShipResult:
        order = self.orders[request.platform_order_id]
        if order.status == OrderStatus.SHIPPED:
            return ShipResult(already_shipped=True)
        if order.status in (OrderStatus.CANCELLED, OrderStatus.CLOSED):
            raise RejectedError("交易状态不允许发货", code="15")
        self.shipped.append(request)
        self.modify(request.platform_order_id, self.clock.now(), status=OrderStatus.SHIPPED)
        return ShipResult()

    async def shows_shipped(self, request: ShipRequest) -> bool:
        order = self.orders.get(request.platform_order_id)
        return order is not None and order.status == OrderStatus.SHIPPED

    async def listings(self) -> Sequence[Listing]:
        return []

    async def update_stock(self, updates: Sequence[StockUpdate]) -> StockResult:
        return StockResult(done=tuple(updates))

    async def aclose(self) -> None:
        pass


@dataclass
class FakeWms:
    """A WMS that, like many real ones, does not deduplicate creates."""

    warehouse: str = "WH-EAST"
    creates: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    shipped: set[str] = field(default_factory=set)
    stock: dict[str, int] = field(default_factory=dict)

    async def create_delivery_order(self, request: DeliveryOrderRequest) -> str:
        self.creates.append(request.code)
        return f"W{len(self.creates)}"

    async def query_delivery_order(self, code: str) -> WmsOrderStatus:
        if code in self.cancels:
            return WmsOrderStatus(WmsOrderState.CANCELLED)
        if code in self.shipped:
            return WmsOrderStatus(WmsOrderState.SHIPPED)
        if code in self.creates:
            return WmsOrderStatus(WmsOrderState.OPEN, f"W{self.creates.index(code) + 1}")
        return WmsOrderStatus(WmsOrderState.NOT_FOUND)

    async def cancel_delivery_order(self, code: str, reason: str) -> CancelOutcome:
        if code in self.shipped:
            return CancelOutcome.ALREADY_SHIPPED
        self.cancels.append(code)
        return CancelOutcome.CANCELLED

    async def inventory(self, skus: Sequence[str]) -> dict[str, int]:
        return {sku: self.stock[sku] for sku in skus if sku in self.stock}

    async def aclose(self) -> None:
        pass


@dataclass
class RecordingControl:
    """A `sync.control.HubControl` that records what the HTTP surface and jobs ask of the daemon.

    `fail_hints` names order ids whose `hint` raises (a daemon that cannot queue work)."""

    running: bool = True
    hints: list[tuple[str, str]] = field(default_factory=list)
    pulls: list[str] = field(default_factory=list)
    backfills: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    wakes: int = 0
    routes: int = 0
    fail_hints: set[str] = field(default_factory=set)

    def request_pull(self, shop: str) -> None:
        self.pulls.append(shop)

    def request_backfill(self, shop: str, since: datetime, until: datetime) -> None:
        self.backfills.append((shop, since, until))

    def hint(self, shop: str, platform_order_id: str) -> None:
        if platform_order_id in self.fail_hints:
            raise RuntimeError(f"cannot queue a fetch of {platform_order_id}")
        self.hints.append((shop, platform_order_id))

    def request_route(self) -> None:
        self.routes += 1

    @property
    def calls(self) -> int:
        """Everything asked, of any kind."""
        return len(self.pulls) + len(self.backfills) + len(self.hints) + self.wakes + self.routes

    def wake_dispatcher(self) -> None:
        self.wakes += 1
