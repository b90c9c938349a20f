"""Small builders of canonical objects for tests."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from config import Settings
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


SECRETS = {
    "tmall_secret": "tmall-app-secret-0001",
    "tmall_token": "tmall-session-token-0001",
    "jd_secret": "jd-app-secret-0002",
    "jd_token": "jd-access-token-0002",
    "wms_secret": "wms-app-secret-0003",
    "admin_token": "admin-token-0004",
}
"""Every secret `make_settings` configures, to grep answers and logs for."""


def make_settings(**sections: Any) -> Settings:
    """Two shops (tmall-flagship, jd-store) and one warehouse (WH-EAST) on unreachable URLs, with
    the secrets of `SECRETS`; keyword arguments replace whole top-level sections."""
    values: dict[str, Any] = {
        "server": {"admin_token": SECRETS["admin_token"]},
        "shops": [
            {
                "code": "tmall-flagship",
                "platform": "tmall",
                "api_url": "http://127.0.0.1:1/router/rest",
                "app_key": "tmall-key",
                "app_secret": SECRETS["tmall_secret"],
                "access_token": SECRETS["tmall_token"],
            },
            {
                "code": "jd-store",
                "platform": "jd",
                "api_url": "http://127.0.0.1:1/routerjson",
                "app_key": "jd-key",
                "app_secret": SECRETS["jd_secret"],
                "access_token": SECRETS["jd_token"],
                "poll_interval": "30s",
            },
        ],
        "warehouses": [
            {
                "code": "WH-EAST",
                "api_url": "http://127.0.0.1:1/router/qimen/service",
                "app_key": "wms-key",
                "app_secret": SECRETS["wms_secret"],
                "customer_id": "OWNER",
                "provinces": ["上海", "浙江"],
                "default_carrier": "SF",
            }
        ],
    }
    values.update(sections)
    return Settings.model_validate(values)
