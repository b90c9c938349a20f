"""Channel stock: what each shop listing may sell, pushed through the outbox when it changes.

Per shop (its `safety_stock`, `stock_ratio`, `max_stock`, `zero_below`) and listing:

    base(sku)  = max(0, floor((Σ warehouses' on hand − reserved − safety_stock) × stock_ratio))
    units      = min over the listing's master SKUs (a bundle expanded into its components, a
                 mapping's multiplier applied) of floor(base(sku) / units of sku per listing unit)
    published  = min(units, max_stock), and 0 when it is below `zero_below`

Reserved is what routed, unshipped delivery orders hold, so a new order lowers the value at once
and a WMS stock change (reading or `stockchange.report`) moves it the other way.

Listings come from the platform (`Marketplace.listings()`: TOP `items.onsale.get` +
`item.seller.get`, JD `sku.read.searchSkuList`) and from the lines of the shop's orders
(decisions.md), refreshed every `daemon.listing_refresh_interval` and on every full sync. A listing
whose merchant code resolves to no master SKU is never pushed.

Push. One `platform.stock` message per (shop, item) carrying every SKU of the item whose value
differs from the last value *pushed* (every SKU with `full`), subject `stock:<shop>:<item>`, so a
newer message supersedes a queued older one. Per item, not per SKU: TOP sets up to 20 SKUs of one
item per `skus.quantity.update`, so an item's SKUs travel together and calls stay proportional to
the changes. Nothing is lost by superseding: each run recomputes every SKU of every item against
what was pushed (not what was queued), so the newer message carries every value still unpushed.

Order ("never a stale value after a newer one"): the handler drops a message when a newer one of
its subject exists (that one carries the newer values), waits while an older one is in flight on
another dispatcher, and records what it pushed with its message id (an older message never
overwrites a newer record). Computations run under the `stock-sync` lease, so two of them never
interleave their enqueues.
"""

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import structlog

from config import Settings, ShopConfig
from connectors.base import Listing, Marketplace, StockUpdate
from connectors.errors import ConnectorError, RejectedError, TransientError
from models.domain import Cursor, OutboxMessage
from models.store import Store, StoredListing, Tx
from sync.mapping import ResolvedLine, SkuResolver
from sync.outbox import Record
from sync.review import load_resolver

PLATFORM_STOCK = "platform.stock"
STOCK_SYNC_JOB = "stock-sync"
"""The daemon job's name, and the lease every stock computation runs under."""
LISTINGS_STREAM = "listings"
"""The cursor stream that records when a shop's listings were last read from the platform."""

log = structlog.get_logger("ecomhub.sync.channel_stock")


# --- the formula ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StockPolicy:
    """A shop's stock policy (`ShopConfig`): safety stock, ratio, optional cap and threshold."""

    safety_stock: int = 0
    ratio: Decimal = Decimal(1)
    max_stock: int | None = None
    zero_below: int | None = None

    @classmethod
    def of(cls, shop: ShopConfig) -> "StockPolicy":
        # The ratio as written in the config (0.7, not 0.69999…): floor() must not lose a unit.
        return cls(
            shop.safety_stock, Decimal(str(shop.stock_ratio)), shop.max_stock, shop.zero_below
        )

    def base(self, available: int) -> int:
        """What a shop may sell of one master SKU with `available` = on hand − reserved."""
        room = available - self.safety_stock
        if room <= 0:
            return 0
        if self.ratio == 1:
            return room
        return int((room * self.ratio).to_integral_value(rounding=ROUND_FLOOR))

    def publish(self, units: int) -> int:
        units = max(units, 0)
        if self.max_stock is not None:
            units = min(units, self.max_stock)
        if self.zero_below is not None and units < self.zero_below:
            return 0
        return units


def sellable(
    policy: StockPolicy, parts: Sequence[ResolvedLine], available: Mapping[str, int]
) -> int:
    """The quantity to publish for a listing that ships as `parts` (per unit sold)."""
    if len(parts) == 1:  # the common case, without the bookkeeping below
        part = parts[0]
        return policy.publish(policy.base(available.get(part.sku, 0)) // max(part.qty, 1))
    per_unit: Counter[str] = Counter()
    for part in parts:
        per_unit[part.sku] += part.qty
    if not per_unit:
        return 0
    units = min(
        policy.base(available.get(sku, 0)) // qty for sku, qty in per_unit.items() if qty > 0
    )
    return policy.publish(units)


# --- listings ---------------------------------------------------------------------------------


@dataclass
class ShopStock:
    """What one run did for one shop."""

    shop: str
    listings: int = 0
    unmapped: int = 0
    refreshed: bool = False
    refresh_error: str = ""
    values: int = 0
    """Stock values enqueued (changed, or all with `full`)."""
    messages: int = 0
    unchanged: int = 0


@dataclass
class StockSync:
    shops: list[ShopStock] = field(default_factory=list)
    skipped: str = ""
    """Why nothing was computed (no warehouse stock read yet), else empty."""

    @property
    def values(self) -> int:
        return sum(s.values for s in self.shops)

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.shops)


def _resolved(resolver: SkuResolver, shop: str, sku_id: str, merchant_code: str) -> str | None:
    master = resolver.master_of(shop, sku_id, merchant_code)
    return master[0] if master else None


async def refresh_listings(
    store: Store, shop: ShopConfig, market: Marketplace, resolver: SkuResolver
) -> str:
    """Read the shop's listings from the platform and from its orders into the store. Returns
    the platform's error when its listing failed (the orders' part is stored regardless)."""
    now = store.clock.now()
    error = ""
    try:
        found = list(await market.listings())
    except ConnectorError as exc:
        log.warning(
            "listing the shop failed; stock goes to the listings known",
            shop=shop.code,
            error=str(exc),
        )
        found, error = [], str(exc)
    async with store.transaction() as tx:
        cursor = await tx.get_cursor(shop.code, LISTINGS_STREAM)
        await tx.upsert_listings(
            [
                StoredListing(
                    shop=shop.code,
                    item_id=li.item_id,
                    sku_id=li.sku_id,
                    merchant_code=li.merchant_code,
                    sku=_resolved(resolver, shop.code, li.sku_id, li.merchant_code),
                    source="listing",
                    platform_quantity=li.quantity,
                    last_seen=now,
                )
                for li in found
            ]
        )
        seen = await tx.order_listings(shop.code, cursor.position if cursor else None)
        await tx.upsert_listings(
            [
                StoredListing(
                    shop=shop.code,
                    item_id=item,
                    sku_id=sku_id,
                    merchant_code=code,
                    sku=_resolved(resolver, shop.code, sku_id, code),
                    source="order",
                    platform_quantity=None,
                    last_seen=now,
                )
                for item, sku_id, code in seen
            ],
            keep_existing=True,
        )
        if not error:
            await tx.set_cursor(Cursor(shop=shop.code, stream=LISTINGS_STREAM, position=now))
    log.info("listings refreshed", shop=shop.code, listed=len(found), from_orders=len(seen))
    return error


# --- planning the pushes ----------------------------------------------------------------------


def stock_subject(shop: str, item_id: str) -> str:
    return f"stock:{shop}:{item_id}"


def _message(shop: str, item_id: str, updates: list[list[Any]], full: bool) -> OutboxMessage:
    subject = stock_subject(shop, item_id)
    return OutboxMessage(
        kind=PLATFORM_STOCK,
        target=shop,
        idempotency_key=f"{subject}:{uuid.uuid4().hex[:20]}",
        subject=subject,
        payload={"item_id": item_id, "updates": updates, "full": full},
    )


async def plan_shop(
    tx: Tx,
    shop: ShopConfig,
    resolver: SkuResolver,
    available: Mapping[str, int],
    *,
    full: bool = False,
) -> tuple[ShopStock, list[OutboxMessage]]:
    """Compute every listing of the shop; the messages for the values that must be pushed."""
    stats = ShopStock(shop.code)
    policy = StockPolicy.of(shop)
    listings = await tx.listing_keys(shop.code)
    pushed = await tx.stock_pushes(shop.code)
    queued = await tx.pending_payloads(PLATFORM_STOCK, shop.code)
    by_item: dict[str, list[list[Any]]] = {}
    remapped: dict[tuple[str, str], str | None] = {}
    values: dict[tuple[str, int], int] = {}  # per (master SKU, units of it per listing unit)
    stats.listings = len(listings)
    for item_id, sku_id, code, stored_master in listings:
        key = (item_id, sku_id)
        master = resolver.master_of(shop.code, sku_id, code)
        if (master[0] if master else None) != stored_master:
            remapped[key] = master[0] if master else None
        if master is None:
            stats.unmapped += 1
            continue
        value = values.get(master)
        if value is None:
            parts = resolver.expand(*master)
            value = sellable(policy, parts, available) if parts is not None else -1
            values[master] = value
        if value < 0:  # a bundle of something the catalog does not know: never pushed
            stats.unmapped += 1
            continue
        if not full and pushed.get(key) == value:
            stats.unchanged += 1
            continue
        by_item.setdefault(item_id, []).append([sku_id, code, value])
    await tx.set_listing_skus(shop.code, remapped)
    messages = []
    for item_id, updates in by_item.items():
        queued_payload = queued.get(stock_subject(shop.code, item_id))
        if queued_payload is not None and queued_payload.get("updates") == updates:
            continue  # the same values wait in the outbox already
        messages.append(_message(shop.code, item_id, updates, full))
        stats.values += len(updates)
    stats.messages = len(messages)
    return stats, messages


async def sync_channel_stock(
    settings: Settings,
    store: Store,
    marketplace_for: Callable[[ShopConfig], Marketplace],
    *,
    shops: Sequence[ShopConfig] | None = None,
    full: bool = False,
    close_markets: bool = True,
) -> StockSync:
    """One stock sync of `shops` (default all): refresh listings when due (always with `full`),
    compute every listing and enqueue what must be pushed. Sends nothing itself: the outbox
    dispatcher does. Run it under the `stock-sync` lease (`sync.leases.hold_lease`)."""
    result = StockSync()
    async with store.read() as tx:
        if not await tx.read_warehouses():
            # Without a reading every SKU would look empty: publishing zeros would stop sales.
            result.skipped = "no warehouse stock read yet"
            log.info("stock sync skipped: no warehouse stock read yet")
            return result
        resolver = await load_resolver(tx)
        available = await tx.stock_available()
    now = store.clock.now()
    for shop in shops if shops is not None else settings.shops:
        async with store.read() as tx:
            cursor = await tx.get_cursor(shop.code, LISTINGS_STREAM)
        refresh_due = (
            full
            or cursor is None
            or now - cursor.position >= settings.daemon.listing_refresh_interval
        )
        refreshed, error = False, ""
        if refresh_due:
            market = marketplace_for(shop)
            try:
                error = await refresh_listings(store, shop, market, resolver)
                refreshed = True
            finally:
                if close_markets:
                    await market.aclose()
        async with store.transaction() as tx:
            stats, messages = await plan_shop(tx, shop, resolver, available, full=full)
            await tx.enqueue(messages)
        stats.refreshed, stats.refresh_error = refreshed, error
        result.shops.append(stats)
        log.info(
            "channel stock planned",
            shop=shop.code,
            listings=stats.listings,
            unmapped=stats.unmapped,
            values=stats.values,
            messages=stats.messages,
            full=full,
        )
    return result


# --- the outbox handler -----------------------------------------------------------------------


class StockPusher:
    """The `platform.stock` handler: sets an item's absolute quantities on its marketplace."""

    def __init__(
        self,
        store: Store,
        marketplace: Callable[[str], Marketplace],
        on_pushed: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.marketplace = marketplace
        self.on_pushed = on_pushed

    async def __call__(self, message: OutboxMessage) -> Record | None:
        assert message.id is not None and message.subject is not None
        shop = message.target
        async with self.store.read() as tx:
            newer, older_in_flight = await tx.subject_order(message.subject, message.id)
        if newer:
            log.debug(
                "stale stock values: a newer message carries them", key=message.idempotency_key
            )
            return None
        if older_in_flight:
            raise TransientError(f"an older stock push of {message.subject} is still in flight")
        item_id = str(message.payload["item_id"])
        updates = [
            StockUpdate(
                Listing(shop=shop, item_id=item_id, sku_id=str(sku_id), merchant_code=str(code)),
                int(qty),
            )
            for sku_id, code, qty in message.payload["updates"]
        ]
        result = await self.marketplace(shop).update_stock(updates)
        pushed = [(u.listing.item_id, u.listing.sku_id, u.quantity) for u in result.done]
        message_id = message.id

        async def record(tx: Tx) -> None:
            await tx.record_stock_pushes(shop, pushed, message_id)

        if self.on_pushed is not None and result.done:
            self.on_pushed(shop, len(result.done))
        if not result.failed:
            return record  # recorded with the message's completion
        async with self.store.transaction() as tx:
            await record(tx)  # what landed, before the refusal makes the message a dead letter
        update, reason = result.failed[0]
        raise RejectedError(
            f"{len(result.failed)} of {len(updates)} stock values refused, e.g. "
            f"{update.listing.sku_id or update.listing.item_id}: {reason}"
        )
