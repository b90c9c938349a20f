"""channel listings and the last stock value pushed to each

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.tables

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "listings",
        sa.Column("shop", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("sku_id", sa.String(length=64), nullable=False),
        sa.Column("merchant_code", sa.String(length=64), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("platform_quantity", sa.Integer(), nullable=True),
        sa.Column("last_seen", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shop", "item_id", "sku_id", name=op.f("pk_listings")),
    )
    op.create_table(
        "stock_pushes",
        sa.Column("shop", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("sku_id", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column(
            "message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("pushed_at", models.tables.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shop", "item_id", "sku_id", name=op.f("pk_stock_pushes")),
    )


def downgrade() -> None:
    op.drop_table("stock_pushes")
    op.drop_table("listings")
