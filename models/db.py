"""Engines and migrations for the two supported backends.

SQLite (the embedded default) runs through aiosqlite with WAL and foreign keys on; PostgreSQL runs
through psycopg 3. Operators write plain URLs (`sqlite:///ecomhub.db`,
`postgresql://user@host/db`); `async_url` picks the async driver.
"""

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"

SQLITE_POOL_SIZE = 20

# Execution option of a connection whose transactions only read (`Store.read`).
READ_ONLY = "ecomhub_read_only"


class UnsupportedDatabase(ValueError):
    """The database URL names a backend the hub does not support."""


def async_url(url: str) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise UnsupportedDatabase(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def safe_url(database_url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database_url>"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # Readers run side by side (`Store.read`); a connection beyond the pool's size is
        # closed when returned, and each new aiosqlite connection starts a thread and runs the
        # pragmas below: keep enough of them for the dispatcher's concurrent sends.
        kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
    engine = create_async_engine(async_url(url), **kwargs)
    if is_sqlite(engine):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
            # The driver's own BEGIN is deferred: a transaction that reads, then writes while
            # another connection writes fails at once with "database is locked" (SQLite cannot
            # wait there without deadlocking). BEGIN IMMEDIATE takes the write lock up front,
            # where busy_timeout waits for it. WAL readers are not blocked by it.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # `Store.read()` marks its connection: a read-only transaction must not take (or
            # wait for) the write lock; a deferred BEGIN reads a WAL snapshot.
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to `revision` in one transaction (PostgreSQL) or sequentially (SQLite)."""

    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)
