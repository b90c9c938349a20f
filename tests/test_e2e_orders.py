"""Orders in, end to end: the real connectors against the sandbox with every fault on.

While the sandbox generates live orders and changes (and injects rate limits, transient errors,
5xx, slow answers, visibility latency and paging drift), the hub pulls each shop repeatedly. After
the world stops changing and a last pull runs past the lag, the store must hold exactly the
sandbox's orders at their newest versions — on SQLite and on PostgreSQL.
"""

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from config import Settings
from models.clock import CST
from models.store import Store
from sandbox.server import Sandbox
from sync.runtime import pull_shops
from tests.e2e import hub_settings

pytestmark = pytest.mark.slow


async def stored(store: Store) -> dict[tuple[str, str], tuple[str, datetime]]:
    found = {}
    async with store.transaction() as tx:
        async for s in tx.iter_orders():
            o = s.order
            found[(o.shop, o.platform_order_id)] = (o.platform_status, o.modified)
    return found


def truth(sandbox: Sandbox) -> dict[tuple[str, str], tuple[str, datetime]]:
    return {
        (o.shop, str(o.order_id)): (o.status, o.modified.astimezone(CST))
        for o in sandbox.world.orders()
    }


async def pull_until_settled(sandbox: Sandbox, settings: Settings, store: Store) -> None:
    lag = max(s.effective_lag for s in settings.shops).total_seconds()
    await asyncio.sleep(lag + sandbox.profile.visibility_latency + 1)
    for _ in range(3):  # a run may stop early on a rate-limit ban; the next one resumes
        runs = await pull_shops(settings, store, settings.shops)
        if all(r.status.value == "ok" for r in runs):
            return


# ECOMHUB_E2E_SEEDS="1,2,…" runs more worlds (issue #4 asks for 20 seeds before a release).
SEEDS = [int(s) for s in os.environ.get("ECOMHUB_E2E_SEEDS", "11,23,37").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
async def test_adversarial_pull_stores_exactly_the_world(
    seed: int, store: Store, database_url: str, tmp_path: Path
) -> None:
    if store.backend == "postgresql" and seed != SEEDS[0]:
        # The engine is the same on both backends; the store's SQL is what differs, and one
        # adversarial world exercises it (the suite's time goes to more seeds on SQLite).
        pytest.skip("PostgreSQL runs the first seed only")
    async with Sandbox(
        seed=seed, profile="adversarial", rate=25.0, backlog=400, backlog_days=1.5
    ) as sandbox:
        settings = hub_settings(sandbox, tmp_path, database_url)
        hub = Store.open(database_url)  # the hub's own store (system clock), like a real run
        try:
            for _ in range(4):  # pull while the world keeps changing
                await pull_shops(settings, hub, settings.shops)
                await asyncio.sleep(1.0)
            await sandbox.stop_live()
            await pull_until_settled(sandbox, settings, hub)
            expected = truth(sandbox)
            got = await stored(hub)
            missing = sorted(set(expected) - set(got))[:5]
            stale = sorted(k for k in expected if k in got and got[k] != expected[k])[:5]
            assert not missing and not stale, f"missing {missing}, stale {stale}"
            assert set(got) == set(expected)
        finally:
            await hub.close()


async def test_backfill_while_live_cursor_runs(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    async with Sandbox(seed=5, profile="calm", rate=10.0, backlog=300, backlog_days=3.0) as sandbox:
        settings = hub_settings(sandbox, tmp_path, database_url)
        hub = Store.open(database_url)
        try:
            await pull_shops(settings, hub, settings.shops)
            async with hub.transaction() as tx:
                live = {s.code: await tx.get_cursor(s.code, "orders") for s in settings.shops}
            now = hub.clock.now()
            since = now - timedelta(days=3, hours=1)
            backfill = asyncio.create_task(
                pull_shops(
                    settings, hub, settings.shops, since=since, until=now - timedelta(days=1)
                )
            )
            await pull_shops(settings, hub, settings.shops)
            runs = await backfill
            assert all(r.status.value == "ok" for r in runs)
            async with hub.transaction() as tx:
                for shop in settings.shops:
                    cursor = await tx.get_cursor(shop.code, "orders")
                    assert cursor is not None and live[shop.code] is not None
                    assert cursor.position >= live[shop.code].position  # type: ignore[union-attr]
            await sandbox.stop_live()
            await pull_until_settled(sandbox, settings, hub)
            assert set(await stored(hub)) == set(truth(sandbox))
        finally:
            await hub.close()
