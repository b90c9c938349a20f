"""Opening the hub's resources from the settings (shared by the CLI, the daemon and the tests)."""

from config import Settings
from models.clock import Clock
from models.db import safe_url
from models.store import Store
from sync.errors import DatabaseNotReady


async def open_store(settings: Settings, clock: Clock | None = None) -> Store:
    """Open the store and check it is migrated; raise `DatabaseNotReady` with the fix if not."""
    store = Store.open(settings.database_url, clock)
    try:
        current, head = await store.migration_state()
    except Exception as exc:
        await store.close()
        raise DatabaseNotReady(
            f"cannot reach the database {safe_url(settings.database_url)}: {exc}"
        ) from None
    if current != head:
        await store.close()
        raise DatabaseNotReady(
            f"the database {safe_url(settings.database_url)} is at migration {current or 'none'}, "
            f"the code needs {head}: run `ecomhub db upgrade`"
        )
    return store
