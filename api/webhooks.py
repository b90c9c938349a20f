"""The generic signed order webhook of self-built malls: `POST /webhooks/orders/{shop}`.

Standard Webhooks (`connectors.webhooks` has the wire contract and `sign_webhook` for senders).
A delivery is a hint: the hub answers at once and the daemon fetches the order itself
(`HubControl.hint`); the periodic pull still reconciles everything.

Checks, in order, each answered before anything is stored:
1. the shop is configured (else 404) and has a `webhook_secret` (else 401);
2. the body is at most `MAX_BODY` bytes (else 413);
3. the headers are present and one `v1` signature matches (else 401), and the attempt's
   timestamp is within 5 minutes of the hub's clock (else 401: an old delivery replayed).
Then the delivery is stored once per (`orders:<shop>`, `webhook-id`) in the webhook inbox:
- a verified body that is not an order event is stored as `rejected` and answered 400;
- a delivery id seen before (the sender's retry, or a replay re-signed with a fresh timestamp)
  answers 200 `{"status": "duplicate"}` and is not hinted again;
- a new one is stored as `accepted`, hinted in the same transaction, and answered 202; if the
  hint or the store fails, nothing is stored and the answer is 500, so the sender retries.
"""

from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from config import Settings
from connectors.webhooks import (
    MalformedEvent,
    WebhookRejected,
    parse_order_event,
    verify_webhook,
)
from models.clock import Clock
from models.store import Store
from sync.control import HubControl

if TYPE_CHECKING:
    from sync.metrics import HubMetrics

log = structlog.get_logger("ecomhub.api.webhooks")

MAX_BODY = 256 * 1024
"""Bytes; Standard Webhooks recommends payloads well under 20 KB, and an order event is thin."""
MAX_DELIVERY_ID = 160
"""The inbox's `delivery_id` column."""

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A delivery seen before: not applied again"},
    202: {"description": "Accepted: the order will be fetched"},
    400: {"description": "Verified, but not an order event (recorded as rejected)"},
    401: {"description": "Missing or bad signature, stale or future timestamp, or no secret"},
    404: {"description": "No such shop in the config"},
    413: {"description": "Body too large"},
}


def webhooks_router(
    settings: Settings,
    store: Store,
    control: HubControl,
    *,
    metrics: "HubMetrics | None" = None,
    clock: Clock | None = None,
) -> APIRouter:
    """The webhook receivers. `clock` (default: the store's) is what the timestamp check trusts."""
    router = APIRouter(tags=["webhooks"])
    now = (clock or store.clock).now

    def answer(source: str, outcome: str, status_code: int, **body: str) -> JSONResponse:
        if metrics is not None:
            metrics.webhook(source, outcome)
        return JSONResponse(body, status_code=status_code)

    @router.post("/webhooks/orders/{shop}", status_code=202, responses=_RESPONSES)
    async def order_webhook(shop: str, request: Request) -> JSONResponse:
        """An order event from a self-built mall, signed the Standard Webhooks way."""
        try:
            config = settings.shop(shop)
        except KeyError:
            log.warning("webhook for an unknown shop", shop=shop[:64])
            return answer("orders:unknown-shop", "rejected", 404, detail="no such shop")
        source = f"orders:{config.code}"
        logger = log.bind(shop=config.code)
        if config.webhook_secret is None:
            logger.warning("webhook refused: the shop has no webhook_secret")
            return answer(source, "rejected", 401, detail="webhooks are not enabled for this shop")
        body = await _read_body(request)
        if body is None:
            logger.warning("webhook refused: body too large")
            return answer(source, "rejected", 413, detail=f"body over {MAX_BODY} bytes")
        try:
            delivery_id = verify_webhook(config.webhook_secret, request.headers, body, now=now())
        except WebhookRejected as exc:
            logger.warning("webhook refused", reason=exc.reason)
            return answer(source, "rejected", 401, detail=exc.reason)
        logger = logger.bind(delivery_id=delivery_id[:MAX_DELIVERY_ID])
        if len(delivery_id) > MAX_DELIVERY_ID:
            logger.warning("webhook refused: webhook-id too long")
            return answer(
                source, "rejected", 400, detail=f"webhook-id over {MAX_DELIVERY_ID} characters"
            )
        payload = body.decode("utf-8", errors="replace")
        try:
            event = parse_order_event(body)
        except MalformedEvent as exc:
            try:
                async with store.transaction() as tx:
                    await tx.record_webhook(source, delivery_id, payload, "rejected")
            except Exception as store_exc:
                logger.error("webhook not recorded", error=repr(store_exc))
                return answer(source, "error", 500, status="error")
            logger.warning("webhook rejected: not an order event", reason=str(exc))
            return answer(source, "rejected", 400, status="rejected", detail=str(exc))
        order_id = event.data.order_id
        try:
            async with store.transaction() as tx:
                new = await tx.record_webhook(source, delivery_id, payload, "accepted")
                if new:
                    # Inside the transaction: a failed hint stores nothing, and the retry is new.
                    control.hint(config.code, order_id)
        except Exception as exc:
            logger.error("webhook not applied", order=order_id, error=repr(exc))
            return answer(source, "error", 500, status="error")
        if not new:
            logger.info("duplicate webhook ignored", order=order_id)
            return answer(source, "duplicate", 200, status="duplicate")
        logger.info("webhook accepted", order=order_id, type=event.type)
        return answer(source, "accepted", 202, status="accepted")

    return router


async def _read_body(request: Request) -> bytes | None:
    """The body, or None once it passes `MAX_BODY` (without reading the rest)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
