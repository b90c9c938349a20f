"""The contracts `sync/` programs against. Connectors implement them in canonical types only.

A marketplace connector is built from a `ShopConfig` (one instance per shop) and a WMS connector
from a `WarehouseConfig`; `sync/` picks the class from `MARKETPLACES` / `WMSES` by the config's
`platform` / `wms` value and never sees a wire format. Every method raises only the
`connectors.errors` tree.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from models.domain import Order, SyncError


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

    async def listings(self) -> Sequence[Listing]:
        """Every listing of the shop with its merchant code."""
        ...

    async def update_stock(self, updates: Sequence[StockUpdate]) -> StockResult:
        """Set absolute sellable quantities (batched as the platform allows)."""
        ...

    async def aclose(self) -> None: ...
