"""Migrations build the schema from empty on both backends, and agree with models/tables.py."""

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from models.db import create_engine, current_revision, head_revision, upgrade
from models.store import Store
from models.tables import metadata


async def test_upgrade_from_empty_reaches_head(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert await current_revision(engine) is None
    await upgrade(engine)
    await upgrade(engine)  # a second upgrade is a no-op
    assert await current_revision(engine) == head_revision()

    def tables(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    async with engine.connect() as conn:
        assert set(metadata.tables) <= await conn.run_sync(tables)
    await engine.dispose()


async def test_models_and_migrations_agree(store: Store) -> None:
    """Autogenerate against the migrated database finds nothing to change (both backends)."""

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    assert (await store.migration_state())[0] == head_revision()
