"""The stock ledger's readings: each warehouse's on-hand stock of every master SKU, from its WMS.

A reading is absolute: it replaces what the ledger held for those SKUs at that time (stock-change
callbacks move it between readings). Routing sees on hand − reserved; a warehouse never read is
routed by region and priority alone.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from config import Settings, WarehouseConfig
from connectors.base import Wms
from connectors.errors import ConnectorError
from models.domain import HoldReason
from models.store import Store

log = structlog.get_logger("ecomhub.sync.stock")


@dataclass
class StockReading:
    warehouses: dict[str, int] = field(default_factory=dict)
    """SKUs read per warehouse."""
    failed: dict[str, str] = field(default_factory=dict)


async def read_stock(
    settings: Settings, store: Store, wms_for: Callable[[WarehouseConfig], Wms]
) -> StockReading:
    """Read every warehouse's stock of every master SKU into the ledger."""
    async with store.read() as tx:
        skus = sorted(s.sku for s in (await tx.master_skus()).values() if not s.is_bundle)
    reading = StockReading()
    for warehouse in settings.warehouses:
        wms = wms_for(warehouse)
        try:
            as_of = store.clock.now()
            levels = await wms.inventory(skus)
        except ConnectorError as exc:
            log.warning("stock reading failed", warehouse=warehouse.code, error=str(exc))
            reading.failed[warehouse.code] = str(exc)
            continue
        finally:
            await wms.aclose()
        # A SKU the WMS does not report has none there (it was asked for every SKU).
        complete = {sku: levels.get(sku, 0) for sku in skus}
        async with store.transaction() as tx:
            await tx.set_stock(warehouse.code, complete, as_of)
            await tx.requeue_held(HoldReason.NO_STOCK)
        reading.warehouses[warehouse.code] = len(complete)
    return reading
