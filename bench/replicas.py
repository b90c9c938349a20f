"""Benchmark: 1 and then 3 `ecomhub run` replicas on PostgreSQL, orders/s end to end (issue #6).

    .venv/bin/python bench/replicas.py [--orders 2000] [--replicas 1,3] [--latency 0.05]

For each replica count: a fresh PostgreSQL database (127.0.0.1:5432, user postgres; created,
migrated with `models.db.create_engine` + `upgrade`, dropped afterwards) and a fresh sandbox in
this process whose every platform, WMS, courier and ERP call is delayed by `--latency` seconds
(`FaultProfile(slow=1.0, slow_seconds=…)`; no other faults), with ample stock in every warehouse.
The replicas share one config (distinct `ECOMHUB_SERVER__PORT`; the WMS and courier call back one
`ECOMHUB_SERVER__PUBLIC_URL`, the first replica, as they would a load balancer) and poll every
second. Once every replica is ready, the backlog appears at once: `--orders` paid orders modified
in the last few minutes (inside the pull's overlap, so the next pull reads them). Timed from that
moment until every routed delivery order is shipped and its waybill confirmed on the marketplace
(pulled → routed → created in the WMS → shipped → `platform.ship` done). Target: 3 replicas
≥ 2.5 × the orders/s of one.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import structlog
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.server import free_port  # noqa: E402
from bench.harness import fill_stock  # noqa: E402
from config import event_loop  # noqa: E402
from models import tables as t  # noqa: E402
from models.store import Store  # noqa: E402
from sandbox.faults import FaultProfile  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402
from sync.fulfilment import PLATFORM_SHIP, WMS_CREATE  # noqa: E402
from tests.e2e import HubProcess, prepared_hub  # noqa: E402

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@dataclass
class Result:
    replicas: int
    orders: int
    delivery_orders: int
    seconds: float
    creates_done: float
    by_owner: dict[str, int]
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.delivery_orders / self.seconds


def create_backlog(sb: Sandbox, count: int) -> int:
    """`count` paid orders, round robin over the shops, modified over the last five minutes;
    returns how many can be routed (every SKU known to the catalogue; the rest are held)."""
    known = {code for code, *_ in sb.world.catalog()}
    shops = sorted(sb.world.shops)
    start = datetime.now(UTC) - timedelta(minutes=5)
    step = timedelta(seconds=280 / max(count, 1))
    routable = 0
    for n in range(count):
        order = sb.world.create_order(shops[n % len(shops)], start + step * n)
        routable += all(line.merchant_code in known for line in order.lines)
    return routable


async def counts(store: Store) -> tuple[int, int, int, int, int]:
    """(orders, delivery orders, shipped ones, creates done, waybills confirmed)."""
    async with store.engine.connect() as conn:
        orders = (await conn.execute(select(func.count()).select_from(t.orders))).scalar()
        total = (await conn.execute(select(func.count()).select_from(t.delivery_orders))).scalar()
        shipped = (
            await conn.execute(
                select(func.count())
                .select_from(t.delivery_orders)
                .where(t.delivery_orders.c.state == "shipped")
            )
        ).scalar()
        done: dict[str, int] = dict(
            (
                await conn.execute(
                    select(t.outbox.c.kind, func.count())
                    .where(t.outbox.c.status == "done")
                    .group_by(t.outbox.c.kind)
                )
            ).all()
        )
    return (
        int(orders or 0),
        int(total or 0),
        int(shipped or 0),
        int(done.get(WMS_CREATE, 0)),
        int(done.get(PLATFORM_SHIP, 0)),
    )


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(replicas: int, args: argparse.Namespace) -> Result:
    name = f"ecomhub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    profile = FaultProfile(slow=1.0, slow_seconds=args.latency)
    try:
        async with Sandbox(
            seed=args.seed, profile=profile, backlog=0, ship_delay=args.ship_delay
        ) as sb:
            fill_stock(sb)
            with tempfile.TemporaryDirectory() as tmp:
                ports = [free_port() for _ in range(replicas)]
                front = f"http://127.0.0.1:{ports[0]}"
                sb.hub_url = front
                config = await prepared_hub(sb, Path(tmp), url, ports[0])
                common = {
                    "ECOMHUB_SERVER__PUBLIC_URL": front,
                    "ECOMHUB_SHOPS__0__POLL_INTERVAL": "1s",
                    "ECOMHUB_SHOPS__1__POLL_INTERVAL": "1s",
                    "ECOMHUB_DAEMON__ROUTE_INTERVAL": "1s",
                    "ECOMHUB_DAEMON__LEASE_TTL": "10s",
                    "ECOMHUB_DAEMON__PER_TARGET": str(args.per_target),
                    "ECOMHUB_LOG_LEVEL": "warning",
                }
                hubs = [
                    HubProcess(
                        config,
                        Path(tmp) / f"replica-{i}.log",
                        env={**common, "ECOMHUB_SERVER__PORT": str(port)},
                    )
                    for i, port in enumerate(ports)
                ]
                store = Store.open(url)
                try:
                    for hub in hubs:
                        await hub.start()
                    for hub, port in zip(hubs, ports, strict=True):
                        await hub.wait_ready(f"http://127.0.0.1:{port}")
                    await asyncio.sleep(args.warmup)  # first pulls and stock readings
                    pids = [hub.proc.pid for hub in hubs if hub.proc is not None]
                    cpu_before = {str(pid): process_cpu(pid) for pid in pids}
                    routable = create_backlog(sb, args.orders)
                    t0 = time.perf_counter()
                    creates_done = 0.0
                    last = 0.0
                    while True:
                        orders, total, shipped, created, confirmed = await counts(store)
                        elapsed = time.perf_counter() - t0
                        if not creates_done and created >= routable:
                            creates_done = elapsed
                        if orders >= args.orders and total >= routable == confirmed == shipped:
                            break
                        if elapsed > args.timeout:
                            raise RuntimeError(
                                f"not settled after {args.timeout:.0f}s: orders {orders}, "
                                f"delivery orders {total}, created {created}, shipped {shipped}, "
                                f"confirmed {confirmed}\n{hubs[0].tail()}"
                            )
                        if elapsed - last > 10:
                            last = elapsed
                            print(
                                f"  {replicas} replica(s) {elapsed:5.0f}s: pulled {orders}, "
                                f"created {created}/{total}, shipped {shipped}, "
                                f"confirmed {confirmed}"
                            )
                        await asyncio.sleep(0.25)
                    seconds = time.perf_counter() - t0
                    cpu = {
                        pid: process_cpu(int(pid)) - before for pid, before in cpu_before.items()
                    }
                    async with store.engine.connect() as conn:
                        owners: dict[str, int] = dict(
                            (
                                await conn.execute(
                                    select(t.sync_runs.c.owner, func.count()).group_by(
                                        t.sync_runs.c.owner
                                    )
                                )
                            ).all()
                        )
                    for hub in hubs:
                        hub.signal(signal.SIGTERM)
                    for hub in hubs:
                        await hub.wait(60)
                finally:
                    for hub in hubs:
                        if hub.proc is not None and hub.proc.returncode is None:
                            await hub.kill()
                    await store.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return Result(
        replicas=replicas,
        orders=orders,
        delivery_orders=total,
        seconds=seconds,
        creates_done=creates_done,
        by_owner={str(k): int(v) for k, v in owners.items()},
        cpu=cpu,
    )


async def run(args: argparse.Namespace) -> None:
    results = []
    for replicas in (int(n) for n in args.replicas.split(",")):
        result = await one_run(replicas, args)
        results.append(result)
        cpu = sum(result.cpu.values())
        print(
            f"{replicas} replica(s): {result.orders} orders → {result.delivery_orders} delivery "
            f"orders shipped and confirmed in {result.seconds:.1f}s = {result.rate:.1f} orders/s "
            f"(all created in the WMS after {result.creates_done:.1f}s); hub CPU {cpu:.0f}s "
            f"({', '.join(f'{c:.0f}' for c in result.cpu.values())}); "
            f"sync runs by replica {sorted(result.by_owner.values(), reverse=True)}"
        )
    print(
        f"cores: {os.cpu_count()}  added latency {args.latency * 1000:.0f} ms per call  "
        f"ship delay {args.ship_delay}s  per target {args.per_target}"
    )
    if len(results) >= 2:
        base = results[0]
        for other in results[1:]:
            print(
                f"ratio {other.replicas} : {base.replicas} replicas = "
                f"{other.rate / base.rate:.2f}×  (target ≥ 2.5× for 3 : 1)"
            )


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--replicas", default="1,3", help="comma-separated replica counts")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to each call")
    parser.add_argument("--ship-delay", type=float, default=1.0)
    parser.add_argument("--per-target", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    event_loop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
