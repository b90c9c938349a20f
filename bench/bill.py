"""Benchmark: reconcile an N-line freight bill (default 1M) against as many shipments.

    .venv/bin/python bench/bill.py [--lines 1000000] [--format csv|xlsx]

Setup (not timed): a fresh SQLite store with one SF shipment per bill line (plus 0.5% shipped
but never billed), written with plain sqlite3, and a bill with the default Chinese headers where
about 1% of lines are overcharged, 0.5% duplicates, 0.5% unknown waybills, 0.5% too heavy and
0.1% unreadable. Timed, in a child process so its peak RSS is the import's alone: the real
`sync.reconcile.reconcile_bill` (read, store the lines, match, rate, not-billed scan, store the
report). Prints seconds, lines/s, peak RSS and the report's counts by kind.
"""

import argparse
import csv
import json
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Settings, event_loop  # noqa: E402
from models.db import create_engine, upgrade  # noqa: E402
from models.store import Store  # noqa: E402
from sync.reconcile import reconcile_bill  # noqa: E402

PROVINCES = ["浙江省", "上海", "江苏省", "广东省", "北京市", "四川省", "新疆维吾尔自治区"]
RATES = [("浙江", 8, 2), ("上海", 8, 2), ("江苏", 8, 2), ("*", 12, 5)]
START = datetime(2026, 10, 31, 16, 0, tzinfo=UTC)  # 2026-11-01 00:00 CST


def fee(province: str, weight_kg: float) -> float:
    first, step = next(((f, s) for p, f, s in RATES if province.startswith(p)), (12, 5))
    extra = max(0, -(-round((weight_kg - 1) * 100) // 100))  # started kilograms beyond 1
    return first + extra * step


def settings(database_url: str) -> Settings:
    return Settings.model_validate(
        {
            "database_url": database_url,
            "carriers": [
                {
                    "code": "SF",
                    "rate_card_rows": [
                        {
                            "province": p,
                            "first_weight_kg": 1,
                            "first_fee": f,
                            "step_kg": 1,
                            "step_fee": s,
                        }
                        for p, f, s in RATES
                    ],
                }
            ],
        }
    )


def setup(directory: Path, lines: int, form: str, seed: int) -> tuple[Path, Path]:
    db = directory / "hub.db"

    async def migrate() -> None:
        engine = create_engine(f"sqlite:///{db}")
        await upgrade(engine)
        await engine.dispose()

    event_loop.run(migrate())
    rng = random.Random(seed)
    shipments = int(lines * 1.005)
    step = timedelta(days=30) / shipments
    bill_rows: list[list[object]] = []
    conn = sqlite3.connect(db)
    created = START.strftime("%Y-%m-%d %H:%M:%S.%f")

    def rows() -> object:
        for n in range(shipments):
            waybill = f"SF{1_000_000_000_000 + n}"
            weight = round(rng.uniform(0.2, 6.0), 2)
            shipped = START + step * n
            yield (
                f"shop-{n}-1",
                "WH-EAST",
                f"OB{n}",
                "SF",
                waybill,
                round(weight * 1000),
                json.dumps([{"carrier": "SF", "waybill": waybill, "weight_kg": str(weight)}]),
                shipped.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "shipped",
                created,
            )
            if n >= lines:
                continue  # shipped, never billed
            province = PROVINCES[n % len(PROVINCES)]
            billed_weight = weight + (1.0 if n % 200 == 7 else 0.0)  # 0.5% too heavy
            amount = fee(province, billed_weight) + (3 if n % 100 == 3 else 0)  # 1% over
            day = (shipped + timedelta(hours=8)).date().isoformat()
            bill_rows.append(
                [waybill, day, "上海", province, f"{billed_weight:.2f}", f"{amount:.2f}"]
            )

    conn.executemany(
        "INSERT INTO shipments (delivery_order_code, warehouse, out_biz_code, carrier, waybill, "
        "weight_g, packages, shipped_at, tracking_state, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),  # type: ignore[arg-type]
    )
    conn.commit()
    conn.close()
    extra: list[list[object]] = []
    for index in range(0, lines, 200):  # duplicates and unknown waybills, 0.5% each
        extra.append(list(bill_rows[index]))
        extra.append([f"ZZ{index}", *bill_rows[index][1:]])
    for index in range(5, lines, 1000):  # 0.1% unreadable
        bill_rows[index][4] = "n/a"
    bill_rows = bill_rows[: lines - len(extra)] + extra
    header = ["运单号", "寄件日期", "始发省份", "目的省份", "计费重量", "应付金额"]
    if form == "xlsx":
        from openpyxl import Workbook

        path = directory / "bill.xlsx"
        book = Workbook(write_only=True)
        sheet = book.create_sheet()
        sheet.append(header)
        for row in bill_rows:
            sheet.append(row)
        book.save(path)
    else:
        path = directory / "bill.csv"
        with path.open("w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(bill_rows)
    return db, path


def peak_rss_kb() -> int:
    """This process's own peak RSS. Not `getrusage`: on Linux its `ru_maxrss` survives
    fork + exec, so the child would report the parent's peak (the bill rows built in setup)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(db: Path, bill: Path) -> None:
    """Child side: one timed reconciliation; prints a JSON line."""

    async def main() -> dict[str, object]:
        store = Store.open(f"sqlite:///{db}")
        try:
            started = time.perf_counter()
            result = await reconcile_bill(settings(f"sqlite:///{db}"), store, "SF", bill)
            seconds = time.perf_counter() - started
        finally:
            await store.close()
        return {
            "seconds": round(seconds, 2),
            "rows": len(result.report.rows),
            "totals": result.report.totals,
        }

    figures = event_loop.run(main())
    figures["peak_rss_mb"] = round(peak_rss_kb() / 1024)
    print(json.dumps(figures, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measure", nargs=2, metavar=("DB", "BILL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), Path(args.measure[1]))
        return
    with tempfile.TemporaryDirectory(prefix="ecomhub-bill-") as tmp:
        started = time.perf_counter()
        db, bill = setup(Path(tmp), args.lines, args.format, args.seed)
        print(
            f"setup: {args.lines:,} lines ({bill.stat().st_size / 1e6:.0f} MB {args.format}), "
            f"{int(args.lines * 1.005):,} shipments in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(db), str(bill)],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            sys.exit(child.stderr[-3000:])
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    seconds = float(figures["seconds"])
    totals = figures["totals"]
    print(
        f"reconcile: {seconds:.1f} s ({args.lines / seconds:,.0f} lines/s), "
        f"peak RSS {figures['peak_rss_mb']} MB, {figures['rows']:,} report rows"
    )
    print(f"totals: {json.dumps(totals, ensure_ascii=False)}")
    print("targets: < 20 s, < 500 MB")


if __name__ == "__main__":
    main()
