"""Review: decide whether a newly paid order may be routed, or is held with a reason.

Rules, in order (the first that matches holds the order):
- the platform pauses shipping (JD LOCKED, TOP PAID_FORBID_CONSIGN) → `platform_paused`;
- the receiver address is incomplete → `missing_address`;
- a line that is not refunded does not map to a master SKU → `unknown_sku` (the codes listed);
- the shop holds orders with a buyer remark (`hold_on_remark`) → `buyer_remark`;
- the payment is above the shop's `hold_amount_above` → `amount_above_threshold`.

Review runs over every order still `pending`, so it is idempotent and a crash between storing an
order and reviewing it only delays the review to the next pass.
"""

from dataclasses import dataclass

from config import Settings, ShopConfig
from models.domain import HoldReason, Order, OrderStatus, RefundState, ReviewState
from models.store import Tx
from sync.mapping import SkuResolver


@dataclass(frozen=True)
class Verdict:
    state: ReviewState
    reason: HoldReason | None = None
    detail: str = ""


def review(order: Order, shop: ShopConfig, resolver: SkuResolver) -> Verdict:
    if order.status == OrderStatus.PAUSED:
        return Verdict(ReviewState.HELD, HoldReason.PLATFORM_PAUSED, order.platform_status)
    if order.receiver is None or not order.receiver.is_complete:
        return Verdict(ReviewState.HELD, HoldReason.MISSING_ADDRESS)
    unknown = sorted(
        {
            line.merchant_code or line.platform_sku_id or line.line_id
            for line in order.lines
            if line.refund_state != RefundState.SUCCESS
            and resolver.resolve(order.shop, line) is None
        }
    )
    if unknown:
        return Verdict(ReviewState.HELD, HoldReason.UNKNOWN_SKU, ",".join(unknown))
    if shop.hold_on_remark and order.buyer_remark.strip():
        return Verdict(ReviewState.HELD, HoldReason.BUYER_REMARK, order.buyer_remark.strip())
    if shop.hold_amount_above is not None and order.payment > shop.hold_amount_above:
        return Verdict(
            ReviewState.HELD,
            HoldReason.AMOUNT_ABOVE_THRESHOLD,
            f"{order.payment} > {shop.hold_amount_above}",
        )
    return Verdict(ReviewState.PASSED)


# Orders first seen in these states were handled outside the hub: never routed, never reviewed.
_DONE_ELSEWHERE = {OrderStatus.PARTLY_SHIPPED, OrderStatus.SHIPPED, OrderStatus.FINISHED}
_NEVER_SHIP = {OrderStatus.CLOSED, OrderStatus.CANCELLED}


async def review_pending(tx: Tx, settings: Settings, shop_codes: list[str] | None = None) -> int:
    """Review every pending order of the given shops; returns how many were decided."""
    pending = await tx.pending_review(shop_codes)
    if not pending:
        return 0
    resolver = SkuResolver(await tx.master_skus(), await tx.sku_mappings())
    shops = {s.code: s for s in settings.shops}
    decided = 0
    for order in pending:
        shop = shops.get(order.shop)
        if shop is None:
            continue
        if order.status in _DONE_ELSEWHERE:
            await tx.mark_shipped_elsewhere(order.shop, order.platform_order_id)
        elif order.status in _NEVER_SHIP:
            await tx.set_review(order.shop, order.platform_order_id, ReviewState.NOT_APPLICABLE)
        elif order.status in (OrderStatus.PAID, OrderStatus.PAUSED):
            verdict = review(order, shop, resolver)
            await tx.set_review(
                order.shop, order.platform_order_id, verdict.state, verdict.reason, verdict.detail
            )
        else:
            continue  # waiting for payment: review once it is paid
        decided += 1
    return decided
