"""Shared fixtures: a migrated store on SQLite and on PostgreSQL, a fixed clock, configs on disk.

PostgreSQL tests (marker `postgres`) use `ECOMHUB_TEST_POSTGRES_URL` (a server URL whose user may
create databases) or 127.0.0.1:5432 as `postgres`. Each test run creates its own database and
drops it at the end. Without a reachable server those tests are skipped with the reason, unless
`ECOMHUB_REQUIRE_POSTGRES=1` (set by .ci/run), which turns the skip into a failure.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import structlog
from sqlalchemy.engine import make_url

from models.clock import FixedClock
from models.db import create_engine, upgrade
from models.store import Store
from models.tables import metadata

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

# Tests log through structlog like the product; keep the captured output to warnings and up.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _pg_admin_url() -> str:
    return os.environ.get("ECOMHUB_TEST_POSTGRES_URL", DEFAULT_PG)


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    admin = _pg_admin_url()
    try:
        with psycopg.connect(_conninfo(admin), autocommit=True, connect_timeout=3) as conn:
            name = f"ecomhub_test_{uuid.uuid4().hex[:10]}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL reachable at {make_url(admin).render_as_string()}: {exc}"
        if os.environ.get("ECOMHUB_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)

    async def migrate() -> None:
        engine = create_engine(url)
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(migrate())
    yield url
    with psycopg.connect(_conninfo(admin), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database (one per xdist worker), emptied for this test: no test
    sees another's rows, whatever order the tests run in."""
    names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    with psycopg.connect(_conninfo(postgres_url), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return postgres_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating each time would be slower)."""
    path = tmp_path_factory.mktemp("template") / "template.db"

    async def migrate() -> None:
        engine = create_engine(f"sqlite:///{path}")
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(migrate())
    with contextlib.closing(sqlite3.connect(path)) as conn:  # fold the WAL into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "hub.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test once on SQLite and once on PostgreSQL (an empty, migrated database)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
async def store(database_url: str, clock: FixedClock) -> AsyncIterator[Store]:
    store = Store.open(database_url, clock)
    yield store
    await store.close()
