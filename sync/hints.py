"""Marketplace messages as hints: one consume pass over a shop's message service (TOP TMC).

Webhooks and messages are hints, never the record of truth: each order a message names is handed
to `HubControl.hint`, which fetches that order's current version, reviews and routes it; the
periodic pull still reconciles everything, so a lost or late message costs latency, not orders.

Confirmation follows what happened to each message:
- an order message whose hint was queued, and a message about no order (item topics …) → ok;
- a message the connector could not read, or whose hint failed → failed, so the platform delivers
  it again on a later consume (a malformed one is logged each time it comes back);
- a message without an id cannot be confirmed at all: it is logged and skipped.

Several messages about one order in a batch give one hint; each message is still confirmed.
"""

import structlog

from config.settings import ShopConfig
from connectors.base import MessageSource, PlatformMessage
from sync.control import HubControl

log = structlog.get_logger("ecomhub.sync.hints")


async def consume_hints(
    shop: ShopConfig,
    source: MessageSource,
    control: HubControl,
    *,
    group: str = "default",
    quantity: int = 100,
) -> int:
    """Consume one batch of `shop`'s messages, hint every order they name, confirm the batch.

    Returns the number of messages consumed (0 when none was waiting; as many as `quantity` when
    more may be waiting, so a caller may run another pass at once). A message that cannot be read
    or hinted never stops the batch; a failure of the message service itself raises the
    `connectors.errors` exception, and the unconfirmed messages come back later."""
    messages = await source.consume_messages(group, quantity)
    logger = log.bind(shop=shop.code, group=group)
    ok: list[str] = []
    failed: list[str] = []
    hinted: dict[str, bool] = {}
    for message in messages:
        if not message.message_id:
            logger.warning("message without an id skipped", topic=message.topic)
            continue
        if message.problem:
            logger.warning("unreadable message", **_context(message), problem=message.problem)
            failed.append(message.message_id)
            continue
        order_id = message.platform_order_id
        if not order_id:
            ok.append(message.message_id)
            continue
        if order_id not in hinted:
            try:
                control.hint(shop.code, order_id)
                hinted[order_id] = True
            except Exception as exc:  # best effort: the message comes back, the pull catches up
                logger.warning("hint failed", **_context(message), error=repr(exc))
                hinted[order_id] = False
        (ok if hinted[order_id] else failed).append(message.message_id)
    if ok or failed:
        await source.confirm_messages(group, ok, failed)
    if messages:
        logger.info(
            "messages consumed",
            messages=len(messages),
            hinted=sum(hinted.values()),
            failed=len(failed),
        )
    return len(messages)


def _context(message: PlatformMessage) -> dict[str, str]:
    return {
        "message_id": message.message_id,
        "topic": message.topic,
        "order": message.platform_order_id,
    }
