"""K3CloudErp against a stateful fake K3Cloud (respx, strict routes, fixed clock): login and the
session cookie, re-login once on a lost session, the MsgCode error table, ambiguous saves."""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from config.settings import ErpConfig
from connectors.base import (
    ErpDocument,
    ErpDocumentKind,
    PurchaseReceipt,
    ReceiptLine,
    SalesOutbound,
    SalesOutboundLine,
)
from connectors.errors import AmbiguousError, AuthError, BadPayload, RejectedError
from connectors.k3cloud import AUDIT, LOGIN, QUERY, SAVE, SUBMIT, K3CloudErp
from connectors.registry import erp_for
from tests.connectors import NO_JITTER, Sleeps, clock

BASE = "https://erp.test.invalid/k3cloud/"
SECRET = "k3-app-s3cr3t-0042"
NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)

Answer = Callable[[dict[str, Any]], Any]


def config() -> ErpConfig:
    return ErpConfig(
        api_url=BASE,
        acct_id="6523f0a1b2",
        username="ecomhub",
        app_id="300123_abc",
        app_secret=SecretStr(SECRET),
        org_number="100",
    )


def status(success: bool, msg_code: int = 0, message: str = "", field: str = "") -> dict[str, Any]:
    return {
        "Result": {
            "ResponseStatus": {
                "ErrorCode": 0 if success else 500,
                "IsSuccess": success,
                "Errors": [] if success else [{"FieldName": field, "Message": message}],
                "SuccessEntitys": [{"Id": 100123, "Number": "X", "DIndex": 0}] if success else [],
                "SuccessMessages": [],
                "MsgCode": msg_code,
            },
            "Id": 100123 if success else "",
            "Number": "X" if success else "",
        }
    }


class FakeK3:
    """Login, Save, ExecuteBillQuery, Submit and Audit behind strict respx routes; sessions
    are checked."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.sessions: list[str] = []
        self.live: set[str] = set()
        self.logins: list[dict[str, Any]] = []
        self.calls: dict[str, list[httpx.Request]] = {SAVE: [], QUERY: [], SUBMIT: [], AUDIT: []}
        self.answers: dict[str, list[Answer]] = {SAVE: [], QUERY: [], SUBMIT: [], AUDIT: []}
        self.login_answer: dict[str, Any] | None = None
        router.post(f"{BASE}{LOGIN}.common.kdsvc").mock(side_effect=self._login)
        for service in (SAVE, QUERY, SUBMIT, AUDIT):
            router.post(f"{BASE}{service}.common.kdsvc").mock(side_effect=self._handler(service))

    def on(self, service: str, *answers: Any) -> None:
        """Answer `service` with these in turn (the last repeats): a body, an exception, an
        `httpx.Response`, or a callable of the request's JSON."""
        self.answers[service] = [a if callable(a) else (lambda _, a=a: a) for a in answers]

    def lose_sessions(self) -> None:
        self.live.clear()

    def _login(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.logins.append(body)
        if self.login_answer is not None:
            return httpx.Response(200, json=self.login_answer)
        session = f"session-{len(self.logins)}"
        self.sessions.append(session)
        self.live.add(session)
        return httpx.Response(
            200,
            json={"LoginResultType": 1, "KDSVCSessionId": session, "Message": None},
            headers=[
                ("Set-Cookie", f"kdservice-sessionid={session}; path=/"),
                ("Set-Cookie", "SERVERID=node-1; path=/"),  # a load balancer's affinity
            ],
        )

    def _handler(self, service: str) -> Callable[[httpx.Request], httpx.Response]:
        def handle(request: httpx.Request) -> httpx.Response:
            calls = self.calls[service]
            calls.append(request)
            pairs = dict(
                pair.strip().split("=", 1)
                for pair in request.headers.get("Cookie", "").split(";")
                if "=" in pair
            )
            assert pairs.get("SERVERID") == "node-1", "the login's other cookies go back too"
            session = pairs.get("kdservice-sessionid", "")
            if session not in self.live:
                lost = status(False, 1, "会话信息已丢失，请重新登录")
                return httpx.Response(200, json=[[lost]] if service == QUERY else lost)
            answers = self.answers[service]
            assert answers, f"unexpected call to {service}"
            answer = answers[min(len(calls) - 1, len(answers) - 1)](json.loads(request.content))
            if isinstance(answer, BaseException):
                raise answer
            if isinstance(answer, httpx.Response):
                return answer
            return httpx.Response(200, json=answer)

        return handle


@pytest.fixture
def fake() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield FakeK3(router)


def erp(sleeps: Sleeps | None = None) -> K3CloudErp:
    return K3CloudErp(config(), clock=clock(), policy=NO_JITTER, sleep=sleeps or Sleeps())


def receipt() -> PurchaseReceipt:
    return PurchaseReceipt(
        number="CGDD000001-R1",
        purchase_order="CGDD000001",
        purchase_order_id="100001",
        supplier="VEN00001",
        stock="CK-WH-EAST",
        received_at=NOW,
        lines=(ReceiptLine("200001", "SKU-1", 3, "Pcs"),),
        note="WMS WH-EAST receipt IB1",
    )


def sales() -> SalesOutbound:
    return SalesOutbound(
        number="tmall-flagship-123",
        customer="CUST-TMALL",
        stock="CK-WH-EAST",
        shipped_at=NOW,
        lines=(SalesOutboundLine("SKU-1", 2, Decimal("19.90")),),
        note="123",
    )


async def test_logs_in_once_and_sends_the_session_cookie(fake: FakeK3) -> None:
    fake.on(QUERY, [["CGDD000001"], ["CGDD000002"], ["CGDD000002"]])
    client = erp()
    try:
        numbers = await client.open_purchase_order_numbers(NOW)
        await client.open_purchase_order_numbers()
    finally:
        await client.aclose()
    assert numbers == ["CGDD000001", "CGDD000002"]
    assert len(fake.logins) == 1
    login = fake.logins[0]
    assert login["acctID"] == "6523f0a1b2" and login["appSec"] == SECRET and login["lcid"] == 2052
    first = json.loads(fake.calls[QUERY][0].content)["data"]
    assert first["FormId"] == "PUR_PurchaseOrder"
    assert first["FilterString"] == (
        "FDocumentStatus='C' AND FCloseStatus='A' AND FApproveDate>='2026-11-20 10:00:00'"
    )
    assert all(
        r.headers["Cookie"] == "SERVERID=node-1; kdservice-sessionid=session-1"
        for r in fake.calls[QUERY]
    )


async def test_purchase_orders_grouped_with_whole_quantities(fake: FakeK3) -> None:
    row = ["100001", "CGDD000001", "VEN00001", "100", "2026-11-20T09:30:00"]
    fake.on(
        QUERY,
        [
            [*row, 200001, "SKU-1", 10.0, "Pcs", 0.0],
            [*row, 200002, "SKU-2", 4.0, "Pcs", 1.0],
            ["100002", "CGDD000002", "VEN00002", "100", "", 200003, "SKU-3", 2.5, "kg", 0.0],
        ],
    )
    client = erp()
    try:
        orders = await client.purchase_orders(["CGDD000001", "CGDD000002"])
    finally:
        await client.aclose()
    first, second = orders
    assert first.number == "CGDD000001" and first.erp_id == "100001" and not first.problem
    assert [(x.entry_id, x.sku, x.qty, x.received) for x in first.lines] == [
        ("200001", "SKU-1", 10, 0),
        ("200002", "SKU-2", 4, 1),
    ]
    assert first.approved_at == datetime(2026, 11, 20, 1, 30, tzinfo=UTC)
    assert "whole" in second.problem and not second.lines
    sent = json.loads(fake.calls[QUERY][0].content)["data"]
    assert sent["FilterString"] == "FBillNo IN ('CGDD000001','CGDD000002')"


@pytest.mark.parametrize("msg_code", [13, 14])
async def test_lock_and_call_limit_are_retried(fake: FakeK3, msg_code: int) -> None:
    fake.on(SAVE, status(False, msg_code, "稍后再试"), status(True))
    sleeps = Sleeps()
    client = erp(sleeps)
    try:
        saved = await client.save_receipt(receipt())
    finally:
        await client.aclose()
    assert saved == ErpDocument("X", "100123", "C")
    assert len(fake.calls[SAVE]) == 2 and sleeps.waits == [1.0]


@pytest.mark.parametrize("msg_code", [8, 9, 10, 11, 12])
async def test_rejections_carry_the_erp_messages_and_are_not_retried(
    fake: FakeK3, msg_code: int
) -> None:
    fake.on(SAVE, status(False, msg_code, "字段 FMaterialId 的值 SKU-9 不存在", "FMaterialId"))
    client = erp()
    try:
        with pytest.raises(RejectedError) as caught:
            await client.save_sales_outbound(sales())
    finally:
        await client.aclose()
    assert caught.value.code == str(msg_code)
    assert "FMaterialId: 字段 FMaterialId 的值 SKU-9 不存在" in str(caught.value)
    assert len(fake.calls[SAVE]) == 1


async def test_no_permission_is_an_auth_failure(fake: FakeK3) -> None:
    fake.on(QUERY, [[status(False, 2, "没有权限")]])
    client = erp()
    try:
        with pytest.raises(AuthError):
            await client.find_document(ErpDocumentKind.RECEIPT, "CGDD000001-R1")
    finally:
        await client.aclose()
    assert len(fake.logins) == 1 and len(fake.calls[QUERY]) == 1


async def test_a_lost_session_logs_in_again_once(fake: FakeK3) -> None:
    fake.on(SAVE, status(True))
    client = erp()
    try:
        await client.save_receipt(receipt())
        fake.lose_sessions()
        await client.save_receipt(receipt())  # MsgCode 1 → log in again → saved
        assert len(fake.logins) == 2
        cookies = [r.headers["Cookie"] for r in fake.calls[SAVE]]
        assert cookies[-1] == "SERVERID=node-1; kdservice-sessionid=session-2"

        fake.on(SAVE, lambda _: status(False, 1, "会话信息已丢失"))  # lost however often
        with pytest.raises(AuthError) as caught:
            await client.save_receipt(receipt())
    finally:
        await client.aclose()
    assert caught.value.code == "1"
    assert len(fake.logins) == 3, "logged in again more than once for one call"


async def test_a_refused_login_is_an_auth_failure_without_the_secret(fake: FakeK3) -> None:
    fake.login_answer = {"LoginResultType": 0, "Message": f"用户名或密码错误 {SECRET}"}
    client = erp()
    try:
        with pytest.raises(AuthError) as caught:
            await client.open_purchase_order_numbers()
        # Refused credentials are not tried again for a while: K3Cloud locks a user after
        # repeated failed logins, and every message and poll would try.
        with pytest.raises(AuthError):
            await client.open_purchase_order_numbers()
        assert len(fake.logins) == 1
    finally:
        await client.aclose()
    assert SECRET not in str(caught.value)
    assert caught.value.code == "LoginResultType=0"
    assert not fake.calls[QUERY]


async def test_a_save_whose_answer_is_lost_is_ambiguous(fake: FakeK3) -> None:
    fake.on(SAVE, httpx.ReadTimeout("late"))
    client = erp()
    try:
        with pytest.raises(AmbiguousError):
            await client.save_receipt(receipt())
        fake.on(SAVE, httpx.Response(200, content=b"<html>gateway</html>"))
        with pytest.raises(AmbiguousError):
            await client.save_receipt(receipt())
    finally:
        await client.aclose()
    assert len(fake.calls[SAVE]) == 2, "an ambiguous save was retried by the transport"


async def test_find_document_asks_by_bill_number(fake: FakeK3) -> None:
    fake.on(QUERY, [], [["300001", "tmall-flagship-123", "C"]], "not rows")
    client = erp()
    try:
        assert await client.find_document(ErpDocumentKind.SALES_OUTBOUND, "O'Brien-1") is None
        found = await client.find_document(ErpDocumentKind.SALES_OUTBOUND, "tmall-flagship-123")
        with pytest.raises(BadPayload):
            await client.find_document(ErpDocumentKind.RECEIPT, "x")
    finally:
        await client.aclose()
    assert found == ErpDocument("tmall-flagship-123", "300001", "C")
    first = json.loads(fake.calls[QUERY][0].content)["data"]
    assert first["FormId"] == "SAL_OUTSTOCK" and first["FilterString"] == "FBillNo='O''Brien-1'"


async def test_documents_are_saved_audited_and_linked(fake: FakeK3) -> None:
    fake.on(SAVE, status(True))
    client = erp_for(config(), clock=clock(), policy=NO_JITTER)
    try:
        await client.save_receipt(receipt())
        await client.save_sales_outbound(sales())
    finally:
        await client.aclose()
    stock_in, outbound = (json.loads(r.content) for r in fake.calls[SAVE])
    assert stock_in["formid"] == "STK_InStock"
    assert stock_in["data"]["IsAutoSubmitAndAudit"] is True
    model = stock_in["data"]["Model"]
    assert model["FBillNo"] == "CGDD000001-R1" and model["FDate"] == "2026-11-20 10:00:00"
    assert model["FSupplierId"] == {"FNumber": "VEN00001"}
    (entry,) = model["FInStockEntry"]
    assert entry["FRealQty"] == 3 and entry["FStockId"] == {"FNumber": "CK-WH-EAST"}
    (link,) = entry["FInStockEntry_Link"]
    assert link["FInStockEntry_Link_FRuleId"] == "PUR_PurchaseOrder-STK_InStock"
    assert (link["FInStockEntry_Link_FSBillId"], link["FInStockEntry_Link_FSId"]) == (
        "100001",
        "200001",
    )
    assert outbound["formid"] == "SAL_OUTSTOCK"
    sale = outbound["data"]["Model"]
    assert sale["FCustomerID"] == {"FNumber": "CUST-TMALL"} and sale["FNote"] == "123"
    assert sale["FEntity"][0]["FTaxPrice"] == 19.9


@pytest.mark.parametrize(("found_status", "steps"), [("A", [SUBMIT, AUDIT]), ("B", [AUDIT])])
async def test_an_unaudited_document_is_submitted_and_audited(
    fake: FakeK3, found_status: str, steps: list[str]
) -> None:
    fake.on(SUBMIT, status(True))
    fake.on(AUDIT, status(True))
    client = erp()
    try:
        found = ErpDocument(number="tmall-flagship-123", erp_id="100123", status=found_status)
        audited = await client.audit_document(ErpDocumentKind.SALES_OUTBOUND, found)
    finally:
        await client.aclose()
    assert audited.status == "C"
    sent = [service for service in (SUBMIT, AUDIT) for _ in fake.calls[service]]
    assert sent == steps
    for service in steps:
        body = json.loads(fake.calls[service][0].content)
        assert body == {
            "formid": "SAL_OUTSTOCK",
            "data": {"CreateOrgId": 0, "Numbers": ["tmall-flagship-123"], "Ids": ""},
        }
