"""Crash tests: `ecomhub run` against the adversarial sandbox (rate limits, 5xx, paging drift,
ambiguous WMS creates and cancels, duplicate callbacks, live refunds), killed with SIGKILL at
random points 20 times and restarted each time. At the end every order the marketplaces hold is
stored, each delivery order was created in the WMS once, each order closed before it shipped was
cancelled there, and each waybill reached its marketplace once — the one the WMS gave. The ERP
flows run alongside (the sandbox's K3Cloud with lost sessions and lost save answers): each
purchase order reached the WMS as one inbound notice, each WMS receipt became one receipt in the
ERP, each shipped delivery order one sales document — none twice, none missing.

Two seeds run in the suite, side by side; `ECOMHUB_CRASH_SEEDS` (comma-separated) runs others
(41, 42, 43 together, before the ERP joined the flow); `ECOMHUB_CRASH_KILLS` more kills.
"""

import asyncio
import contextlib
import os
import random
import shutil
from pathlib import Path

import pytest

from api.server import free_port
from config import load_settings
from models.store import Store
from sandbox.server import Sandbox
from tests.e2e import (
    HubProcess,
    caught_up,
    check_erp_exactly_once,
    check_exactly_once,
    diagnose,
    erp_settled,
    everything_settled,
    poll,
    prepared_hub,
)

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

SEEDS = [int(s) for s in os.environ.get("ECOMHUB_CRASH_SEEDS", "41,42").split(",")]
KILLS = int(os.environ.get("ECOMHUB_CRASH_KILLS", "20"))

# Short loops so that 20 lives of a few seconds each see pulls, routes, sends and callbacks.
FAST = {
    "ECOMHUB_SHOPS__0__POLL_INTERVAL": "1s",
    "ECOMHUB_SHOPS__1__POLL_INTERVAL": "1s",
    "ECOMHUB_DAEMON__ROUTE_INTERVAL": "1s",
    "ECOMHUB_DAEMON__STOCK_INTERVAL": "5s",
    "ECOMHUB_ERP__POLL_INTERVAL": "2s",
    "ECOMHUB_DAEMON__LEASE_TTL": "5s",
    "ECOMHUB_DAEMON__CLAIM_TTL": "15s",
    # Every killed life's claims count as attempts: keep the schedule short so the backoff
    # after 20 deaths stays within the test's patience (the schedule itself is tested alone).
    "ECOMHUB_DAEMON__RETRY_DELAYS": "1s,2s,4s,8s",
    "ECOMHUB_DAEMON__MAX_ATTEMPTS": "1000",
}


async def crash_and_recover(seed: int, database_url: str, tmp_path: Path) -> None:
    rng = random.Random(seed)
    async with Sandbox(
        seed=seed, profile="adversarial", rate=3.0, backlog=60, backlog_days=0.5, ship_delay=0.3
    ) as sb:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = await prepared_hub(sb, tmp_path, database_url, port, migrate=False)
        settings = load_settings(config, environ={})
        sb.hub_url = base
        hub = HubProcess(config, tmp_path / "hub.log", env=FAST)
        working_lives = 0
        for _ in range(KILLS):
            await hub.start()
            if rng.random() < 0.2:  # some lives die while still starting up
                await asyncio.sleep(rng.uniform(0.2, 2.0))
            else:  # most end mid-work: pulling, routing, sending, taking callbacks
                with contextlib.suppress(AssertionError):
                    await hub.wait_ready(base, within=20)
                    working_lives += 1
                await asyncio.sleep(rng.uniform(0.05, 2.5))
            await hub.kill()
        assert working_lives >= KILLS // 2, f"only {working_lives} lives got to work"
        await sb.stop_live()
        stood_still = sb.world.orders() and max(o.modified for o in sb.world.orders())
        assert stood_still
        await hub.start()
        store = Store.open(database_url)
        try:
            await hub.wait_ready(base)
            await asyncio.sleep(settings.shops[0].effective_lag.total_seconds())

            async def settled() -> bool:
                return (
                    await caught_up(store, settings, stood_still)
                    and await everything_settled(store)
                    and await erp_settled(sb, store)
                )

            assert await poll(settled, 240), await diagnose(store, sb) + "\n" + hub.tail()
            assert await hub.stop() == 0, hub.tail()
            truth = {(o.shop, str(o.order_id)) for o in sb.world.orders()}
            async with store.transaction() as tx:
                stored = {(s.order.shop, s.order.platform_order_id) async for s in tx.iter_orders()}
            assert truth == stored, f"missing {sorted(truth - stored)[:5]}"
            await check_exactly_once(sb, store)
            await check_erp_exactly_once(sb, store)
        finally:
            if hub.proc is not None and hub.proc.returncode is None:
                await hub.kill()
            await store.close()


async def test_sigkill_at_random_points_changes_no_effect(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The seeds run side by side (each its own sandbox, hub process and SQLite file): the
    machine is busier, which only makes the kills land in more places."""
    dirs = {seed: tmp_path / f"seed-{seed}" for seed in SEEDS}
    for path in dirs.values():
        path.mkdir()
        shutil.copy(sqlite_template, path / "hub.db")
    outcomes = await asyncio.gather(
        *(
            crash_and_recover(seed, f"sqlite:///{path / 'hub.db'}", path)
            for seed, path in dirs.items()
        ),
        return_exceptions=True,
    )
    failures = {seed: o for seed, o in zip(SEEDS, outcomes, strict=True) if o is not None}
    for seed, failure in failures.items():
        print(f"seed {seed}: {failure!r}")
    if failures:
        seed, failure = next(iter(failures.items()))
        raise AssertionError(f"seed {seed} (of {sorted(failures)} failing)") from failure
