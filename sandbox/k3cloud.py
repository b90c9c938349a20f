"""Kingdee K3Cloud (金蝶云星空) WebAPI simulator: `specs/erp-k3cloud.md` and `decisions.md` (ERP).

Endpoints (JSON in, JSON out, HTTP 200 unless a fault says otherwise), under `/k3cloud/`:

- `Kingdee.BOS.WebApi.ServicesStub.AuthService.LoginByAppSecret.common.kdsvc`: body
  `{"acctID", "username", "appId", "appSec", "lcid"}` (or the positional `{"parameters": [acctID,
  username, appId, appSec, lcid]}`). Success: `{"LoginResultType": 1, "KDSVCSessionId": …,
  "Message": null, "Context": {…}}` and the cookie `kdservice-sessionid`. Wrong credentials:
  `{"LoginResultType": 0, "Message": "用户名或密码错误"}` (also HTTP 200).
- `Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.Save.common.kdsvc`: `{"formid", "data":
  {"Model": {…}, "IsAutoSubmitAndAudit", …}}` for `STK_InStock` and `SAL_OUTSTOCK`. Answers
  `{"Result": {"ResponseStatus": {"IsSuccess", "ErrorCode", "MsgCode", "Errors":
  [{"FieldName", "Message", "DIndex"}], "SuccessEntitys": [{"Id", "Number", "DIndex"}],
  "SuccessMessages": []}, "Id", "Number", "NeedReturnData": [{}]}}`.
- `Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.ExecuteBillQuery.common.kdsvc`:
  `{"data": {"FormId", "FieldKeys", "FilterString", "OrderString", "TopRowCount", "StartRow",
  "Limit"}}` → rows as arrays in `FieldKeys` order; an error is `[[{"Result": {"ResponseStatus":
  …}}]]`. Forms and field keys (case-insensitive; head keys give one row per document, an entry
  key one row per entry):
  - `PUR_PurchaseOrder`: FID, FBillNo, FDocumentStatus, FCloseStatus, FDate, FApproveDate,
    FSupplierId.FNumber, FPurchaseOrgId.FNumber | FPOOrderEntry_FEntryId, FMaterialId.FNumber,
    FQty, FUnitId.FNumber, FStockInQty, FRemainStockINQty;
  - `STK_InStock`: FID, FBillNo, FDocumentStatus, FDate, FNote, FSupplierId.FNumber,
    FStockOrgId.FNumber | FInStockEntry_FEntryId, FMaterialId.FNumber, FRealQty,
    FStockId.FNumber, FSRCBillNo, FPOOrderNo;
  - `SAL_OUTSTOCK`: FID, FBillNo, FDocumentStatus, FDate, FNote, FCustomerID.FNumber,
    FSaleOrgId.FNumber | FEntity_FEntryId, FMaterialID.FNumber, FRealQty, FStockID.FNumber,
    FTaxPrice.
  `FilterString`: conditions joined by `AND`, each `<key> <op> <literal>` with `=`, `<>`, `!=`,
  `>`, `>=`, `<`, `<=`, or `<key> IN (<literal>, …)`; literals are `'text'` (`''` escapes a quote)
  or numbers; dates compare as text, `T` or space between date and time. `OrderString`:
  `<key> [ASC|DESC], …`. `StartRow` skips rows, `Limit` (≤ 10000) caps them, `TopRowCount` is
  an absolute end row.

MsgCode answers: 1 session lost (no or unknown `kdservice-sessionid`), 8 bad parameter (unknown
form, field key or filter syntax), 9 required field missing, 11 validation (unknown base data
number, over-receipt, a link to a PO entry that does not exist or is not audited and open),
13 network-control lock (the `transient` fault), 14 call limit (the `rate_limit` fault).

Documents: `STK_InStock` with `FInStockEntry_Link` rows (`…_FRuleId`
PUR_PurchaseOrder-STK_InStock, `…_FSBillId` = the PO's FID, `…_FSId` = its entry id) adds the
entry's `FRealQty` to the PO entry's `FStockInQty` when audited; a PO whose every entry is fully
received closes (`FCloseStatus` B). A quantity beyond what remains is refused (MsgCode 11).
`IsAutoSubmitAndAudit: true` saves as audited (`FDocumentStatus` C, written back at once);
otherwise the document stays created (A) and nothing is written back. `Submit` (Z, A, D → B) and
`Audit` (B → C, writing back then) take `{"formid", "data": {"Numbers": [...]}}`; either fails
with MsgCode 12 for a document in another status. `refuse_audits = N` makes the next N automatic
audits fail after the save, as K3Cloud does for an outbound without ERP stock: the document stays
saved (A) and the answer is MsgCode 11. Seeded purchase orders are audited and open, plus, for
realism, some that are not audited (A) or closed (B).

Deliberate differences from a real K3Cloud: Save does NOT check `FBillNo` for uniqueness (whether
a tenant's coding rule does is unverified, so the hub must not rely on it: a repeated save makes
a second document, which is what tests look for); no UnAudit/Push/View endpoints; one
organisation; base data (materials, stocks, customers, suppliers) is a fixed set of numbers.

Faults (`FaultProfile` via the seeded `FaultInjector`, per DynamicFormService call, in this
order): `slow`, `http_5xx` (bare 502/503, nothing recorded), `lost_session` (the session is
dropped: MsgCode 1, the client must log in again), `transient` (MsgCode 13), `rate_limit`
(MsgCode 14), and, for Save only after the document is recorded, `ambiguous`: the connection
drops before the body, or the answer comes `ambiguous_delay` s late (`ambiguous_mode`).

Inspection: `purchase_orders`, `documents` (every saved document, duplicates included),
`documents_of(form)`, `logins`, `rejected`, `faults_served`, `snapshot()`.
"""

import asyncio
import itertools
import json
import random
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from sandbox.faults import FaultInjector
from sandbox.redelivery import Loops

PREFIX = "/k3cloud/"
STUB = "Kingdee.BOS.WebApi.ServicesStub."
LOGIN = STUB + "AuthService.LoginByAppSecret"
SAVE = STUB + "DynamicFormService.Save"
QUERY = STUB + "DynamicFormService.ExecuteBillQuery"
SUBMIT = STUB + "DynamicFormService.Submit"
AUDIT = STUB + "DynamicFormService.Audit"
SESSION_COOKIE = "kdservice-sessionid"
CST = timezone(timedelta(hours=8))
MAX_LIMIT = 10000
RECEIPT_RULE = "PUR_PurchaseOrder-STK_InStock"

PURCHASE_ORDER = "PUR_PurchaseOrder"
RECEIPT = "STK_InStock"
SALES_OUTBOUND = "SAL_OUTSTOCK"

AmbiguousMode = Literal["random", "drop", "late"]


class K3Error(Exception):
    """An unsuccessful ResponseStatus: MsgCode and the Errors rows."""

    def __init__(self, msg_code: int, *errors: tuple[str, str]) -> None:
        super().__init__(f"MsgCode {msg_code}: {errors}")
        self.msg_code = msg_code
        self.errors = list(errors)
        """(FieldName, Message) pairs."""


def response_status(
    success: bool, *, msg_code: int = 0, errors: Iterable[tuple[str, str]] = (), entity: Any = None
) -> dict[str, Any]:
    return {
        "ErrorCode": 0 if success else 500,
        "IsSuccess": success,
        "Errors": [
            {"FieldName": name or None, "Message": message, "DIndex": 0} for name, message in errors
        ],
        "SuccessEntitys": [entity] if entity else [],
        "SuccessMessages": [],
        "MsgCode": msg_code,
    }


def _now_text() -> str:
    return datetime.now(CST).strftime("%Y-%m-%dT%H:%M:%S")


# --- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class K3Credentials:
    acct_id: str
    username: str
    app_id: str
    app_secret: str
    lcid: int = 2052


@dataclass
class PoEntry:
    entry_id: int
    material: str
    qty: int
    unit: str = "Pcs"
    stock_in_qty: int = 0


@dataclass
class PurchaseOrder:
    fid: int
    number: str
    supplier: str
    org: str
    date: str
    approve_date: str
    entries: list[PoEntry]
    document_status: str = "C"
    close_status: str = "A"


@dataclass
class Document:
    """One saved document (a repeated save of the same FBillNo is a second one)."""

    form: str
    fid: int
    number: str
    status: str
    date: str
    note: str
    partner: str
    """Supplier (receipt) or customer (sales outbound) number."""
    entries: list[dict[str, Any]]
    """Per entry: entry_id, material, qty, stock, price, src_bill_no, link (fid, entry id)."""
    saved_at: str
    ambiguous: str | None = None
    on_audit: list[tuple["PoEntry", int]] = field(default_factory=list)
    """Purchase-order quantities to write back when an unaudited receipt is audited."""


class _DroppedResponse(Response):
    """A 200 that promises a body and ends without it: the client sees a broken answer."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"256")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


# --- queries -------------------------------------------------------------------------------

_CONDITION = re.compile(
    r"\s*(?P<key>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|<>|!=|=|>|<|\bIN\b)\s*", re.IGNORECASE
)
_LITERAL = re.compile(r"'(?:[^']|'')*'|-?\d+(?:\.\d+)?")
_IN_LIST = re.compile(
    r"\(\s*((?:'(?:[^']|'')*'|-?\d+(?:\.\d+)?)(?:\s*,\s*(?:'(?:[^']|'')*'|-?\d+(?:\.\d+)?))*)\s*\)"
)
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)


def _literal(raw: str) -> str | float:
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    return float(raw)


def parse_filter(text: str) -> list[tuple[str, str, list[str | float]]]:
    """`FilterString` as (lower-cased key, op, literals); `K3Error` 8 for what it cannot read."""
    conditions: list[tuple[str, str, list[str | float]]] = []
    position, text = 0, text.strip()
    while position < len(text):
        found = _CONDITION.match(text, position)
        if found is None:
            raise K3Error(8, ("FilterString", f"无法解析的过滤条件: {text[position:]!r}"))
        key, op = found.group("key").lower(), found.group("op").upper()
        position = found.end()
        values: list[str | float] = []
        if op == "IN":
            inner = _IN_LIST.match(text, position)
            if inner is None:
                raise K3Error(8, ("FilterString", f"IN 需要 (值, …): {text[position:]!r}"))
            values = [_literal(v) for v in _LITERAL.findall(inner.group(1))]
            position = inner.end()
        else:
            literal = _LITERAL.match(text, position)
            if literal is None:
                raise K3Error(8, ("FilterString", f"缺少比较值: {text[position:]!r}"))
            values = [_literal(literal.group(0))]
            position = literal.end()
        conditions.append((key, "<>" if op == "!=" else op, values))
        rest = _AND.match(text, position)
        if rest is not None:
            position = rest.end()
        elif text[position:].strip():
            raise K3Error(8, ("FilterString", f"只支持 AND 连接的条件: {text[position:]!r}"))
        else:
            break
    return conditions


def _comparable(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    return text.replace("T", " ", 1) if _DATE_TIME.match(text) else text


def _matches(value: Any, op: str, literals: list[str | float]) -> bool:
    left = _comparable(value)
    rights = [_comparable(v) for v in literals]
    if isinstance(left, float) != isinstance(rights[0], float):
        left, rights = str(value), [str(v) for v in literals]
    if op == "IN":
        return left in rights
    right = rights[0]
    outcome: dict[str, bool] = {
        "=": left == right,
        "<>": left != right,
        ">": left > right,
        ">=": left >= right,
        "<": left < right,
        "<=": left <= right,
    }
    return outcome[op]


Getter = Callable[[Any, Any], Any]
"""(document, entry or None) → value."""


@dataclass(frozen=True)
class FormSpec:
    head: dict[str, Getter]
    entry: dict[str, Getter]
    rows: Callable[[], list[tuple[Any, list[Any]]]]
    """Every document with its entries."""


# --- the simulator -------------------------------------------------------------------------


class K3CloudSim:
    """One K3Cloud data center (see the module docstring)."""

    def __init__(
        self,
        credentials: K3Credentials,
        faults: FaultInjector,
        *,
        org: str,
        materials: Iterable[str],
        stocks: Iterable[str],
        customers: Iterable[str],
        suppliers: Iterable[str],
        ambiguous_mode: AmbiguousMode = "random",
        purchase_every: float | None = None,
    ) -> None:
        self.credentials = credentials
        self._faults = faults
        self._rng = random.Random(f"k3cloud:{faults.seed}")
        self.org = org
        self.materials = sorted(set(materials))
        self.stocks = set(stocks)
        self.customers = set(customers)
        self.suppliers = sorted(set(suppliers))
        self.ambiguous_mode: AmbiguousMode = ambiguous_mode
        self.purchase_every = purchase_every
        self.sessions: set[str] = set()
        self.logins = 0
        self.purchase_orders: list[PurchaseOrder] = []
        self.documents: list[Document] = []
        self.refuse_audits = 0
        """The next N automatic audits fail after the save (as an ERP out of stock does): the
        document stays saved, status A, and the answer is MsgCode 11."""
        self.rejected: list[tuple[str, int, str]] = []
        """(operation, MsgCode, messages) of every unsuccessful answer (faults included)."""
        self.faults_served: list[tuple[str, str]] = []
        self._ids = itertools.count(100001)
        self._entry_ids = itertools.count(200001)
        self._po_numbers = itertools.count(1)
        self._loops = Loops()
        self._forms: dict[str, FormSpec] = {
            PURCHASE_ORDER: self._purchase_spec(),
            RECEIPT: self._document_spec(RECEIPT, "finstockentry_fentryid", "fsupplierid.fnumber"),
            SALES_OUTBOUND: self._document_spec(
                SALES_OUTBOUND, "fentity_fentryid", "fcustomerid.fnumber"
            ),
        }

    # --- lifecycle and seeding ---------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{PREFIX}{LOGIN}.common.kdsvc", self._login, methods=["POST"]),
            Route(f"{PREFIX}{SAVE}.common.kdsvc", self._save_endpoint, methods=["POST"]),
            Route(f"{PREFIX}{QUERY}.common.kdsvc", self._query_endpoint, methods=["POST"]),
            Route(f"{PREFIX}{SUBMIT}.common.kdsvc", self._submit_endpoint, methods=["POST"]),
            Route(f"{PREFIX}{AUDIT}.common.kdsvc", self._audit_endpoint, methods=["POST"]),
        ]

    async def start(self) -> None:
        if self.purchase_every:
            self._loops.start({"k3cloud-purchases": self._purchase_loop})

    async def stop(self) -> None:
        await self._loops.stop()

    async def _purchase_loop(self) -> None:
        assert self.purchase_every
        while True:
            await asyncio.sleep(self.purchase_every)
            self.add_random_purchase_order()

    def add_purchase_order(
        self,
        supplier: str,
        lines: list[tuple[str, int]],
        *,
        audited: bool = True,
        closed: bool = False,
        approved_ago: timedelta = timedelta(0),
    ) -> PurchaseOrder:
        """A purchase order of `lines` ((material, qty)); audited and open unless told."""
        when = (datetime.now(CST) - approved_ago).strftime("%Y-%m-%dT%H:%M:%S")
        order = PurchaseOrder(
            fid=next(self._ids),
            number=f"CGDD{next(self._po_numbers):06d}",
            supplier=supplier,
            org=self.org,
            date=when,
            approve_date=when if audited else "",
            entries=[PoEntry(next(self._entry_ids), m, q) for m, q in lines],
            document_status="C" if audited else "A",
            close_status="B" if closed else "A",
        )
        self.purchase_orders.append(order)
        return order

    def add_random_purchase_order(
        self, *, audited: bool = True, closed: bool = False
    ) -> PurchaseOrder:
        count = self._rng.randint(1, 3)
        materials = self._rng.sample(self.materials, min(count, len(self.materials)))
        return self.add_purchase_order(
            self._rng.choice(self.suppliers),
            [(m, self._rng.randint(2, 40)) for m in materials],
            audited=audited,
            closed=closed,
            approved_ago=timedelta(minutes=self._rng.randint(1, 600)),
        )

    def seed_purchase_orders(self, count: int) -> None:
        """`count` audited open purchase orders, plus one created-not-audited and one closed
        (which a poll must leave alone)."""
        for _ in range(count):
            self.add_random_purchase_order()
        if count:
            self.add_random_purchase_order(audited=False)
            self.add_random_purchase_order(closed=True)

    # --- inspection --------------------------------------------------------------------------

    def documents_of(self, form: str) -> list[Document]:
        return [d for d in self.documents if d.form == form]

    def purchase_order(self, number: str) -> PurchaseOrder | None:
        return next((p for p in self.purchase_orders if p.number == number), None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "logins": self.logins,
            "purchase_orders": [
                {
                    "FID": p.fid,
                    "FBillNo": p.number,
                    "FDocumentStatus": p.document_status,
                    "FCloseStatus": p.close_status,
                    "FSupplierId": p.supplier,
                    "entries": [
                        {
                            "FEntryId": e.entry_id,
                            "FMaterialId": e.material,
                            "FQty": e.qty,
                            "FStockInQty": e.stock_in_qty,
                        }
                        for e in p.entries
                    ],
                }
                for p in self.purchase_orders
            ],
            "documents": [
                {
                    "form": d.form,
                    "FID": d.fid,
                    "FBillNo": d.number,
                    "FDocumentStatus": d.status,
                    "FNote": d.note,
                    "partner": d.partner,
                    "entries": d.entries,
                    "ambiguous": d.ambiguous,
                }
                for d in self.documents
            ],
            "rejected": [list(r) for r in self.rejected],
            "faults": [list(f) for f in self.faults_served],
        }

    # --- HTTP --------------------------------------------------------------------------------

    async def _body(self, request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def _login(self, request: Request) -> Response:
        profile = self._faults.profile
        if self._faults.roll(profile.slow):
            self.faults_served.append(("login", "slow"))
            await asyncio.sleep(profile.slow_seconds)
        if self._faults.roll(profile.http_5xx):
            self.faults_served.append(("login", "http_5xx"))
            return Response("Bad Gateway", 502)
        body = await self._body(request)
        given: list[Any] = []
        if isinstance(body, dict) and isinstance(body.get("parameters"), list):
            given = list(body["parameters"])
        elif isinstance(body, dict):
            given = [body.get(k) for k in ("acctID", "username", "appId", "appSec", "lcid")]
        c = self.credentials
        expected = [c.acct_id, c.username, c.app_id, c.app_secret]
        if [str(v) if v is not None else "" for v in given[:4]] != expected:
            self.rejected.append(("login", 0, "用户名或密码错误"))
            return JSONResponse(
                {"LoginResultType": 0, "Message": "用户名或密码错误", "KDSVCSessionId": None}
            )
        session = secrets.token_hex(16)
        self.sessions.add(session)
        self.logins += 1
        response = JSONResponse(
            {
                "Message": None,
                "MessageCode": "CheckPasswordPolicy",
                "LoginResultType": 1,
                "KDSVCSessionId": session,
                "IsSuccessByAPI": True,
                "Context": {"UserName": c.username, "DBid": c.acct_id, "LCID": c.lcid},
            }
        )
        response.set_cookie(SESSION_COOKIE, session, path="/", httponly=True)
        return response

    async def _faulted(self, request: Request, operation: str) -> Response | K3Error | None:
        """The faults rolled before a DynamicFormService call is handled, and the session check."""
        profile = self._faults.profile
        if self._faults.roll(profile.slow):
            self.faults_served.append((operation, "slow"))
            await asyncio.sleep(profile.slow_seconds)
        if self._faults.roll(profile.http_5xx):
            self.faults_served.append((operation, "http_5xx"))
            status = 502 if self._faults.roll(0.5) else 503
            return Response("Bad Gateway" if status == 502 else "Service Unavailable", status)
        session = request.cookies.get(SESSION_COOKIE, "")
        if session and self._faults.roll(profile.lost_session):
            self.faults_served.append((operation, "lost_session"))
            self.sessions.discard(session)
        if session not in self.sessions:
            return K3Error(1, ("", "会话信息已丢失，请重新登录"))
        if self._faults.roll(profile.transient):
            self.faults_served.append((operation, "transient"))
            return K3Error(13, ("", "网络控制冲突：单据正在被其他用户操作，请稍后再试"))
        if self._faults.roll(profile.rate_limit):
            self.faults_served.append((operation, "rate_limit"))
            return K3Error(14, ("", "接口调用次数超过限制，请稍后再试"))
        return None

    def _failure(self, operation: str, error: K3Error, *, wrapped: bool) -> Response:
        self.rejected.append((operation, error.msg_code, "; ".join(m for _, m in error.errors)))
        status = response_status(False, msg_code=error.msg_code, errors=error.errors)
        body: Any = {"Result": {"ResponseStatus": status}}
        return JSONResponse([[body]] if wrapped else body)

    async def _query_endpoint(self, request: Request) -> Response:
        faulted = await self._faulted(request, "ExecuteBillQuery")
        if isinstance(faulted, Response):
            return faulted
        if faulted is not None:
            return self._failure("ExecuteBillQuery", faulted, wrapped=True)
        body = await self._body(request)
        try:
            data = body.get("data") if isinstance(body, dict) else None
            if isinstance(data, str):  # some clients send the data object as a JSON string
                data = json.loads(data)
            if not isinstance(data, dict):
                raise K3Error(8, ("data", "缺少参数 data"))
            return JSONResponse(self.query(data))
        except K3Error as exc:
            return self._failure("ExecuteBillQuery", exc, wrapped=True)

    async def _save_endpoint(self, request: Request) -> Response:
        faulted = await self._faulted(request, "Save")
        if isinstance(faulted, Response):
            return faulted
        if faulted is not None:
            return self._failure("Save", faulted, wrapped=False)
        body = await self._body(request)
        try:
            if not isinstance(body, dict):
                raise K3Error(8, ("", "请求不是 JSON 对象"))
            document = self.save(str(body.get("formid") or ""), body.get("data"))
        except K3Error as exc:
            return self._failure("Save", exc, wrapped=False)
        if document.status == "C" and self.refuse_audits > 0:
            self.refuse_audits -= 1
            document.status = "A"  # saved; its audit failed
            return self._failure(
                "Save",
                K3Error(11, ("FRealQty", "审核失败：即时库存不足，不允许负库存出库")),
                wrapped=False,
            )
        entity = {"Id": document.fid, "Number": document.number, "DIndex": 0}
        answer = JSONResponse(
            {
                "Result": {
                    "ResponseStatus": response_status(True, entity=entity),
                    "Id": document.fid,
                    "Number": document.number,
                    "NeedReturnData": [{}],
                }
            }
        )
        if self._faults.roll(self._faults.profile.ambiguous):
            mode = self.ambiguous_mode
            if mode == "random":
                mode = "drop" if self._faults.roll(0.5) else "late"
            document.ambiguous = mode
            self.faults_served.append(("Save", mode))
            if mode == "drop":
                return _DroppedResponse()
            await asyncio.sleep(self._faults.profile.ambiguous_delay)
        return answer

    # --- Submit / Audit -----------------------------------------------------------------------

    async def _submit_endpoint(self, request: Request) -> Response:
        return await self._status_change(request, "Submit", ("Z", "A", "D"), "B")

    async def _audit_endpoint(self, request: Request) -> Response:
        return await self._status_change(request, "Audit", ("B",), "C")

    async def _status_change(
        self, request: Request, operation: str, from_states: tuple[str, ...], to_state: str
    ) -> Response:
        """`{"formid", "data": {"Numbers": [...]}}`: each named document moves on, or the call
        fails naming the one that cannot (already audited, not submitted, unknown)."""
        faulted = await self._faulted(request, operation)
        if isinstance(faulted, Response):
            return faulted
        if faulted is not None:
            return self._failure(operation, faulted, wrapped=False)
        body = await self._body(request)
        data = body.get("data") if isinstance(body, dict) else None
        numbers = data.get("Numbers") if isinstance(data, dict) else None
        form = str(body.get("formid") or "") if isinstance(body, dict) else ""
        if not isinstance(numbers, list) or not numbers:
            return self._failure(
                operation, K3Error(8, ("Numbers", "缺少参数 Numbers")), wrapped=False
            )
        entities = []
        for n, number in enumerate(numbers):
            document = next(
                (d for d in self.documents if d.form == form and d.number == str(number)), None
            )
            if document is None:
                return self._failure(
                    operation, K3Error(10, ("Numbers", f"单据 {number} 不存在")), wrapped=False
                )
            if document.status not in from_states:
                return self._failure(
                    operation,
                    K3Error(
                        12,
                        (
                            "FDocumentStatus",
                            f"单据 {number} 状态为 {document.status}，不能{operation}",
                        ),
                    ),
                    wrapped=False,
                )
            document.status = to_state
            if to_state == "C":
                self._write_back(document)
            entities.append({"Id": document.fid, "Number": document.number, "DIndex": n})
        return JSONResponse(
            {"Result": {"ResponseStatus": response_status(True, entity=entities[0])}}
        )

    def _write_back(self, document: Document) -> None:
        for po_entry, qty in document.on_audit:
            po_entry.stock_in_qty += qty
        document.on_audit.clear()
        for order in self.purchase_orders:
            if all(e.stock_in_qty >= e.qty for e in order.entries):
                order.close_status = "B"

    # --- ExecuteBillQuery --------------------------------------------------------------------

    def _purchase_spec(self) -> FormSpec:
        head: dict[str, Getter] = {
            "fid": lambda p, e: p.fid,
            "fbillno": lambda p, e: p.number,
            "fdocumentstatus": lambda p, e: p.document_status,
            "fclosestatus": lambda p, e: p.close_status,
            "fdate": lambda p, e: p.date,
            "fapprovedate": lambda p, e: p.approve_date or None,
            "fsupplierid.fnumber": lambda p, e: p.supplier,
            "fpurchaseorgid.fnumber": lambda p, e: p.org,
        }
        entry: dict[str, Getter] = {
            "fpoorderentry_fentryid": lambda p, e: e.entry_id,
            "fmaterialid.fnumber": lambda p, e: e.material,
            "fqty": lambda p, e: float(e.qty),
            "funitid.fnumber": lambda p, e: e.unit,
            "fstockinqty": lambda p, e: float(e.stock_in_qty),
            "fremainstockinqty": lambda p, e: float(e.qty - e.stock_in_qty),
        }
        return FormSpec(head, entry, lambda: [(p, list(p.entries)) for p in self.purchase_orders])

    def _document_spec(self, form: str, entry_key: str, partner_key: str) -> FormSpec:
        org_key = "fstockorgid.fnumber" if form == RECEIPT else "fsaleorgid.fnumber"
        material_key = "fmaterialid.fnumber"
        stock_key = "fstockid.fnumber"
        head: dict[str, Getter] = {
            "fid": lambda d, e: d.fid,
            "fbillno": lambda d, e: d.number,
            "fdocumentstatus": lambda d, e: d.status,
            "fdate": lambda d, e: d.date,
            "fnote": lambda d, e: d.note,
            partner_key: lambda d, e: d.partner,
            org_key: lambda d, e: self.org,
        }
        entry: dict[str, Getter] = {
            entry_key: lambda d, e: e["entry_id"],
            material_key: lambda d, e: e["material"],
            "frealqty": lambda d, e: float(e["qty"]),
            stock_key: lambda d, e: e["stock"],
        }
        if form == RECEIPT:
            entry["fsrcbillno"] = lambda d, e: e["src_bill_no"]
            entry["fpoorderno"] = lambda d, e: e["src_bill_no"]
        else:
            entry["ftaxprice"] = lambda d, e: e["price"]
        return FormSpec(
            head, entry, lambda: [(d, list(d.entries)) for d in self.documents_of(form)]
        )

    def query(self, data: dict[str, Any]) -> list[list[Any]]:
        spec = self._forms.get(str(data.get("FormId") or ""))
        if spec is None:
            raise K3Error(8, ("FormId", f"业务对象 {data.get('FormId')!r} 不存在或不支持查询"))
        keys = [k.strip() for k in str(data.get("FieldKeys") or "").split(",") if k.strip()]
        if not keys:
            raise K3Error(9, ("FieldKeys", "FieldKeys 不能为空"))
        getters = {**spec.head, **spec.entry}
        for key in keys:
            if key.lower() not in getters:
                raise K3Error(8, ("FieldKeys", f"字段 {key} 不存在"))
        conditions = parse_filter(str(data.get("FilterString") or ""))
        for key, _, _ in conditions:
            if key not in getters:
                raise K3Error(8, ("FilterString", f"字段 {key} 不存在"))
        per_entry = any(k.lower() in spec.entry for k in keys) or any(
            k in spec.entry for k, _, _ in conditions
        )
        rows: list[list[Any]] = []
        for document, entries in spec.rows():
            for entry in entries if per_entry else [None]:
                if all(_matches(getters[k](document, entry), op, v) for k, op, v in conditions):
                    rows.append([getters[k.lower()](document, entry) for k in keys])
        rows = self._ordered(rows, keys, str(data.get("OrderString") or ""))
        start = int(data.get("StartRow") or 0)
        limit = int(data.get("Limit") or 0)
        top = int(data.get("TopRowCount") or 0)
        end = len(rows)
        if top > 0:
            end = min(end, top)
        if limit > 0:
            end = min(end, start + min(limit, MAX_LIMIT))
        return rows[start:end]

    @staticmethod
    def _ordered(rows: list[list[Any]], keys: list[str], order: str) -> list[list[Any]]:
        index = {k.lower(): i for i, k in enumerate(keys)}
        for part in reversed([p.strip() for p in order.split(",") if p.strip()]):
            words = part.split()
            column = index.get(words[0].lower())
            if column is None:
                raise K3Error(8, ("OrderString", f"排序字段 {words[0]} 不在 FieldKeys 中"))
            descending = len(words) > 1 and words[1].upper() == "DESC"
            rows.sort(key=lambda r: _comparable(r[column]), reverse=descending)
        return rows

    # --- Save --------------------------------------------------------------------------------

    def save(self, form: str, data: Any) -> Document:
        if form not in (RECEIPT, SALES_OUTBOUND):
            raise K3Error(8, ("formid", f"业务对象 {form!r} 不存在或不支持保存"))
        if not isinstance(data, dict) or not isinstance(data.get("Model"), dict):
            raise K3Error(8, ("Model", "缺少参数 Model"))
        model: dict[str, Any] = data["Model"]
        audit = data.get("IsAutoSubmitAndAudit") in (True, "true", "True")
        if form == RECEIPT:
            return self._save_receipt(model, audit)
        return self._save_sales(model, audit)

    @staticmethod
    def _number(model: dict[str, Any], key: str) -> str:
        value = model.get(key)
        if isinstance(value, dict):
            value = value.get("FNumber") or value.get("FNUMBER")
        return str(value or "")

    @staticmethod
    def _quantity(entry: dict[str, Any], key: str, errors: list[tuple[str, str]]) -> int:
        try:
            qty = float(entry.get(key) or 0)
        except (TypeError, ValueError):
            qty = 0
        if qty <= 0 or qty != int(qty):
            errors.append((key, f"{key} 必须是大于 0 的数量"))
            return 0
        return int(qty)

    def _require(
        self, value: str, known: Iterable[str], field_name: str, errors: list[tuple[str, str]]
    ) -> None:
        if not value:
            errors.append((field_name, f"字段 {field_name} 是必填项"))
        elif value not in known:
            errors.append((field_name, f"字段 {field_name} 的值 {value} 在基础资料中不存在"))

    def _save_receipt(self, model: dict[str, Any], audit: bool) -> Document:
        errors: list[tuple[str, str]] = []
        self._require(self._number(model, "FStockOrgId"), {self.org}, "FStockOrgId", errors)
        supplier = self._number(model, "FSupplierId")
        self._require(supplier, self.suppliers, "FSupplierId", errors)
        raw_entries = model.get("FInStockEntry")
        if not isinstance(raw_entries, list) or not raw_entries:
            raise K3Error(9, ("FInStockEntry", "单据体 FInStockEntry 不能为空"))
        entries: list[dict[str, Any]] = []
        writes: list[tuple[PoEntry, int]] = []
        for raw in raw_entries:
            if not isinstance(raw, dict):
                raise K3Error(8, ("FInStockEntry", "分录必须是对象"))
            material = self._number(raw, "FMaterialId")
            stock = self._number(raw, "FStockId")
            self._require(material, self.materials, "FMaterialId", errors)
            self._require(stock, self.stocks, "FStockId", errors)
            qty = self._quantity(raw, "FRealQty", errors)
            link = self._link(raw, material, supplier, qty, writes, errors)
            entries.append(
                {
                    "entry_id": next(self._entry_ids),
                    "material": material,
                    "qty": qty,
                    "stock": stock,
                    "src_bill_no": str(raw.get("FSRCBillNo") or raw.get("FPOOrderNo") or ""),
                    "link": link,
                }
            )
        if errors:
            raise K3Error(11, *errors)
        document = self._record(RECEIPT, model, supplier, entries, audit)
        document.on_audit.extend(writes)
        if audit and not self.refuse_audits:
            self._write_back(document)
        return document

    def _link(
        self,
        raw: dict[str, Any],
        material: str,
        supplier: str,
        qty: int,
        writes: list[tuple[PoEntry, int]],
        errors: list[tuple[str, str]],
    ) -> list[int] | None:
        links = raw.get("FInStockEntry_Link") or []
        if not links:
            return None
        link = links[0] if isinstance(links, list) and isinstance(links[0], dict) else {}
        prefix = "FInStockEntry_Link_"
        if link.get(prefix + "FRuleId") != RECEIPT_RULE:
            errors.append((prefix + "FRuleId", f"转换规则必须是 {RECEIPT_RULE}"))
            return None
        try:
            fid, entry_id = int(link[prefix + "FSBillId"]), int(link[prefix + "FSId"])
        except (KeyError, TypeError, ValueError):
            errors.append((prefix + "FSId", "源单内码和分录内码必须是整数"))
            return None
        order = next((p for p in self.purchase_orders if p.fid == fid), None)
        entry = next((e for e in order.entries if e.entry_id == entry_id), None) if order else None
        if order is None or entry is None:
            errors.append((prefix + "FSId", f"源单分录 {fid}/{entry_id} 不存在"))
            return None
        if order.document_status != "C" or order.close_status != "A":
            errors.append((prefix + "FSBillId", f"源单 {order.number} 未审核或已关闭"))
            return None
        if entry.material != material or order.supplier != supplier:
            errors.append(("FMaterialId", f"物料或供应商与源单 {order.number} 不一致"))
            return None
        pending = sum(q for e, q in writes if e is entry)
        if qty + pending > entry.qty - entry.stock_in_qty:
            errors.append(
                (
                    "FRealQty",
                    f"入库数量 {qty} 超过源单 {order.number} 分录可入库数量 "
                    f"{entry.qty - entry.stock_in_qty - pending}",
                )
            )
            return None
        writes.append((entry, qty))
        return [fid, entry_id]

    def _save_sales(self, model: dict[str, Any], audit: bool) -> Document:
        errors: list[tuple[str, str]] = []
        self._require(self._number(model, "FSaleOrgId"), {self.org}, "FSaleOrgId", errors)
        customer = self._number(model, "FCustomerID")
        self._require(customer, self.customers, "FCustomerID", errors)
        raw_entries = model.get("FEntity")
        if not isinstance(raw_entries, list) or not raw_entries:
            raise K3Error(9, ("FEntity", "单据体 FEntity 不能为空"))
        entries: list[dict[str, Any]] = []
        for raw in raw_entries:
            if not isinstance(raw, dict):
                raise K3Error(8, ("FEntity", "分录必须是对象"))
            material = self._number(raw, "FMaterialID")
            stock = self._number(raw, "FStockID")
            self._require(material, self.materials, "FMaterialID", errors)
            self._require(stock, self.stocks, "FStockID", errors)
            qty = self._quantity(raw, "FRealQty", errors)
            entries.append(
                {
                    "entry_id": next(self._entry_ids),
                    "material": material,
                    "qty": qty,
                    "stock": stock,
                    "price": raw.get("FTaxPrice"),
                }
            )
        if errors:
            raise K3Error(11, *errors)
        return self._record(SALES_OUTBOUND, model, customer, entries, audit)

    def _record(
        self,
        form: str,
        model: dict[str, Any],
        partner: str,
        entries: list[dict[str, Any]],
        audit: bool,
    ) -> Document:
        fid = next(self._ids)
        document = Document(
            form=form,
            fid=fid,
            number=str(model.get("FBillNo") or f"{form[:3]}{fid:08d}"),
            status="C" if audit else "A",
            date=str(model.get("FDate") or _now_text()),
            note=str(model.get("FNote") or ""),
            partner=partner,
            entries=entries,
            saved_at=_now_text(),
        )
        self.documents.append(document)
        return document
