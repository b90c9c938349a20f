"""Qimen (奇门) WMS: delivery orders out, stock asked; confirms and stock reports called back.

Wire contract (`specs/platforms.md` §4, `specs/decisions.md` "Qimen WMS"):

- ERP → WMS: POST to the warehouse's `api_url`. System parameters go in the query string:
  `method` (the full `taobao.qimen.*` name), `app_key`, `timestamp` (`yyyy-MM-dd HH:mm:ss` CST,
  from the injected clock), `v=2.0`, `format=xml`, `sign_method=md5`, `customerId`, `sign`. The
  business payload is the raw XML body `<request>…</request>`, `application/xml;charset=utf-8`.
- `sign` = HEX_UPPER(MD5(secret + Σ sorted k+v of the non-empty query parameters except `sign` +
  body + secret)): `top_sign(query, secret, "md5", body)`. `QimenSigner` (an `httpx.Auth` that
  sees the body) is the only place that adds the system parameters and signs; it signs each
  attempt afresh. The WMS's callbacks carry the same query parameters, signed the same way with
  the same secret; `QimenCallbacks.verify` recomputes that signature.
- Answer: `<response><flag>success|failure</flag><code/><message/>…</response>`. Anything but
  `flag=success` (a missing flag included) is a failure with its `code` and `message`.

| `Wms` method             | Qimen method                          | request → answer                         |
|--------------------------|---------------------------------------|------------------------------------------|
| `create_delivery_order`  | `taobao.qimen.deliveryorder.create`   | `deliveryOrder` + `orderLines` (§4.2) →  |
|                          |                                       | `deliveryOrderId`                        |
| `query_delivery_order`   | `taobao.qimen.deliveryorder.query`    | `orderCode`, `warehouseCode`, `ownerCode`|
|                          |                                       | → `deliveryOrder{…, status}`             |
| `cancel_delivery_order`  | `taobao.qimen.order.cancel`           | `warehouseCode`, `ownerCode`, `orderCode`|
|                          |                                       | `orderType=JYCK`, `cancelReason`         |
| `inventory`              | `taobao.qimen.inventory.query`        | `criteriaList/criteria{warehouseCode,    |
|                          |                                       | ownerCode, itemCode, inventoryType=ZP}`, |
|                          |                                       | ≤ 100 per call → `items/item[]`          |
| `create_entry_order`     | `taobao.qimen.entryorder.create`      | `entryOrder{entryOrderCode, ownerCode,   |
|                          |                                       | warehouseCode, orderType=CGRK, …}` +     |
|                          |                                       | `orderLines` → `entryOrderId`            |
| `query_entry_order`      | `taobao.qimen.entryorder.query`       | `ownerCode, warehouseCode,               |
|                          |                                       | entryOrderCode` → `entryOrder{…,status}` |

Outcomes (what the caller gets; the transport retries only plain `TransientError`):

| what happened                                    | create            | query / inventory    |
|--------------------------------------------------|-------------------|----------------------|
| `flag=success`                                   | `deliveryOrderId` | the answer           |
| `flag=failure`, code in the warehouse's          | `TransientError`  | `TransientError`     |
| `retry_codes` (SYSTEM_ERROR, WMS_BUSY)           | (retried)         | (retried)            |
| `flag=failure`, `sign-check-failure` /           | `AuthError`       | `AuthError`          |
| `invalid-app-key`                                |                   |                      |
| `flag=failure`, `ORDER_NOT_EXIST` (query only)   | —                 | `NOT_FOUND`          |
| `flag=failure`, any other code                   | `RejectedError`   | `RejectedError`      |
| connect error / connect timeout (never sent)     | `TransientError`  | `TransientError`     |
| read timeout (`timeout`), dropped connection,    | `AmbiguousError`  | `TransientError`     |
| HTTP 5xx                                         | (not retried)     | (retried)            |
| HTTP 200 whose body is not a Qimen `<response>`  | `AmbiguousError`  | `BadPayload`         |

`cancel_delivery_order`: `flag=success` → CANCELLED (the WMS answers success for an order it has
cancelled before). Any other outcome except `AuthError` (a failure code, or an ambiguous/unreadable
answer — cancel is idempotent in effect) is settled by `deliveryorder.query`: SHIPPED →
ALREADY_SHIPPED; CANCELLED or NOT_FOUND → CANCELLED; OPEN → `TransientError` (try later).

Status map (`deliveryOrder.status` → `WmsOrderState`): DELIVERED, PARTDELIVERED → SHIPPED;
CANCELED, CLOSED, REJECT → CANCELLED; NEW, ACCEPT, EXCEPTION, CANCELEDFAIL and anything else the
WMS knows → OPEN; `ORDER_NOT_EXIST`, or success without a `deliveryOrder` → NOT_FOUND.
Inbound orders: `create_entry_order` and `query_entry_order` have the outcomes of the delivery
order's create and query; an entry order that is CANCELED or CLOSED is CANCELLED, any other status
(NEW, ACCEPT, PARTFULFILLED, FULFILLED …) is OPEN: the WMS has it.

Callbacks (`QimenCallbacks`; method names with or without the `taobao.qimen.` prefix):
`deliveryorder.confirm` → `ShipmentConfirm`, `stockchange.report` → `tuple[StockChange, …]`,
`entryorder.confirm` → `InboundConfirm`; an unknown method or unreadable body → `BadPayload`.
`success()` / `failure()` render the answers the WMS expects.

Deliberate choices:
- Received XML is parsed with `defusedxml` with DTDs forbidden: no entity expansion, no external
  references; such a body is `BadPayload` (or, as the answer to a create, `AmbiguousError`).
- A create's answer that cannot be read is ambiguous, not `BadPayload`: the WMS may have
  recorded the order, so the caller must ask `deliveryorder.query` before sending it again. A
  success without `deliveryOrderId` returns "" rather than failing for the same reason.
- `warehouseCode` is the hub's warehouse code from the config, also the code the WMS sends back.
  A callback naming another warehouse than the one whose secret signed it is `BadPayload`.
- `senderInfo` (required by §4.2) is the warehouse's `[warehouses.sender]`; without one it
  carries only the warehouse code as `name` and `detailAddress` (the receiver's fields must not
  leak into it), and the WMS fills the sender from its own warehouse record. Provinces go out in the hub's short form.
- `totalAmount` is what the buyer paid (`payment`, freight included), `itemAmount` the goods
  total and `freight` the postage; `actualPrice` is the line's unit price.
- `inventory` returns physical on-hand sound stock: `quantity` (unfrozen) + `lockQuantity`
  summed over `ZP` rows. The WMS's lock is its own reservation for the orders it holds; the hub
  subtracts its own reservations (unshipped delivery orders) from on-hand, so using `quantity`
  alone would count those orders twice. SKUs the WMS does not list are left out.
- A stock change of another inventory type than `ZP` (defective, damaged, in transit) is not
  sound stock and is left out of the report's changes, matching `inventory`.
- The warehouse's `timeout` is the read timeout: an answer later than that is ambiguous on a
  write. Qimen has no rate-limit protocol; an HTTP 429 is waited up to `rate_limit_wait_cap`.
"""

import hashlib
import hmac
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import ClassVar, TypeAlias, TypeVar
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException
from pydantic import SecretStr

from config.settings import WarehouseConfig
from connectors.base import (
    Callback,
    CancelOutcome,
    DeliveryOrderRequest,
    InboundConfirm,
    InboundLine,
    InboundOrderRequest,
    ShipmentConfirm,
    StockChange,
    WmsOrderState,
    WmsOrderStatus,
)
from connectors.errors import AuthError, ConnectorError
from connectors.http import (
    DEFAULT_POLICY,
    Call,
    Fault,
    HttpTransport,
    RetryPolicy,
    Sleep,
    Timeouts,
)
from connectors.top_family import ErrorRule, ErrorTable, cst_text, parse_cst, raise_error, top_sign
from models.clock import Clock, SystemClock
from models.domain import Package, Shipment

PLATFORM = "qimen"
XML_CONTENT_TYPE = "application/xml;charset=utf-8"
XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'
METHOD_PREFIX = "taobao.qimen."

SOUND = "ZP"
"""`inventoryType` 正品: the only stock the hub sells."""
SALE_ORDER_TYPE = "JYCK"
"""`orderType` 一般交易出库: a normal sale."""
ORDER_NOT_EXIST = "ORDER_NOT_EXIST"

SOURCE_PLATFORMS: dict[str, str] = {"tmall": "TB", "jd": "JD"}
SHIPPED_STATUSES = frozenset({"DELIVERED", "PARTDELIVERED"})
# REJECT: the WMS refused the order and will never ship it, which for a cancel is as good as
# cancelled. CANCELEDFAIL (its own cancel failed) stays open: it may still ship.
CANCELLED_STATUSES = frozenset({"CANCELED", "CLOSED", "REJECT"})
AUTH_CODES = frozenset({"sign-check-failure", "invalid-app-key"})

T = TypeVar("T")
XmlFields: TypeAlias = "Sequence[tuple[str, str | XmlFields | None]]"
"""(tag, text | child fields | None = omit) pairs: the shape of a request body."""


# --- XML in and out -----------------------------------------------------------------------


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
"""Characters XML 1.0 cannot carry at all (a buyer's remark may hold one): left out, or the
whole document would be malformed and the WMS would refuse the order."""


def build_xml(tag: str, fields: XmlFields) -> ET.Element:
    """An element from nested (tag, value) pairs; a None value is left out."""
    element = ET.Element(tag)
    for name, value in fields:
        if value is None:
            continue
        if isinstance(value, str):
            ET.SubElement(element, name).text = _XML_INVALID.sub("", value)
        else:
            element.append(build_xml(name, value))
    return element


def xml_text(element: ET.Element) -> str:
    """A document as sent on the wire: the declaration, then the element, no whitespace."""
    return XML_DECLARATION + ET.tostring(element, encoding="unicode")


def read_xml(body: bytes | str, root: str) -> ET.Element:
    """Parse received XML safely (no DTD, no entities, no external references).

    Raises `ValueError` for a body that is not well-formed, uses a DTD or entities, or whose root
    element is not `root`."""
    try:
        element: ET.Element = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise ValueError(f"not well-formed XML ({type(exc).__name__})") from None
    if element.tag != root:
        raise ValueError(f"root element is <{element.tag}>, not <{root}>")
    return element


def _text(element: ET.Element | None, path: str) -> str:
    if element is None:
        return ""
    return (element.findtext(path) or "").strip()


def _required(element: ET.Element | None, path: str) -> str:
    value = _text(element, path)
    if not value:
        raise ValueError(f"missing {path}")
    return value


def _quantity(element: ET.Element, path: str, *, default: int | None = None) -> int:
    """A whole quantity ("3", "-2", "3.000"); missing → `default` or an error."""
    raw = _text(element, path)
    if not raw:
        if default is None:
            raise ValueError(f"missing {path}")
        return default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{path} is not a number: {raw!r}") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise ValueError(f"{path} is not a whole number: {raw!r}")
    return int(value)


def _weight(element: ET.Element, path: str) -> Decimal | None:
    raw = _text(element, path)
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{path} is not a number: {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{path} is not a weight: {raw!r}")
    return value


def _time(element: ET.Element, path: str) -> datetime | None:
    raw = _text(element, path)
    return parse_cst(raw) if raw else None


def _derived_biz_code(code: str, packages: Sequence[Package]) -> str:
    """The dedupe key of a confirm without `outBizCode` (the spec needs one only for repeated
    confirms): its order and waybills, so a repeat is one and another order's is not."""
    waybills = ",".join(sorted(p.waybill for p in packages))
    # The store keeps 128 characters: a long code keeps its head, the hash tells repeats apart.
    return f"{code[:110]}|{hashlib.sha256(f'{code}|{waybills}'.encode()).hexdigest()[:16]}"


def _final(element: ET.Element) -> bool:
    """confirmType 0 (or absent) = final, 1 = intermediate."""
    kind = _text(element, "confirmType") or "0"
    if kind not in ("0", "1"):
        raise ValueError(f"confirmType is {kind!r}, not 0 or 1")
    return kind == "0"


def short_method(method: str) -> str:
    """`taobao.qimen.deliveryorder.confirm`, `qimen.…` and `deliveryorder.confirm` are one name."""
    for prefix in ("taobao.", "qimen."):
        method = method.removeprefix(prefix)
    return method


def _money(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.01")))


def answer_xml(success: bool, code: str, message: str) -> str:
    """The `<response>` a Qimen endpoint answers with."""
    return xml_text(
        build_xml(
            "response",
            [("flag", "success" if success else "failure"), ("code", code), ("message", message)],
        )
    )


# --- signing ------------------------------------------------------------------------------


def qimen_sign(query: Mapping[str, str], body: str, secret: str) -> str:
    """The Qimen signature: TOP's md5 rule over the query parameters with the raw body appended."""
    return top_sign(query, secret, "md5", body)


class QimenSigner(httpx.Auth):
    """Adds the system parameters to the query string and signs query + body.

    One instance per warehouse; it alone holds the app secret. The timestamp is taken from the
    clock at signing time, so every retry is signed afresh."""

    requires_request_body = True

    def __init__(
        self, *, app_key: str, app_secret: SecretStr, customer_id: str, clock: Clock
    ) -> None:
        self._app_key = app_key
        self._secret = app_secret
        self._customer_id = customer_id
        self._clock = clock

    def __repr__(self) -> str:
        return f"QimenSigner(app_key={self._app_key!r}, customer_id={self._customer_id!r})"

    def sign_query(self, params: Mapping[str, str], body: str) -> dict[str, str]:
        signed = dict(params)
        signed.update(
            {
                "app_key": self._app_key,
                "timestamp": cst_text(self._clock.now()),
                "v": "2.0",
                "format": "xml",
                "sign_method": "md5",
                "customerId": self._customer_id,
            }
        )
        signed.pop("sign", None)
        signed["sign"] = qimen_sign(signed, body, self._secret.get_secret_value())
        return signed

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        body = request.content.decode("utf-8")
        signed = self.sign_query(dict(request.url.params), body)
        request.url = request.url.copy_with(params=signed)
        yield request


# --- answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A parsed `<response>`."""

    success: bool
    code: str
    message: str
    root: ET.Element


def read_answer(response: httpx.Response, call: Call) -> Answer:
    """The `<response>` of an answer; an unreadable one is `BadPayload` on a read and ambiguous
    on a write (the WMS may have acted on it)."""
    try:
        root = read_xml(response.content, "response")
    except ValueError as exc:
        fault = Fault.BAD_PAYLOAD if call.idempotent else Fault.MAYBE_DONE
        call.fail(fault, f"answer is not a Qimen response: {exc}")
    return Answer(
        success=_text(root, "flag") == "success",
        code=_text(root, "code"),
        message=_text(root, "message"),
        root=root,
    )


def error_table(retry_codes: Iterable[str]) -> ErrorTable:
    """A warehouse's failure codes → faults: its temporary codes, bad credentials, else rejected."""
    return ErrorTable(
        rules=(
            ErrorRule(Fault.TRANSIENT, codes=frozenset(retry_codes)),
            ErrorRule(Fault.AUTH, codes=AUTH_CODES),
        ),
        default=Fault.REJECTED,
    )


def _sender(warehouse: WarehouseConfig) -> XmlFields:
    sender = warehouse.sender
    if sender is None:
        return [("name", warehouse.code), ("detailAddress", warehouse.code)]
    return [
        ("name", sender.name),
        ("mobile", sender.mobile),
        ("province", sender.province),
        ("city", sender.city),
        ("area", _opt(sender.area)),
        ("detailAddress", sender.detail),
    ]


def state_of(status: str) -> WmsOrderState:
    if status in SHIPPED_STATUSES:
        return WmsOrderState.SHIPPED
    if status in CANCELLED_STATUSES:
        return WmsOrderState.CANCELLED
    return WmsOrderState.OPEN


def stock_rows(asked: frozenset[str]) -> Callable[[Answer, Call], list[tuple[str, int]]]:
    """Reads an `inventory.query` answer: (itemCode, quantity + lockQuantity) per sound row of
    an item that was asked for (a row may repeat an item, e.g. one per batch)."""

    def rows(answer: Answer, call: Call) -> list[tuple[str, int]]:
        found = []
        for item in answer.root.findall("items/item"):
            sku = _text(item, "itemCode")
            if sku not in asked or (_text(item, "inventoryType") or SOUND) != SOUND:
                continue
            quantity = _quantity(item, "quantity", default=0)
            locked = _quantity(item, "lockQuantity", default=0)
            found.append((sku, quantity + locked))
        return found

    return rows


# --- requests -----------------------------------------------------------------------------


def _opt(value: str) -> str | None:
    return value or None


def delivery_order_xml(
    request: DeliveryOrderRequest, warehouse: WarehouseConfig, operate_time: datetime
) -> ET.Element:
    """The `deliveryorder.create` body (§4.2): every required field, optional ones when known."""
    receiver = request.receiver
    head: XmlFields = [
        ("deliveryOrderCode", request.code),
        ("orderType", SALE_ORDER_TYPE),
        ("warehouseCode", warehouse.code),
        ("sourcePlatformCode", SOURCE_PLATFORMS.get(request.platform, "OTHER")),
        ("createTime", cst_text(request.created)),
        ("placeOrderTime", cst_text(request.created)),
        ("payTime", cst_text(request.paid) if request.paid else None),
        ("operateTime", cst_text(operate_time)),
        ("shopNick", request.shop),
        ("buyerNick", request.buyer_nick),
        ("totalAmount", _money(request.payment)),
        ("itemAmount", _money(request.total)),
        ("freight", _money(request.post_fee)),
        ("logisticsCode", request.carrier or warehouse.default_carrier),
        ("senderInfo", _sender(warehouse)),
        (
            "receiverInfo",
            [
                ("name", receiver.name),
                ("mobile", receiver.mobile or receiver.phone),
                ("tel", _opt(receiver.phone)),
                ("province", receiver.province),
                ("city", receiver.city),
                ("area", receiver.district),
                ("town", _opt(receiver.town)),
                ("detailAddress", receiver.detail),
                ("oaid", _opt(receiver.oaid)),
            ],
        ),
        ("buyerMessage", _opt(request.buyer_remark)),
        ("sellerMessage", _opt(request.seller_remark)),
    ]
    lines: XmlFields = [
        (
            "orderLine",
            [
                ("orderLineNo", str(line.line_no)),
                ("sourceOrderCode", line.source_order_id),
                ("subSourceOrderCode", _opt(line.source_line_id)),
                ("ownerCode", warehouse.effective_owner_code),
                ("itemCode", line.sku),
                ("inventoryType", SOUND),
                ("planQty", str(line.qty)),
                ("actualPrice", _money(line.price)),
            ],
        )
        for line in request.lines
    ]
    return build_xml("request", [("deliveryOrder", head), ("orderLines", lines)])


def entry_order_xml(
    request: InboundOrderRequest, warehouse: WarehouseConfig, operate_time: datetime
) -> ET.Element:
    """The `entryorder.create` body: a purchase inbound notice, one line per source line."""
    head: XmlFields = [
        ("entryOrderCode", request.code),
        ("ownerCode", warehouse.effective_owner_code),
        ("purchaseOrderCode", request.code),
        ("warehouseCode", warehouse.code),
        ("orderCreateTime", cst_text(request.created)),
        ("orderType", request.order_type),
        ("supplierCode", _opt(request.supplier)),
        ("operateTime", cst_text(operate_time)),
        ("remark", _opt(request.remark)),
    ]
    lines: XmlFields = [
        (
            "orderLine",
            [
                ("orderLineNo", line.line_no),
                ("ownerCode", warehouse.effective_owner_code),
                ("itemCode", line.sku),
                ("inventoryType", SOUND),
                ("planQty", str(line.qty)),
            ],
        )
        for line in request.lines
    ]
    return build_xml("request", [("entryOrder", head), ("orderLines", lines)])


# --- the connector ------------------------------------------------------------------------


class QimenWms:
    """One warehouse behind a Qimen WMS (see the module docstring for the wire contract)."""

    platform: ClassVar[str] = PLATFORM
    create_method: ClassVar[str] = "taobao.qimen.deliveryorder.create"
    query_method: ClassVar[str] = "taobao.qimen.deliveryorder.query"
    cancel_method: ClassVar[str] = "taobao.qimen.order.cancel"
    inventory_method: ClassVar[str] = "taobao.qimen.inventory.query"
    entry_create_method: ClassVar[str] = "taobao.qimen.entryorder.create"
    entry_query_method: ClassVar[str] = "taobao.qimen.entryorder.query"
    inventory_batch: ClassVar[int] = 100
    rate_limit_wait_cap: ClassVar[float] = 60.0
    connect_timeout: ClassVar[float] = 5.0

    def __init__(
        self,
        warehouse: WarehouseConfig,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.config = warehouse
        self.warehouse = warehouse.code
        self.owner_code = warehouse.effective_owner_code
        self._clock = clock or SystemClock()
        self.errors = error_table(warehouse.retry_codes)
        read = warehouse.timeout.total_seconds()
        self.http = HttpTransport(
            platform=PLATFORM,
            target=warehouse.code,
            url=str(warehouse.api_url),
            auth=QimenSigner(
                app_key=warehouse.app_key,
                app_secret=warehouse.app_secret,
                customer_id=warehouse.customer_id,
                clock=self._clock,
            ),
            policy=policy or DEFAULT_POLICY,
            wait_cap=self.rate_limit_wait_cap,
            timeouts=timeouts or Timeouts(connect=min(self.connect_timeout, read), read=read),
            transport=transport,
            sleep=sleep,
            secrets=(warehouse.app_secret.get_secret_value(),),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self,
        method: str,
        body: ET.Element,
        *,
        idempotent: bool,
        read: Callable[[Answer, Call], T],
        tolerate: frozenset[str] = frozenset(),
    ) -> T:
        """Send one request; `read` turns a success (or a tolerated failure code) into the
        result, inside the retry loop and with the call's context for its errors."""

        def parse(response: httpx.Response, call: Call) -> T:
            answer = read_answer(response, call)
            if not answer.success and answer.code not in tolerate:
                raise_error(call, self.errors, code=answer.code, message=answer.message)
            try:
                return read(answer, call)
            except ValueError as exc:
                call.fail(Fault.BAD_PAYLOAD, f"unreadable answer: {exc}")

        return await self.http.post(
            method,
            xml_text(body).encode("utf-8"),
            content_type=XML_CONTENT_TYPE,
            params={"method": method},
            idempotent=idempotent,
            parse=parse,
        )

    def _order_request(self, code: str, *extra: tuple[str, str]) -> ET.Element:
        return build_xml(
            "request",
            [
                ("warehouseCode", self.warehouse),
                ("ownerCode", self.owner_code),
                ("orderCode", code),
                *extra,
            ],
        )

    # --- delivery orders --------------------------------------------------------------------

    async def create_delivery_order(self, request: DeliveryOrderRequest) -> str:
        body = delivery_order_xml(request, self.config, self._clock.now())

        def order_id(answer: Answer, call: Call) -> str:
            return _text(answer.root, "deliveryOrderId") or _text(
                answer.root, "deliveryOrders/deliveryOrder/deliveryOrderId"
            )

        return await self._call(self.create_method, body, idempotent=False, read=order_id)

    async def query_delivery_order(self, code: str) -> WmsOrderStatus:
        def status(answer: Answer, call: Call) -> WmsOrderStatus:
            head = answer.root.find("deliveryOrder")
            if not answer.success or head is None or not len(head):
                return WmsOrderStatus(WmsOrderState.NOT_FOUND)
            found = _text(head, "deliveryOrderCode")
            if found and found != code:
                raise ValueError(f"asked for {code}, answered {found}")
            raw = _text(head, "status").upper()
            return WmsOrderStatus(
                state_of(raw), wms_order_id=_text(head, "deliveryOrderId"), raw_status=raw
            )

        return await self._call(
            self.query_method,
            self._order_request(code),
            idempotent=True,
            read=status,
            tolerate=frozenset({ORDER_NOT_EXIST}),
        )

    async def cancel_delivery_order(self, code: str, reason: str) -> CancelOutcome:
        body = self._order_request(
            code, ("orderType", SALE_ORDER_TYPE), ("cancelReason", reason or "cancelled")
        )
        try:
            await self._call(self.cancel_method, body, idempotent=False, read=lambda a, c: None)
        except AuthError:
            raise
        except ConnectorError as failed:
            return await self._settle_cancel(code, failed)
        return CancelOutcome.CANCELLED

    async def _settle_cancel(self, code: str, failed: ConnectorError) -> CancelOutcome:
        """After a cancel that failed or may not have arrived: what does the WMS hold now?"""
        status = await self.query_delivery_order(code)
        if status.state is WmsOrderState.SHIPPED:
            return CancelOutcome.ALREADY_SHIPPED
        if status.state in (WmsOrderState.CANCELLED, WmsOrderState.NOT_FOUND):
            return CancelOutcome.CANCELLED
        raise self.http.call(self.cancel_method, idempotent=True).error(
            Fault.TRANSIENT,
            f"cancel failed ({failed.args[0]}) and the order is still "
            f"{status.raw_status or status.state.value}",
            code=failed.code,
        ) from failed

    # --- inbound (entry) orders ---------------------------------------------------------------

    async def create_entry_order(self, request: InboundOrderRequest) -> str:
        body = entry_order_xml(request, self.config, self._clock.now())

        def order_id(answer: Answer, call: Call) -> str:
            return _text(answer.root, "entryOrderId")

        return await self._call(self.entry_create_method, body, idempotent=False, read=order_id)

    async def query_entry_order(self, code: str) -> WmsOrderStatus:
        body = build_xml(
            "request",
            [
                ("ownerCode", self.owner_code),
                ("warehouseCode", self.warehouse),
                ("entryOrderCode", code),
            ],
        )

        def status(answer: Answer, call: Call) -> WmsOrderStatus:
            head = answer.root.find("entryOrder")
            if not answer.success or head is None or not len(head):
                return WmsOrderStatus(WmsOrderState.NOT_FOUND)
            found = _text(head, "entryOrderCode")
            if found and found != code:
                raise ValueError(f"asked for {code}, answered {found}")
            raw = _text(head, "status").upper()
            state = WmsOrderState.CANCELLED if raw in CANCELLED_STATUSES else WmsOrderState.OPEN
            return WmsOrderStatus(state, wms_order_id=_text(head, "entryOrderId"), raw_status=raw)

        return await self._call(
            self.entry_query_method,
            body,
            idempotent=True,
            read=status,
            tolerate=frozenset({ORDER_NOT_EXIST}),
        )

    # --- stock ------------------------------------------------------------------------------

    async def inventory(self, skus: Sequence[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(s for s in skus if s))
        on_hand: dict[str, int] = {}
        for start in range(0, len(wanted), self.inventory_batch):
            batch = wanted[start : start + self.inventory_batch]
            body = build_xml(
                "request",
                [
                    (
                        "criteriaList",
                        [
                            (
                                "criteria",
                                [
                                    ("warehouseCode", self.warehouse),
                                    ("ownerCode", self.owner_code),
                                    ("itemCode", sku),
                                    ("inventoryType", SOUND),
                                ],
                            )
                            for sku in batch
                        ],
                    )
                ],
            )
            for sku, quantity in await self._call(
                self.inventory_method, body, idempotent=True, read=stock_rows(frozenset(batch))
            ):
                on_hand[sku] = on_hand.get(sku, 0) + quantity
        return on_hand


# --- callbacks ----------------------------------------------------------------------------


class QimenCallbacks:
    """Reads what one warehouse's WMS calls back with (`/qimen/{warehouse}`) and renders the
    answers it expects. `verify` before `parse`; answer `success()` only once stored."""

    platform: ClassVar[str] = PLATFORM
    confirm_method: ClassVar[str] = "deliveryorder.confirm"
    stock_report_method: ClassVar[str] = "stockchange.report"
    entry_confirm_method: ClassVar[str] = "entryorder.confirm"

    def __init__(self, warehouse: WarehouseConfig, *, clock: Clock | None = None) -> None:
        self.config = warehouse
        self.warehouse = warehouse.code
        self._clock = clock or SystemClock()
        self._readers: dict[str, Callable[[ET.Element], Callback]] = {
            self.confirm_method: self._confirm,
            self.stock_report_method: self._stock_changes,
            self.entry_confirm_method: self._entry_confirm,
        }

    def verify(self, query: Mapping[str, str], body: bytes) -> bool:
        """The signature recomputed with this warehouse's secret (constant-time compare), and the
        caller's `app_key` / `customerId` are this warehouse's."""
        given = query.get("sign", "")
        if not given or query.get("sign_method", "md5").lower() != "md5":
            return False
        if query.get("app_key") != self.config.app_key:
            return False
        if query.get("customerId") != self.config.customer_id:
            return False
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        expected = qimen_sign(query, text, self.config.app_secret.get_secret_value())
        return hmac.compare_digest(expected.encode("ascii"), given.upper().encode("utf-8"))

    def parse(self, query: Mapping[str, str], body: bytes) -> Callback:
        method = query.get("method", "")
        call = Call(
            PLATFORM,
            self.warehouse,
            method,
            idempotent=True,
            secrets=(self.config.app_secret.get_secret_value(),),
        )
        reader = self._readers.get(short_method(method))
        if reader is None:
            call.fail(Fault.BAD_PAYLOAD, f"unknown callback method {method!r}")
        try:
            return reader(read_xml(body, "request"))
        except ValueError as exc:
            call.fail(Fault.BAD_PAYLOAD, f"unreadable callback: {exc}")

    def success(self) -> tuple[str, str]:
        return answer_xml(True, "0", "success"), XML_CONTENT_TYPE

    def failure(self, code: str, message: str) -> tuple[str, str]:
        return answer_xml(False, code, message), XML_CONTENT_TYPE

    # --- readers ------------------------------------------------------------------------------

    def _check_warehouse(self, code: str) -> None:
        if code and code != self.warehouse:
            raise ValueError(f"warehouseCode {code} is not {self.warehouse}")

    def _confirm(self, root: ET.Element) -> ShipmentConfirm:
        head = root.find("deliveryOrder")
        if head is None:
            raise ValueError("missing deliveryOrder")
        code = _required(head, "deliveryOrderCode")
        self._check_warehouse(_text(head, "warehouseCode"))
        status = _text(head, "status").upper()
        packages = tuple(self._package(p) for p in root.findall("packages/package"))
        if not packages and status in SHIPPED_STATUSES | {""} and not _final(head):
            raise ValueError("an intermediate confirm without packages")
        weights = [p.weight_kg for p in packages if p.weight_kg is not None]
        shipped_at = (
            _time(head, "orderConfirmTime") or _time(head, "operateTime") or self._clock.now()
        )
        shipment = Shipment(
            delivery_order_code=code,
            warehouse=self.warehouse,
            carrier=packages[0].carrier if packages else "",
            waybill=packages[0].waybill if packages else "",
            weight_kg=sum(weights, Decimal("0")) if weights else None,
            packages=packages,
            shipped_at=shipped_at,
            out_biz_code=_text(head, "outBizCode") or _derived_biz_code(code, packages),
        )
        return ShipmentConfirm(
            shipment=shipment,
            final=_final(head),
            status=status,
            shipped_lines=self._shipped_lines(root, packages),
            state=WmsOrderState.SHIPPED if not status else state_of(status),
        )

    @staticmethod
    def _package(element: ET.Element) -> Package:
        return Package(
            carrier=_required(element, "logisticsCode"),
            waybill=_required(element, "expressCode"),
            weight_kg=_weight(element, "weight"),
            items=tuple(
                (_required(item, "itemCode"), _quantity(item, "quantity"))
                for item in element.findall("items/item")
            ),
        )

    @staticmethod
    def _shipped_lines(
        root: ET.Element, packages: tuple[Package, ...]
    ) -> tuple[tuple[str, int], ...]:
        """(itemCode, actualQty) per order line; without order lines (or lines that lack them:
        the spec requires neither), the packages' items; without those, () (the plan)."""
        lines = root.findall("orderLines/orderLine")
        if lines and all(
            _text(line, "itemCode")
            and (_text(line, "actualQty") or line.find("batchs/batch") is not None)
            for line in lines
        ):
            shipped = []
            for line in lines:
                batches = line.findall("batchs/batch")
                if _text(line, "actualQty") or not batches:
                    qty = _quantity(line, "actualQty")
                else:  # some WMSs report the quantity only per batch (batches sum to the line)
                    qty = sum(_quantity(b, "actualQty") for b in batches)
                shipped.append((_required(line, "itemCode"), qty))
            return tuple(shipped)
        totals: dict[str, int] = {}
        for package in packages:
            for sku, qty in package.items:
                totals[sku] = totals.get(sku, 0) + qty
        return tuple(totals.items())

    def _stock_changes(self, root: ET.Element) -> tuple[StockChange, ...]:
        changes = []
        for item in root.findall("items/item"):
            self._check_warehouse(_text(item, "warehouseCode") or _text(root, "warehouseCode"))
            if (_text(item, "inventoryType") or SOUND) != SOUND:
                continue
            changes.append(
                StockChange(
                    warehouse=self.warehouse,
                    out_biz_code=_required(item, "outBizCode"),
                    sku=_required(item, "itemCode"),
                    delta=_quantity(item, "quantity"),
                    order_code=_text(item, "orderCode") or _text(root, "orderCode"),
                    order_type=_text(item, "orderType") or _text(root, "orderType"),
                )
            )
        return tuple(changes)

    def _entry_confirm(self, root: ET.Element) -> InboundConfirm:
        head = root.find("entryOrder")
        if head is None:
            raise ValueError("missing entryOrder")
        self._check_warehouse(_text(head, "warehouseCode"))
        lines = tuple(
            InboundLine(
                line_no=_text(line, "orderLineNo"),
                sku=_required(line, "itemCode"),
                planned=_quantity(line, "planQty", default=0),
                received=_quantity(line, "actualQty"),
                inventory_type=_text(line, "inventoryType") or SOUND,
            )
            for line in root.findall("orderLines/orderLine")
        )
        return InboundConfirm(
            warehouse=self.warehouse,
            entry_order_code=_required(head, "entryOrderCode"),
            out_biz_code=_text(head, "outBizCode"),
            final=_final(head),
            status=_text(head, "status").upper(),
            lines=lines,
        )
