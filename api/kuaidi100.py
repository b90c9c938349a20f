"""The courier-tracking receiver: `POST /webhooks/kuaidi100` (Kuaidi100 pushes).

Form fields `param` (JSON) and `sign` = UPPER(MD5(param + salt)). The signature is checked over
the raw `param` before anything is read; a bad or missing one gets the failure JSON and changes
nothing. A good push is stored first (the waybill's shipments move to delivered / refused, never
back from a final state) and only then answered `{"result":true,"returnCode":"200",…}`; anything
else makes Kuaidi100 push again, and a repeat changes nothing. A push for a waybill the hub never
shipped is recorded as a sync error and answered with success (sending it again cannot help).

Metrics outcomes (`HubMetrics.webhook("kuaidi100", outcome)`): `accepted` (stored), `duplicate`
(the shipment was at that final state already), `rejected` (bad signature, unreadable push, or a
waybill the hub does not know), `error` (the store failed: HTTP 500, Kuaidi100 retries).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Request, Response

from config import Settings
from connectors.base import TrackingCallbacks
from connectors.errors import BadPayload
from connectors.registry import tracking_callbacks_for
from models.store import Store, TrackingMove
from sync.fulfilment import TRACKING_CALLBACK_PATH, TRACKING_TARGET, apply_tracking

if TYPE_CHECKING:
    from sync.metrics import HubMetrics

log = structlog.get_logger("ecomhub.api.kuaidi100")


def kuaidi100_router(
    settings: Settings,
    store: Store,
    *,
    metrics: "HubMetrics | None" = None,
    callbacks_for: Callable[[Settings], TrackingCallbacks] = tracking_callbacks_for,
) -> APIRouter:
    router = APIRouter(tags=["callbacks"])
    codec = callbacks_for(settings) if settings.kuaidi100 is not None else None

    def count(outcome: str) -> None:
        if metrics is not None:
            metrics.webhook(TRACKING_TARGET, outcome)

    @router.post(TRACKING_CALLBACK_PATH)
    async def kuaidi100_push(request: Request) -> Response:
        """A Kuaidi100 tracking push (form `param`, `sign`)."""
        if codec is None:
            count("rejected")
            return Response("courier tracking is not configured", status_code=404)
        # parse_qs rather than request.form(): the raw `param` string, exactly what was signed.
        body = (await request.body()).decode("utf-8", errors="replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        param = form.get("param", "")
        if not codec.verify(param, form.get("sign", "")):
            log.warning("tracking push with a bad signature rejected")
            count("rejected")
            return _json(codec.failure("签名校验失败"))
        try:
            update = codec.parse(param)
        except BadPayload as exc:
            log.warning("unreadable tracking push rejected", error=str(exc))
            count("rejected")
            return _json(codec.failure("数据无法解析"))
        logger = log.bind(waybill=update.waybill, state=update.state.value)
        try:
            async with store.transaction() as tx:
                moved = await apply_tracking(tx, update, raw=param)
        except Exception:
            logger.exception("tracking push not stored")
            count("error")
            return _json(codec.failure("服务器错误"), status_code=500)
        if moved == TrackingMove.UNKNOWN:
            logger.warning("tracking push for a waybill the hub never shipped")
            count("rejected")
        elif moved == TrackingMove.UNCHANGED and update.state.final:
            count("duplicate")
        else:
            logger.info("tracking push stored", outcome=moved.value)
            count("accepted")
        return _json(codec.success())

    return router


def _json(answer: tuple[str, str], status_code: int = 200) -> Response:
    body, content_type = answer
    return Response(content=body, media_type=content_type, status_code=status_code)
