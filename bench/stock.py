"""Benchmark: one channel stock sync cycle over 100k SKUs × 4 shops with 1 % of the SKUs changed.

    .venv/bin/python bench/stock.py [--skus 100000] [--changed 0.01] [--shops 4]

A fresh SQLite store holds N master SKUs, their stock in two warehouses, and N listings in each
shop (two Tmall, two JD; Tmall items of 1–5 SKUs, some without SKUs; JD wares of 1–5 SKUs), with
the last pushed value of every listing already equal to what it should show (as after an earlier
sync). The cycle measured is what the daemon's `stock-sync` job and the dispatcher do: compute
every listing, enqueue the changed values, and drain the outbox through the real connectors
(signing, envelopes, TOP's ≤ 20 SKUs per `skus.quantity.update`, one JD `updateSkuStock` per
SKU) to an in-process platform that answers success and counts the calls. Prints the seconds of
a no-change cycle and of the 1 % cycle, with the platform calls of each.
"""

import argparse
import json
import logging
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import (  # noqa: E402
    Settings,
    ShopConfig,
    event_loop,
)
from connectors.base import Marketplace  # noqa: E402
from connectors.registry import marketplace_for  # noqa: E402
from models.db import create_engine, upgrade  # noqa: E402
from models.store import Store  # noqa: E402
from sync.channel_stock import LISTINGS_STREAM, sync_channel_stock  # noqa: E402
from sync.fulfilment import Effects  # noqa: E402
from sync.outbox import Dispatcher  # noqa: E402
from sync.runtime import effects_for  # noqa: E402

WAREHOUSES = ("WH-EAST", "WH-NORTH")


class Platform:
    """Answers every TOP / JOS stock call with success and counts the calls per method."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def handler(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        method = form.get("method", [""])[0]
        self.calls[method] += 1
        if method.startswith("jingdong."):
            key = method.replace(".", "_") + "_responce"
            return httpx.Response(200, json={key: {"code": "0", "success": True}})
        key = method.removeprefix("taobao.").replace(".", "_") + "_response"
        return httpx.Response(200, json={key: {"item": {"num_iid": 1}, "request_id": "bench"}})

    def total(self) -> int:
        return sum(self.calls.values())


def settings_for(shops: int, db: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{db}",
            "shops": [
                {
                    "code": f"shop-{n}",
                    "platform": "tmall" if n % 2 == 0 else "jd",
                    "api_url": "http://platform.invalid/router",
                    "app_key": f"key{n}",
                    "app_secret": "secret",
                    "access_token": "token",
                }
                for n in range(shops)
            ],
            "warehouses": [
                {
                    "code": code,
                    "api_url": "http://wms.invalid/qimen",
                    "app_key": "k",
                    "app_secret": "s",
                    "customer_id": "OWNER",
                    "default_carrier": "SF",
                }
                for code in WAREHOUSES
            ],
        }
    )


def seed(settings: Settings, db: Path, skus: int, rng: random.Random) -> None:
    """Catalog, ledger, listings and the values pushed before (as after an earlier sync),
    written with plain sqlite3: setting up is not what is measured."""
    codes = [f"M{n:06d}" for n in range(skus)]
    stock = {wh: {c: rng.randint(0, 500) for c in codes} for wh in WAREHOUSES}
    total = {c: sum(stock[wh][c] for wh in WAREHOUSES) for c in codes}
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO master_skus (sku, name, barcode, weight_g, updated_at) VALUES (?, '', '', 0, ?)",
        [(c, now) for c in codes],
    )
    for wh in WAREHOUSES:
        conn.executemany(
            "INSERT INTO stock_ledger (warehouse, sku, on_hand, as_of, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(wh, c, q, now, now) for c, q in stock[wh].items()],
        )
    for n, shop in enumerate(settings.shops):
        rows: list[tuple[str, str, str, str]] = []
        index = 0
        item = 10_000_000 * (n + 1)
        while index < skus:
            item += 1
            size = rng.randint(1, 5)
            without_skus = shop.platform == "tmall" and size == 1 and rng.random() < 0.5
            for k, code in enumerate(codes[index : index + size]):
                rows.append((shop.code, str(item), "" if without_skus else f"{item}{k:02d}", code))
            index += size
        conn.executemany(
            "INSERT INTO listings (shop, item_id, sku_id, merchant_code, sku, source, last_seen) "
            "VALUES (?, ?, ?, ?, ?, 'listing', ?)",
            [(s, i, k, c, c, now) for s, i, k, c in rows],
        )
        conn.executemany(
            "INSERT INTO stock_pushes (shop, item_id, sku_id, quantity, message_id, pushed_at) "
            "VALUES (?, ?, ?, ?, 0, ?)",
            [(s, i, k, total[c], now) for s, i, k, c in rows],
        )
        conn.execute(
            "INSERT INTO cursors (shop, stream, position, updated_at) VALUES (?, ?, ?, ?)",
            (shop.code, LISTINGS_STREAM, now, now),
        )
    conn.commit()
    conn.close()


async def cycle(
    settings: Settings, store: Store, platform: Platform
) -> tuple[float, float, int, int, int]:
    """(compute+enqueue seconds, drain seconds, values enqueued, messages sent, calls)."""
    transport = httpx.MockTransport(platform.handler)

    def market(shop: ShopConfig) -> Marketplace:
        return marketplace_for(shop, transport=transport)

    before = platform.total()
    cpu = time.process_time()
    started = time.perf_counter()
    result = await sync_channel_stock(settings, store, market)
    planned = time.perf_counter()
    effects = Effects(
        store,
        settings,
        wms_for=lambda w: effects_for(settings, store).wms(w.code),
        marketplace_for=market,
    )
    try:
        dispatcher = Dispatcher(
            store, effects.handlers(), owner="bench", per_target=settings.daemon.per_target
        )
        stats = await dispatcher.drain_once()
    finally:
        await effects.aclose()
    drained = time.perf_counter()
    print(f"  (CPU time of the cycle, all threads: {time.process_time() - cpu:.1f} s)")
    assert stats.dead == 0 and stats.retried == 0, stats
    return (
        planned - started,
        drained - planned,
        result.values,
        stats.done,
        platform.total() - before,
    )


async def run(skus: int, changed: float, shops: int, seed_value: int) -> None:
    rng = random.Random(seed_value)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "stock.db"
        settings = settings_for(shops, db)
        engine = create_engine(settings.database_url)
        await upgrade(engine)
        await engine.dispose()
        started = time.perf_counter()
        seed(settings, db, skus, rng)
        store = Store.open(settings.database_url)
        print(f"seeded {skus:,} SKUs × {shops} shops in {time.perf_counter() - started:.1f} s")
        platform = Platform()
        quiet = await cycle(settings, store, platform)
        print(
            f"no change:  {quiet[0] + quiet[1]:.2f} s (compute {quiet[0]:.2f} s, drain "
            f"{quiet[1]:.2f} s), {quiet[2]} values, {quiet[4]} platform calls"
        )
        moved = rng.sample(sorted(await _codes(store)), int(skus * changed))
        async with store.transaction() as tx:
            for n, code in enumerate(moved):
                await tx.apply_stock_change(
                    WAREHOUSES[n % 2], f"BENCH-{n}", code, rng.choice((-3, 7))
                )
        platform.calls.clear()
        busy = await cycle(settings, store, platform)
        print(
            f"{changed:.0%} changed ({len(moved):,} SKUs): {busy[0] + busy[1]:.2f} s "
            f"(compute+enqueue {busy[0]:.2f} s, drain {busy[1]:.2f} s), {busy[2]:,} values in "
            f"{busy[3]:,} messages, {busy[4]:,} platform calls {json.dumps(dict(platform.calls))}"
        )
        await store.close()


async def _codes(store: Store) -> list[str]:
    async with store.transaction() as tx:
        return list(await tx.stock_available())


def main() -> None:
    # The product's own log at warning level: per-message debug lines would dominate the drain.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--shops", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    event_loop.run(run(args.skus, args.changed, args.shops, args.seed))


if __name__ == "__main__":
    main()
