"""ERP: purchase orders, their lines, receipts and sales outbound documents

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.tables

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erp_purchase_orders",
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("erp_id", sa.String(length=32), nullable=False),
        sa.Column("warehouse", sa.String(length=64), nullable=False),
        sa.Column("supplier", sa.String(length=64), nullable=False),
        sa.Column("purchase_org", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("wms_order_id", sa.String(length=64), nullable=False),
        sa.Column("approved_at", models.tables.UtcDateTime(timezone=True), nullable=True),
        sa.Column("created_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_erp_purchase_orders")),
    )
    with op.batch_alter_table("erp_purchase_orders", schema=None) as batch_op:
        batch_op.create_index("ix_erp_purchase_orders_state", ["state"], unique=False)

    op.create_table(
        "erp_purchase_lines",
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("entry_id", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["number"],
            ["erp_purchase_orders.number"],
            name=op.f("fk_erp_purchase_lines_number_erp_purchase_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("number", "entry_id", name=op.f("pk_erp_purchase_lines")),
    )
    op.create_table(
        "erp_receipts",
        sa.Column("number", sa.String(length=80), nullable=False),
        sa.Column("purchase_order", sa.String(length=64), nullable=False),
        sa.Column("warehouse", sa.String(length=64), nullable=False),
        sa.Column("out_biz_code", sa.String(length=128), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("received_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("erp_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_erp_receipts")),
        sa.UniqueConstraint(
            "warehouse", "out_biz_code", name=op.f("uq_erp_receipts_warehouse_out_biz_code")
        ),
    )
    with op.batch_alter_table("erp_receipts", schema=None) as batch_op:
        batch_op.create_index("ix_erp_receipts_purchase_order", ["purchase_order"], unique=False)
        batch_op.create_index("ix_erp_receipts_state", ["state"], unique=False)

    op.create_table(
        "erp_sales_outbounds",
        sa.Column("number", sa.String(length=128), nullable=False),
        sa.Column("shop", sa.String(length=64), nullable=False),
        sa.Column("platform_order_id", sa.String(length=64), nullable=False),
        sa.Column("warehouse", sa.String(length=64), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("shipped_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("erp_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_erp_sales_outbounds")),
    )
    with op.batch_alter_table("erp_sales_outbounds", schema=None) as batch_op:
        batch_op.create_index("ix_erp_sales_outbounds_state", ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("erp_sales_outbounds", schema=None) as batch_op:
        batch_op.drop_index("ix_erp_sales_outbounds_state")

    op.drop_table("erp_sales_outbounds")
    with op.batch_alter_table("erp_receipts", schema=None) as batch_op:
        batch_op.drop_index("ix_erp_receipts_state")
        batch_op.drop_index("ix_erp_receipts_purchase_order")

    op.drop_table("erp_receipts")
    op.drop_table("erp_purchase_lines")
    with op.batch_alter_table("erp_purchase_orders", schema=None) as batch_op:
        batch_op.drop_index("ix_erp_purchase_orders_state")

    op.drop_table("erp_purchase_orders")
