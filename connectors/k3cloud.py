"""Kingdee K3Cloud (金蝶云星空) WebAPI: purchase orders in; purchase receipts and sales outbound
documents out (`specs/erp-k3cloud.md`, `specs/decisions.md` "ERP").

Wire contract:

- Every call is `POST {api_url}<Service>.common.kdsvc` with a JSON body, where `api_url` is the
  `https://<server>/k3cloud/` base.
- Login: `Kingdee.BOS.WebApi.ServicesStub.AuthService.LoginByAppSecret`, body
  `{"acctID", "username", "appId", "appSec", "lcid"}`; success is `"LoginResultType": 1`. The
  session is the `kdservice-sessionid` cookie (the body's `KDSVCSessionId` as a fallback);
  `K3Session` (an `httpx.Auth`) sends it with every call. The hub logs in lazily, on the first
  call, and again once when a call answers `MsgCode` 1 ("会话信息已丢失").
- `DynamicFormService.Save`: `{"formid": F, "data": {"Model": {…}, "IsAutoSubmitAndAudit": true,
  …}}` → `{"Result": {"ResponseStatus": {"IsSuccess", "MsgCode", "Errors": [{"FieldName",
  "Message"}], "SuccessEntitys": [{"Id", "Number"}]}, "Id", "Number"}}`. `IsSuccess` may be a
  string in older builds.
- `DynamicFormService.ExecuteBillQuery`: `{"data": {"FormId", "FieldKeys", "FilterString",
  "OrderString", "TopRowCount", "StartRow", "Limit"}}` → rows as arrays in `FieldKeys` order;
  an error comes back as `[[{"Result": {"ResponseStatus": {…}}}]]`.

Error table (`ResponseStatus.MsgCode` → what the caller gets):

| MsgCode                                   | fault                                          |
|-------------------------------------------|------------------------------------------------|
| 1 context lost                            | log in again once, call again; then `AuthError`|
| 2 no permission                           | `AuthError` (an operator fixes the ERP user)   |
| 13 network-control lock, 14 call limit    | `TransientError` (the transport retries)       |
| 8 bad param, 9 missing, 10 not found,     | `RejectedError` with the ERP's `Errors`        |
| 11 validation, 12 not operable, any other |                                                |
| login `LoginResultType` ≠ 1               | `AuthError`                                    |

Transport failures map as `connectors.http` says. A Save is a write: a timeout, dropped
connection, 5xx, or an answer that cannot be read is `AmbiguousError` (the document may exist:
ask `find_document` before saving again); queries and login are reads and are retried.

Documents the hub writes (numbers from the config; `FDate` in CST):
- `STK_InStock` (purchase receipt): `FBillNo`, `FBillTypeID` RKD01_SYS, `FStockOrgId`,
  `FPurchaseOrgId`, `FSupplierId`, `FOwnerTypeIdHead` BD_OwnerOrg, `FOwnerIdHead`, `FNote`;
  entries `FInStockEntry[{FMaterialId, FUnitID, FRealQty, FStockId, FSRCBillTypeId
  PUR_PurchaseOrder, FSRCBillNo, FPOOrderNo, FInStockEntry_Link[{…FRuleId
  PUR_PurchaseOrder-STK_InStock, …FSTableName t_PUR_POOrderEntry, …FSBillId, …FSId,
  …FBaseUnitQty}]}]`: the links make the ERP write the received quantity back to the order.
- `SAL_OUTSTOCK` (sales outbound): `FBillNo` (the delivery-order code), `FBillTypeID`
  XSCKD01_SYS, `FSaleOrgId`, `FStockOrgId`, `FCustomerID`, `FNote` (the marketplace order id),
  `SubHeadEntity{FSettleCurrID PRE001}`; entries `FEntity[{FMaterialID, FRealQty, FStockID,
  FTaxPrice}]`.

Both are saved with `IsAutoSubmitAndAudit: true` (one call, no half-audited document to resume).
K3Cloud does not deduplicate saves, and whether `FBillNo` is unique depends on the tenant's coding
rules, so the hub keys every document on a deterministic `FBillNo` and asks `ExecuteBillQuery`
(`FBillNo='…'`) after any ambiguous failure.
"""

import asyncio
import copy
import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar

import httpx
import structlog

from config.settings import ErpConfig
from connectors.base import (
    ErpDocument,
    ErpDocumentKind,
    PurchaseOrder,
    PurchaseOrderLine,
    PurchaseReceipt,
    SalesOutbound,
)
from connectors.errors import AuthError
from connectors.http import (
    DEFAULT_POLICY,
    Call,
    Fault,
    HttpTransport,
    RetryPolicy,
    Sleep,
    Timeouts,
)
from connectors.top_family import ErrorRule, ErrorTable, cst_text, parse_cst, raise_error, text
from models.clock import Clock, SystemClock

log = structlog.get_logger("ecomhub.connectors.k3cloud")

PLATFORM = "k3cloud"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
SESSION_COOKIE = "kdservice-sessionid"
STUB = "Kingdee.BOS.WebApi.ServicesStub."
LOGIN = STUB + "AuthService.LoginByAppSecret"
SAVE = STUB + "DynamicFormService.Save"
QUERY = STUB + "DynamicFormService.ExecuteBillQuery"
SUBMIT = STUB + "DynamicFormService.Submit"
AUDIT = STUB + "DynamicFormService.Audit"
CONTEXT_LOST = "1"

PURCHASE_ORDER = "PUR_PurchaseOrder"
FORMS: dict[ErpDocumentKind, str] = {
    ErpDocumentKind.RECEIPT: "STK_InStock",
    ErpDocumentKind.SALES_OUTBOUND: "SAL_OUTSTOCK",
}

ERRORS = ErrorTable(
    rules=(
        ErrorRule(Fault.AUTH, codes=frozenset({CONTEXT_LOST, "2"})),
        ErrorRule(Fault.TRANSIENT, codes=frozenset({"13", "14"})),
    ),
    default=Fault.REJECTED,
)

T = TypeVar("T")

LOGIN_COOLDOWN = 300.0
"""Seconds a refused login is not tried again (calls meanwhile fail with the same error)."""


class K3Session(httpx.Auth):
    """Sends the session cookie of the last login with every call (the connector logs in)."""

    def __init__(self) -> None:
        self.session_id = ""
        self.generation = 0
        """Counts logins, so concurrent calls that all lost the session log in once."""

    def __repr__(self) -> str:
        return f"K3Session(generation={self.generation})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.session_id:
            # The other cookies of the login (a load balancer's affinity, ASP.NET's session)
            # go back too, as Kingdee's own client does: only the session id is ours to set.
            others = [
                pair.strip()
                for pair in request.headers.get("Cookie", "").split(";")
                if pair.strip() and pair.split("=", 1)[0].strip() != SESSION_COOKIE
            ]
            request.headers["Cookie"] = "; ".join([*others, f"{SESSION_COOKIE}={self.session_id}"])
        yield request


# --- answers ------------------------------------------------------------------------------


def read_json(response: httpx.Response, call: Call) -> Any:
    """The JSON of an answer; unreadable is `BadPayload` on a read, ambiguous on a write."""
    try:
        return json.loads(response.content)
    except ValueError:
        fault = Fault.BAD_PAYLOAD if call.idempotent else Fault.MAYBE_DONE
        call.fail(fault, "answer is not JSON")


def response_status(body: Any) -> Mapping[str, Any] | None:
    """`Result.ResponseStatus` of a Save answer or of an ExecuteBillQuery error
    (`[[{"Result": …}]]`); None for query rows."""
    if isinstance(body, list):
        first = body[0] if body else None
        inner = first[0] if isinstance(first, list) and first else None
        return response_status(inner) if isinstance(inner, dict) else None
    if isinstance(body, dict):
        result = body.get("Result")
        status = result.get("ResponseStatus") if isinstance(result, dict) else None
        return status if isinstance(status, dict) else None
    return None


def succeeded(status: Mapping[str, Any]) -> bool:
    flag = status.get("IsSuccess")
    return flag.strip().lower() == "true" if isinstance(flag, str) else bool(flag)


def error_text(status: Mapping[str, Any]) -> str:
    """The ERP's own messages (`Errors[].Message`, with the field they name)."""
    parts = []
    for error in status.get("Errors") or []:
        if isinstance(error, dict):
            field, message = text(error.get("FieldName")), text(error.get("Message"))
            parts.append(f"{field}: {message}" if field else message)
    return "; ".join(p for p in parts if p) or "the ERP refused the call"


def whole(value: Any, name: str) -> int:
    """A quantity the ERP writes as a decimal (`10.0`): whole units only."""
    try:
        number = Decimal(text(value) or "0")
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not number.is_finite() or number != number.to_integral_value():
        raise ValueError(f"{name} is not a whole quantity: {value!r}")
    return int(number)


def quoted(value: str) -> str:
    """A FilterString literal."""
    return "'" + value.replace("'", "''") + "'"


def _number(value: str) -> dict[str, str]:
    return {"FNumber": value}


def _wire_money(amount: Decimal) -> float:
    # JSON needs a number; a 2-decimal amount round-trips exactly through float's shortest repr.
    return float(amount.quantize(Decimal("0.01")))


# --- the connector ------------------------------------------------------------------------


class K3CloudErp:
    """One K3Cloud data center (see the module docstring for the wire contract)."""

    kind = PLATFORM
    target: ClassVar[str] = "erp"
    page_size: ClassVar[int] = 2000
    detail_batch: ClassVar[int] = 50
    """Purchase orders whose lines one query fetches."""
    rate_limit_wait_cap: ClassVar[float] = 60.0
    receipt_bill_type: ClassVar[str] = "RKD01_SYS"
    sales_bill_type: ClassVar[str] = "XSCKD01_SYS"
    currency: ClassVar[str] = "PRE001"
    receipt_rule: ClassVar[str] = "PUR_PurchaseOrder-STK_InStock"
    order_fields: ClassVar[tuple[str, ...]] = (
        "FID",
        "FBillNo",
        "FSupplierId.FNumber",
        "FPurchaseOrgId.FNumber",
        "FApproveDate",
        "FPOOrderEntry_FEntryId",
        "FMaterialId.FNumber",
        "FQty",
        "FUnitId.FNumber",
        "FStockInQty",
    )

    def __init__(
        self,
        config: ErpConfig,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.config = config
        self._base = str(config.api_url).rstrip("/") + "/"
        self._clock = clock or SystemClock()
        self._session = K3Session()
        self._login_lock = asyncio.Lock()
        self._refused: tuple[float, AuthError] | None = None
        """When and how the last login was refused: not tried again before LOGIN_COOLDOWN."""
        read = config.timeout.total_seconds()
        self.http = HttpTransport(
            platform=PLATFORM,
            target=self.target,
            url=self._url(LOGIN),
            auth=self._session,
            policy=policy or DEFAULT_POLICY,
            wait_cap=self.rate_limit_wait_cap,
            timeouts=timeouts or Timeouts(connect=min(5.0, read), read=read),
            transport=transport,
            sleep=sleep,
            secrets=(config.app_secret.get_secret_value(),),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def _url(self, service: str) -> str:
        return f"{self._base}{service}.common.kdsvc"

    # --- session --------------------------------------------------------------------------

    async def _login(self, seen: int) -> None:
        """Log in, unless another call already did since generation `seen`."""
        async with self._login_lock:
            if self._session.generation != seen:
                return
            # Every message and poll would otherwise try the refused credentials again, and
            # K3Cloud locks a user after repeated failed logins.
            if self._refused is not None and time.monotonic() - self._refused[0] < LOGIN_COOLDOWN:
                raise copy.copy(self._refused[1])  # a fresh one: no traceback piling up
            body = {
                "acctID": self.config.acct_id,
                "username": self.config.username,
                "appId": self.config.app_id,
                "appSec": self.config.app_secret.get_secret_value(),
                "lcid": self.config.lcid,
            }

            def session_of(response: httpx.Response, call: Call) -> str:
                answer = read_json(response, call)
                if not isinstance(answer, dict):
                    call.fail(Fault.BAD_PAYLOAD, "login answer is not an object")
                result = text(answer.get("LoginResultType"))
                if result != "1":
                    call.fail(
                        Fault.AUTH,
                        f"login refused: {text(answer.get('Message')) or 'no reason given'}",
                        code=f"LoginResultType={result or '?'}",
                    )
                session = response.cookies.get(SESSION_COOKIE) or text(answer.get("KDSVCSessionId"))
                if not session:
                    call.fail(Fault.BAD_PAYLOAD, "login answer carries no session")
                return session

            try:
                self._session.session_id = await self.http.post(
                    LOGIN,
                    json.dumps(body, ensure_ascii=False).encode("utf-8"),
                    content_type=JSON_CONTENT_TYPE,
                    idempotent=True,
                    parse=session_of,
                    url=self._url(LOGIN),
                )
            except AuthError as exc:
                self._refused = (time.monotonic(), exc)
                raise
            self._refused = None
            self._session.generation += 1
            log.info("k3cloud login", acct_id=self.config.acct_id, generation=seen + 1)

    async def _call(
        self,
        service: str,
        payload: Mapping[str, Any],
        *,
        idempotent: bool,
        read: Callable[[Any, Call], T],
    ) -> T:
        """One DynamicFormService call in a session; a lost session logs in again once."""
        content = json.dumps(payload, ensure_ascii=False).encode("utf-8")

        def parse(response: httpx.Response, call: Call) -> T:
            answer = read_json(response, call)
            status = response_status(answer)
            if status is not None and not succeeded(status):
                raise_error(call, ERRORS, code=status.get("MsgCode"), message=error_text(status))
            try:
                return read(answer, call)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                fault = Fault.BAD_PAYLOAD if call.idempotent else Fault.MAYBE_DONE
                call.fail(fault, f"unreadable answer: {exc}")

        for fresh_login in (False, True):
            seen = self._session.generation
            if not self._session.session_id:
                await self._login(seen)
                seen = self._session.generation
            try:
                return await self.http.post(
                    service,
                    content,
                    content_type=JSON_CONTENT_TYPE,
                    idempotent=idempotent,
                    parse=parse,
                    url=self._url(service),
                )
            except AuthError as exc:
                if exc.code != CONTEXT_LOST or fresh_login:
                    raise
                log.info("k3cloud session lost; logging in again", method=service)
                await self._login(seen)
        raise AssertionError("unreachable: the second pass returns or raises")

    # --- queries --------------------------------------------------------------------------

    async def _query(
        self,
        form: str,
        fields: Sequence[str],
        where: str,
        *,
        order: str = "",
        limit: int | None = None,
    ) -> list[list[Any]]:
        """Every row of an ExecuteBillQuery (paged by `StartRow`/`Limit`)."""
        size = limit or self.page_size
        rows: list[list[Any]] = []
        while True:
            data = {
                "FormId": form,
                "FieldKeys": ",".join(fields),
                "FilterString": where,
                "OrderString": order,
                "TopRowCount": 0,
                "StartRow": len(rows),
                "Limit": size,
            }

            def read(answer: Any, call: Call) -> list[list[Any]]:
                if not isinstance(answer, list) or not all(
                    isinstance(r, list) and len(r) == len(fields) for r in answer
                ):
                    raise ValueError(f"{form} rows are not arrays of {len(fields)} fields")
                return answer

            page = await self._call(QUERY, {"data": data}, idempotent=True, read=read)
            rows.extend(page)
            if limit is not None or len(page) < size:
                return rows

    async def open_purchase_order_numbers(self, since: datetime | None = None) -> list[str]:
        where = "FDocumentStatus='C' AND FCloseStatus='A'"
        if since is not None:
            where += f" AND FApproveDate>={quoted(cst_text(since))}"
        rows = await self._query(PURCHASE_ORDER, ("FBillNo",), where, order="FBillNo ASC")
        return list(dict.fromkeys(text(r[0]) for r in rows if text(r[0])))

    async def purchase_orders(self, numbers: Sequence[str]) -> list[PurchaseOrder]:
        found: list[PurchaseOrder] = []
        wanted = list(dict.fromkeys(numbers))
        for start in range(0, len(wanted), self.detail_batch):
            batch = wanted[start : start + self.detail_batch]
            where = f"FBillNo IN ({','.join(quoted(n) for n in batch)})"
            rows = await self._query(
                PURCHASE_ORDER,
                self.order_fields,
                where,
                order="FBillNo ASC,FPOOrderEntry_FEntryId ASC",
            )
            grouped: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                record = dict(zip(self.order_fields, row, strict=True))
                grouped.setdefault(text(record["FBillNo"]), []).append(record)
            found.extend(self._purchase_order(rs) for rs in grouped.values())
        return found

    def _purchase_order(self, rows: list[dict[str, Any]]) -> PurchaseOrder:
        head = rows[0]
        number = text(head["FBillNo"])
        approved = text(head["FApproveDate"])
        try:
            lines = tuple(
                PurchaseOrderLine(
                    entry_id=text(r["FPOOrderEntry_FEntryId"]),
                    sku=text(r["FMaterialId.FNumber"]),
                    qty=whole(r["FQty"], "FQty"),
                    unit=text(r["FUnitId.FNumber"]),
                    received=whole(r["FStockInQty"], "FStockInQty"),
                )
                for r in rows
            )
            approved_at = parse_cst(approved) if approved else None
        except ValueError as exc:
            return PurchaseOrder(number, text(head["FID"]), "", "", (), problem=str(exc))
        return PurchaseOrder(
            number=number,
            erp_id=text(head["FID"]),
            supplier=text(head["FSupplierId.FNumber"]),
            purchase_org=text(head["FPurchaseOrgId.FNumber"]),
            lines=lines,
            approved_at=approved_at,
        )

    async def find_document(self, kind: ErpDocumentKind, number: str) -> ErpDocument | None:
        rows = await self._query(
            FORMS[kind],
            ("FID", "FBillNo", "FDocumentStatus"),
            f"FBillNo={quoted(number)}",
            limit=10,
        )
        if not rows:
            return None
        erp_id, bill_no, status = (text(v) for v in rows[0])
        return ErpDocument(number=bill_no or number, erp_id=erp_id, status=status)

    async def audit_document(self, kind: ErpDocumentKind, document: ErpDocument) -> ErpDocument:
        """Submit (unless it is under review already) and audit a saved document whose automatic
        audit failed. Not retried here: a repeat of a step that went through is refused
        (MsgCode 12), so the caller reads the status again instead."""
        steps = (AUDIT,) if document.status == "B" else (SUBMIT, AUDIT)
        for service in steps:
            payload = {
                "formid": FORMS[kind],
                "data": {"CreateOrgId": 0, "Numbers": [document.number], "Ids": ""},
            }
            await self._call(service, payload, idempotent=False, read=lambda answer, call: None)
        return replace(document, status="C")

    # --- saves ----------------------------------------------------------------------------

    async def _save(self, kind: ErpDocumentKind, number: str, model: dict[str, Any]) -> ErpDocument:
        payload = {
            "formid": FORMS[kind],
            "data": {
                "Model": model,
                "NeedUpDateFields": [],
                "NeedReturnFields": [],
                "IsDeleteEntry": True,
                "IsVerifyBaseDataField": False,
                "IsEntryBatchFill": True,
                "ValidateFlag": True,
                "NumberSearch": True,
                "InterationFlags": "",
                "IsAutoSubmitAndAudit": True,
                "ValidateRepeatJson": False,
            },
        }

        def saved(answer: Any, call: Call) -> ErpDocument:
            status = response_status(answer)
            if status is None:
                raise ValueError("no ResponseStatus in the answer")
            entities = status.get("SuccessEntitys") or []
            entity = entities[0] if entities and isinstance(entities[0], dict) else {}
            result = answer["Result"]
            return ErpDocument(
                number=text(entity.get("Number")) or text(result.get("Number")) or number,
                erp_id=text(entity.get("Id")) or text(result.get("Id")),
                status="C",
            )

        return await self._call(SAVE, payload, idempotent=False, read=saved)

    async def save_receipt(self, receipt: PurchaseReceipt) -> ErpDocument:
        org = _number(self.config.org_number)
        entries = [
            {
                "FMaterialId": _number(line.sku),
                **({"FUnitID": _number(line.unit)} if line.unit else {}),
                "FRealQty": line.qty,
                "FStockId": _number(receipt.stock),
                "FSRCBillTypeId": PURCHASE_ORDER,
                "FSRCBillNo": receipt.purchase_order,
                "FPOOrderNo": receipt.purchase_order,
                "FInStockEntry_Link": [
                    {
                        "FInStockEntry_Link_FRuleId": self.receipt_rule,
                        "FInStockEntry_Link_FSTableName": "t_PUR_POOrderEntry",
                        "FInStockEntry_Link_FSBillId": receipt.purchase_order_id,
                        "FInStockEntry_Link_FSId": line.entry_id,
                        "FInStockEntry_Link_FBaseUnitQty": line.qty,
                    }
                ],
            }
            for line in receipt.lines
        ]
        model = {
            "FBillNo": receipt.number,
            "FBillTypeID": {"FNUMBER": self.receipt_bill_type},
            "FDate": cst_text(receipt.received_at),
            "FStockOrgId": org,
            "FPurchaseOrgId": org,
            "FSupplierId": _number(receipt.supplier),
            "FOwnerTypeIdHead": "BD_OwnerOrg",
            "FOwnerIdHead": org,
            "FNote": receipt.note,
            "FInStockEntry": entries,
        }
        return await self._save(ErpDocumentKind.RECEIPT, receipt.number, model)

    async def save_sales_outbound(self, document: SalesOutbound) -> ErpDocument:
        org = _number(self.config.org_number)
        model = {
            "FBillNo": document.number,
            "FBillTypeID": {"FNUMBER": self.sales_bill_type},
            "FDate": cst_text(document.shipped_at),
            "FSaleOrgId": org,
            "FStockOrgId": org,
            "FCustomerID": _number(document.customer),
            "FNote": document.note,
            "SubHeadEntity": {"FSettleCurrID": _number(self.currency)},
            "FEntity": [
                {
                    "FMaterialID": _number(line.sku),
                    "FRealQty": line.qty,
                    "FStockID": _number(document.stock),
                    "FTaxPrice": _wire_money(line.price),
                }
                for line in document.lines
            ],
        }
        return await self._save(ErpDocumentKind.SALES_OUTBOUND, document.number, model)
