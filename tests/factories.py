"""Small builders of canonical objects for tests."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from models.domain import Address, Order, OrderLine, OrderStatus, Platform, RefundState

BASE = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def make_order(
    order_id: str = "1001",
    *,
    shop: str = "tmall-flagship",
    status: OrderStatus = OrderStatus.PAID,
    modified_minutes: float = 0,
    lines: int = 1,
    refund: RefundState = RefundState.NONE,
    **overrides: Any,
) -> Order:
    values: dict[str, Any] = {
        "platform": Platform.TMALL,
        "shop": shop,
        "platform_order_id": order_id,
        "status": status,
        "platform_status": "WAIT_SELLER_SEND_GOODS",
        "buyer_nick": "buyer",
        "receiver": Address(
            name="张三", mobile="13800000000", province="浙江", city="杭州市", detail="文三路 1 号"
        ),
        "total": Decimal("199.00"),
        "payment": Decimal("189.50"),
        "created": BASE,
        "paid_at": BASE + timedelta(minutes=1),
        "modified": BASE + timedelta(minutes=modified_minutes),
        "lines": tuple(
            OrderLine(
                line_id=f"{order_id}-{n}",
                platform_sku_id=f"50000{n}",
                merchant_code=f"SKU-{n:04d}",
                qty=n,
                price=Decimal("99.50"),
                payment=Decimal("94.75"),
                refund_state=refund,
            )
            for n in range(1, lines + 1)
        ),
    }
    values.update(overrides)
    return Order(**values)
