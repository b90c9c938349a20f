"""Reconciliation: freight bills (CSV with BOM and XLSX, Chinese and remapped headers) against
shipments and the rate card, every discrepancy kind, re-imports and broken lines; inventory
against the Qimen sandbox; the CLI's output shapes and exit codes; the admin API's listing."""

import asyncio
import contextlib
import csv
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openpyxl import Workbook

from api.admin import admin_router
from config import Settings, WarehouseConfig, load_settings
from config.settings import RateCardRow
from connectors.base import Wms
from connectors.http import RetryPolicy
from connectors.registry import wms_for
from models.clock import CST, FixedClock
from models.domain import (
    Address,
    MasterSku,
    Package,
    ReconciliationKind,
    ReconciliationReport,
    ReportKind,
    Shipment,
)
from models.store import BillLineRow, NewDeliveryOrder, Store
from sandbox.server import Sandbox
from sync.errors import HubError
from sync.metrics import HubMetrics
from sync.reconcile import (
    BillFileError,
    BillReader,
    Line,
    RateCard,
    UsageError,
    reconcile_bill,
    reconcile_inventory,
    report_json,
)
from tests.connectors import NO_JITTER
from tests.factories import SECRETS, make_order, make_settings
from tests.fakes import RecordingControl

K = ReconciliationKind
HEADER = ["运单号", "寄件日期", "始发省份", "目的省份", "计费重量", "应付金额"]
SF_RATES = [
    ("浙江省", "1", "8", "1", "2"),
    ("上海", "0.5", "6", "0.5", "1.5"),
    ("*", "1", "12", "1", "5"),
]
ZTO_RATES = [("浙江", "1", "5", "1", "1")]  # no `*`: every other province has no rate
ZTO_COLUMNS = {
    "waybill": "Waybill No",
    "ship_date": "Date",
    "dest_province": "To",
    "weight": "Weight",
    "amount": "Fee",
}
MAIN = Path(__file__).resolve().parents[1] / "main.py"


def rates(rows: Sequence[tuple[str, ...]]) -> list[RateCardRow]:
    return [
        RateCardRow(
            province=p,
            first_weight_kg=Decimal(w),
            first_fee=Decimal(f),
            step_kg=Decimal(s),
            step_fee=Decimal(sf),
        )
        for p, w, f, s, sf in rows
    ]


def settings_with_carriers(**sections: Any) -> Settings:
    return make_settings(
        carriers=[
            {"code": "SF", "rate_card_rows": rates(SF_RATES)},
            {"code": "ZTO", "rate_card_rows": rates(ZTO_RATES), "bill_columns": ZTO_COLUMNS},
            {"code": "YTO"},
        ],
        **sections,
    )


# --- rate card math ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("province", "weight", "fee"),
    [
        ("浙江", "1", "8.00"),  # exactly the first weight
        ("浙江", "0", "8.00"),  # charged as 0.01 kg
        ("浙江", "1.001", "10.00"),  # rounded up to 1.01: one started step
        ("浙江", "2", "10.00"),  # step boundary: exactly one step
        ("浙江", "2.01", "12.00"),  # just past it: a second started step
        ("上海", "0.5", "6.00"),
        ("上海", "0.51", "7.50"),
        ("上海", "1.5", "9.00"),
        ("广东", "2.3", "22.00"),  # `*`: 12 + 2 started steps × 5
        ("", "1", "12.00"),  # no province at all: `*`
    ],
)
def test_fee_from_the_rate_card(province: str, weight: str, fee: str) -> None:
    card = RateCard(rates(SF_RATES))
    rate = card.rate_for(province)
    assert rate is not None
    assert RateCard.fee(rate, Decimal(weight)) == Decimal(fee)


def test_chargeable_weight_and_missing_rate() -> None:
    assert RateCard.chargeable(Decimal("0.001")) == Decimal("0.01")
    assert RateCard.chargeable(Decimal("1.2301")) == Decimal("1.24")
    assert RateCard.chargeable(Decimal("1.23")) == Decimal("1.23")
    assert RateCard(rates(ZTO_RATES)).rate_for("西藏") is None


# --- crafted shipments and bills ---------------------------------------------------------------

SHIPPED = datetime(2026, 11, 19, 2, 0, tzinfo=UTC)  # 2026-11-19 10:00 CST


async def ship(
    store: Store,
    waybill: str,
    *,
    province: str = "浙江",
    weight: str | None = "1.0",
    carrier: str = "SF",
    at: datetime = SHIPPED,
    packages: Sequence[tuple[str, str | None]] | None = None,
) -> None:
    """An order to `province` with one delivery order and its shipment."""
    order_id = f"O-{waybill}"
    order = make_order(
        order_id,
        receiver=Address(name="张三", mobile="13800000000", province=province, detail="路 1 号"),
    )
    parcels = packages if packages is not None else [(waybill, weight)]
    code = f"tmall-flagship-{order_id}"
    async with store.transaction() as tx:
        await tx.upsert_orders([order])
        await tx.add_delivery_orders(
            "tmall-flagship",
            order_id,
            [NewDeliveryOrder(code=code, warehouse="WH-EAST", lines=((1, "SKU-0001", 1, 100),))],
        )
        await tx.add_shipment(
            Shipment(
                delivery_order_code=code,
                warehouse="WH-EAST",
                carrier=carrier,
                waybill=parcels[0][0],
                weight_kg=Decimal(weight) if weight is not None else None,
                packages=tuple(
                    Package(
                        carrier=carrier,
                        waybill=w,
                        weight_kg=Decimal(kg) if kg is not None else None,
                    )
                    for w, kg in parcels
                ),
                shipped_at=at,
                out_biz_code=f"OB-{waybill}",
            )
        )


async def crafted_shipments(store: Store) -> None:
    await ship(store, "W-OK", weight="0.8")
    await ship(store, "W-STEP", weight="2.0")
    await ship(store, "W-OVER", weight="1.2")
    await ship(store, "W-UNDER", province="上海", weight="0.8")
    await ship(store, "W-HEAVY", weight="1.0")
    await ship(store, "W-STAR", province="广东", weight="2.3")
    await ship(store, "W-ORDERPROV", weight="1.0")
    await ship(store, "W-DUP", weight="1.0")
    await ship(store, "W-TOL", weight="1.0")
    await ship(store, "W-NOWEIGHT", weight=None)
    await ship(store, "W-MULTI", packages=[("W-MULTI", "1.0"), ("W-MULTI-2", "2.0")])
    await ship(store, "W-MISSED", at=datetime(2026, 11, 18, 16, 30, tzinfo=UTC))  # 11-19 00:30 CST
    await ship(store, "W-LATER", at=datetime(2026, 11, 25, 2, 0, tzinfo=UTC))  # after the period
    await ship(store, "W-EARLY", at=datetime(2026, 11, 17, 15, 59, tzinfo=UTC))  # 11-17 23:59 CST
    await ship(store, "Z-OTHER", carrier="ZTO")  # another carrier's: not SF's to bill


SF_LINES: list[list[Any]] = [
    ["W-OK", "2026-11-18", "上海", "浙江省", "1", "8.00"],
    ["W-STEP", "2026/11/19", "上海", "浙江", "2", "10"],
    ["W-OVER", "2026-11-19 10:11:12", "上海", "浙江", "1.2", "15.00"],
    ["W-UNDER", "2026-11-19", "上海", "上海市", "0.8", "6.00"],
    ["W-HEAVY", "2026-11-19", "上海", "浙江", "1.5", "10.00"],
    ["W-STAR", "2026-11-19", "上海", "广东省", "2.3", "22.00"],
    ["W-ORDERPROV", "2026-11-19", "上海", "", "1", "9.00"],
    ["W-DUP", "2026-11-19", "上海", "浙江", "1", "8.00"],
    ["W-DUP", "2026-11-19", "上海", "浙江", "1", "8.00"],
    ["W-DUP", "2026-11-20", "上海", "浙江", "1", "8.00"],
    ["W-TOL", "2026-11-20", "上海", "浙江", "1", "8.01"],
    ["W-NOWEIGHT", "2026-11-20", "上海", "浙江", "9", "24.00"],
    ["W-MULTI-2", "2026-11-20", "上海", "浙江", "2.0", "10.00"],
    ["W-STRANGER", "2026-11-20", "上海", "浙江", "1", "8.00"],
    ["W-BADWEIGHT", "2026-11-20", "上海", "浙江", "abc", "8.00"],
    ["", "2026-11-20", "上海", "浙江", "1", "8.00"],
    ["W-BADDATE", "someday", "上海", "浙江", "1", "8.00"],
    ["W-NOAMOUNT", "2026-11-20", "上海", "浙江", "1", ""],
]
"""Line n of this list is line n + 2 of the file (the header is line 1)."""


def write_csv(path: Path, header: Sequence[str], lines: Sequence[Sequence[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(lines)
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))  # Excel's CSV UTF-8
    return path


def write_xlsx(path: Path, header: Sequence[str], lines: Sequence[Sequence[Any]]) -> Path:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(header))
    for line in lines:
        sheet.append(list(line))
    book.save(path)
    return path


def xlsx_cells(line: Sequence[Any]) -> list[Any]:
    """A line as a spreadsheet types it: numbers as numbers, dates as datetimes."""
    waybill, day, origin, dest, weight, amount = line
    out: list[Any] = [waybill, day, origin, dest, weight, amount]
    if day[:4].isdigit() and "-" in day and len(day) == 10:
        out[1] = datetime.fromisoformat(day)
    for index in (4, 5):
        with contextlib.suppress(ValueError):
            out[index] = float(line[index])
    return out


def kinds(report: ReconciliationReport) -> Counter[tuple[str, str | None]]:
    return Counter((row.kind.value, row.waybill) for row in report.rows)


def row_of(report: ReconciliationReport, kind: K, waybill: str) -> Any:
    return next(r for r in report.rows if r.kind is kind and r.waybill == waybill)


EXPECTED_ROWS = Counter(
    {
        ("overcharged", "W-OVER"): 1,
        ("undercharged", "W-UNDER"): 1,
        ("weight_mismatch", "W-HEAVY"): 1,
        ("overcharged", "W-ORDERPROV"): 1,
        ("duplicate_line", "W-DUP"): 2,
        ("unknown_waybill", "W-STRANGER"): 1,
        ("not_billed", "W-MISSED"): 1,
        ("not_billed", "W-MULTI"): 1,
        ("unreadable_line", "W-BADWEIGHT"): 1,
        ("unreadable_line", None): 1,
        ("unreadable_line", "W-BADDATE"): 1,
        ("unreadable_line", "W-NOAMOUNT"): 1,
    }
)


def check_sf_report(report: ReconciliationReport) -> None:
    assert kinds(report) == EXPECTED_ROWS
    over = row_of(report, K.OVERCHARGED, "W-OVER")
    assert (over.expected, over.actual, over.difference) == (
        Decimal("10.00"),
        Decimal("15.00"),
        Decimal("5.00"),
    )
    under = row_of(report, K.UNDERCHARGED, "W-UNDER")
    assert (under.expected, under.actual, under.difference) == (
        Decimal("7.50"),
        Decimal("6.00"),
        Decimal("-1.50"),
    )
    heavy = row_of(report, K.WEIGHT_MISMATCH, "W-HEAVY")
    assert (heavy.expected, heavy.actual, heavy.difference) == (
        Decimal("1.000"),
        Decimal("1.5"),
        Decimal("0.500"),
    )
    # the order's province (浙江, 8.00) when the bill gives none, not the `*` rate (12.00)
    assert row_of(report, K.OVERCHARGED, "W-ORDERPROV").expected == Decimal("8.00")
    assert all(r.actual == Decimal("8.00") for r in report.rows if r.kind is K.DUPLICATE_LINE)
    unreadable = sorted(r.detail for r in report.rows if r.kind is K.UNREADABLE_LINE)
    assert unreadable == [
        "line 16: 计费重量 'abc' is not a number",
        "line 17: no 运单号",
        "line 18: 寄件日期 'someday' is not a date",
        "line 19: 应付金额 is empty",
    ]
    totals = report.totals
    assert totals["lines"] == len(SF_LINES) == 18
    assert totals["unreadable"] == 4
    # every first line of a waybill of ours (W-MULTI-2 through its shipment's packages)
    assert totals["matched"] == 11
    assert totals["period_start"] == "2026-11-18" and totals["period_end"] == "2026-11-20"
    billed = sum(Decimal(line[5]) for line in SF_LINES[:14])
    assert Decimal(totals["billed_total"]) == billed
    expected = Decimal("8") * 4 + Decimal("10") * 4 + Decimal("7.5") + Decimal("22") + Decimal("24")
    assert Decimal(totals["expected_total"]) == expected
    # overcharged 5 + 1, duplicates 2 × 8, unknown 8
    assert totals["overbilled"] == "30.00"
    assert totals["by_kind"]["duplicate_line"] == 2 and totals["by_kind"]["no_rate"] == 0


async def test_csv_bill_with_bom_gives_every_kind(store: Store, tmp_path: Path) -> None:
    await crafted_shipments(store)
    bill = write_csv(tmp_path / "sf-2026-11.csv", HEADER, SF_LINES)
    result = await reconcile_bill(settings_with_carriers(), store, "SF", bill)
    assert not result.replayed and result.report.id is not None
    check_sf_report(result.report)
    async with store.transaction() as tx:
        stored = await tx.report(result.report.id)
    assert stored is not None
    assert stored.rows == result.report.rows and stored.totals == result.report.totals


async def test_xlsx_bill_gives_the_same_report(store: Store, tmp_path: Path) -> None:
    await crafted_shipments(store)
    bill = write_xlsx(tmp_path / "sf.xlsx", HEADER, [xlsx_cells(line) for line in SF_LINES])
    result = await reconcile_bill(settings_with_carriers(), store, "SF", bill)
    check_sf_report(result.report)


async def test_reimporting_the_same_bill_returns_the_stored_report(
    store: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await crafted_shipments(store)
    bill = write_csv(tmp_path / "sf.csv", HEADER, SF_LINES)
    settings = settings_with_carriers()
    first = await reconcile_bill(settings, store, "SF", bill)
    clock.advance(timedelta(hours=1))
    await ship(store, "W-STRANGER")  # would change the result if the bill were checked again
    again = await reconcile_bill(settings, store, "SF", bill.rename(tmp_path / "renamed.csv"))
    assert again.replayed
    assert again.report == first.report
    async with store.transaction() as tx:
        reports = await tx.reports(ReportKind.LOGISTICS)
    assert [r.id for r in reports] == [first.report.id]
    assert reports[0].row_count == len(first.report.rows)
    # another bill (one line more) is a new import
    changed = write_csv(tmp_path / "sf2.csv", HEADER, [*SF_LINES, SF_LINES[0]])
    third = await reconcile_bill(settings, store, "SF", changed)
    assert not third.replayed and third.report.id != first.report.id


async def test_remapped_headers_and_no_rate(store: Store, tmp_path: Path) -> None:
    await ship(store, "Z-1", carrier="ZTO", weight="1.0")
    await ship(store, "Z-2", carrier="ZTO", province="西藏", weight="1.0")
    await ship(store, "Z-3", carrier="ZTO", weight="3.0")
    header = ["Date", "Waybill No", "From", "To", "Weight", "Fee", "Remark"]
    lines = [
        ["2026-11-19", "Z-1", "上海", "浙江", "1", "5.00", ""],
        ["2026-11-19", "Z-2", "上海", "西藏自治区", "1", "20.00", "far"],
        ["2026-11-19", "Z-3", "上海", "浙江", "3", "7.00", ""],
    ]
    bill = write_csv(tmp_path / "zto.csv", header, lines)
    report = (await reconcile_bill(settings_with_carriers(), store, "ZTO", bill)).report
    assert kinds(report) == Counter({("no_rate", "Z-2"): 1})
    no_rate = report.rows[0]
    assert no_rate.actual == Decimal("20.00") and no_rate.expected is None
    assert "西藏" in no_rate.detail
    assert report.totals["matched"] == 3 and report.totals["expected_total"] == "12.00"
    # the Chinese default headers are not ZTO's any more
    with pytest.raises(BillFileError, match="Waybill No"):
        await reconcile_bill(
            settings_with_carriers(), store, "ZTO", write_csv(tmp_path / "x.csv", HEADER, [])
        )


async def test_a_bill_that_cannot_be_read_at_all(store: Store, tmp_path: Path) -> None:
    settings = settings_with_carriers()
    with pytest.raises(BillFileError, match="no such file"):
        await reconcile_bill(settings, store, "SF", tmp_path / "missing.csv")
    with pytest.raises(BillFileError, match="lacks 计费重量, 应付金额"):
        await reconcile_bill(
            settings, store, "SF", write_csv(tmp_path / "h.csv", HEADER[:3], [["W", "x", "y"]])
        )
    latin = tmp_path / "gbk.csv"
    latin.write_bytes(",".join(HEADER).encode("gbk") + b"\n")
    with pytest.raises(BillFileError, match="not UTF-8"):
        await reconcile_bill(settings, store, "SF", latin)
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BillFileError, match="XLSX"):
        await reconcile_bill(settings, store, "SF", broken)
    with pytest.raises(UsageError, match="no carrier 'DHL'"):
        await reconcile_bill(settings, store, "DHL", broken)
    with pytest.raises(UsageError, match=r"carriers\[YTO\].rate_card"):
        await reconcile_bill(settings, store, "YTO", broken)
    async with store.transaction() as tx:
        assert await tx.reports() == []  # nothing half-written


def test_reader_tolerates_blank_lines_and_keeps_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        "\ufeff运单号,计费重量,应付金额\n\nA,1,8\n,,\nB,x,8\n",
        encoding="utf-8",
    )
    lines = list(BillReader(path))
    assert [(type(x).__name__, x.line_no) for x in lines] == [
        ("Line", 3),
        ("UnreadableLine", 5),
    ]


# --- inventory against the Qimen sandbox -------------------------------------------------------


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(
        seed=5, warehouses=1, backlog=0, tmall_shops=1, jd_shops=0, ship_delay=60
    ) as sb:
        yield sb


def sandbox_settings(sb: Sandbox) -> Settings:
    info = sb.warehouses[0]
    return make_settings(
        warehouses=[
            {
                "code": info.code,
                "api_url": info.api_url,
                "app_key": info.app_key,
                "app_secret": info.app_secret,
                "customer_id": info.customer_id,
                "default_carrier": info.default_carrier,
            }
        ]
    )


def sandbox_wms(warehouse: WarehouseConfig) -> Wms:
    return wms_for(warehouse, policy=NO_JITTER)


async def test_inventory_against_the_qimen_sandbox(store: Store, sandbox: Sandbox) -> None:
    settings = sandbox_settings(sandbox)
    code = settings.warehouses[0].code
    wms_stock = sandbox.qimen.stock(code)
    in_stock = sorted(sku for sku, qty in wms_stock.items() if qty > 0)
    empty = sorted(sku for sku, qty in wms_stock.items() if qty == 0)
    assert len(in_stock) >= 3 and empty
    diff_sku, unread_sku, same_sku = in_stock[:3]
    ledger = {sku: qty for sku, qty in wms_stock.items() if sku != unread_sku}
    ledger[diff_sku] += 3
    ledger["GHOST"] = 4  # the ledger has stock the WMS never heard of
    ledger["GHOST-0"] = 0  # …and one at zero: no difference
    del ledger[empty[0]]  # the WMS reports 0 of it and the ledger never read it: no difference
    skus = [MasterSku(sku=sku) for sku in [*wms_stock, "GHOST"]]
    async with store.transaction() as tx:
        await tx.upsert_master_skus(skus)
        await tx.set_stock(code, ledger, store.clock.now())

    report = await reconcile_inventory(settings, store, code, sandbox_wms)
    document = report_json(report)
    expected_rows = [
        {
            "kind": "missing_in_wms",
            "sku": "GHOST",
            "expected": "4",
            "actual": None,
            "difference": "-4",
            "detail": "the ledger holds stock of a SKU the WMS does not report",
        },
        {
            "kind": "quantity_diff",
            "sku": diff_sku,
            "expected": str(wms_stock[diff_sku] + 3),
            "actual": str(wms_stock[diff_sku]),
            "difference": "-3",
            "detail": f"ledger {wms_stock[diff_sku] + 3}, WMS {wms_stock[diff_sku]}",
        },
        {
            "kind": "missing_in_hub",
            "sku": unread_sku,
            "expected": None,
            "actual": str(wms_stock[unread_sku]),
            "difference": str(wms_stock[unread_sku]),
            "detail": "the WMS reports stock the ledger has never read",
        },
    ]
    assert document["rows"] == sorted(expected_rows, key=lambda row: str(row["sku"]))
    assert same_sku not in {row["sku"] for row in document["rows"]}
    totals = document["totals"]
    assert totals["by_kind"] == {"missing_in_wms": 1, "missing_in_hub": 1, "quantity_diff": 1}
    assert totals["skus"] == len(wms_stock) + 2  # the master SKUs and the ledger's GHOST-0
    assert totals["wms_units"] == sum(wms_stock.values())
    assert totals["hub_units"] == sum(ledger.values())
    async with store.transaction() as tx:
        listed = await tx.reports(ReportKind.INVENTORY, code)
        stored = await tx.report(listed[0].id or 0)
    assert [r.id for r in listed] == [report.id] and listed[0].row_count == 3
    assert stored is not None and report_json(stored) == document

    metrics = HubMetrics()
    metrics.reconciled(report)
    sample = metrics.registry.get_sample_value(
        "ecomhub_reconciliation_differences",
        {"report": "inventory", "subject": code, "kind": "quantity_diff"},
    )
    assert sample == 1


async def test_inventory_of_an_unknown_warehouse_or_a_dead_wms(store: Store) -> None:
    settings = make_settings()  # WH-EAST on an unreachable URL
    with pytest.raises(UsageError, match="no warehouse 'WH-NOPE'"):
        await reconcile_inventory(settings, store, "WH-NOPE", sandbox_wms)
    async with store.transaction() as tx:
        await tx.upsert_master_skus([MasterSku(sku="A")])
    with pytest.raises(HubError, match="WH-EAST: the stock snapshot failed"):
        await reconcile_inventory(
            settings, store, "WH-EAST", lambda w: wms_for(w, policy=RetryPolicy(max_attempts=1))
        )
    async with store.transaction() as tx:
        assert await tx.reports() == []


# --- admin API ---------------------------------------------------------------------------------


async def test_admin_lists_and_shows_reports(store: Store, tmp_path: Path) -> None:
    await crafted_shipments(store)
    settings = settings_with_carriers()
    report = (
        await reconcile_bill(settings, store, "SF", write_csv(tmp_path / "b.csv", HEADER, SF_LINES))
    ).report
    app = FastAPI()
    app.include_router(admin_router(settings, store, RecordingControl()))
    auth = {"Authorization": f"Bearer {SECRETS['admin_token']}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        listed = (await client.get("/admin/reconciliation/reports", headers=auth)).json()
        assert [(r["id"], r["kind"], r["subject"], r["row_count"]) for r in listed] == [
            (report.id, "logistics", "SF", len(report.rows))
        ]
        assert listed[0]["totals"]["overbilled"] == "30.00"
        none = await client.get("/admin/reconciliation/reports?kind=inventory", headers=auth)
        assert none.json() == []
        one = (await client.get(f"/admin/reconciliation/reports/{report.id}", headers=auth)).json()
        assert one["rows"] == report_json(report)["rows"]
        missing = await client.get("/admin/reconciliation/reports/999", headers=auth)
        assert missing.status_code == 404
        bad = await client.get("/admin/reconciliation/reports?kind=nope", headers=auth)
        assert bad.status_code == 422


# --- CLI -----------------------------------------------------------------------------------------

CLI_CONFIG = """
database_url = "sqlite:///{db}"
[[warehouses]]
code = "WH-EAST"
api_url = "{wms_url}"
app_key = "{app_key}"
app_secret = "{app_secret}"
customer_id = "{customer_id}"
default_carrier = "SF"
[[carriers]]
code = "SF"
rate_card = "rates/sf.csv"
"""


def write_cli_config(tmp_path: Path, **wms: str) -> Path:
    values = {
        "wms_url": "http://127.0.0.1:1/router/qimen/service",
        "app_key": "k",
        "app_secret": "s",
        "customer_id": "OWNER",
        **wms,
    }
    (tmp_path / "rates").mkdir(exist_ok=True)
    (tmp_path / "rates" / "sf.csv").write_text(
        "province,first_weight_kg,first_fee,step_kg,step_fee\n"
        + "".join(",".join(row) + "\n" for row in SF_RATES),
        encoding="utf-8",
    )
    path = tmp_path / "ecomhub.toml"
    path.write_text(CLI_CONFIG.format(db=tmp_path / "hub.db", **values), encoding="utf-8")
    return path


def ecomhub(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def aecomhub(config: Path, *args: str) -> tuple[int, str, str]:
    """`ecomhub` without blocking the loop (the sandbox serves on it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(MAIN),
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_logistics_report_in_every_format(tmp_path: Path, clock: FixedClock) -> None:
    config = write_cli_config(tmp_path)
    assert ecomhub(config, "db", "upgrade").returncode == 0
    settings = load_settings(config, environ={})
    store = Store.open(settings.database_url, clock)
    try:
        await crafted_shipments(store)
    finally:
        await store.close()
    bill = write_csv(tmp_path / "sf.csv", HEADER, SF_LINES)

    proc = ecomhub(
        config, "reconcile", "logistics", "--carrier", "SF", "--bill", str(bill), "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert set(document) == {"rows", "totals"}
    assert Counter((r["kind"], r["waybill"]) for r in document["rows"]) == EXPECTED_ROWS
    for row in document["rows"]:
        assert list(row) == ["kind", "waybill", "expected", "actual", "difference", "detail"]
    over = next(r for r in document["rows"] if r["waybill"] == "W-OVER")
    assert (over["expected"], over["actual"], over["difference"]) == ("10.00", "15.00", "5.00")
    assert document["totals"]["lines"] == 18 and document["totals"]["overbilled"] == "30.00"

    again = ecomhub(
        config, "reconcile", "logistics", "--carrier", "SF", "--bill", str(bill), "--format", "csv"
    )
    assert again.returncode == 0, again.stderr
    assert "was imported before" in again.stderr and "lines 18" in again.stderr
    rows = list(csv.DictReader(io.StringIO(again.stdout)))
    assert len(rows) == len(document["rows"])
    assert list(rows[0]) == ["kind", "waybill", "expected", "actual", "difference", "detail"]
    assert Counter((r["kind"], r["waybill"] or None) for r in rows) == EXPECTED_ROWS

    table = ecomhub(config, "reconcile", "logistics", "--carrier", "SF", "--bill", str(bill))
    assert table.returncode == 0, table.stderr
    assert "overcharged" in table.stdout and "W-STRANGER" in table.stdout
    assert "overbilled 30.00" in table.stdout and "duplicate_line 2" in table.stdout

    for args, message in [
        (["--carrier", "DHL", "--bill", str(bill)], "no carrier 'DHL'"),
        (["--carrier", "SF", "--bill", str(tmp_path / "nope.csv")], "no such file"),
        (["--carrier", "SF", "--bill", str(config)], "the header lacks"),
        (["--carrier", "SF", "--bill", str(bill), "--format", "xml"], "--format must be"),
    ]:
        proc = ecomhub(config, "reconcile", "logistics", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr


async def test_cli_inventory_report(tmp_path: Path, sandbox: Sandbox, clock: FixedClock) -> None:
    info = sandbox.warehouses[0]
    config = write_cli_config(
        tmp_path,
        wms_url=info.api_url,
        app_key=info.app_key,
        app_secret=info.app_secret,
        customer_id=info.customer_id,
    )
    config.write_text(config.read_text().replace('"WH-EAST"', f'"{info.code}"'), encoding="utf-8")
    assert (await aecomhub(config, "db", "upgrade"))[0] == 0
    settings = load_settings(config, environ={})
    stock = sandbox.qimen.stock(info.code)
    sku = next(s for s, qty in sorted(stock.items()) if qty > 0)
    store = Store.open(settings.database_url, clock)
    try:
        async with store.transaction() as tx:
            await tx.upsert_master_skus([MasterSku(sku=s) for s in stock])
            await tx.set_stock(info.code, {**stock, sku: stock[sku] + 1}, clock.now())
    finally:
        await store.close()

    code, out, err = await aecomhub(
        config, "reconcile", "inventory", "--warehouse", info.code, "--format", "json"
    )
    assert code == 0, err
    assert json.loads(out)["rows"] == [
        {
            "kind": "quantity_diff",
            "sku": sku,
            "expected": str(stock[sku] + 1),
            "actual": str(stock[sku]),
            "difference": "-1",
            "detail": f"ledger {stock[sku] + 1}, WMS {stock[sku]}",
        }
    ]
    code, out, err = await aecomhub(
        config, "reconcile", "inventory", "--warehouse", info.code, "--format", "csv"
    )
    assert code == 0, err
    assert out.splitlines()[0] == "kind,sku,expected,actual,difference,detail"
    assert out.splitlines()[1].startswith(f"quantity_diff,{sku},")
    code, out, err = await aecomhub(config, "reconcile", "inventory", "--warehouse", info.code)
    assert code == 0, err
    assert "quantity_diff" in out and "by kind: quantity_diff 1" in out

    code, _, err = await aecomhub(config, "reconcile", "inventory", "--warehouse", "NOPE")
    assert code == 2 and "no warehouse 'NOPE'" in err and "Traceback" not in err


def test_cst_period_bounds() -> None:
    """The bill's period is in CST dates: 2026-11-19 starts at 2026-11-18 16:00 UTC."""
    from sync.reconcile import _day_start

    assert _day_start("2026-11-19") == datetime(2026, 11, 19, tzinfo=CST)
    assert _day_start("2026-11-19").tzinfo is UTC


def test_a_bill_line_starts_with_the_stored_columns() -> None:
    """`Tx.add_bill_lines` stores the leading fields of a `Line` as a `BillLineRow`."""
    assert Line._fields[: len(BillLineRow._fields)] == BillLineRow._fields
