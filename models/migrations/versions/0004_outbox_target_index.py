"""Outbox: an index to claim each target's due messages on its own

A claim used to scan the oldest due messages of all targets together, so a deep backlog for one
target (a slow warehouse) could hide every other target's messages. Claims now read each target
up to its free send slots, and find the targets with a loose index scan; both use this index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_target_due", ["status", "target", "next_attempt_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_target_due")
