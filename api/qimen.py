"""The Qimen callback receiver: `POST /qimen/{warehouse}` (deliveryorder.confirm, stockchange.report,
entryorder.confirm).

The signature is checked with the warehouse's secret before anything is read; a bad one gets the
failure XML and changes nothing. A good callback is stored once per outBizCode and only then
answered with success, so a WMS that sees no success sends it again (and a repeat changes
nothing). A database failure answers HTTP 500, which the WMS also retries.
"""

from collections.abc import Callable

import structlog
from fastapi import APIRouter, Request, Response

from config import Settings, WarehouseConfig
from connectors.base import WmsCallbacks
from connectors.errors import BadPayload
from connectors.registry import wms_callbacks_for
from models.store import Store
from sync.fulfilment import CallbackRefused, apply_callback

log = structlog.get_logger("ecomhub.api.qimen")


def qimen_router(
    settings: Settings,
    store: Store,
    *,
    callbacks_for: Callable[[WarehouseConfig], WmsCallbacks] = wms_callbacks_for,
    on_write: Callable[[], None] | None = None,
) -> APIRouter:
    router = APIRouter(tags=["callbacks"])
    codecs: dict[str, WmsCallbacks] = {}

    def codec(warehouse: WarehouseConfig) -> WmsCallbacks:
        if warehouse.code not in codecs:
            codecs[warehouse.code] = callbacks_for(warehouse)
        return codecs[warehouse.code]

    @router.post("/qimen/{warehouse}")
    async def qimen_callback(warehouse: str, request: Request) -> Response:
        body = await request.body()
        query = dict(request.query_params)
        logger = log.bind(warehouse=warehouse, method=query.get("method", ""))
        try:
            config = settings.warehouse(warehouse)
        except KeyError:
            logger.warning("callback for an unknown warehouse")
            return Response(f"no warehouse {warehouse} in the config", status_code=404)
        callbacks = codec(config)
        if not callbacks.verify(query, body):
            logger.warning("callback with a bad signature rejected")
            return _xml(callbacks.failure("sign-check-failure", "Illegal request"))
        try:
            callback = callbacks.parse(query, body)
        except BadPayload as exc:
            logger.warning("unreadable callback rejected", error=str(exc))
            return _xml(callbacks.failure("invalid-callback", str(exc)))
        try:
            async with store.transaction() as tx:
                outcome = await apply_callback(tx, settings, config.code, callback)
        except CallbackRefused as exc:
            logger.warning("callback refused", error=str(exc))
            return _xml(callbacks.failure(exc.code, str(exc)))
        logger.info("callback stored", outcome=outcome)
        if on_write is not None:
            on_write()
        return _xml(callbacks.success())

    return router


def _xml(answer: tuple[str, str]) -> Response:
    body, content_type = answer
    return Response(content=body, media_type=content_type)
