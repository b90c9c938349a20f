"""Benchmark: N reviewed orders routed, pushed to the sandbox WMS and confirmed back (issue #5).

    .venv/bin/python bench/fulfil.py [--orders 100000] [--ship-delay 1.0] [--per-target 4]

Everything runs in this process, on one event loop: the sandbox (calm profile, no artificial
latency), the hub's ASGI app on a loopback port for the WMS callbacks, and the hub's engine on a
fresh SQLite file. Setup (not timed as the figure): the sandbox gets N paid orders that pass
review (every SKU known; the ones with unknown SKUs are created too and stay held), every warehouse gets ample stock, the catalogue is imported, both shops are pulled and the
stock is read. Then, timed: routing (`sync.runtime.route`) runs beside one long-lived outbox
dispatcher (the handlers `ecomhub push` uses), which sends every `wms.create`; the WMS ships after
`--ship-delay` seconds and calls the hub back; the shipment's `platform.ship` (waybill to the
marketplace) and `tracking.subscribe` go out through the same outbox. Done when every delivery
order is shipped and every message is done.

Prints orders/s through the outbox (delivery orders from the first routing commit to the last
waybill confirmed), routing → WMS acceptance p50/p99 (routing = the `wms.create` message's
`created_at` in the store, i.e. inside the routing transaction; acceptance = wall time of the
append to `sb.qimen.creates`, recorded by a wrapper list), routing → waybill confirmed, and peak
RSS of the process (hub + sandbox + N orders held in the sandbox's memory).
"""

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from api.server import free_port, serve  # noqa: E402
from bench.harness import TimedCreates, fill_stock  # noqa: E402
from config import event_loop, load_settings  # noqa: E402
from models import tables as t  # noqa: E402
from models.db import create_engine, upgrade  # noqa: E402
from models.store import Store  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402
from sync.catalog import import_catalog  # noqa: E402
from sync.fulfilment import PLATFORM_SHIP, WMS_CREATE  # noqa: E402
from sync.outbox import Dispatcher, RetrySchedule  # noqa: E402
from sync.runtime import (  # noqa: E402
    effects_for,
    erp_effects_for,
    pull_shops,
    refresh_stock,
    replica_name,
    route,
)
from tests.e2e import write_catalog  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def seed_orders(sb: Sandbox, wanted: int) -> tuple[int, int]:
    """Paid orders over the last two hours until `wanted` of them pass review (every SKU known;
    the others are held by review); returns (passing, all)."""
    known = {code for code, *_ in sb.world.catalog()}
    shops = sorted(sb.world.shops)
    start = datetime.now(UTC) - timedelta(hours=2)
    step = timedelta(seconds=(2 * 3600 - 120) / max(wanted * 1.1, 1))
    clean = made = 0
    while clean < wanted:
        order = sb.world.create_order(shops[made % len(shops)], start + step * made)
        made += 1
        if all(line.merchant_code in known for line in order.lines):
            clean += 1
    return clean, made


async def progress(store: Store) -> tuple[int, int, int]:
    """(delivery orders, shipped ones, messages not yet done)."""
    async with store.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(t.delivery_orders))).scalar()
        shipped = (
            await conn.execute(
                select(func.count())
                .select_from(t.delivery_orders)
                .where(t.delivery_orders.c.state == "shipped")
            )
        ).scalar()
        open_ = (
            await conn.execute(
                select(func.count())
                .select_from(t.outbox)
                .where(t.outbox.c.status.not_in(("done", "superseded")))
            )
        ).scalar()
    return int(total or 0), int(shipped or 0), int(open_ or 0)


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    async with Sandbox(seed=args.seed, profile="calm", backlog=0, ship_delay=args.ship_delay) as sb:
        creates = TimedCreates()
        sb.qimen.creates = creates
        fill_stock(sb)
        clean, made = seed_orders(sb, args.orders)
        print(
            f"sandbox: {made} paid orders ({clean} pass review) in "
            f"{time.perf_counter() - started:.1f}s"
        )
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'hub.db'}"
            config = Path(tmp) / "ecomhub.toml"
            # A port known up front: the courier subscriptions carry `server.public_url`.
            port = free_port()
            config.write_text(sb.hub_config_toml(url, "127.0.0.1", port), encoding="utf-8")
            settings = load_settings(
                config, environ={"ECOMHUB_DAEMON__PER_TARGET": str(args.per_target)}
            )
            engine = create_engine(url)
            await upgrade(engine)
            await engine.dispose()
            store = Store.open(url)
            effects = effects_for(settings, store)
            erp_effects = erp_effects_for(settings, store)
            dispatcher = Dispatcher(
                store,
                {**effects.handlers(), **erp_effects.handlers()},
                owner=replica_name(),
                schedule=RetrySchedule.from_config(settings.daemon),
                per_target=settings.daemon.per_target,
            )
            try:
                app = create_app(settings, store, on_write=dispatcher.wake.set)
                async with serve(app, port=port):
                    sb.hub_url = f"http://127.0.0.1:{port}"
                    await import_catalog(store, settings, write_catalog(sb, Path(tmp) / "c.csv"))
                    mark = time.perf_counter()
                    runs = await pull_shops(settings, store, settings.shops)
                    pulled = sum(r.orders_written for r in runs)
                    await refresh_stock(settings, store)
                    print(
                        f"setup: {pulled} orders pulled and stock read in "
                        f"{time.perf_counter() - mark:.1f}s"
                    )

                    stop = asyncio.Event()
                    loop = asyncio.create_task(dispatcher.run(stop, idle=0.2))
                    t0 = time.perf_counter()
                    routing = await route(settings, store)
                    routed_in = time.perf_counter() - t0
                    dispatcher.wake.set()
                    print(
                        f"routed {routing.routed} orders into {routing.delivery_orders} delivery "
                        f"orders in {routed_in:.1f}s ({routing.held} held); pushing…"
                    )
                    last = 0.0
                    while True:
                        total, shipped, open_ = await progress(store)
                        if total and shipped == total and open_ == 0:
                            break
                        if loop.done():
                            loop.result()
                        if time.perf_counter() - last > 10:
                            last = time.perf_counter()
                            print(
                                f"  {time.perf_counter() - t0:6.0f}s  created in WMS "
                                f"{len(creates)}/{total}  shipped {shipped}  open messages {open_}"
                            )
                        await asyncio.sleep(0.5)
                    elapsed = time.perf_counter() - t0
                    stop.set()
                    await loop
            finally:
                await effects.aclose()
                await erp_effects.aclose()

            async with store.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(
                            t.outbox.c.kind,
                            t.outbox.c.idempotency_key,
                            t.outbox.c.created_at,
                            t.outbox.c.done_at,
                            t.outbox.c.attempts,
                        )
                    )
                ).all()
            await store.close()

    routed_at: dict[str, datetime] = {}
    confirmed_at: dict[str, datetime] = {}
    kinds: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    for kind, key, created_at, done_at, tries in rows:
        kinds[kind] += 1
        attempts[kind] += tries
        code = key.removeprefix(f"{kind}:")
        created = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at
        if kind == WMS_CREATE:
            routed_at[code] = created
        elif kind == PLATFORM_SHIP and done_at is not None:
            confirmed_at[code] = done_at.replace(tzinfo=UTC) if done_at.tzinfo is None else done_at
    to_wms = [
        creates.accepted[c] - r.timestamp() for c, r in routed_at.items() if c in creates.accepted
    ]
    to_confirm = [
        (confirmed_at[c] - r).total_seconds() for c, r in routed_at.items() if c in confirmed_at
    ]
    first = min(routed_at.values())
    done = max(confirmed_at.values())
    span = (done - first).total_seconds()
    wms_span = max(creates.accepted.values()) - first.timestamp()
    n = len(routed_at)
    print(f"cores: {os.cpu_count()}  ship delay {args.ship_delay}s  per target {args.per_target}")
    print(f"messages: {dict(kinds)}  attempts: {dict(attempts)}")
    print(
        f"outbox: {n} delivery orders created in the WMS and confirmed back in {span:.1f}s "
        f"→ {n / span:.0f} orders/s end to end (creates alone: {n / wms_span:.0f}/s; "
        f"routing {routed_in:.1f}s; wall from routing start {elapsed:.1f}s)"
    )
    print(
        f"routing → WMS accepted: p50 {percentile(to_wms, 0.5):.3f}s  "
        f"p99 {percentile(to_wms, 0.99):.3f}s  max {max(to_wms):.3f}s  "
        f"mean {statistics.fmean(to_wms):.3f}s"
    )
    print(
        f"routing → waybill confirmed: p50 {percentile(to_confirm, 0.5):.3f}s  "
        f"p99 {percentile(to_confirm, 0.99):.3f}s"
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - started
    print(
        f"peak RSS {peak_rss_mb():.0f} MB, CPU {cpu:.0f}s in {wall:.0f}s wall "
        f"({cpu / wall:.0%} of one core; hub and sandbox in one process)"
    )


def main() -> None:
    # The product's own log at warning level: per-message lines would dominate the drain.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--ship-delay", type=float, default=1.0)
    parser.add_argument("--per-target", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    event_loop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
