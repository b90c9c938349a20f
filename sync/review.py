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

from collections.abc import Sequence
from dataclasses import dataclass

from config import Settings, ShopConfig
from models.domain import HoldReason, Order, OrderStatus, RefundState, ReviewState
from models.store import ReviewDecision, Tx
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


async def review_pending(
    tx: Tx,
    settings: Settings,
    shop_codes: list[str] | None = None,
    resolver: SkuResolver | None = None,
    *,
    only: Sequence[str] | None = None,
) -> int:
    """Review the pending orders of the given shops (of those ids when `only` is given) as
    stored; returns how many were decided. Pass a `resolver` to reuse one catalog snapshot."""
    if only is not None and not only:
        return 0
    pending = await tx.pending_review(shop_codes, only=only)
    if not pending:
        return 0
    return await review_orders(tx, settings, pending, resolver or await load_resolver(tx))


async def review_orders(
    tx: Tx, settings: Settings, orders: Sequence[Order], resolver: SkuResolver
) -> int:
    """Decide orders known to be pending (just inserted, or read back as pending)."""
    shops = {s.code: s for s in settings.shops}
    decisions: list[ReviewDecision] = []
    for order in orders:
        shop = shops.get(order.shop)
        key = (order.shop, order.platform_order_id)
        if shop is None:
            continue
        if order.status in _DONE_ELSEWHERE:
            decisions.append(
                ReviewDecision(*key, ReviewState.NOT_APPLICABLE, shipped_elsewhere=True)
            )
        elif order.status in _NEVER_SHIP:
            decisions.append(ReviewDecision(*key, ReviewState.NOT_APPLICABLE))
        elif order.status in (OrderStatus.PAID, OrderStatus.PAUSED):
            verdict = review(order, shop, resolver)
            decisions.append(ReviewDecision(*key, verdict.state, verdict.reason, verdict.detail))
    await tx.set_reviews(decisions)
    return len(decisions)


async def load_resolver(tx: Tx) -> SkuResolver:
    return SkuResolver(await tx.master_skus(), await tx.sku_mappings())
