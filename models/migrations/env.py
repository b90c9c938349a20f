"""Alembic environment: runs on the connection `models.db.upgrade` hands over."""

from alembic import context
from sqlalchemy import Connection

from models.tables import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `ecomhub db upgrade` (models.db.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
