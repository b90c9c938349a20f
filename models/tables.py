"""SQLAlchemy tables of the central store. Only `models/store.py` builds queries on them.

Conventions: money in integer fen (`*_fen`), weights in integer grams (`*_g`), times in `UtcDateTime`
(aware UTC in Python on every backend), natural keys as unique constraints so upserts and
idempotency checks are single statements.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; UTC on disk (SQLite has no zone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created() -> Column[Any]:
    return Column("created_at", UtcDateTime, nullable=False)


orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("shop", String(64), nullable=False),
    Column("platform", String(16), nullable=False),
    Column("platform_order_id", String(64), nullable=False),
    Column("status", String(24), nullable=False),
    Column("platform_status", String(48), nullable=False),
    Column("status_rank", Integer, nullable=False),
    Column("modified", UtcDateTime, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("paid_at", UtcDateTime),
    Column("buyer_nick", String(128), nullable=False, default=""),
    Column("receiver", JSON),
    Column("province", String(16), nullable=False, default=""),
    Column("total_fen", BigInteger, nullable=False),
    Column("payment_fen", BigInteger, nullable=False),
    Column("post_fee_fen", BigInteger, nullable=False),
    Column("discount_fen", BigInteger, nullable=False),
    Column("buyer_remark", Text, nullable=False, default=""),
    Column("seller_remark", Text, nullable=False, default=""),
    Column("review_state", String(16), nullable=False),
    Column("hold_reason", String(32)),
    Column("hold_detail", Text, nullable=False, default=""),
    Column("shipped_elsewhere", Boolean, nullable=False, default=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("shop", "platform_order_id"),
    Index("ix_orders_review_state", "review_state"),
    Index("ix_orders_shop_modified", "shop", "modified"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", Id, ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("line_id", String(64), nullable=False),
    Column("platform_item_id", String(64), nullable=False, default=""),
    Column("platform_sku_id", String(64), nullable=False, default=""),
    Column("merchant_code", String(64), nullable=False, default=""),
    Column("title", Text, nullable=False, default=""),
    Column("qty", Integer, nullable=False),
    Column("price_fen", BigInteger, nullable=False),
    Column("payment_fen", BigInteger, nullable=False),
    Column("refund_state", String(16), nullable=False),
    Column("platform_status", String(48), nullable=False, default=""),
)

order_events = Table(
    "order_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("order_id", Id, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", JSON),
    _created(),
    Index("ix_order_events_order_id", "order_id"),
)

sync_errors = Table(
    "sync_errors",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("key", String(128), nullable=False, default=""),
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False, default=""),
    Column("run_id", Id),
    _created(),
    Index("ix_sync_errors_source", "source"),
)

master_skus = Table(
    "master_skus",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", Text, nullable=False, default=""),
    Column("barcode", String(64), nullable=False, default=""),
    Column("weight_g", Integer, nullable=False, default=0),
    Column("updated_at", UtcDateTime, nullable=False),
)

bundle_components = Table(
    "bundle_components",
    metadata,
    Column(
        "bundle_sku",
        String(64),
        ForeignKey("master_skus.sku", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("component_sku", String(64), primary_key=True),
    Column("qty", Integer, nullable=False),
)

sku_mappings = Table(
    "sku_mappings",
    metadata,
    Column("shop", String(64), primary_key=True),
    Column("platform_sku", String(64), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("qty", Integer, nullable=False, default=1),
)

cursors = Table(
    "cursors",
    metadata,
    Column("shop", String(64), primary_key=True),
    Column("stream", String(64), primary_key=True),
    Column("position", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

shop_state = Table(
    "shop_state",
    metadata,
    Column("shop", String(64), primary_key=True),
    Column("auth_failed_at", UtcDateTime),
    Column("auth_message", Text, nullable=False, default=""),
    Column("updated_at", UtcDateTime, nullable=False),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("shop", String(64)),
    Column("owner", String(128), nullable=False, default=""),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("status", String(16), nullable=False),
    Column("windows", Integer, nullable=False, default=0),
    Column("pages", Integer, nullable=False, default=0),
    Column("orders_seen", Integer, nullable=False, default=0),
    Column("orders_written", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Index("ix_sync_runs_job_started", "job", "started_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("target", String(64), nullable=False),
    Column("idempotency_key", String(160), nullable=False, unique=True),
    Column("subject", String(160)),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=False, default=""),
    Column("ambiguous", Boolean, nullable=False, default=False),
    Column("claimed_by", String(128)),
    Column("claimed_until", UtcDateTime),
    _created(),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("done_at", UtcDateTime),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    # Claims read each target's due messages in order, and find the targets by seeking.
    Index("ix_outbox_target_due", "status", "target", "next_attempt_at", "id"),
    Index("ix_outbox_subject", "subject", "status"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

delivery_orders = Table(
    "delivery_orders",
    metadata,
    Column("code", String(128), primary_key=True),
    Column("order_id", Id, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("shop", String(64), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("state", String(24), nullable=False),
    Column("wms_order_id", String(64), nullable=False, default=""),
    _created(),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_delivery_orders_order_id", "order_id"),
    Index("ix_delivery_orders_warehouse_state", "warehouse", "state"),
)

delivery_order_lines = Table(
    "delivery_order_lines",
    metadata,
    Column(
        "code",
        String(128),
        ForeignKey("delivery_orders.code", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("line_no", Integer, primary_key=True),
    Column("order_line_no", Integer, nullable=False),
    Column("sku", String(64), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("price_fen", BigInteger, nullable=False, default=0),
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_order_code", String(128), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("out_biz_code", String(128), nullable=False),
    Column("carrier", String(32), nullable=False),
    Column("waybill", String(64), nullable=False),
    Column("weight_g", Integer),
    Column("packages", JSON, nullable=False),
    Column("shipped_at", UtcDateTime, nullable=False),
    Column("tracking_state", String(16), nullable=False, default="shipped"),
    _created(),
    UniqueConstraint("warehouse", "out_biz_code"),
    Index("ix_shipments_waybill", "waybill"),
    Index("ix_shipments_delivery_order_code", "delivery_order_code"),
)

stock_ledger = Table(
    "stock_ledger",
    metadata,
    Column("warehouse", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("on_hand", Integer, nullable=False),
    Column("as_of", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

stock_changes = Table(
    "stock_changes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("warehouse", String(64), nullable=False),
    Column("out_biz_code", String(128), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("delta", Integer, nullable=False),
    Column("order_code", String(128), nullable=False, default=""),
    Column("order_type", String(16), nullable=False, default=""),
    _created(),
    UniqueConstraint("warehouse", "out_biz_code", "sku"),
    # What a delivery order shipped (its sales document's lines) is read by its code.
    Index("ix_stock_changes_order_code", "order_code"),
)

bills = Table(
    "bills",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("carrier", String(32), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("filename", Text, nullable=False),
    Column("period_start", String(10)),
    Column("period_end", String(10)),
    Column("line_count", Integer, nullable=False),
    Column("imported_at", UtcDateTime, nullable=False),
    UniqueConstraint("carrier", "sha256"),
)

bill_lines = Table(
    "bill_lines",
    metadata,
    Column("bill_id", Id, ForeignKey("bills.id", ondelete="CASCADE"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("waybill", String(64), nullable=False),
    Column("ship_date", String(10), nullable=False, default=""),
    Column("origin_province", String(16), nullable=False, default=""),
    Column("dest_province", String(16), nullable=False, default=""),
    Column("weight_g", Integer, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
)

reconciliation_reports = Table(
    "reconciliation_reports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("subject", String(64), nullable=False),
    Column("bill_id", Id, ForeignKey("bills.id", ondelete="CASCADE")),
    Column("totals", JSON, nullable=False),
    _created(),
)

reconciliation_rows = Table(
    "reconciliation_rows",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "report_id",
        Id,
        ForeignKey("reconciliation_reports.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(24), nullable=False),
    Column("waybill", String(64)),
    Column("sku", String(64)),
    # Exact decimals as text: rows mix yuan, kilograms and units, and SQLite has no exact NUMERIC.
    Column("expected", String(32)),
    Column("actual", String(32)),
    Column("difference", String(32)),
    Column("detail", Text, nullable=False, default=""),
    Index("ix_reconciliation_rows_report_id", "report_id"),
)

webhook_inbox = Table(
    "webhook_inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("delivery_id", String(160), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("source", "delivery_id"),
)

listings = Table(
    "listings",
    metadata,
    Column("shop", String(64), primary_key=True),
    Column("item_id", String(64), primary_key=True),
    Column("sku_id", String(64), primary_key=True),  # "" for a TOP item without SKUs
    Column("merchant_code", String(64), nullable=False, default=""),
    Column("sku", String(64)),  # the master SKU it resolves to; NULL while unknown
    Column("source", String(16), nullable=False),  # "listing" (the platform's list) | "order"
    Column("platform_quantity", Integer),  # what the platform showed when last listed
    Column("last_seen", UtcDateTime, nullable=False),
)

stock_pushes = Table(
    "stock_pushes",
    metadata,
    Column("shop", String(64), primary_key=True),
    Column("item_id", String(64), primary_key=True),
    Column("sku_id", String(64), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("message_id", Id, nullable=False),  # the outbox message that pushed it
    Column("pushed_at", UtcDateTime, nullable=False),
)

# --- ERP (purchase orders → WMS inbound → receipts; sales outbound documents) ------------------

erp_purchase_orders = Table(
    "erp_purchase_orders",
    metadata,
    Column("number", String(64), primary_key=True),
    Column("erp_id", String(32), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("supplier", String(64), nullable=False),
    Column("purchase_org", String(64), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("wms_order_id", String(64), nullable=False, default=""),
    Column("approved_at", UtcDateTime),
    _created(),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_erp_purchase_orders_state", "state"),
)

erp_purchase_lines = Table(
    "erp_purchase_lines",
    metadata,
    Column(
        "number",
        String(64),
        ForeignKey("erp_purchase_orders.number", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("entry_id", String(32), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("unit", String(32), nullable=False, default=""),
    Column("qty", Integer, nullable=False),
    Column("received", Integer, nullable=False, default=0),
)

erp_receipts = Table(
    "erp_receipts",
    metadata,
    Column("number", String(80), primary_key=True),
    Column("purchase_order", String(64), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("out_biz_code", String(128), nullable=False),
    Column("final", Boolean, nullable=False),
    Column("lines", JSON, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("erp_id", String(32), nullable=False, default=""),
    _created(),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("warehouse", "out_biz_code"),
    Index("ix_erp_receipts_purchase_order", "purchase_order"),
    Index("ix_erp_receipts_state", "state"),
)

erp_sales_outbounds = Table(
    "erp_sales_outbounds",
    metadata,
    Column("number", String(128), primary_key=True),
    Column("shop", String(64), nullable=False),
    Column("platform_order_id", String(64), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("lines", JSON, nullable=False),
    Column("shipped_at", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("erp_id", String(32), nullable=False, default=""),
    _created(),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_erp_sales_outbounds_state", "state"),
)
