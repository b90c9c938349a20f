"""Reconciliation: a courier's freight bill against shipments and the rate card, and a WMS stock
snapshot against the ledger. Each run becomes a stored report of discrepancy rows with a reason
code (`ReconciliationKind`, decisions.md "Logistics") and its totals.

Freight bill (`reconcile_bill`):
- The file is CSV (UTF-8, a BOM is fine) or XLSX (read streaming), one line per waybill, with the
  headers of `BILL_HEADERS` unless the carrier's `bill_columns` names others. It is read line by
  line and stored in chunks, so memory does not grow with the bill's length (only the set of
  waybills seen does, for duplicates and `not_billed`).
- A line that cannot be read (no waybill, a weight or amount that is not a number, a bad date)
  becomes an `unreadable_line` row with its line number; it never stops the import.
- Lines are matched to shipments by waybill. The expected fee is the rate card's (see
  `RateCard.fee`) for the bill's destination province, else the order's; `overcharged` /
  `undercharged` beyond the carrier's `fee_tolerance`, `weight_mismatch` when the billed weight
  exceeds the WMS's package weight by more than `weight_tolerance_kg` (the line is still
  fee-checked), `duplicate_line` for the 2nd…nth line of a waybill, `unknown_waybill`, `no_rate`,
  and `not_billed` for the carrier's parcels shipped in the bill's period (its 寄件日期 range, CST
  dates) that the bill lacks.
- A bill is stored once per (carrier, content hash): importing the same file again returns the
  stored report and writes nothing.

Inventory (`reconcile_inventory`): the WMS is asked for every master SKU and every SKU the ledger
holds for the warehouse; `missing_in_wms` (the ledger has stock the WMS does not report),
`missing_in_hub` (the WMS reports stock the ledger has never read), `quantity_diff` (both know
the SKU and disagree). A SKU absent on one side and at 0 on the other is not a difference.
"""

import asyncio
import csv
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from config import CarrierConfig, Settings, WarehouseConfig
from config.settings import BillField, RateCardRow
from connectors.base import Wms
from connectors.errors import ConnectorError
from models.clock import CST
from models.domain import (
    ReconciliationKind,
    ReconciliationReport,
    ReconciliationRow,
    ReportKind,
    normalize_province,
)
from models.store import Parcel, Store, Tx, to_fen, to_grams
from sync.errors import HubError

log = structlog.get_logger("ecomhub.sync.reconcile")

Kind = ReconciliationKind

BILL_HEADERS: dict[BillField, str] = {
    "waybill": "运单号",
    "ship_date": "寄件日期",
    "origin_province": "始发省份",
    "dest_province": "目的省份",
    "weight": "计费重量",
    "amount": "应付金额",
}
"""The default header of each bill field (decisions.md); a carrier's `bill_columns` overrides."""
REQUIRED_FIELDS: tuple[BillField, ...] = ("waybill", "weight", "amount")
CHUNK = 5000
"""Bill lines read, stored and matched per round trip."""

LOGISTICS_KINDS = (
    Kind.OVERCHARGED,
    Kind.UNDERCHARGED,
    Kind.WEIGHT_MISMATCH,
    Kind.DUPLICATE_LINE,
    Kind.UNKNOWN_WAYBILL,
    Kind.NO_RATE,
    Kind.NOT_BILLED,
    Kind.UNREADABLE_LINE,
)
INVENTORY_KINDS = (Kind.MISSING_IN_WMS, Kind.MISSING_IN_HUB, Kind.QUANTITY_DIFF)
CENT = Decimal("0.01")


class BillFileError(Exception):
    """The bill as a whole cannot be read (missing file, unknown format, headers lacking a
    required column). Single bad lines are report rows, never this."""


class UsageError(HubError):
    """The command cannot run as asked (unknown code, a carrier without a rate card)."""


# --- rate card ---------------------------------------------------------------------------------


class RateCard:
    """A carrier's rates by destination province (short form); `*` rates every other one."""

    def __init__(self, rows: Iterable[RateCardRow]) -> None:
        self.rows: dict[str, RateCardRow] = {}
        for row in rows:
            key = "*" if row.province.strip() == "*" else normalize_province(row.province)
            self.rows.setdefault(key, row)

    def rate_for(self, province: str) -> RateCardRow | None:
        return self.rows.get(province) or self.rows.get("*")

    @staticmethod
    def chargeable(weight_kg: Decimal) -> Decimal:
        """max(billed weight, 0.01 kg), rounded up to 0.01 kg."""
        return max(weight_kg, CENT).quantize(CENT, rounding=ROUND_CEILING)

    @classmethod
    def fee(cls, rate: RateCardRow, weight_kg: Decimal) -> Decimal:
        """`first_fee` up to `first_weight_kg`, then `step_fee` per started `step_kg`."""
        weight = cls.chargeable(weight_kg)
        if weight <= rate.first_weight_kg:
            return rate.first_fee.quantize(CENT)
        steps = ((weight - rate.first_weight_kg) / rate.step_kg).to_integral_value(
            rounding=ROUND_CEILING
        )
        return (rate.first_fee + steps * rate.step_fee).quantize(CENT)


# --- reading a bill ----------------------------------------------------------------------------


class Line(NamedTuple):
    """One readable bill line (provinces in short form, the date a CST `yyyy-mm-dd` or ""). Its
    first fields are a `BillLineRow`'s, in order: `Tx.add_bill_lines` stores it as it is."""

    line_no: int
    waybill: str
    ship_date: str
    origin_province: str
    dest_province: str
    weight_g: int
    amount_fen: int
    weight_kg: Decimal
    amount: Decimal


class UnreadableLine(NamedTuple):
    line_no: int
    waybill: str
    reason: str


def file_sha256(path: Path) -> str:
    if not path.is_file():
        raise BillFileError(f"{path}: no such file")
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _is_xlsx(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"  # a zip: XLSX (a CSV never starts so)


def _csv_rows(path: Path) -> Iterator[tuple[int, Sequence[Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise BillFileError(
                f"{path}: not UTF-8 text near line {reader.line_num + 1} ({exc.reason}); "
                "save the bill as CSV UTF-8 or XLSX"
            ) from None
        except csv.Error as exc:
            raise BillFileError(f"{path}: line {reader.line_num}: {exc}") from None


def _xlsx_rows(path: Path) -> Iterator[tuple[int, Sequence[Any]]]:
    from openpyxl import load_workbook  # a second or so to import: only when a bill is XLSX

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        raise BillFileError(f"{path}: not a readable XLSX workbook ({exc})") from None
    try:
        sheet = book.active
        if sheet is None:
            raise BillFileError(f"{path}: the workbook has no sheet")
        yield from enumerate(sheet.iter_rows(values_only=True), start=1)
    finally:
        book.close()


def _blank(row: Sequence[Any]) -> bool:
    if type(row) is list:  # a CSV row: text cells only
        return not "".join(row).strip()
    return not any(cell is not None and _text(cell) for cell in row)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a waybill Excel stored as a number
    return str(value).strip()


def _number(value: Any, name: str) -> Decimal:
    if type(value) is str:
        text = value.strip()
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = _loose_number(text, name)
    elif isinstance(value, bool) or value is None:
        raise ValueError(
            f"{name} is empty" if value is None else f"{name} {value!r} is not a number"
        )
    elif isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))  # the shortest text of the float: 1.2, not 1.19999…
    else:
        number = _loose_number(str(value).strip(), name)
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name} {value!r} is not a non-negative number")
    return number


def _loose_number(text: str, name: str) -> Decimal:
    """`1,234.50`, `¥12.00`; an empty cell and anything else is an error naming the column."""
    cleaned = text.replace(",", "").removeprefix("¥").removeprefix("￥").strip()
    if not cleaned:
        raise ValueError(f"{name} is empty")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"{name} {text!r} is not a number") from None


_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d", "%Y.%m.%d")


def _ship_date(value: Any) -> str:
    """The CST calendar date of a 寄件日期 cell, `yyyy-mm-dd` ("" when empty)."""
    if value is None or value == "":
        return ""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is None else value.astimezone(CST).replace(tzinfo=None)
        return moment.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = _text(value)
    head = text.split()[0] if text else ""
    if "T" in head:
        head = head.split("T")[0]
    for pattern in _DATE_FORMATS:
        try:
            return datetime.strptime(head, pattern).date().isoformat()  # noqa: DTZ007 - a date
        except ValueError:
            continue
    raise ValueError(f"寄件日期 {text!r} is not a date")


_MEASURE_CACHE = 100_000
"""Distinct weights (and amounts) remembered per bill; beyond, cells are parsed each time."""

_PROVINCE_LENGTH = 16
"""The store's province columns are this wide; a longer cell is no province."""


class BillReader:
    """Reads one bill file into `Line`s and `UnreadableLine`s, one at a time (line numbers are
    the file's: the header is line 1 of a CSV, row 1 of a sheet)."""

    def __init__(self, path: Path, columns: dict[BillField, str] | None = None) -> None:
        self.path = path
        self.headers: dict[BillField, str] = {**BILL_HEADERS, **(columns or {})}
        self._provinces: dict[Any, str] = {}
        self._dates: dict[Any, str] = {}
        # Cell → (number, in grams or fen). A bill repeats few weights and amounts: parsing
        # each once, and handing on the same Decimal (which caches its hash), is most of a
        # line's cost saved.
        self._weights: dict[Any, tuple[Decimal, int]] = {}
        self._amounts: dict[Any, tuple[Decimal, int]] = {}

    def __iter__(self) -> Iterator[Line | UnreadableLine]:
        if not self.path.is_file():
            raise BillFileError(f"{self.path}: no such file")
        rows = _xlsx_rows(self.path) if _is_xlsx(self.path) else _csv_rows(self.path)
        index: list[int] | None = None
        for line_no, row in rows:
            if _blank(row):
                continue  # blank lines (and trailing empty spreadsheet rows)
            if index is None:
                index = self._header(row)
                continue
            yield self._line(line_no, row, index)
        if index is None:
            raise BillFileError(f"{self.path}: empty file (no header line)")

    def _header(self, row: Sequence[Any]) -> list[int]:
        """Column positions of waybill, ship date, origin, destination, weight, amount (-1 for
        an optional column the bill lacks)."""
        names = [_text(cell).lstrip("\ufeff") for cell in row]
        missing = [self.headers[f] for f in REQUIRED_FIELDS if self.headers[f] not in names]
        if missing:
            raise BillFileError(
                f"{self.path}: the header lacks {', '.join(missing)} (found: "
                f"{', '.join(n for n in names if n) or 'nothing'}); map other names in the "
                "carrier's bill_columns"
            )
        fields: tuple[BillField, ...] = (
            "waybill",
            "ship_date",
            "origin_province",
            "dest_province",
            "weight",
            "amount",
        )
        header = [self.headers[f] for f in fields]
        return [names.index(h) if h in names else -1 for h in header]

    def _province(self, value: Any) -> str:
        found = self._provinces.get(value)
        if found is None:
            found = normalize_province(_text(value))
            if len(found) > _PROVINCE_LENGTH:
                raise ValueError(f"province {found[:20]!r}… is not a province")
            self._provinces[value] = found
        return found

    def _line(self, line_no: int, row: Sequence[Any], index: list[int]) -> Line | UnreadableLine:
        size = len(row)
        at_waybill, at_date, at_origin, at_dest, at_weight, at_amount = index
        waybill = _text(row[at_waybill]) if at_waybill < size else ""
        if not waybill:
            return UnreadableLine(line_no, "", f"no {self.headers['waybill']}")
        if len(waybill) > 64:
            return UnreadableLine(line_no, waybill[:64], "waybill longer than 64 characters")
        try:
            weight, grams = self._measure(
                row[at_weight] if at_weight < size else None, "weight", self._weights, to_grams
            )
            amount, fen = self._measure(
                row[at_amount] if at_amount < size else None, "amount", self._amounts, to_fen
            )
            raw_date = row[at_date] if 0 <= at_date < size else None
            ship_date = self._dates.get(raw_date)
            if ship_date is None:
                ship_date = self._dates[raw_date] = _ship_date(raw_date)
            origin = self._province(row[at_origin] if 0 <= at_origin < size else None)
            dest = self._province(row[at_dest] if 0 <= at_dest < size else None)
        except ValueError as exc:
            return UnreadableLine(line_no, waybill, str(exc))
        return Line(line_no, waybill, ship_date, origin, dest, grams, fen, weight, amount)

    def _measure(
        self,
        cell: Any,
        field: BillField,
        seen: dict[Any, tuple[Decimal, int]],
        to_int: Callable[[Decimal], int | None],
    ) -> tuple[Decimal, int]:
        # Keyed by type too for non-text cells: True == 1 as a key, but True is no number.
        key = cell if type(cell) is str else (type(cell), cell)
        found = seen.get(key)
        if found is None:
            number = _number(cell, self.headers[field])
            found = (number, to_int(number) or 0)
            if len(seen) < _MEASURE_CACHE:
                seen[key] = found
        return found


# --- checking a bill ---------------------------------------------------------------------------


def _next_chunk(lines: Iterator[Line | UnreadableLine]) -> list[Line | UnreadableLine]:
    return list(islice(lines, CHUNK))


@dataclass
class BillCheck:
    """The running state of one bill's check: fed chunk by chunk, then the period's parcels."""

    carrier: CarrierConfig
    rates: RateCard
    rows: list[ReconciliationRow] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    """Waybill → line number of its first line."""
    pending: dict[str, Line] = field(default_factory=dict)
    """First lines whose waybill is no shipment's first waybill: maybe a further parcel of a
    multi-parcel shipment (resolved by the period's parcels), else unknown."""
    lines: int = 0
    unreadable: int = 0
    matched: int = 0
    billed_total: Decimal = Decimal("0")
    expected_total: Decimal = Decimal("0")
    first_date: str = ""
    last_date: str = ""
    _fees: dict[tuple[str, Decimal], tuple[RateCardRow | None, Decimal | None]] = field(
        default_factory=dict
    )
    """(province, billed weight) → (rate, fee): a bill repeats few of them."""

    def read(self, chunk: Sequence[Line | UnreadableLine]) -> tuple[list[Line], list[str]]:
        """Count and classify a chunk: returns its readable lines and the waybills to look up."""
        readable: list[Line] = []
        lookup: list[str] = []
        for line in chunk:
            self.lines += 1
            if isinstance(line, UnreadableLine):
                self.unreadable += 1
                self.rows.append(
                    ReconciliationRow(
                        kind=Kind.UNREADABLE_LINE,
                        waybill=line.waybill or None,
                        detail=f"line {line.line_no}: {line.reason}",
                    )
                )
                continue
            readable.append(line)
            self.billed_total += line.amount
            if line.ship_date:
                if not self.first_date or line.ship_date < self.first_date:
                    self.first_date = line.ship_date
                if line.ship_date > self.last_date:
                    self.last_date = line.ship_date
            first = self.seen.get(line.waybill)
            if first is not None:
                self.rows.append(
                    ReconciliationRow(
                        kind=Kind.DUPLICATE_LINE,
                        waybill=line.waybill,
                        expected=Decimal("0.00"),
                        actual=line.amount,
                        difference=line.amount,
                        detail=f"line {line.line_no} bills the waybill of line {first} again",
                    )
                )
                continue
            self.seen[line.waybill] = line.line_no
            lookup.append(line.waybill)
        return readable, lookup

    def match(self, lines: Sequence[Line], parcels: dict[str, Parcel]) -> None:
        for line in lines:
            if self.seen.get(line.waybill) != line.line_no:
                continue  # a duplicate: reported in `read`
            parcel = parcels.get(line.waybill)
            if parcel is None:
                self.pending[line.waybill] = line
            else:
                self.check(line, parcel)

    def check(self, line: Line, parcel: Parcel) -> None:
        """Weight and fee of one line matched to one of our parcels."""
        self.matched += 1
        tolerance = self.carrier.weight_tolerance_kg
        if parcel.weight_kg is not None and line.weight_kg - parcel.weight_kg > tolerance:
            self.rows.append(
                ReconciliationRow(
                    kind=Kind.WEIGHT_MISMATCH,
                    waybill=line.waybill,
                    expected=parcel.weight_kg,
                    actual=line.weight_kg,
                    difference=line.weight_kg - parcel.weight_kg,
                    detail=f"line {line.line_no}: billed {line.weight_kg} kg, the WMS weighed "
                    f"{parcel.weight_kg} kg (tolerance {tolerance} kg)",
                )
            )
        province = line.dest_province or parcel.province
        key = (province, line.weight_kg)
        rated = self._fees.get(key)
        if rated is None:
            rate = self.rates.rate_for(province)
            rated = self._fees[key] = (
                rate,
                None if rate is None else RateCard.fee(rate, line.weight_kg),
            )
        rate, expected = rated
        if rate is None or expected is None:
            self.rows.append(
                ReconciliationRow(
                    kind=Kind.NO_RATE,
                    waybill=line.waybill,
                    actual=line.amount,
                    detail=f"line {line.line_no}: no rate for {province or 'an unknown province'}",
                )
            )
            return
        self.expected_total += expected
        difference = line.amount - expected
        if abs(difference) <= self.carrier.fee_tolerance:
            return
        self.rows.append(
            ReconciliationRow(
                kind=Kind.OVERCHARGED if difference > 0 else Kind.UNDERCHARGED,
                waybill=line.waybill,
                expected=expected,
                actual=line.amount,
                difference=difference,
                detail=f"line {line.line_no}: {RateCard.chargeable(line.weight_kg)} kg to "
                f"{province or '?'} at rate {rate.province} ({rate.first_fee} first "
                f"{rate.first_weight_kg} kg + {rate.step_fee} per {rate.step_kg} kg)",
            )
        )

    @property
    def period(self) -> tuple[str, str] | None:
        return (self.first_date, self.last_date) if self.first_date else None

    def shipped(self, parcel: Parcel) -> None:
        """A parcel of this carrier shipped in the bill's period."""
        if parcel.waybill in self.seen:
            line = self.pending.pop(parcel.waybill, None)
            if line is not None:
                self.check(line, parcel)  # a further parcel of a multi-parcel shipment
            return
        when = (
            f" {parcel.shipped_at.astimezone(CST):%Y-%m-%d %H:%M} CST" if parcel.shipped_at else ""
        )
        self.rows.append(
            ReconciliationRow(
                kind=Kind.NOT_BILLED,
                waybill=parcel.waybill,
                detail=f"{parcel.delivery_order_code} shipped{when}, not on the bill",
            )
        )

    def finish(self) -> None:
        for line in self.pending.values():
            self.rows.append(
                ReconciliationRow(
                    kind=Kind.UNKNOWN_WAYBILL,
                    waybill=line.waybill,
                    actual=line.amount,
                    detail=f"line {line.line_no}: no shipment of ours has this waybill",
                )
            )
        self.pending.clear()

    def totals(self) -> dict[str, Any]:
        counts = dict.fromkeys((k.value for k in LOGISTICS_KINDS), 0)
        overbilled = Decimal("0.00")
        for row in self.rows:
            counts[row.kind.value] += 1
            if row.kind in (Kind.OVERCHARGED, Kind.DUPLICATE_LINE) and row.difference:
                overbilled += row.difference
            elif row.kind is Kind.UNKNOWN_WAYBILL and row.actual:
                overbilled += row.actual
        period = self.period
        return {
            "lines": self.lines,
            "unreadable": self.unreadable,
            "matched": self.matched,
            "billed_total": str(self.billed_total.quantize(CENT)),
            "expected_total": str(self.expected_total.quantize(CENT)),
            "overbilled": str(overbilled.quantize(CENT)),
            "period_start": period[0] if period else None,
            "period_end": period[1] if period else None,
            "by_kind": counts,
        }


def _day_start(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(), CST).astimezone(UTC)


@dataclass(frozen=True)
class BillResult:
    report: ReconciliationReport
    replayed: bool
    """The same file was imported before: this is the stored report, nothing was written."""


async def reconcile_bill(
    settings: Settings, store: Store, carrier_code: str, path: Path
) -> BillResult:
    """Import and check one freight bill of `carrier_code` (see the module docstring)."""
    try:
        carrier = settings.carrier(carrier_code)
    except KeyError:
        known = ", ".join(c.code for c in settings.carriers) or "none configured"
        raise UsageError(f"no carrier {carrier_code!r} in the config (known: {known})") from None
    if not carrier.rate_card_rows:
        raise UsageError(
            f"carriers[{carrier.code}].rate_card: not set; a freight bill is checked against the "
            "carrier's rate card (province,first_weight_kg,first_fee,step_kg,step_fee)"
        )
    # File work runs in a thread: a long bill must not stall the event loop (daemon, API).
    sha256 = await asyncio.to_thread(file_sha256, path)
    async with store.transaction() as tx:
        stored = await _stored_report(tx, carrier.code, sha256)
        if stored is not None:
            return BillResult(stored, replayed=True)
        bill_id = await tx.add_bill(carrier.code, sha256, path.name)
        if bill_id is None:  # imported concurrently, committed since our first look
            stored = await _stored_report(tx, carrier.code, sha256)
            if stored is None:
                raise HubError(f"{path.name} is being imported by another process; try again")
            return BillResult(stored, replayed=True)
        check = BillCheck(carrier, RateCard(carrier.rate_card_rows))
        lines = iter(BillReader(path, carrier.bill_columns))
        # Read the next chunk (in a thread) while the database works on this one.
        ahead = asyncio.ensure_future(asyncio.to_thread(_next_chunk, lines))
        try:
            while chunk := await ahead:
                ahead = asyncio.ensure_future(asyncio.to_thread(_next_chunk, lines))
                readable, lookup = check.read(chunk)
                await tx.add_bill_lines(bill_id, readable)
                if lookup:
                    parcels = await tx.parcels_of_bill_lines(
                        bill_id, readable[0].line_no, readable[-1].line_no
                    )
                    check.match(readable, parcels)
        finally:
            if not ahead.done():  # the database failed: let the reader finish, drop its chunk
                await asyncio.wait([ahead])
            if not ahead.cancelled():
                ahead.exception()  # retrieved, so asyncio does not log it as lost
        period = check.period
        if period is not None:
            start, end = _day_start(period[0]), _day_start(period[1]) + timedelta(days=1)
            for parcel in await tx.unbilled_parcels(bill_id, carrier.code, start, end):
                check.shipped(parcel)
        check.finish()
        await tx.finish_bill(bill_id, check.lines, period)
        report = ReconciliationReport(
            kind=ReportKind.LOGISTICS,
            subject=carrier.code,
            bill_id=bill_id,
            totals={"bill": path.name, **check.totals()},
            rows=tuple(check.rows),
            row_count=len(check.rows),
            created_at=store.clock.now(),
        )
        report_id = await tx.add_report(report)
    log.info(
        "freight bill reconciled",
        carrier=carrier.code,
        bill=path.name,
        report=report_id,
        lines=check.lines,
        rows=len(check.rows),
    )
    return BillResult(report.model_copy(update={"id": report_id}), replayed=False)


async def _stored_report(tx: Tx, carrier: str, sha256: str) -> ReconciliationReport | None:
    bill_id = await tx.bill_id(carrier, sha256)
    return None if bill_id is None else await tx.report_of_bill(bill_id)


# --- inventory ---------------------------------------------------------------------------------


async def reconcile_inventory(
    settings: Settings,
    store: Store,
    warehouse_code: str,
    wms_for: Callable[[WarehouseConfig], Wms],
) -> ReconciliationReport:
    """Compare `warehouse_code`'s WMS snapshot with the ledger; store and return the report.
    A WMS that cannot be read raises `HubError` (nothing is stored)."""
    try:
        warehouse = settings.warehouse(warehouse_code)
    except KeyError:
        known = ", ".join(w.code for w in settings.warehouses) or "none configured"
        raise UsageError(
            f"no warehouse {warehouse_code!r} in the config (known: {known})"
        ) from None
    async with store.read() as tx:
        masters = [s.sku for s in (await tx.master_skus()).values() if not s.is_bundle]
        before = await tx.stock_levels(warehouse.code)
    skus = sorted({*masters, *(level.sku for level in before if level.as_of is not None)})
    wms = wms_for(warehouse)
    try:
        snapshot = await wms.inventory(skus)
    except ConnectorError as exc:
        raise HubError(f"warehouse {warehouse.code}: the stock snapshot failed: {exc}") from None
    finally:
        await wms.aclose()
    async with store.transaction() as tx:
        # The ledger as of right after the snapshot (callbacks may have moved it meanwhile).
        ledger = {
            level.sku: level.on_hand
            for level in await tx.stock_levels(warehouse.code)
            if level.as_of is not None
        }
        rows: list[ReconciliationRow] = []
        for sku in sorted({*skus, *ledger}):
            rows.extend(_stock_row(sku, ledger.get(sku), snapshot.get(sku)))
        counts = dict.fromkeys((k.value for k in INVENTORY_KINDS), 0)
        for row in rows:
            counts[row.kind.value] += 1
        report = ReconciliationReport(
            kind=ReportKind.INVENTORY,
            subject=warehouse.code,
            totals={
                "skus": len(skus),
                "matching": len(skus) - len(rows),
                "wms_units": sum(snapshot.get(sku, 0) for sku in skus),
                "hub_units": sum(ledger.get(sku, 0) for sku in skus),
                "by_kind": counts,
            },
            rows=tuple(rows),
            row_count=len(rows),
            created_at=store.clock.now(),
        )
        report_id = await tx.add_report(report)
    log.info("inventory reconciled", warehouse=warehouse.code, report=report_id, **counts)
    return report.model_copy(update={"id": report_id})


def _stock_row(sku: str, hub: int | None, wms: int | None) -> list[ReconciliationRow]:
    if hub is None and wms:
        return [
            ReconciliationRow(
                kind=Kind.MISSING_IN_HUB,
                sku=sku,
                actual=Decimal(wms),
                difference=Decimal(wms),
                detail="the WMS reports stock the ledger has never read",
            )
        ]
    if wms is None and hub:
        return [
            ReconciliationRow(
                kind=Kind.MISSING_IN_WMS,
                sku=sku,
                expected=Decimal(hub),
                difference=Decimal(-hub),
                detail="the ledger holds stock of a SKU the WMS does not report",
            )
        ]
    if hub is not None and wms is not None and hub != wms:
        return [
            ReconciliationRow(
                kind=Kind.QUANTITY_DIFF,
                sku=sku,
                expected=Decimal(hub),
                actual=Decimal(wms),
                difference=Decimal(wms - hub),
                detail=f"ledger {hub}, WMS {wms}",
            )
        ]
    return []


# --- output ------------------------------------------------------------------------------------


def _json_decimal(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def report_rows(report: ReconciliationReport) -> list[dict[str, Any]]:
    """The rows as DESIGN.md prints them: `kind`, `waybill` or `sku`, `expected`, `actual`,
    `difference` (exact decimal strings, null when not applicable), `detail`."""
    key = "waybill" if report.kind is ReportKind.LOGISTICS else "sku"
    return [
        {
            "kind": row.kind.value,
            key: row.waybill if key == "waybill" else row.sku,
            "expected": _json_decimal(row.expected),
            "actual": _json_decimal(row.actual),
            "difference": _json_decimal(row.difference),
            "detail": row.detail,
        }
        for row in report.rows
    ]


def report_json(report: ReconciliationReport) -> dict[str, Any]:
    """`{"rows": [...], "totals": {...}}` (DESIGN.md, reconcile commands)."""
    return {"rows": report_rows(report), "totals": report.totals}
