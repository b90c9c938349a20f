"""`ecomhub status`: what the hub knows about its shops, warehouses and queues, as plain data."""

from typing import Any

from config import Settings
from models.store import Store


async def collect_status(settings: Settings, store: Store) -> dict[str, Any]:
    now = store.clock.now()
    async with store.transaction() as tx:
        shops = await tx.shop_summaries([s.code for s in settings.shops])
        depth = await tx.outbox_depth()
        held = await tx.held_orders()
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
                "target_known": d.target in warehouses or d.target in {s.shop for s in shops},
            }
            for d in depth
        ],
        "held_orders": len(held),
    }
