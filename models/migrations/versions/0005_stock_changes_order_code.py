"""Stock changes: an index on the delivery order they belong to

A shipment's sales document reads what the WMS shipped from the stock changes of its delivery
order; without an index each read scanned every stock change ever recorded, so the cost per
shipment grew with the history (the 100k-order benchmark slowed from 26 to 12 orders/s).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stock_changes", schema=None) as batch_op:
        batch_op.create_index("ix_stock_changes_order_code", ["order_code"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stock_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_stock_changes_order_code")
