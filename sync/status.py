"""`ecomhub status`: what the hub knows about its shops, warehouses and queues, as plain data."""

from collections.abc import Sequence
from typing import Any

from config import Settings
from models.store import ListingSummary, OutboxDepth, Store, Tx
from sync.channel_stock import PLATFORM_STOCK
from sync.erp import ERP_KINDS, ERP_TARGET, POLL_JOB, erp_status


async def collect_status(settings: Settings, store: Store) -> dict[str, Any]:
    now = store.clock.now()
    async with store.read() as tx:
        shops = await tx.shop_summaries([s.code for s in settings.shops])
        depth = await tx.outbox_depth()
        held = await tx.held_orders()
        ledger = await tx.ledger_summaries()
        listings = {s.shop: s for s in await tx.listing_summaries()}
        erp = await _erp(settings, tx, depth)
    warehouses = {w.code for w in settings.warehouses}
    return {
        "database": store.backend,
        "shops": [
            {
                "code": s.shop,
                "platform": settings.shop(s.shop).platform,
                "cursor": s.cursor.isoformat() if s.cursor else None,
                "lag_seconds": round((now - s.cursor).total_seconds()) if s.cursor else None,
                "orders": s.orders,
                "held": s.held,
                "errors": s.errors,
                "auth_failed_at": s.auth_failed_at.isoformat() if s.auth_failed_at else None,
                "auth_message": s.auth_message,
                "last_run": (
                    {
                        "status": s.last_run.status.value,
                        "started_at": s.last_run.started_at.isoformat(),
                        "orders_seen": s.last_run.orders_seen,
                        "orders_written": s.last_run.orders_written,
                        "errors": s.last_run.errors,
                        "message": s.last_run.message,
                    }
                    if s.last_run
                    else None
                ),
            }
            for s in shops
        ],
        "warehouses": [
            {
                "code": w.code,
                "outbox_pending": sum(d.pending for d in depth if d.target == w.code),
                "dead_letters": sum(d.dead for d in depth if d.target == w.code),
            }
            for w in settings.warehouses
        ],
        "outbox": [
            {
                "target": d.target,
                "kind": d.kind,
                "pending": d.pending,
                "dead": d.dead,
                "oldest_pending_age_seconds": (
                    round((now - d.oldest_pending).total_seconds()) if d.oldest_pending else None
                ),
                "target_known": d.target in warehouses
                or d.target in {s.shop for s in shops}
                or (d.target == ERP_TARGET and settings.erp is not None),
            }
            for d in depth
        ],
        "held_orders": len(held),
        "erp": erp,
        "stock": {
            "ledger": [
                {
                    "warehouse": w.warehouse,
                    "skus": w.skus,
                    "on_hand": w.on_hand,
                    "as_of": w.as_of.isoformat() if w.as_of else None,
                }
                for w in ledger
            ],
            "channels": [
                _channel(shop.code, listings.get(shop.code), depth) for shop in settings.shops
            ],
        },
    }


def _channel(
    shop: str, summary: ListingSummary | None, depth: Sequence[OutboxDepth]
) -> dict[str, Any]:
    return {
        "shop": shop,
        "listings": summary.listings if summary else 0,
        "mapped": summary.mapped if summary else 0,
        "pushed": summary.pushed if summary else 0,
        "last_push": summary.last_push.isoformat() if summary and summary.last_push else None,
        "pending_pushes": sum(
            d.pending for d in depth if d.target == shop and d.kind == PLATFORM_STOCK
        ),
    }


async def _erp(settings: Settings, tx: Tx, depth: Sequence[OutboxDepth]) -> dict[str, Any] | None:
    """The ERP flows' figures (None without `[erp]`): purchase orders by stage, documents not
    yet in the ERP, dead letters of every ERP-flow message, and the last purchase-order poll."""
    if settings.erp is None:
        return None
    runs = await tx.runs(job=POLL_JOB, limit=1)
    last = runs[0] if runs else None
    return {
        "kind": settings.erp.kind,
        **erp_status(await tx.erp_summary()),
        "outbox_pending": sum(d.pending for d in depth if d.kind in ERP_KINDS),
        "dead_letters": sum(d.dead for d in depth if d.kind in ERP_KINDS),
        "last_poll": (
            {
                "status": last.status.value,
                "started_at": last.started_at.isoformat(),
                "open": last.orders_seen,
                "new": last.orders_written,
                "message": last.message,
            }
            if last
            else None
        ),
    }
