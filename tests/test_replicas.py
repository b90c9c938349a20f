"""Three `ecomhub run` replicas on one PostgreSQL database against the sandbox: every job runs on
one replica at a time, every order is pushed to the WMS once and every waybill confirmed once,
and when one replica is killed with SIGKILL its share of the work goes on elsewhere after the
lease TTL.

The WMS and courier simulators call back one URL (`server.public_url`), as they would call a
load balancer in production; here it is the first replica, so the replica killed is another one.
"""

import asyncio
import itertools
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from api.server import free_port
from config import load_settings
from models import tables as t
from models.store import Store
from sandbox.server import Sandbox
from tests.e2e import (
    HubProcess,
    caught_up,
    check_exactly_once,
    diagnose,
    everything_settled,
    poll,
    prepared_hub,
)

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.postgres]

LEASE_TTL = 3.0


async def test_three_replicas_share_the_work_once_and_survive_a_kill(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    postgres_url = fresh_postgres_url
    async with Sandbox(
        seed=17, profile="calm", rate=3.0, backlog=60, backlog_days=0.5, ship_delay=0.3
    ) as sb:
        ports = [free_port() for _ in range(3)]
        front = f"http://127.0.0.1:{ports[0]}"
        config = await prepared_hub(sb, tmp_path, postgres_url, ports[0], migrate=False)
        settings = load_settings(config, environ={})
        sb.hub_url = front
        common = {
            "ECOMHUB_SERVER__PUBLIC_URL": front,
            "ECOMHUB_SHOPS__0__POLL_INTERVAL": "1s",
            "ECOMHUB_SHOPS__1__POLL_INTERVAL": "1s",
            "ECOMHUB_DAEMON__LEASE_TTL": f"{LEASE_TTL}s",
            "ECOMHUB_DAEMON__CLAIM_TTL": "5s",
            "ECOMHUB_DAEMON__ROUTE_INTERVAL": "1s",
        }
        replicas = [
            HubProcess(
                config,
                tmp_path / f"replica-{i}.log",
                env={**common, "ECOMHUB_SERVER__PORT": str(p)},
            )
            for i, p in enumerate(ports)
        ]
        store = Store.open(postgres_url)
        try:
            for replica in replicas:
                await replica.start()
            for replica, port in zip(replicas, ports, strict=True):
                await replica.wait_ready(f"http://127.0.0.1:{port}")
            await asyncio.sleep(6)

            victim = replicas[2]
            await victim.kill()
            killed_at = datetime.now(UTC)
            await asyncio.sleep(LEASE_TTL + 12)  # the TTL, then a busy machine's next ticks
            async with store.transaction() as tx:
                later = (
                    await tx.connection.execute(
                        select(t.sync_runs.c.shop, t.sync_runs.c.owner).where(
                            t.sync_runs.c.started_at > killed_at + timedelta(seconds=LEASE_TTL)
                        )
                    )
                ).all()
            pulled = {shop for shop, _ in later if shop}  # ERP polls are runs of no shop
            assert pulled == {s.code for s in settings.shops}, "pulls stopped after a replica died"

            await sb.stop_live()
            stood_still = max(o.modified for o in sb.world.orders())

            async def settled() -> bool:
                return await caught_up(store, settings, stood_still) and await everything_settled(
                    store
                )

            assert await poll(settled, 90), await diagnose(store, sb)
            for replica in replicas[:2]:
                replica.signal(signal.SIGTERM)
            for replica in replicas[:2]:
                assert await replica.wait(30) == 0, replica.tail()

            await check_exactly_once(sb, store)
            async with store.transaction() as tx:
                runs = (
                    await tx.connection.execute(
                        select(
                            t.sync_runs.c.job,
                            t.sync_runs.c.shop,
                            t.sync_runs.c.owner,
                            t.sync_runs.c.started_at,
                            t.sync_runs.c.finished_at,
                        )
                    )
                ).all()
                assert await tx.leases() == []
        finally:
            for replica in replicas:
                if replica.proc is not None and replica.proc.returncode is None:
                    await replica.kill()
            await store.close()

    owners = {owner for *_, owner, _, _ in runs}
    assert len(owners) >= 2, f"one replica did all the pulls: {owners}"
    by_job: dict[tuple[str, str], list[tuple[datetime, datetime, str]]] = {}
    for job, shop, owner, started, finished in runs:
        end = finished or killed_at  # a run the kill cut short ended then
        by_job.setdefault((job, shop), []).append((started, end, owner))
    for key, spans in by_job.items():
        spans.sort()
        for (_, end, owner), (start, _, other) in itertools.pairwise(spans):
            assert start >= end, f"{key}: runs of {owner} and {other} overlapped"
