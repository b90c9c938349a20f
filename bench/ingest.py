"""Benchmark: pull N sandbox orders into a fresh SQLite store; compare with the floor.

    .venv/bin/python bench/ingest.py [--orders 200000] [--days 7] [--shops tmall,jd]

The sandbox (calm profile, no artificial latency) runs in a subprocess, so it has a core of its
own as a real marketplace would. The hub pulls every shop with the real connectors and engine into
a fresh SQLite file. The floor, measured in the same run, is the least any client could do: the
same requests (recorded during the pull) sent with plain httpx and json-decoded, and the same
number of order rows inserted with one `executemany`. Prints orders/s, peak RSS and the ratio.
"""

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import (  # noqa: E402
    Settings,
    ShopConfig,
    event_loop,
    load_settings,
)
from connectors.base import Marketplace, OrderPage  # noqa: E402
from connectors.jd import JdMarketplace  # noqa: E402
from connectors.registry import marketplace_for  # noqa: E402
from connectors.tmall import TmallMarketplace  # noqa: E402
from models.clock import CST  # noqa: E402
from models.db import create_engine, upgrade  # noqa: E402
from models.store import Store  # noqa: E402
from sandbox.signing import top_sign  # noqa: E402
from sync.runtime import pull_shops  # noqa: E402


def serve(orders: int, days: float, seed: int) -> None:
    """Subprocess side: run the sandbox and print its hub config as one JSON line."""
    from sandbox.server import Sandbox

    async def main() -> None:
        async with Sandbox(seed=seed, profile="calm", backlog=orders, backlog_days=days) as sb:
            print(json.dumps({"toml": sb.hub_config_toml("sqlite:///unused.db", "127.0.0.1", 1)}))
            sys.stdout.flush()
            await asyncio.Event().wait()

    event_loop.run(main())


class Recording:
    """Wraps a connector and records each search request, so the floor replays the same pages."""

    def __init__(self, inner: Marketplace, calls: list[tuple[str, datetime, datetime, int]]):
        self.inner = inner
        self.calls = calls
        self.platform = inner.platform
        self.page_size = inner.page_size

    async def search_orders(
        self, start: datetime, end: datetime, page: int, page_size: int
    ) -> OrderPage:
        self.calls.append((self.inner.platform, start, end, page))
        return await self.inner.search_orders(start, end, page, page_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def hub_pull(settings: Settings, db: Path) -> tuple[float, int, list[Any]]:
    engine = create_engine(f"sqlite:///{db}")
    await upgrade(engine)
    await engine.dispose()
    store = Store.open(f"sqlite:///{db}")
    calls: list[tuple[str, datetime, datetime, int]] = []
    started = time.perf_counter()
    runs = await pull_shops(
        settings,
        store,
        settings.shops,
        marketplace_for=lambda shop: Recording(marketplace_for(shop), calls),
    )
    elapsed = time.perf_counter() - started
    await store.close()
    written = sum(r.orders_written for r in runs)
    return elapsed, written, calls


def floor_form(shop: ShopConfig, start: datetime, end: datetime, page: int) -> dict[str, str]:
    """The search request as a bare client would build it (same fields as the connectors ask)."""
    stamp = datetime.now(CST).strftime("%Y-%m-%d %H:%M:%S")
    if shop.platform == "tmall":
        params = {
            "method": TmallMarketplace.search_method,
            "app_key": shop.app_key,
            "session": shop.access_token.get_secret_value(),
            "timestamp": stamp,
            "v": "2.0",
            "format": "json",
            "sign_method": "md5",
            "fields": TmallMarketplace.trade_fields,
            "start_modified": start.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "end_modified": end.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "page_no": str(page),
            "page_size": "100",
        }
    else:
        business = {
            "start_date": start.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "end_date": end.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "order_state": ",".join(JdMarketplace.order_states),
            "optional_fields": JdMarketplace.order_fields,
            "page": str(page),
            "page_size": "100",
            "sortType": 1,
            "dateType": 0,
        }
        params = {
            "method": JdMarketplace.search_method,
            "app_key": shop.app_key,
            "access_token": shop.access_token.get_secret_value(),
            "timestamp": stamp,
            "v": "2.0",
            "sign_method": "md5",
            "360buy_param_json": json.dumps(business, separators=(",", ":")),
        }
    params["sign"] = top_sign(params, shop.app_secret.get_secret_value(), "md5")
    return params


def count_orders(platform: str, body: dict[str, Any]) -> int:
    if platform == "tmall":
        trades = body["trades_sold_increment_get_response"].get("trades") or {}
        return len(trades.get("trade", []))
    result = body["jingdong_pop_order_search_responce"]["searchorderinfo_result"]
    return len(result.get("orderInfoList") or [])


async def floor_fetch(
    settings: Settings, calls: Sequence[tuple[str, datetime, datetime, int]]
) -> tuple[float, int]:
    """The same requests sent with plain httpx (one client, no retries) and json-decoded."""
    shops: dict[str, ShopConfig] = {s.platform: s for s in settings.shops}
    started = time.perf_counter()
    orders = 0
    async with httpx.AsyncClient() as http:
        for platform, start, end, page in calls:
            shop = shops[platform]
            response = await http.post(str(shop.api_url), data=floor_form(shop, start, end, page))
            orders += count_orders(platform, response.json())
    return time.perf_counter() - started, orders


def floor_insert(rows: int, db: Path) -> float:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, shop TEXT, platform_order_id TEXT, "
        "status TEXT, modified TEXT, payload TEXT, UNIQUE (shop, platform_order_id))"
    )
    values = [("shop", str(n), "paid", "2026-11-20 08:00:00", "x" * 400) for n in range(rows)]
    started = time.perf_counter()
    conn.executemany(
        "INSERT INTO orders (shop, platform_order_id, status, modified, payload) "
        "VALUES (?, ?, ?, ?, ?)",
        values,
    )
    conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.orders, args.days, args.seed)
        return

    print(f"generating {args.orders} orders over {args.days} days in the sandbox subprocess…")
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--orders",
            str(args.orders),
            "--days",
            str(args.days),
            "--seed",
            str(args.seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        print(f"sandbox ready in {time.perf_counter() - started:.1f}s")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "ecomhub.toml"
            config.write_text(json.loads(line)["toml"], encoding="utf-8")
            settings = load_settings(config, environ={})
            elapsed, written, calls = event_loop.run(hub_pull(settings, Path(tmp) / "hub.db"))
            fetch, fetched = event_loop.run(floor_fetch(settings, calls))
            insert = floor_insert(written, Path(tmp) / "floor.db")
    finally:
        child.terminate()
        child.wait()
    hub_rate = written / elapsed
    floor_rate = written / (fetch + insert)
    print(f"cores: {os.cpu_count()}  requests: {len(calls)}  orders stored: {written}")
    print(f"hub:   {elapsed:8.2f} s  {hub_rate:9.0f} orders/s  peak RSS {peak_rss_mb():.0f} MB")
    print(
        f"floor: {fetch + insert:8.2f} s  {floor_rate:9.0f} orders/s  "
        f"(fetch+decode {fetch:.2f} s for {fetched} orders, executemany {insert:.2f} s)"
    )
    print(f"ratio hub/floor: {hub_rate / floor_rate:.2f}")


if __name__ == "__main__":
    main()
