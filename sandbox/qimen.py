"""Qimen (奇门) WMS simulator: the warehouse side of `platforms.md` §4 and `decisions.md` (Qimen WMS).

Endpoint: `POST /router/qimen/service` (the real router path). System parameters travel in the
query string (`method`, `app_key`, `timestamp`, `v`, `format=xml`, `sign_method=md5`,
`customerId`, `sign`); the business payload is the raw XML body `<request>…</request>`.
`app_key` + `customerId` identify the warehouse; when several warehouses share both, the body's
`warehouseCode` picks one (`OTHER` = the first). `method` is accepted as
`taobao.qimen.deliveryorder.create`, `qimen.deliveryorder.create` or `deliveryorder.create`.
sign = HEX_UPPER(MD5(secret + sorted k+v of the non-empty query params except `sign` + raw body +
secret)).

Answers are XML, `<?xml version="1.0" encoding="utf-8"?><response><flag>success</flag><code>0</code>
<message>…</message>…</response>`; a failure has `flag=failure` and one of these codes:

| code | when |
|---|---|
| `missing-parameter` | `method`, `app_key`, `timestamp`, `customerId` or `sign` is missing |
| `invalid-method` | a method this WMS does not serve |
| `invalid-app-key` | no warehouse has this `app_key` + `customerId` |
| `sign-check-failure` | wrong signature or `sign_method` not md5 (message `Illegal request`) |
| `invalid-timestamp` | not `yyyy-MM-dd HH:mm:ss` CST, or more than 10 minutes off |
| `invalid-format` | `format` other than `xml` |
| `PARAM_ERROR` | body is not XML, a required field is missing (the message names it) or malformed |
| `ITEM_NOT_EXIST` | create names an `itemCode` missing from the warehouse's stock table |
| `ORDER_NOT_EXIST` | query / cancel of an unknown order code |
| `ORDER_ALREADY_DELIVERED` | cancel of a delivery order that has shipped |
| `ORDER_ALREADY_FINISHED` | cancel of an entry order that was fully received |
| `SYSTEM_ERROR` | the `transient` fault (temporary; the hub's default `retry_codes` lists it) |

Methods served (ERP → WMS):
- `taobao.qimen.deliveryorder.create`: validates §4.2's required fields (`deliveryOrderCode`,
  `orderType` ∈ JYCK/HHCK/BFCK/QTCK, `warehouseCode`, `createTime`/`placeOrderTime`/`operateTime`
  as `yyyy-MM-dd HH:mm:ss`, `shopNick`, `logisticsCode`, receiver `name`/`mobile`/`province`/
  `city`/`detailAddress`, each orderLine's `ownerCode`/`itemCode`/`planQty` (> 0)/`actualPrice`).
  It does NOT deduplicate: a repeated `deliveryOrderCode` becomes a second delivery order with its
  own `deliveryOrderId` that ships on its own (this is what the hub must prevent). Answers
  `deliveryOrderId`, `createTime`, `warehouseCode`, `logisticsCode`. The planned quantities are
  locked at once. Query and cancel act on the latest create of a code.
- `taobao.qimen.order.cancel` (`warehouseCode`, `orderCode`, optional `ownerCode`, `orderType`,
  `cancelReason`): success while not shipped and when already cancelled; `ORDER_ALREADY_DELIVERED`
  once shipped. An inbound `orderType` (`…RK`) cancels an entry order instead.
- `taobao.qimen.deliveryorder.query` (`orderCode`, `warehouseCode`, `ownerCode`) →
  `deliveryOrder{deliveryOrderCode, deliveryOrderId, warehouseCode, orderType, status,
  logisticsCode, expressCode, orderConfirmTime}` plus, once shipped, `packages` and `orderLines`
  as in the confirm. Status moves NEW → ACCEPT (at half the ship delay) → DELIVERED, or CANCELED.
- `taobao.qimen.inventory.query` (`criteriaList/criteria{warehouseCode, ownerCode, itemCode,
  inventoryType}`) → `items/item{warehouseCode, itemCode, inventoryType, quantity,
  lockQuantity}`. `quantity` is the unfrozen (available) quantity = on hand − locked by unshipped
  orders (never below 0); `lockQuantity` the locked part, so on hand = quantity + lockQuantity.
  Only `ZP` stock exists; other inventory types answer 0. `itemCode` is REQUIRED in every criteria
  and a request holds at most 100 criteria (PARAM_ERROR otherwise): the real service has no
  "list everything" call, so the hub asks for its catalogue item by item, batched 100 per call.
  We chose this over a paging extension so a hub that passes here also works against a real
  WMS. Unknown items are left out of `items` (treat missing as 0).
- `taobao.qimen.entryorder.create` (`entryOrder{entryOrderCode, ownerCode, warehouseCode,
  orderType, supplierCode…}`, `orderLines/orderLine{orderLineNo, ownerCode, itemCode, planQty}`)
  → `entryOrderId`. Not deduplicated either: a repeated code is a second entry order that is
  received on its own (stock counted twice — what the hub must prevent).
- `taobao.qimen.entryorder.query` (`entryOrderCode`, `warehouseCode`, `ownerCode`) →
  `entryOrder{entryOrderCode, entryOrderId, warehouseCode, entryOrderType, status}` (NEW,
  PARTFULFILLED, FULFILLED, CANCELED) and `orderLines` with the `actualQty` received so far;
  `ORDER_NOT_EXIST` for an unknown code. Acts on the latest create of a code.

Behaviour over time (`start()` runs it; `tick()` is the same step, callable directly):
- Each delivery order ships `ship_delay` s after its create if every line is in stock; else it
  waits (status ACCEPT), re-checked every `stock_retry` s — a real WMS holds such orders too.
  Carrier: the create's `logisticsCode` when the warehouse ships with it, except for a seeded
  share (`carrier_switch`) where another of its carriers is used; otherwise one of its carriers.
  The confirm is what counts. Waybills look like the carrier's: `SF` + 13 digits, ZTO `7` + 13
  digits, YTO `YT` + 13 digits, STO `77` + 11 digits, YUNDA `43` + 11 digits, JD `JDVA` + 11
  digits, EMS `E` + 11 digits + `CN`, others the code + 12 digits. Weights are kg with 3
  decimals; 1 package, or 2 (each with its own waybill) for a seeded quarter of multi-unit orders.
  Stock on hand drops, the lock is released, and `taobao.qimen.deliveryorder.confirm` is sent
  (`deliveryOrder{deliveryOrderCode, deliveryOrderId, warehouseCode, orderType, status=DELIVERED,
  outBizCode, confirmType=0, orderConfirmTime, operateTime}`, `packages/package{logisticsCode,
  expressCode, weight, items/item{itemCode, quantity}}`, `orderLines/orderLine{orderLineNo,
  ownerCode, itemCode, inventoryType, planQty, actualQty}`).
- An entry order is received `ship_delay` s after its create: in one receipt
  (`confirmType=0`, `status=FULFILLED`) or, for a seeded share (`entry_split`) of orders with at
  least 2 units, in two: a partial receipt (`confirmType=1`, `status=PARTFULFILLED`) and the rest
  another `ship_delay` later (`confirmType=0`, `FULFILLED`). Each receipt raises stock on hand and
  sends `taobao.qimen.entryorder.confirm` (`entryOrder{entryOrderCode, ownerCode, warehouseCode,
  entryOrderId, entryOrderType, outBizCode, confirmType, status, operateTime}`,
  `orderLines/orderLine{orderLineNo, ownerCode, itemCode, inventoryType, planQty, actualQty}`);
  `actualQty` is the quantity of THIS receipt, not a running total; `outBizCode` differs per
  receipt.
- `taobao.qimen.stockchange.report` (`items/item{ownerCode, warehouseCode, orderCode, orderType,
  outBizCode, itemCode, inventoryType, quantity (signed), changeTime}`) reports movements that no
  hub document explains: every `adjust_every` s (None = never) a seeded stock-count adjustment
  (`orderType` QTRK/QTCK, `orderCode` `PD…`) or an unannounced customer return (`XTRK`, `THR…`),
  and `report_stock_change()` on demand. Shipments and entry-order receipts are reported only by
  their own confirms, never again as stock changes (so a ledger that applies both stays right).

Callbacks: POST `{callback_base()}/qimen/{warehouse_code}` with the same query parameters
(`method`, `app_key`, `timestamp`, `v=2.0`, `format=xml`, `sign_method=md5`, `customerId`, `sign`
over the body with the warehouse's secret) and an XML body, `text/xml;charset=utf-8`. A callback
counts as delivered only when the answer is HTTP 200 with `<flag>success</flag>`; otherwise
(failure flag, HTTP error, connection refused, timeout, or `callback_base()` still None) it is
retried with backoff 0.2 s doubling to a 2 s cap, forever — never dropped. Callbacks are sent one
at a time, oldest due first.

Faults (`FaultProfile` through the seeded `FaultInjector`, rolled per request in this order):
`slow` (answer after `slow_seconds`), `http_5xx` (bare HTTP 502/503, nothing recorded),
`transient` (`flag=failure`, `code=SYSTEM_ERROR`, nothing recorded, after the signature check),
`ambiguous` (delivery-order and entry-order creates and cancels, after a successful change is
recorded): either the
connection drops — the simulator starts a `200` answer with a `Content-Length` and closes the
connection before any body byte, so the client gets a protocol error (uvicorn logs "ASGI callable
returned without completing response") — or the answer arrives `ambiguous_delay` s late. Which
one is a coin flip unless `ambiguous_mode` fixes it. `duplicate_callbacks`: that share of
confirms / stock reports is queued twice with the same `outBizCode`.

Keyword knobs of `QimenWms` (defaults): `carrier_switch` 0.1, `entry_split` 0.5, `adjust_every`
60.0 s, `retry_backoff` (0.2, 2.0), `callback_timeout` 5.0 s, `stock_retry` 1.0 s,
`ambiguous_mode` "random". Inspection for tests: `creates` (every recorded create in arrival
order, duplicates included, each a live `DeliveryOrder` with status, carrier, packages and
`ambiguous`), `entry_creates` (likewise `EntryOrder`s), `entry_order(wh, code)`, `cancels` (every cancel answered, with its outcome code),
`callbacks` (every queued callback with attempts / delivered / last_error), `confirms_sent`,
`entry_confirms_sent`, `stock_reports_sent` (acknowledged ones), `pending_callbacks`,
`rejected`, `faults_served`, `stock(wh)` (on hand), `locked(wh)`, `order(wh, code)`,
`await report_stock_change(wh, item, delta)`, `snapshot()` (all of it as JSON-able data).

Deliberate differences from a real WMS: no `singleitem.synchronize` (items are known from the stock
table); one inventory type (ZP); `ownerCode` is recorded, not checked; no partial shipment
(`PARTDELIVERED`) and no split into several delivery orders; timestamps are checked ±10 min like
the TOP gateway; the success `code` is `0`; the connection drop needs no response-buffering
middleware in front of the route (a plain Starlette app, as the sandbox server uses).
"""

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeAlias
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET
import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from sandbox.faults import FaultInjector
from sandbox.redelivery import Loops, deliver_until_acknowledged
from sandbox.signing import constant_time_equal, qimen_sign

PATH = "/router/qimen/service"
CST = timezone(timedelta(hours=8))
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_CLOCK_SKEW = 600.0
MAX_CRITERIA = 100
TICK = 0.02

CONFIRM = "taobao.qimen.deliveryorder.confirm"
ENTRY_CONFIRM = "taobao.qimen.entryorder.confirm"
STOCK_REPORT = "taobao.qimen.stockchange.report"
AMBIGUOUS_METHODS = ("deliveryorder.create", "order.cancel", "entryorder.create")

DELIVERY_TYPES = ("JYCK", "HHCK", "BFCK", "QTCK")
ENTRY_TYPES = ("SCRK", "LYRK", "CCRK", "CGRK", "DBRK", "QTRK", "B2BRK", "XNRK")

XmlValue: TypeAlias = "str | list[tuple[str, XmlValue]]"
XmlNodes: TypeAlias = list[tuple[str, XmlValue]]
AmbiguousMode = Literal["random", "drop", "late"]


class QimenError(Exception):
    """A `flag=failure` answer: `code` and `message` go on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- XML -----------------------------------------------------------------------------------------


def _element(tag: str, value: XmlValue) -> ET.Element:
    el = ET.Element(tag)
    if isinstance(value, str):
        el.text = value
    else:
        for child_tag, child_value in value:
            el.append(_element(child_tag, child_value))
    return el


def xml_document(root: str, children: XmlNodes) -> str:
    """Serialise nested (tag, text | children) pairs with the XML declaration Qimen sends."""
    body = ET.tostring(_element(root, children), encoding="unicode")
    return '<?xml version="1.0" encoding="utf-8"?>' + body


def answer_xml(flag: bool, code: str, message: str, extra: XmlNodes | None = None) -> str:
    nodes: XmlNodes = [
        ("flag", "success" if flag else "failure"),
        ("code", code),
        ("message", message),
    ]
    return xml_document("response", nodes + (extra or []))


def _xml_response(text: str) -> Response:
    return Response(text, media_type="text/xml;charset=utf-8")


def _text(el: ET.Element | None, path: str) -> str:
    if el is None:
        return ""
    return (el.findtext(path) or "").strip()


def _require(el: ET.Element | None, path: str, name: str | None = None) -> str:
    value = _text(el, path)
    if not value:
        raise QimenError("PARAM_ERROR", f"missing required field {name or path}")
    return value


def _int_field(el: ET.Element, path: str, name: str) -> int:
    raw = _require(el, path, name)
    try:
        value = int(raw)
    except ValueError:
        raise QimenError("PARAM_ERROR", f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise QimenError("PARAM_ERROR", f"{name} must be positive, got {value}")
    return value


def _time_field(el: ET.Element, path: str, name: str) -> str:
    raw = _require(el, path, name)
    try:
        datetime.strptime(raw, TIME_FORMAT).replace(tzinfo=CST)
    except ValueError:
        raise QimenError(
            "PARAM_ERROR", f"{name} must be yyyy-MM-dd HH:mm:ss, got {raw!r}"
        ) from None
    return raw


def cst_now() -> str:
    return datetime.now(CST).strftime(TIME_FORMAT)


def _parse_body(body: str) -> ET.Element:
    try:
        root: ET.Element = SafeET.fromstring(body)
    except Exception:  # defusedxml raises ParseError or its own DefusedXmlException subclasses
        raise QimenError("PARAM_ERROR", "body is not well-formed XML") from None
    if root.tag != "request":
        raise QimenError("PARAM_ERROR", f"root element must be <request>, got <{root.tag}>")
    return root


def short_method(method: str) -> str:
    """`taobao.qimen.x.y`, `qimen.x.y` and `x.y` all name method `x.y`."""
    for prefix in ("taobao.", "qimen."):
        method = method.removeprefix(prefix)
    return method


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseSpec:
    """One simulated warehouse: its Qimen credentials, its ZP stock on hand and its carriers."""

    code: str
    app_key: str
    app_secret: str
    customer_id: str
    stock: dict[str, int]
    carriers: list[str]


@dataclass
class OrderLine:
    line_no: str
    owner_code: str
    item_code: str
    plan_qty: int
    actual_qty: int = 0


@dataclass(frozen=True)
class Package:
    logistics_code: str
    express_code: str
    weight: str
    items: tuple[tuple[str, int], ...]


@dataclass
class DeliveryOrder:
    """One accepted `deliveryorder.create` (duplicates are separate objects)."""

    code: str
    order_id: str
    warehouse: str
    order_type: str
    logistics_code: str
    lines: list[OrderLine]
    body: str
    received_at: str
    status: str = "NEW"
    ambiguous: str | None = None
    """`drop` or `late` when the create's answer was faulted after recording it."""
    packages: list[Package] = field(default_factory=list)
    out_biz_code: str = ""
    confirm_time: str = ""

    @property
    def express_code(self) -> str:
        return self.packages[0].express_code if self.packages else ""

    @property
    def carrier(self) -> str:
        return self.packages[0].logistics_code if self.packages else ""


@dataclass
class EntryOrder:
    """One accepted `entryorder.create`; `received` is the running total per line number."""

    code: str
    order_id: str
    warehouse: str
    order_type: str
    owner_code: str
    lines: list[OrderLine]
    body: str
    status: str = "NEW"
    receipts: list[str] = field(default_factory=list)
    ambiguous: str | None = None
    """`drop` or `late` when the create's answer was faulted after recording it."""


@dataclass
class CancelRecord:
    warehouse: str
    order_code: str
    order_type: str
    reason: str
    outcome: str
    """`0` on success, else the failure code answered."""
    ambiguous: str | None = None


@dataclass
class Callback:
    """One queued WMS → hub call; a duplicate copy is a separate object with the same body."""

    seq: int
    warehouse: str
    method: str
    body: str
    out_biz_code: str
    order_code: str
    duplicate: bool = False
    attempts: int = 0
    delivered: bool = False
    last_error: str = ""
    next_at: float = 0.0


@dataclass
class _Warehouse:
    spec: WarehouseSpec
    on_hand: dict[str, int]
    locked: dict[str, int] = field(default_factory=dict)

    def available(self, item: str) -> int:
        return max(self.on_hand.get(item, 0) - self.locked.get(item, 0), 0)

    def lock(self, lines: list[OrderLine], sign: int) -> None:
        for line in lines:
            self.locked[line.item_code] = self.locked.get(line.item_code, 0) + sign * line.plan_qty


class _DroppedResponse(Response):
    """Starts a 200 answer that promises a body, then ends without it: uvicorn closes the
    connection and the client sees a broken response after the change was recorded."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/xml;charset=utf-8"), (b"content-length", b"256")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


# --- the simulator -------------------------------------------------------------------------------


class QimenWms:
    """A Qimen-speaking WMS serving several warehouses: accepts orders, ships them after
    `ship_delay` seconds and calls the hub back until it acknowledges (see the module docstring).

    Inspection: `creates`, `entry_creates`, `cancels`, `callbacks`, `confirms_sent`,
    `entry_confirms_sent`, `stock_reports_sent`, `stock()`, `locked()`, `order()`, `snapshot()`.
    """

    def __init__(
        self,
        warehouses: list[WarehouseSpec],
        faults: FaultInjector,
        ship_delay: float,
        callback_base: Callable[[], str | None],
        *,
        carrier_switch: float = 0.1,
        entry_split: float = 0.5,
        adjust_every: float | None = 60.0,
        retry_backoff: tuple[float, float] = (0.2, 2.0),
        callback_timeout: float = 5.0,
        stock_retry: float = 1.0,
        ambiguous_mode: AmbiguousMode = "random",
    ) -> None:
        self._warehouses = {w.code: _Warehouse(w, dict(w.stock)) for w in warehouses}
        self._faults = faults
        self._rng = random.Random(f"qimen:{faults.seed}")
        self.ship_delay = ship_delay
        self._callback_base = callback_base
        self.carrier_switch = carrier_switch
        self.entry_split = entry_split
        self.adjust_every = adjust_every
        self.retry_backoff = retry_backoff
        self.callback_timeout = callback_timeout
        self.stock_retry = stock_retry
        self.ambiguous_mode: AmbiguousMode = ambiguous_mode

        self.creates: list[DeliveryOrder] = []
        self._latest: dict[tuple[str, str], DeliveryOrder] = {}
        """The latest create of each (warehouse, code): `order` answers without a scan."""
        self.entry_creates: list[EntryOrder] = []
        self.cancels: list[CancelRecord] = []
        self.callbacks: list[Callback] = []
        self.rejected: list[tuple[str, str, str]] = []
        """(method, code, message) of every failure answered (faults included)."""
        self.faults_served: list[tuple[str, str]] = []
        """(method, fault) per injected fault: slow, http_5xx, transient, drop, late."""

        self._ids = itertools.count(1)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._loops = Loops()
        self._handlers: dict[str, Callable[[list[_Warehouse], ET.Element], XmlNodes]] = {
            "deliveryorder.create": self._create,
            "order.cancel": self._cancel,
            "deliveryorder.query": self._query,
            "inventory.query": self._inventory,
            "entryorder.create": self._entry_create,
            "entryorder.query": self._entry_query,
        }
        if adjust_every is not None:
            self._schedule(adjust_every, self._random_adjustment)

    # --- lifecycle -------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [Route(PATH, self._endpoint, methods=["POST"])]

    async def start(self) -> None:
        self._loops.start(
            {"qimen-events": self._event_loop, "qimen-callbacks": self._callback_loop}
        )

    async def stop(self) -> None:
        await self._loops.stop()

    # --- inspection ------------------------------------------------------------------------------

    def stock(self, warehouse: str) -> dict[str, int]:
        """Sound (ZP) quantity on hand per item, locked quantities included."""
        return dict(self._warehouses[warehouse].on_hand)

    def fill_stock(self, quantity: int) -> None:
        """Set every item of every warehouse to `quantity` on hand (benchmarks: no order waits
        for stock)."""
        for wh in self._warehouses.values():
            for item in list(wh.on_hand):
                wh.on_hand[item] = quantity

    def locked(self, warehouse: str) -> dict[str, int]:
        return {k: v for k, v in self._warehouses[warehouse].locked.items() if v}

    def order(self, warehouse: str, code: str) -> DeliveryOrder | None:
        """The latest delivery order created under `code` in `warehouse`."""
        return self._latest.get((warehouse, code))

    def _delivered(self, method: str) -> list[Callback]:
        return [c for c in self.callbacks if c.method == method and c.delivered]

    @property
    def confirms_sent(self) -> list[Callback]:
        """`deliveryorder.confirm` callbacks the hub acknowledged, duplicates included."""
        return self._delivered(CONFIRM)

    @property
    def entry_confirms_sent(self) -> list[Callback]:
        return self._delivered(ENTRY_CONFIRM)

    @property
    def stock_reports_sent(self) -> list[Callback]:
        return self._delivered(STOCK_REPORT)

    @property
    def pending_callbacks(self) -> list[Callback]:
        return [c for c in self.callbacks if not c.delivered]

    def snapshot(self) -> dict[str, Any]:
        return {
            "warehouses": {
                code: {"stock": dict(w.on_hand), "locked": self.locked(code)}
                for code, w in self._warehouses.items()
            },
            "creates": [
                {
                    "deliveryOrderCode": o.code,
                    "deliveryOrderId": o.order_id,
                    "warehouseCode": o.warehouse,
                    "status": o.status,
                    "logisticsCode": o.carrier or o.logistics_code,
                    "expressCode": o.express_code,
                    "packages": [asdict(p) for p in o.packages],
                    "lines": [asdict(line) for line in o.lines],
                    "receivedAt": o.received_at,
                    "ambiguous": o.ambiguous,
                }
                for o in self.creates
            ],
            "entryOrders": [
                {
                    "entryOrderCode": e.code,
                    "entryOrderId": e.order_id,
                    "warehouseCode": e.warehouse,
                    "status": e.status,
                    "receipts": list(e.receipts),
                    "lines": [asdict(line) for line in e.lines],
                }
                for e in self.entry_creates
            ],
            "cancels": [asdict(c) for c in self.cancels],
            "callbacks": [
                {k: v for k, v in asdict(c).items() if k not in ("body", "next_at")}
                for c in self.callbacks
            ],
            "rejected": [list(r) for r in self.rejected],
            "faults": [list(f) for f in self.faults_served],
        }

    # --- HTTP ------------------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        profile = self._faults.profile
        method = request.query_params.get("method", "")
        if self._faults.roll(profile.slow):
            self.faults_served.append((method, "slow"))
            await asyncio.sleep(profile.slow_seconds)
        if self._faults.roll(profile.http_5xx):
            self.faults_served.append((method, "http_5xx"))
            status = 502 if self._faults.roll(0.5) else 503
            return Response("Bad Gateway" if status == 502 else "Service Unavailable", status)
        body = (await request.body()).decode("utf-8", errors="replace")
        try:
            name, extra = self.handle(dict(request.query_params), body)
        except QimenError as exc:
            self.rejected.append((method, exc.code, exc.message))
            return _xml_response(answer_xml(False, exc.code, exc.message))
        text = answer_xml(True, "0", "success", extra)
        if name in AMBIGUOUS_METHODS and self._faults.roll(profile.ambiguous):
            mode = self._ambiguous_choice()
            self._mark_ambiguous(name, mode)
            self.faults_served.append((method, mode))
            if mode == "drop":
                return _DroppedResponse()
            await asyncio.sleep(profile.ambiguous_delay)
        return _xml_response(text)

    def _ambiguous_choice(self) -> Literal["drop", "late"]:
        if self.ambiguous_mode != "random":
            return self.ambiguous_mode
        return "drop" if self._faults.roll(0.5) else "late"

    def _mark_ambiguous(self, name: str, mode: str) -> None:
        if name == "deliveryorder.create":
            self.creates[-1].ambiguous = mode
        elif name == "entryorder.create":
            self.entry_creates[-1].ambiguous = mode
        else:
            self.cancels[-1].ambiguous = mode

    def handle(self, query: dict[str, str], body: str) -> tuple[str, XmlNodes]:
        """Check and run one request; returns (short method name, extra response nodes).

        Raises `QimenError` for every failure answer. The transient fault is rolled here, after
        the signature check, so it never records anything.
        """
        for name in ("method", "app_key", "timestamp", "customerId", "sign"):
            if not query.get(name):
                raise QimenError("missing-parameter", f"Missing required arguments:{name}")
        name = short_method(query["method"])
        handler = self._handlers.get(name)
        if handler is None:
            raise QimenError("invalid-method", f"Invalid method {query['method']}")
        candidates = [
            w
            for w in self._warehouses.values()
            if w.spec.app_key == query["app_key"] and w.spec.customer_id == query["customerId"]
        ]
        if not candidates:
            raise QimenError("invalid-app-key", "Invalid app key or customerId")
        self._check_signature(query, body, candidates)
        self._check_timestamp(query["timestamp"])
        if query.get("format", "xml") != "xml":
            raise QimenError("invalid-format", "Only format=xml is supported")
        root = _parse_body(body)
        if self._faults.roll(self._faults.profile.transient):
            self.faults_served.append((query["method"], "transient"))
            raise QimenError("SYSTEM_ERROR", "系统繁忙，请稍后重试")
        return name, handler(candidates, root)

    @staticmethod
    def _check_signature(query: dict[str, str], body: str, candidates: list[_Warehouse]) -> None:
        if query.get("sign_method", "md5") != "md5":
            raise QimenError("sign-check-failure", "Illegal request")
        for w in candidates:
            if constant_time_equal(qimen_sign(query, body, w.spec.app_secret), query["sign"]):
                return
        raise QimenError("sign-check-failure", "Illegal request")

    @staticmethod
    def _check_timestamp(raw: str) -> None:
        try:
            sent = datetime.strptime(raw, TIME_FORMAT).replace(tzinfo=CST)
        except ValueError:
            raise QimenError("invalid-timestamp", f"Invalid timestamp {raw!r}") from None
        if abs((datetime.now(CST) - sent).total_seconds()) > MAX_CLOCK_SKEW:
            raise QimenError("invalid-timestamp", "Timestamp is more than 10 minutes off")

    @staticmethod
    def _pick(candidates: list[_Warehouse], code: str) -> _Warehouse:
        for w in candidates:
            if w.spec.code == code:
                return w
        if code == "OTHER":
            return candidates[0]
        raise QimenError("PARAM_ERROR", f"warehouseCode {code} is not a warehouse of this owner")

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):010d}"

    # --- methods ---------------------------------------------------------------------------------

    def _create(self, candidates: list[_Warehouse], root: ET.Element) -> XmlNodes:
        head = root.find("deliveryOrder")
        code = _require(head, "deliveryOrderCode")
        order_type = _require(head, "orderType")
        if order_type not in DELIVERY_TYPES:
            raise QimenError(
                "PARAM_ERROR", f"orderType {order_type} is not one of {DELIVERY_TYPES}"
            )
        wh = self._pick(candidates, _require(head, "warehouseCode"))
        assert head is not None  # _require raised otherwise
        for name in ("createTime", "placeOrderTime", "operateTime"):
            _time_field(head, name, name)
        _require(head, "shopNick")
        logistics = _require(head, "logisticsCode")
        for party in ("receiverInfo", "senderInfo"):  # both required by the spec
            for name in ("name", "mobile", "province", "city", "detailAddress"):
                _require(head, f"{party}/{name}", f"{party}.{name}")
        lines = self._lines(root, price_required=True)
        for line in lines:
            if line.item_code not in wh.on_hand:
                raise QimenError("ITEM_NOT_EXIST", f"item {line.item_code} does not exist")
        order = DeliveryOrder(
            code=code,
            order_id=self._next_id("DO"),
            warehouse=wh.spec.code,
            order_type=order_type,
            logistics_code=logistics,
            lines=lines,
            body=ET.tostring(root, encoding="unicode"),
            received_at=cst_now(),
        )
        self.creates.append(order)
        self._latest[(order.warehouse, order.code)] = order
        wh.lock(lines, +1)
        self._schedule(self.ship_delay / 2, lambda: self._accept(order))
        self._schedule(self.ship_delay, lambda: self._ship(order))
        return [
            ("createTime", order.received_at),
            ("deliveryOrderId", order.order_id),
            ("warehouseCode", wh.spec.code),
            ("logisticsCode", logistics),
        ]

    @staticmethod
    def _lines(root: ET.Element, *, price_required: bool) -> list[OrderLine]:
        elements = root.findall("orderLines/orderLine")
        if not elements:
            raise QimenError("PARAM_ERROR", "missing required field orderLines")
        lines = []
        for n, el in enumerate(elements, start=1):
            owner = _require(el, "ownerCode", "orderLine.ownerCode")
            item = _require(el, "itemCode", "orderLine.itemCode")
            qty = _int_field(el, "planQty", "orderLine.planQty")
            if price_required:
                _require(el, "actualPrice", "orderLine.actualPrice")
            line_no = _text(el, "orderLineNo") or str(n)
            lines.append(OrderLine(line_no, owner, item, qty))
        return lines

    def _cancel(self, candidates: list[_Warehouse], root: ET.Element) -> XmlNodes:
        wh = self._pick(candidates, _require(root, "warehouseCode"))
        code = _require(root, "orderCode")
        order_type = _text(root, "orderType")
        record = CancelRecord(wh.spec.code, code, order_type, _text(root, "cancelReason"), "0")
        self.cancels.append(record)
        try:
            if order_type.endswith("RK"):
                self._cancel_entry(wh, code)
            else:
                self._cancel_delivery(wh, code)
        except QimenError as exc:
            record.outcome = exc.code
            raise
        return []

    def _cancel_delivery(self, wh: _Warehouse, code: str) -> None:
        order = self.order(wh.spec.code, code)
        if order is None:
            raise QimenError("ORDER_NOT_EXIST", f"order {code} does not exist")
        if order.status == "DELIVERED":
            raise QimenError("ORDER_ALREADY_DELIVERED", f"order {code} has already shipped")
        if order.status != "CANCELED":
            order.status = "CANCELED"
            wh.lock(order.lines, -1)

    def _cancel_entry(self, wh: _Warehouse, code: str) -> None:
        found = [e for e in self.entry_creates if e.warehouse == wh.spec.code and e.code == code]
        if not found:
            raise QimenError("ORDER_NOT_EXIST", f"order {code} does not exist")
        if found[-1].status == "FULFILLED":
            raise QimenError("ORDER_ALREADY_FINISHED", f"order {code} has been received")
        found[-1].status = "CANCELED"

    def _query(self, candidates: list[_Warehouse], root: ET.Element) -> XmlNodes:
        code = _require(root, "orderCode")
        wh = self._pick(candidates, _text(root, "warehouseCode") or candidates[0].spec.code)
        order = self.order(wh.spec.code, code)
        if order is None:
            raise QimenError("ORDER_NOT_EXIST", f"order {code} does not exist")
        head: XmlNodes = [
            ("deliveryOrderCode", order.code),
            ("deliveryOrderId", order.order_id),
            ("warehouseCode", order.warehouse),
            ("orderType", order.order_type),
            ("status", order.status),
            ("logisticsCode", order.carrier or order.logistics_code),
            ("expressCode", order.express_code),
            ("orderConfirmTime", order.confirm_time),
        ]
        nodes: XmlNodes = [("deliveryOrder", head)]
        if order.packages:
            nodes += [("packages", _package_nodes(order)), ("orderLines", _line_nodes(order.lines))]
        return nodes

    def _inventory(self, candidates: list[_Warehouse], root: ET.Element) -> XmlNodes:
        criteria = root.findall("criteriaList/criteria")
        if not criteria:
            raise QimenError("PARAM_ERROR", "missing required field criteriaList")
        if len(criteria) > MAX_CRITERIA:
            raise QimenError("PARAM_ERROR", f"at most {MAX_CRITERIA} criteria per request")
        items: XmlNodes = []
        for c in criteria:
            item = _require(c, "itemCode", "criteria.itemCode")
            wh = self._pick(candidates, _text(c, "warehouseCode") or candidates[0].spec.code)
            if item not in wh.on_hand:
                continue
            inv_type = _text(c, "inventoryType") or "ZP"
            sound = inv_type == "ZP"
            locked = min(wh.locked.get(item, 0), wh.on_hand[item])
            node: XmlNodes = [
                ("warehouseCode", wh.spec.code),
                ("itemCode", item),
                ("inventoryType", inv_type),
                ("quantity", str(wh.available(item) if sound else 0)),
                ("lockQuantity", str(max(locked, 0) if sound else 0)),
            ]
            items.append(("item", node))
        return [("items", items)]

    def _entry_create(self, candidates: list[_Warehouse], root: ET.Element) -> XmlNodes:
        head = root.find("entryOrder")
        code = _require(head, "entryOrderCode")
        owner = _require(head, "ownerCode")
        wh = self._pick(candidates, _require(head, "warehouseCode"))
        order_type = _text(head, "orderType") or "CGRK"
        if order_type not in ENTRY_TYPES:
            raise QimenError("PARAM_ERROR", f"orderType {order_type} is not one of {ENTRY_TYPES}")
        entry = EntryOrder(
            code=code,
            order_id=self._next_id("EO"),
            warehouse=wh.spec.code,
            order_type=order_type,
            owner_code=owner,
            lines=self._lines(root, price_required=False),
            body=ET.tostring(root, encoding="unicode"),
        )
        self.entry_creates.append(entry)
        total = sum(line.plan_qty for line in entry.lines)
        if total >= 2 and self._rng.random() < self.entry_split:
            first = [line.plan_qty // 2 for line in entry.lines]
            rest = [line.plan_qty - q for line, q in zip(entry.lines, first, strict=True)]
            self._schedule(self.ship_delay, lambda: self._receive(entry, first, final=False))
            self._schedule(2 * self.ship_delay, lambda: self._receive(entry, rest, final=True))
        else:
            plan = [line.plan_qty for line in entry.lines]
            self._schedule(self.ship_delay, lambda: self._receive(entry, plan, final=True))
        return [("entryOrderId", entry.order_id)]

    def entry_order(self, warehouse: str, code: str) -> EntryOrder | None:
        """The latest entry order created under `code` in `warehouse`."""
        found = [e for e in self.entry_creates if e.warehouse == warehouse and e.code == code]
        return found[-1] if found else None

    def _entry_query(self, candidates: list[_Warehouse], root: ET.Element) -> XmlNodes:
        code = _require(root, "entryOrderCode")
        wh = self._pick(candidates, _text(root, "warehouseCode") or candidates[0].spec.code)
        entry = self.entry_order(wh.spec.code, code)
        if entry is None:
            raise QimenError("ORDER_NOT_EXIST", f"order {code} does not exist")
        head: XmlNodes = [
            ("entryOrderCode", entry.code),
            ("entryOrderId", entry.order_id),
            ("warehouseCode", entry.warehouse),
            ("entryOrderType", entry.order_type),
            ("status", entry.status),
        ]
        return [("entryOrder", head), ("orderLines", _line_nodes(entry.lines))]

    # --- time passing ----------------------------------------------------------------------------

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (time.monotonic() + delay, next(self._ids), action))

    def tick(self) -> None:
        """Run every event that is due (accept, ship, receive, adjust)."""
        now = time.monotonic()
        while self._events and self._events[0][0] <= now:
            _, _, action = heapq.heappop(self._events)
            action()

    async def _event_loop(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK)

    def _accept(self, order: DeliveryOrder) -> None:
        if order.status == "NEW":
            order.status = "ACCEPT"

    def _ship(self, order: DeliveryOrder) -> None:
        if order.status == "CANCELED":
            return
        wh = self._warehouses[order.warehouse]
        need: dict[str, int] = {}
        for line in order.lines:
            need[line.item_code] = need.get(line.item_code, 0) + line.plan_qty
        if any(wh.on_hand.get(item, 0) < qty for item, qty in need.items()):
            order.status = "ACCEPT"
            self._schedule(self.stock_retry, lambda: self._ship(order))
            return
        for item, qty in need.items():
            wh.on_hand[item] -= qty
        wh.lock(order.lines, -1)
        for line in order.lines:
            line.actual_qty = line.plan_qty
        carrier = self._carrier(wh.spec, order.logistics_code)
        order.packages = self._packages(carrier, order.lines)
        order.status = "DELIVERED"
        order.confirm_time = cst_now()
        order.out_biz_code = self._next_id("OB")
        body = xml_document("request", _confirm_nodes(order))
        self._enqueue(order.warehouse, CONFIRM, body, order.out_biz_code, order.code)

    def _carrier(self, spec: WarehouseSpec, asked: str) -> str:
        carriers = spec.carriers or [asked]
        if asked in carriers and not (
            len(carriers) > 1 and self._rng.random() < self.carrier_switch
        ):
            return asked
        others = [c for c in carriers if c != asked] or carriers
        return self._rng.choice(others)

    def _packages(self, carrier: str, lines: list[OrderLine]) -> list[Package]:
        units = [line.item_code for line in lines for _ in range(line.plan_qty)]
        groups = [units]
        if len(units) >= 2 and self._rng.random() < 0.25:
            half = len(units) // 2
            groups = [units[:half], units[half:]]
        packages = []
        for group in groups:
            counts: dict[str, int] = {}
            for item in group:
                counts[item] = counts.get(item, 0) + 1
            weight = sum(self._rng.uniform(0.15, 1.8) for _ in group)
            packages.append(
                Package(carrier, self._waybill(carrier), f"{weight:.3f}", tuple(counts.items()))
            )
        return packages

    def _waybill(self, carrier: str) -> str:
        def digits(n: int) -> str:
            return "".join(str(self._rng.randrange(10)) for _ in range(n))

        formats: dict[str, Callable[[], str]] = {
            "SF": lambda: "SF" + digits(13),
            "ZTO": lambda: "7" + digits(13),
            "YTO": lambda: "YT" + digits(13),
            "STO": lambda: "77" + digits(11),
            "YUNDA": lambda: "43" + digits(11),
            "JD": lambda: "JDVA" + digits(11),
            "EMS": lambda: "E" + digits(11) + "CN",
        }
        return formats.get(carrier, lambda: carrier + digits(12))()

    def _receive(self, entry: EntryOrder, quantities: list[int], *, final: bool) -> None:
        if entry.status == "CANCELED":
            return
        wh = self._warehouses[entry.warehouse]
        received = []
        for line, qty in zip(entry.lines, quantities, strict=True):
            if qty <= 0:
                continue
            wh.on_hand[line.item_code] = wh.on_hand.get(line.item_code, 0) + qty
            line.actual_qty += qty
            received.append((line, qty))
        entry.status = "FULFILLED" if final else "PARTFULFILLED"
        out_biz = self._next_id("IB")
        entry.receipts.append(out_biz)
        head: XmlNodes = [
            ("entryOrderCode", entry.code),
            ("ownerCode", entry.owner_code),
            ("warehouseCode", entry.warehouse),
            ("entryOrderId", entry.order_id),
            ("entryOrderType", entry.order_type),
            ("outBizCode", out_biz),
            ("confirmType", "0" if final else "1"),
            ("status", entry.status),
            ("operateTime", cst_now()),
        ]
        lines: XmlNodes = [
            (
                "orderLine",
                [
                    ("orderLineNo", line.line_no),
                    ("ownerCode", line.owner_code),
                    ("itemCode", line.item_code),
                    ("inventoryType", "ZP"),
                    ("planQty", str(line.plan_qty)),
                    ("actualQty", str(qty)),
                ],
            )
            for line, qty in received
        ]
        body = xml_document("request", [("entryOrder", head), ("orderLines", lines)])
        self._enqueue(entry.warehouse, ENTRY_CONFIRM, body, out_biz, entry.code)

    def _random_adjustment(self) -> None:
        if self.adjust_every is not None:
            self._schedule(self.adjust_every, self._random_adjustment)
        candidates = [(c, item) for c, w in self._warehouses.items() for item in sorted(w.on_hand)]
        if not candidates:
            return
        code, item = self._rng.choice(candidates)
        if self._rng.random() < 0.3:
            self._stock_change(code, item, 1, "XTRK", self._next_id("THR"))
            return
        delta = self._rng.choice([-2, -1, 1, 2, 3])
        delta = max(delta, -self._warehouses[code].available(item))
        if delta:
            self._stock_change(
                code, item, delta, "QTRK" if delta > 0 else "QTCK", self._next_id("PD")
            )

    async def report_stock_change(
        self, warehouse: str, item_code: str, delta: int, order_type: str | None = None
    ) -> Callback:
        """Change stock on hand by `delta` and queue the `stockchange.report` (for tests)."""
        kind = order_type or ("QTRK" if delta >= 0 else "QTCK")
        return self._stock_change(warehouse, item_code, delta, kind, self._next_id("PD"))

    def _stock_change(
        self, warehouse: str, item: str, delta: int, order_type: str, order_code: str
    ) -> Callback:
        wh = self._warehouses[warehouse]
        wh.on_hand[item] = wh.on_hand.get(item, 0) + delta
        out_biz = self._next_id("SC")
        node: XmlNodes = [
            ("ownerCode", wh.spec.customer_id),
            ("warehouseCode", warehouse),
            ("orderCode", order_code),
            ("orderType", order_type),
            ("outBizCode", out_biz),
            ("itemCode", item),
            ("inventoryType", "ZP"),
            ("quantity", str(delta)),
            ("changeTime", cst_now()),
        ]
        body = xml_document("request", [("items", [("item", node)])])
        return self._enqueue(warehouse, STOCK_REPORT, body, out_biz, order_code)

    # --- callbacks -------------------------------------------------------------------------------

    def _enqueue(
        self, warehouse: str, method: str, body: str, out_biz: str, order_code: str
    ) -> Callback:
        first = Callback(next(self._ids), warehouse, method, body, out_biz, order_code)
        self.callbacks.append(first)
        if self._faults.roll(self._faults.profile.duplicate_callbacks):
            copy = Callback(next(self._ids), warehouse, method, body, out_biz, order_code, True)
            self.callbacks.append(copy)
        return first

    def signed_query(self, warehouse: str, method: str, body: str) -> dict[str, str]:
        """The query parameters of a callback, signed with the warehouse's secret."""
        spec = self._warehouses[warehouse].spec
        query = {
            "method": method,
            "app_key": spec.app_key,
            "timestamp": cst_now(),
            "v": "2.0",
            "format": "xml",
            "sign_method": "md5",
            "customerId": spec.customer_id,
        }
        query["sign"] = qimen_sign(query, body, spec.app_secret)
        return query

    async def _callback_loop(self) -> None:
        await deliver_until_acknowledged(
            self.callbacks,
            self._post,
            request_timeout=self.callback_timeout,
            backoff=self.retry_backoff,
        )

    async def _post(self, client: httpx.AsyncClient, cb: Callback) -> str | None:
        """Send once; None when the hub acknowledged, else why not."""
        base = self._callback_base()
        if not base:
            return "no callback base yet"
        url = f"{base.rstrip('/')}/qimen/{cb.warehouse}"
        try:
            response = await client.post(
                url,
                params=self.signed_query(cb.warehouse, cb.method, cb.body),
                content=cb.body.encode("utf-8"),
                headers={"Content-Type": "text/xml;charset=utf-8"},
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        try:
            root = SafeET.fromstring(response.content)
        except Exception:
            return "answer is not XML"
        if _text(root, "flag") != "success":
            return f"flag={_text(root, 'flag')} code={_text(root, 'code')}"
        return None


def _package_nodes(order: DeliveryOrder) -> XmlNodes:
    return [
        (
            "package",
            [
                ("logisticsCode", p.logistics_code),
                ("expressCode", p.express_code),
                ("weight", p.weight),
                (
                    "items",
                    [("item", [("itemCode", i), ("quantity", str(q))]) for i, q in p.items],
                ),
            ],
        )
        for p in order.packages
    ]


def _line_nodes(lines: list[OrderLine]) -> XmlNodes:
    return [
        (
            "orderLine",
            [
                ("orderLineNo", line.line_no),
                ("ownerCode", line.owner_code),
                ("itemCode", line.item_code),
                ("inventoryType", "ZP"),
                ("planQty", str(line.plan_qty)),
                ("actualQty", str(line.actual_qty)),
            ],
        )
        for line in lines
    ]


def _confirm_nodes(order: DeliveryOrder) -> XmlNodes:
    head: XmlNodes = [
        ("deliveryOrderCode", order.code),
        ("deliveryOrderId", order.order_id),
        ("warehouseCode", order.warehouse),
        ("orderType", order.order_type),
        ("status", "DELIVERED"),
        ("outBizCode", order.out_biz_code),
        ("confirmType", "0"),
        ("orderConfirmTime", order.confirm_time),
        ("operateTime", order.confirm_time),
    ]
    return [
        ("deliveryOrder", head),
        ("packages", _package_nodes(order)),
        ("orderLines", _line_nodes(order.lines)),
    ]
