"""QimenWms and QimenCallbacks against a stateful fake Qimen router (respx, strict, fixed clock)."""

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
import respx
from pydantic import SecretStr

from config.settings import SenderConfig, WarehouseConfig
from connectors.base import (
    CancelOutcome,
    DeliveryLine,
    DeliveryOrderRequest,
    InboundConfirm,
    InboundLine,
    ShipmentConfirm,
    StockChange,
    WmsOrderState,
    WmsOrderStatus,
)
from connectors.errors import (
    AmbiguousError,
    AuthError,
    BadPayload,
    RejectedError,
    TransientError,
)
from connectors.qimen import (
    QimenCallbacks,
    QimenSigner,
    QimenWms,
    _text,
    build_xml,
    qimen_sign,
    read_xml,
    xml_text,
)
from connectors.registry import wms_callbacks_for, wms_for
from models.domain import Address, Package, Shipment
from tests.connectors import FIXTURES, NO_JITTER, NOW_CST_TEXT, Sleeps, clock

QIMEN_URL = "https://qimen.test.invalid/router/qimen/service"
WMS_KEY = "23456789"
WMS_SECRET = "qimen-s3cr3t-warehouse-9"
CUSTOMER = "CUST-01"
OWNER = "OWNER-1"
CREATE = "taobao.qimen.deliveryorder.create"
QUERY = "taobao.qimen.deliveryorder.query"
CANCEL = "taobao.qimen.order.cancel"
INVENTORY = "taobao.qimen.inventory.query"
CODE = "tmall-flagship-1234567890123"


def warehouse(**changes: Any) -> WarehouseConfig:
    values: dict[str, Any] = {
        "code": "WH-EAST",
        "api_url": QIMEN_URL,
        "app_key": WMS_KEY,
        "app_secret": SecretStr(WMS_SECRET),
        "customer_id": CUSTOMER,
        "owner_code": OWNER,
        "default_carrier": "ZTO",
        "provinces": ["上海", "浙江"],
    }
    values.update(changes)
    return WarehouseConfig(**values)


def xml_fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def answer(flag: str = "success", code: str = "0", message: str = "", extra: str = "") -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><response>'
        f"<flag>{flag}</flag><code>{code}</code><message>{message}</message>{extra}</response>"
    )


def failure(code: str, message: str = "no") -> str:
    return answer("failure", code, message)


def found(status: str, code: str = CODE) -> str:
    return answer(
        extra=f"<deliveryOrder><deliveryOrderCode>{code}</deliveryOrderCode>"
        f"<deliveryOrderId>DO42</deliveryOrderId><status>{status}</status></deliveryOrder>"
    )


def md5_hex(text: str) -> str:
    """The signature computed by hand: upper-case hex MD5 of the UTF-8 text."""
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def fields(element: ET.Element | None) -> dict[str, str]:
    """The leaf children of an element as {tag: text}."""
    assert element is not None
    return {child.tag: child.text or "" for child in element if not len(child)}


Handler = Callable[[dict[str, str], ET.Element], Any]


class FakeQimen:
    """A stateful fake Qimen router behind one strict respx route: dispatches on the query's
    `method`, records (query, parsed body), fails on any method it was not told about."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.handlers: dict[str, list[Handler]] = {}
        self.calls: list[tuple[dict[str, str], ET.Element]] = []
        self.requests: list[httpx.Request] = []
        self.route = router.post(url__startswith=QIMEN_URL).mock(side_effect=self._dispatch)

    def on(self, method: str, *answers: Any) -> None:
        """Answer with these in turn (the last repeats): XML text, an `httpx.Response`, an
        exception to raise, or a callable of (query, body)."""
        self.handlers[method] = [a if callable(a) else _const(a) for a in answers]

    def called(self, method: str) -> list[tuple[dict[str, str], ET.Element]]:
        return [c for c in self.calls if c[0].get("method") == method]

    def _dispatch(self, request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        method = query.get("method", "")
        assert method in self.handlers, f"unexpected call to {method!r}"
        index = len(self.called(method))
        body = ET.fromstring(request.content)  # our own request: trusted here
        self.calls.append((query, body))
        self.requests.append(request)
        answers = self.handlers[method]
        result = answers[min(index, len(answers) - 1)](query, body)
        if isinstance(result, httpx.Response):
            return result
        return httpx.Response(
            200, content=result.encode("utf-8"), headers={"Content-Type": "text/xml"}
        )


def _const(value: Any) -> Handler:
    def handler(_query: dict[str, str], _body: ET.Element) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value

    return handler


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def qimen(router: respx.MockRouter) -> FakeQimen:
    return FakeQimen(router)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def wms(router: respx.MockRouter, sleeps: Sleeps) -> AsyncIterator[QimenWms]:
    connector = QimenWms(
        warehouse(),
        clock=clock(),
        policy=NO_JITTER,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
    )
    yield connector
    await connector.aclose()


def order_request(**changes: Any) -> DeliveryOrderRequest:
    values: dict[str, Any] = {
        "code": CODE,
        "shop": "tmall-flagship",
        "platform": "tmall",
        "platform_order_id": "1234567890123",
        "carrier": "SF",
        "created": datetime(2026, 11, 20, 1, 0, 5, tzinfo=UTC),
        "paid": datetime(2026, 11, 20, 1, 2, 0, tzinfo=UTC),
        "buyer_nick": "买家小王",
        "receiver": Address(
            name="王小明",
            mobile="138****0000",
            province="浙江",
            city="杭州市",
            district="西湖区",
            town="文新街道",
            detail="文一西路 1 号 <A&B> 座",
            oaid="OAID-9",
        ),
        "lines": (
            DeliveryLine(1, "SKU-1", 2, Decimal("99.5"), "1234567890123", "1234567890124"),
            DeliveryLine(2, "SKU-2", 1, Decimal("10"), "1234567890123"),
        ),
        "total": Decimal("209.00"),
        "payment": Decimal("199.00"),
        "post_fee": Decimal("0"),
        "buyer_remark": "请尽快发货",
    }
    values.update(changes)
    return DeliveryOrderRequest(**values)


# --- the signature -------------------------------------------------------------------------

SIGNED_QUERY = {
    "method": "taobao.qimen.inventory.query",
    "app_key": "23456789",
    "timestamp": "2016-07-04 11:50:11",
    "v": "2.0",
    "format": "xml",
    "sign_method": "md5",
    "customerId": "BL0133",
    "session": "",
    "sign": "OLD",
}
SIGNED_BODY = (
    "<request><criteriaList><criteria><warehouseCode>WH01</warehouseCode>"
    "<itemCode>浙-1</itemCode></criteria></criteriaList></request>"
)
# Sorted by key, empty values and `sign` left out, then the body: written out by hand.
CANONICAL = (
    "app_key23456789customerIdBL0133formatxmlmethodtaobao.qimen.inventory.query"
    "sign_methodmd5timestamp2016-07-04 11:50:11v2.0" + SIGNED_BODY
)


def test_signature_known_answer() -> None:
    assert qimen_sign(SIGNED_QUERY, SIGNED_BODY, "sec") == md5_hex(f"sec{CANONICAL}sec")


async def test_signer_puts_system_params_in_the_query_and_signs_query_and_body() -> None:
    signer = QimenSigner(
        app_key=WMS_KEY, app_secret=SecretStr(WMS_SECRET), customer_id=CUSTOMER, clock=clock()
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    body = SIGNED_BODY.encode()
    async with httpx.AsyncClient(auth=signer, transport=httpx.MockTransport(handler)) as client:
        await client.post(QIMEN_URL, params={"method": INVENTORY}, content=body)
    [request] = seen
    query = dict(request.url.params)
    assert request.content == body
    unsigned = {k: v for k, v in query.items() if k != "sign"}
    assert unsigned == {
        "method": INVENTORY,
        "app_key": WMS_KEY,
        "timestamp": NOW_CST_TEXT,
        "v": "2.0",
        "format": "xml",
        "sign_method": "md5",
        "customerId": CUSTOMER,
    }
    canonical = "".join(f"{k}{v}" for k, v in sorted(unsigned.items())) + SIGNED_BODY
    assert query["sign"] == md5_hex(f"{WMS_SECRET}{canonical}{WMS_SECRET}")
    assert WMS_SECRET not in repr(signer)


# --- create ----------------------------------------------------------------------------------


async def test_create_sends_the_configured_sender(
    qimen: FakeQimen, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    sender = SenderConfig(
        name="杭州东仓",
        mobile="0571-88880000",
        province="浙江",
        city="杭州市",
        detail="余杭区仓前街道1号",
    )
    connector = QimenWms(
        warehouse(sender=sender),
        clock=clock(),
        policy=NO_JITTER,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
    )
    qimen.on(CREATE, answer(extra="<deliveryOrderId>DO1</deliveryOrderId>"))
    try:
        await connector.create_delivery_order(order_request())
    finally:
        await connector.aclose()
    [(_, body)] = qimen.calls
    assert fields(body.find("deliveryOrder/senderInfo")) == {
        "name": "杭州东仓",
        "mobile": "0571-88880000",
        "province": "浙江",
        "city": "杭州市",
        "detailAddress": "余杭区仓前街道1号",
    }


async def test_create_sends_every_required_field(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(CREATE, answer(extra="<deliveryOrderId>DO0000000042</deliveryOrderId>"))
    assert await wms.create_delivery_order(order_request()) == "DO0000000042"
    [request] = qimen.requests
    [(query, body)] = qimen.calls
    assert request.headers["Content-Type"] == "application/xml;charset=utf-8"
    assert set(query) == {
        "method", "app_key", "timestamp", "v", "format", "sign_method", "customerId", "sign",
    }  # fmt: skip
    assert query["method"] == CREATE and query["customerId"] == CUSTOMER
    raw = request.content.decode()
    assert raw.startswith('<?xml version="1.0" encoding="utf-8"?><request>')
    canonical = "".join(f"{k}{v}" for k, v in sorted(query.items()) if k != "sign") + raw
    assert query["sign"] == md5_hex(f"{WMS_SECRET}{canonical}{WMS_SECRET}")

    assert body.tag == "request"
    assert fields(body.find("deliveryOrder")) == {
        "deliveryOrderCode": CODE,
        "orderType": "JYCK",
        "warehouseCode": "WH-EAST",
        "sourcePlatformCode": "TB",
        "createTime": "2026-11-20 09:00:05",
        "placeOrderTime": "2026-11-20 09:00:05",
        "payTime": "2026-11-20 09:02:00",
        "operateTime": NOW_CST_TEXT,
        "shopNick": "tmall-flagship",
        "buyerNick": "买家小王",
        "totalAmount": "199.00",
        "itemAmount": "209.00",
        "freight": "0.00",
        "logisticsCode": "SF",
        "buyerMessage": "请尽快发货",
    }
    assert fields(body.find("deliveryOrder/senderInfo")) == {
        "name": "WH-EAST",
        "detailAddress": "WH-EAST",
    }
    assert fields(body.find("deliveryOrder/receiverInfo")) == {
        "name": "王小明",
        "mobile": "138****0000",
        "province": "浙江",
        "city": "杭州市",
        "area": "西湖区",
        "town": "文新街道",
        "detailAddress": "文一西路 1 号 <A&B> 座",
        "oaid": "OAID-9",
    }
    lines = [fields(line) for line in body.findall("orderLines/orderLine")]
    assert lines == [
        {
            "orderLineNo": "1",
            "sourceOrderCode": "1234567890123",
            "subSourceOrderCode": "1234567890124",
            "ownerCode": OWNER,
            "itemCode": "SKU-1",
            "inventoryType": "ZP",
            "planQty": "2",
            "actualPrice": "99.50",
        },
        {
            "orderLineNo": "2",
            "sourceOrderCode": "1234567890123",
            "ownerCode": OWNER,
            "itemCode": "SKU-2",
            "inventoryType": "ZP",
            "planQty": "1",
            "actualPrice": "10.00",
        },
    ]


async def test_create_for_jd_without_carrier_uses_the_default_and_owner_falls_back(
    router: respx.MockRouter, qimen: FakeQimen
) -> None:
    qimen.on(CREATE, answer(extra="<deliveryOrderId>DO1</deliveryOrderId>"))
    wms = wms_for(
        warehouse(owner_code=None),
        clock=clock(),
        transport=httpx.MockTransport(router.async_handler),
    )
    request = order_request(platform="jd", carrier="", paid=None, buyer_remark="")
    assert await wms.create_delivery_order(request) == "DO1"
    await wms.aclose()
    [(_, body)] = qimen.calls
    head = fields(body.find("deliveryOrder"))
    assert head["sourcePlatformCode"] == "JD" and head["logisticsCode"] == "ZTO"
    assert "payTime" not in head and "buyerMessage" not in head
    assert {line.findtext("ownerCode") for line in body.iter("orderLine")} == {CUSTOMER}


async def test_create_retry_code_is_transient_and_retried(
    qimen: FakeQimen, wms: QimenWms, sleeps: Sleeps
) -> None:
    qimen.on(
        CREATE,
        failure("SYSTEM_ERROR", "系统繁忙"),
        answer(extra="<deliveryOrderId>DO2</deliveryOrderId>"),
    )
    assert await wms.create_delivery_order(order_request()) == "DO2"
    assert len(qimen.calls) == 2 and sleeps.waits == [1.0]


async def test_create_retry_code_raises_transient_when_it_persists(
    qimen: FakeQimen, wms: QimenWms
) -> None:
    qimen.on(CREATE, failure("WMS_BUSY"))
    with pytest.raises(TransientError) as info:
        await wms.create_delivery_order(order_request())
    assert not isinstance(info.value, AmbiguousError)
    assert info.value.code == "WMS_BUSY" and len(qimen.calls) == NO_JITTER.max_attempts


async def test_retry_codes_come_from_the_config(router: respx.MockRouter, qimen: FakeQimen) -> None:
    qimen.on(CREATE, failure("SYSTEM_ERROR"))
    wms = QimenWms(
        warehouse(retry_codes=["LOCKED"]),
        clock=clock(),
        transport=httpx.MockTransport(router.async_handler),
    )
    with pytest.raises(RejectedError):
        await wms.create_delivery_order(order_request())
    await wms.aclose()


async def test_create_other_failure_is_rejected_with_its_code(
    qimen: FakeQimen, wms: QimenWms, sleeps: Sleeps
) -> None:
    qimen.on(CREATE, failure("ITEM_NOT_EXIST", "item SKU-1 does not exist"))
    with pytest.raises(RejectedError) as info:
        await wms.create_delivery_order(order_request())
    assert info.value.code == "ITEM_NOT_EXIST"
    assert info.value.platform == "qimen" and info.value.target == "WH-EAST"
    assert info.value.method == CREATE and "item SKU-1 does not exist" in str(info.value)
    assert len(qimen.calls) == 1 and sleeps.waits == []


async def test_bad_signature_is_an_auth_error_without_secrets(
    qimen: FakeQimen, wms: QimenWms
) -> None:
    qimen.on(CREATE, failure("sign-check-failure", f"Illegal request {WMS_SECRET}"))
    with pytest.raises(AuthError) as info:
        await wms.create_delivery_order(order_request())
    assert WMS_SECRET not in str(info.value) and len(qimen.calls) == 1


@pytest.mark.parametrize(
    "fault",
    [
        httpx.ReadTimeout("late"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message"),
        httpx.Response(502, text="Bad Gateway"),
        httpx.Response(500),
        httpx.Response(200, text="<html>gateway</html>"),
    ],
    ids=["read-timeout", "dropped-connection", "http-502", "http-500", "unreadable-200"],
)
async def test_create_that_may_have_arrived_is_ambiguous_and_not_retried(
    qimen: FakeQimen, wms: QimenWms, sleeps: Sleeps, fault: Any
) -> None:
    qimen.on(CREATE, fault)
    with pytest.raises(AmbiguousError) as info:
        await wms.create_delivery_order(order_request())
    assert info.value.method == CREATE
    assert len(qimen.calls) == 1 and sleeps.waits == []


async def test_create_never_sent_is_retried(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(
        CREATE,
        httpx.ConnectError("refused"),
        answer(extra="<deliveryOrderId>DO3</deliveryOrderId>"),
    )
    assert await wms.create_delivery_order(order_request()) == "DO3"
    assert len(qimen.calls) == 2


async def test_create_success_without_id_is_still_a_success(
    qimen: FakeQimen, wms: QimenWms
) -> None:
    qimen.on(CREATE, answer())
    assert await wms.create_delivery_order(order_request()) == ""


async def test_read_timeout_is_the_warehouse_timeout() -> None:
    short = QimenWms(warehouse(timeout=timedelta(seconds=3)), clock=clock())
    default = QimenWms(warehouse(), clock=clock())
    assert short.http._client.timeout.read == 3.0 and short.http._client.timeout.connect == 3.0
    assert default.http._client.timeout.read == 10.0
    await short.aclose()
    await default.aclose()


# --- query -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("NEW", WmsOrderState.OPEN),
        ("ACCEPT", WmsOrderState.OPEN),
        ("EXCEPTION", WmsOrderState.OPEN),
        ("REJECT", WmsOrderState.CANCELLED),
        ("CANCELEDFAIL", WmsOrderState.OPEN),
        ("DELIVERED", WmsOrderState.SHIPPED),
        ("PARTDELIVERED", WmsOrderState.SHIPPED),
        ("CANCELED", WmsOrderState.CANCELLED),
        ("CLOSED", WmsOrderState.CANCELLED),
    ],
)
async def test_query_maps_statuses(
    qimen: FakeQimen, wms: QimenWms, status: str, state: WmsOrderState
) -> None:
    qimen.on(QUERY, found(status))
    assert await wms.query_delivery_order(CODE) == WmsOrderStatus(state, "DO42", status)


async def test_query_sends_order_warehouse_and_owner(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(QUERY, xml_fixture("qimen_deliveryorder_query.xml"))
    status = await wms.query_delivery_order(CODE)
    assert status == WmsOrderStatus(WmsOrderState.SHIPPED, "DO0000000042", "DELIVERED")
    [(query, body)] = qimen.calls
    assert query["method"] == QUERY
    assert fields(body) == {"warehouseCode": "WH-EAST", "ownerCode": OWNER, "orderCode": CODE}


@pytest.mark.parametrize(
    "reply",
    [
        failure("ORDER_NOT_EXIST", "order does not exist"),
        answer(),
        answer(extra="<deliveryOrder/>"),
    ],
    ids=["order-not-exist", "no-delivery-order", "empty-delivery-order"],
)
async def test_query_of_an_unknown_order_is_not_found(
    qimen: FakeQimen, wms: QimenWms, reply: str
) -> None:
    qimen.on(QUERY, reply)
    assert await wms.query_delivery_order(CODE) == WmsOrderStatus(WmsOrderState.NOT_FOUND)


async def test_query_is_retried_after_a_dropped_connection(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(QUERY, httpx.ReadTimeout("late"), httpx.Response(503), found("NEW"))
    assert (await wms.query_delivery_order(CODE)).state is WmsOrderState.OPEN
    assert len(qimen.calls) == 3


async def test_query_answering_another_order_is_bad_payload(
    qimen: FakeQimen, wms: QimenWms
) -> None:
    qimen.on(QUERY, found("NEW", code="someone-else"))
    with pytest.raises(BadPayload):
        await wms.query_delivery_order(CODE)


async def test_query_other_failure_is_rejected(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(QUERY, failure("PARAM_ERROR", "missing orderCode"))
    with pytest.raises(RejectedError):
        await wms.query_delivery_order(CODE)


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_sends_the_fields_and_succeeds(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(CANCEL, answer())
    assert await wms.cancel_delivery_order(CODE, "refunded") is CancelOutcome.CANCELLED
    [(query, body)] = qimen.calls
    assert query["method"] == CANCEL
    assert fields(body) == {
        "warehouseCode": "WH-EAST",
        "ownerCode": OWNER,
        "orderCode": CODE,
        "orderType": "JYCK",
        "cancelReason": "refunded",
    }


async def test_cancel_after_shipment_is_already_shipped(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(CANCEL, failure("ORDER_ALREADY_DELIVERED", "order has already shipped"))
    qimen.on(QUERY, found("DELIVERED"))
    assert await wms.cancel_delivery_order(CODE, "refunded") is CancelOutcome.ALREADY_SHIPPED
    assert [q["method"] for q, _ in qimen.calls] == [CANCEL, QUERY]


async def test_cancel_of_an_unknown_order_is_cancelled(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(CANCEL, failure("ORDER_NOT_EXIST"))
    qimen.on(QUERY, failure("ORDER_NOT_EXIST"))
    assert await wms.cancel_delivery_order(CODE, "refunded") is CancelOutcome.CANCELLED


async def test_ambiguous_cancel_is_settled_by_the_query(
    qimen: FakeQimen, wms: QimenWms, sleeps: Sleeps
) -> None:
    qimen.on(CANCEL, httpx.RemoteProtocolError("dropped"))
    qimen.on(QUERY, found("CANCELED"))
    assert await wms.cancel_delivery_order(CODE, "refunded") is CancelOutcome.CANCELLED
    assert len(qimen.called(CANCEL)) == 1 and sleeps.waits == []


async def test_cancel_refused_while_still_open_is_transient(
    qimen: FakeQimen, wms: QimenWms
) -> None:
    qimen.on(CANCEL, failure("ORDER_LOCKED", "picking in progress"))
    qimen.on(QUERY, found("ACCEPT"))
    with pytest.raises(TransientError) as info:
        await wms.cancel_delivery_order(CODE, "refunded")
    assert not isinstance(info.value, AmbiguousError)
    assert info.value.code == "ORDER_LOCKED" and "ACCEPT" in str(info.value)


async def test_cancel_with_bad_credentials_is_not_queried(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(CANCEL, failure("invalid-app-key", "Invalid app key or customerId"))
    with pytest.raises(AuthError):
        await wms.cancel_delivery_order(CODE, "refunded")


# --- inventory -------------------------------------------------------------------------------


async def test_inventory_is_on_hand_sound_stock(qimen: FakeQimen, wms: QimenWms) -> None:
    qimen.on(INVENTORY, xml_fixture("qimen_inventory_query.xml"))
    got = await wms.inventory(["SKU-1", "SKU-2", "SKU-9", "SKU-1"])
    assert got == {"SKU-1": 15, "SKU-2": 2}  # (7 + 3) + (5 + 0) over ZP batches; CC left out
    [(query, body)] = qimen.calls
    assert query["method"] == INVENTORY
    assert [fields(c) for c in body.findall("criteriaList/criteria")] == [
        {"warehouseCode": "WH-EAST", "ownerCode": OWNER, "itemCode": sku, "inventoryType": "ZP"}
        for sku in ("SKU-1", "SKU-2", "SKU-9")
    ]


async def test_inventory_asks_at_most_100_items_per_call(qimen: FakeQimen, wms: QimenWms) -> None:
    def echo(_query: dict[str, str], body: ET.Element) -> str:
        items = "".join(
            f"<item><itemCode>{c.findtext('itemCode')}</itemCode><inventoryType>ZP</inventoryType>"
            "<quantity>1</quantity><lockQuantity>1</lockQuantity></item>"
            for c in body.iter("criteria")
        )
        return answer(extra=f"<items>{items}</items>")

    qimen.on(INVENTORY, echo)
    skus = [f"SKU-{n:03d}" for n in range(250)]
    got = await wms.inventory(skus)
    assert got == dict.fromkeys(skus, 2)
    assert [len(body.findall("criteriaList/criteria")) for _, body in qimen.calls] == [100, 100, 50]


async def test_inventory_of_nothing_asks_nothing(wms: QimenWms) -> None:
    assert await wms.inventory([]) == {}


async def test_inventory_with_a_non_numeric_quantity_is_bad_payload(
    qimen: FakeQimen, wms: QimenWms
) -> None:
    qimen.on(
        INVENTORY,
        answer(
            extra="<items><item><itemCode>SKU-1</itemCode><quantity>lots</quantity></item></items>"
        ),
    )
    with pytest.raises(BadPayload):
        await wms.inventory(["SKU-1"])


# --- XML safety ------------------------------------------------------------------------------

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    "<{root}><flag>success</flag><deliveryOrder><deliveryOrderCode>&lol3;</deliveryOrderCode>"
    "</deliveryOrder></{root}>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<{root}><flag>success</flag><message>&x;</message></{root}>"
)


@pytest.mark.parametrize("template", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
async def test_an_answer_with_entities_is_bad_payload_not_expanded(
    qimen: FakeQimen, wms: QimenWms, template: str
) -> None:
    qimen.on(QUERY, template.format(root="response"))
    with pytest.raises(BadPayload) as info:
        await wms.query_delivery_order(CODE)
    assert "lol" not in str(info.value) and "root:" not in str(info.value)
    assert len(qimen.calls) == 1


@pytest.mark.parametrize("template", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
def test_a_callback_with_entities_is_bad_payload(template: str) -> None:
    body = template.format(root="request").encode()
    with pytest.raises(BadPayload):
        QimenCallbacks(warehouse()).parse(callback_query(CONFIRM_METHOD, body), body)


# --- callbacks -------------------------------------------------------------------------------

CONFIRM_METHOD = "taobao.qimen.deliveryorder.confirm"
STOCK_METHOD = "taobao.qimen.stockchange.report"
ENTRY_METHOD = "taobao.qimen.entryorder.confirm"


def callback_query(
    method: str, body: bytes, *, secret: str = WMS_SECRET, **changes: str
) -> dict[str, str]:
    """What a WMS sends in the query string, signed by hand (not with the code under test)."""
    query = {
        "method": method,
        "app_key": WMS_KEY,
        "timestamp": "2026-11-20 15:31:02",
        "v": "2.0",
        "format": "xml",
        "sign_method": "md5",
        "customerId": CUSTOMER,
        **changes,
    }
    canonical = "".join(f"{k}{v}" for k, v in sorted(query.items()) if v) + body.decode()
    query["sign"] = md5_hex(f"{secret}{canonical}{secret}")
    return query


def test_parse_delivery_order_confirm() -> None:
    body = xml_fixture("qimen_deliveryorder_confirm.xml").encode()
    callbacks = QimenCallbacks(warehouse())
    confirm = callbacks.parse(callback_query(CONFIRM_METHOD, body), body)
    assert confirm == ShipmentConfirm(
        shipment=Shipment(
            delivery_order_code=CODE,
            warehouse="WH-EAST",
            carrier="SF",
            waybill="SF1234567890123",
            weight_kg=Decimal("1.750"),
            packages=(
                Package(
                    carrier="SF",
                    waybill="SF1234567890123",
                    weight_kg=Decimal("1.250"),
                    items=(("SKU-1", 2),),
                ),
                Package(
                    carrier="SF",
                    waybill="SF1234567890124",
                    weight_kg=Decimal("0.5"),
                    items=(("SKU-2", 1),),
                ),
            ),
            shipped_at=datetime(2026, 11, 20, 7, 30, tzinfo=UTC),
            out_biz_code="OB0000000077",
        ),
        final=True,
        status="DELIVERED",
        shipped_lines=(("SKU-1", 2), ("SKU-2", 1)),
    )


@pytest.mark.parametrize("method", ["deliveryorder.confirm", "qimen.deliveryorder.confirm"])
def test_parse_accepts_short_method_names(method: str) -> None:
    body = xml_fixture("qimen_deliveryorder_confirm.xml").encode()
    confirm = QimenCallbacks(warehouse()).parse(callback_query(method, body), body)
    assert isinstance(confirm, ShipmentConfirm)


def test_intermediate_confirm_without_lines_uses_package_items_and_operate_time() -> None:
    body = (
        b"<request><deliveryOrder><deliveryOrderCode>C1</deliveryOrderCode>"
        b"<status>PARTDELIVERED</status><confirmType>1</confirmType>"
        b"<operateTime>2026-11-20 08:00:00</operateTime></deliveryOrder><packages><package>"
        b"<logisticsCode>ZTO</logisticsCode><expressCode>7300</expressCode><items>"
        b"<item><itemCode>A</itemCode><quantity>1</quantity></item>"
        b"<item><itemCode>A</itemCode><quantity>2</quantity></item>"
        b"</items></package></packages></request>"
    )
    confirm = QimenCallbacks(warehouse()).parse(callback_query(CONFIRM_METHOD, body), body)
    assert isinstance(confirm, ShipmentConfirm)
    assert confirm.final is False and confirm.shipped_lines == (("A", 3),)
    assert confirm.shipment.weight_kg is None
    assert confirm.shipment.shipped_at == datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    # No outBizCode (the spec needs one only for repeated confirms): a key of the order and its
    # waybills, so a repeat is recognised and another order's confirm is not taken for one.
    again = QimenCallbacks(warehouse()).parse(callback_query(CONFIRM_METHOD, body), body)
    assert isinstance(again, ShipmentConfirm)
    assert confirm.shipment.out_biz_code.startswith("C1|")
    assert again.shipment.out_biz_code == confirm.shipment.out_biz_code
    other = body.replace(b">C1<", b">C2<")
    third = QimenCallbacks(warehouse()).parse(callback_query(CONFIRM_METHOD, other), other)
    assert isinstance(third, ShipmentConfirm)
    assert third.shipment.out_biz_code != confirm.shipment.out_biz_code


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("REJECT", WmsOrderState.CANCELLED),
        ("CANCELED", WmsOrderState.CANCELLED),
        ("ACCEPT", WmsOrderState.OPEN),
        ("DELIVERED", WmsOrderState.SHIPPED),
    ],
)
def test_a_confirm_says_what_its_status_means(status: str, state: WmsOrderState) -> None:
    packages = (
        b"<packages><package><logisticsCode>ZTO</logisticsCode><expressCode>7300</expressCode>"
        b"</package></packages>"
        if state is WmsOrderState.SHIPPED
        else b""
    )
    body = (
        b"<request><deliveryOrder><deliveryOrderCode>C1</deliveryOrderCode><status>"
        + status.encode()
        + b"</status></deliveryOrder>"
        + packages
        + b"</request>"
    )
    confirm = QimenCallbacks(warehouse()).parse(callback_query(CONFIRM_METHOD, body), body)
    assert isinstance(confirm, ShipmentConfirm) and confirm.state is state


def test_parse_stock_change_report() -> None:
    body = xml_fixture("qimen_stockchange_report.xml").encode()
    changes = QimenCallbacks(warehouse()).parse(callback_query(STOCK_METHOD, body), body)
    assert changes == (
        StockChange("WH-EAST", "SC0000000201", "SKU-1", -2, "PD0000000101", "QTCK"),
        StockChange("WH-EAST", "SC0000000202", "SKU-2", 1, "THR0000000102", "XTRK"),
    )  # the CC (defective) line is not sound stock


def test_parse_entry_order_confirm() -> None:
    body = xml_fixture("qimen_entryorder_confirm.xml").encode()
    confirm = QimenCallbacks(warehouse()).parse(callback_query(ENTRY_METHOD, body), body)
    assert confirm == InboundConfirm(
        warehouse="WH-EAST",
        entry_order_code="CGDD000123",
        out_biz_code="IB0000000010",
        final=False,
        status="PARTFULFILLED",
        lines=(
            InboundLine("100101", "SKU-1", 10, 5, "ZP"),
            InboundLine("100102", "SKU-2", 4, 1, "CC"),
        ),
    )


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("taobao.qimen.returnorder.confirm", "<request/>"),
        ("", "<request/>"),
        (CONFIRM_METHOD, "not xml"),
        (CONFIRM_METHOD, "<response><flag>success</flag></response>"),
        (CONFIRM_METHOD, "<request><deliveryOrder><status>DELIVERED</status></deliveryOrder></request>"),
        (CONFIRM_METHOD, "<request><deliveryOrder><deliveryOrderCode>C</deliveryOrderCode><confirmType>1</confirmType></deliveryOrder></request>"),
        (CONFIRM_METHOD, xml_fixture("qimen_deliveryorder_confirm.xml").replace("WH-EAST", "WH-NORTH")),
        (CONFIRM_METHOD, xml_fixture("qimen_deliveryorder_confirm.xml").replace("<weight>0.5", "<weight>heavy")),
        (CONFIRM_METHOD, xml_fixture("qimen_deliveryorder_confirm.xml").replace("2026-11-20 15:30:00", "tomorrow")),
        (STOCK_METHOD, "<request><items><item><itemCode>A</itemCode><quantity>1</quantity></item></items></request>"),
        (STOCK_METHOD, "<request><items><item><outBizCode>S</outBizCode><itemCode>A</itemCode><quantity>1.5</quantity></item></items></request>"),
        (ENTRY_METHOD, "<request><orderLines/></request>"),
    ],
    ids=[
        "unknown-method", "no-method", "not-xml", "wrong-root", "no-code", "intermediate-no-packages",
        "other-warehouse", "bad-weight", "bad-time", "stock-no-outbiz", "stock-fraction", "no-entry",
    ],
)  # fmt: skip
def test_unreadable_callbacks_are_bad_payload(method: str, body: str) -> None:
    raw = body.encode()
    with pytest.raises(BadPayload) as info:
        QimenCallbacks(warehouse()).parse(callback_query(method, raw), raw)
    assert info.value.platform == "qimen" and info.value.target == "WH-EAST"


def test_verify_accepts_the_warehouse_signature() -> None:
    body = xml_fixture("qimen_deliveryorder_confirm.xml").encode()
    callbacks = wms_callbacks_for(warehouse())
    query = callback_query(CONFIRM_METHOD, body)
    assert callbacks.verify(query, body)
    assert callbacks.verify({**query, "sign": query["sign"].lower()}, body)


@pytest.mark.parametrize(
    "tamper",
    ["secret", "body", "app_key", "customer", "no-sign", "sign-method", "param", "not-utf8"],
)
def test_verify_rejects(tamper: str) -> None:
    body = xml_fixture("qimen_deliveryorder_confirm.xml").encode()
    query = callback_query(CONFIRM_METHOD, body)
    if tamper == "secret":
        query = callback_query(CONFIRM_METHOD, body, secret="wrong")
    elif tamper == "body":
        body = body.replace(b"SF1234567890123", b"SF0000000000000")
    elif tamper == "app_key":
        query = callback_query(CONFIRM_METHOD, body, app_key="99999999")
    elif tamper == "customer":
        query = callback_query(CONFIRM_METHOD, body, customerId="CUST-02")
    elif tamper == "no-sign":
        del query["sign"]
    elif tamper == "sign-method":
        query = callback_query(CONFIRM_METHOD, body, sign_method="hmac")
    elif tamper == "param":
        query["method"] = STOCK_METHOD
    elif tamper == "not-utf8":
        body = b"\xff" + body
    assert not QimenCallbacks(warehouse()).verify(query, body)


def test_answers_are_the_exact_qimen_xml() -> None:
    callbacks = QimenCallbacks(warehouse())
    assert callbacks.success() == (
        '<?xml version="1.0" encoding="utf-8"?><response><flag>success</flag><code>0</code>'
        "<message>success</message></response>",
        "application/xml;charset=utf-8",
    )
    assert callbacks.failure("STORE_FAILED", "库存 <busy> & retry") == (
        '<?xml version="1.0" encoding="utf-8"?><response><flag>failure</flag>'
        "<code>STORE_FAILED</code><message>库存 &lt;busy&gt; &amp; retry</message></response>",
        "application/xml;charset=utf-8",
    )


async def test_registry_builds_qimen() -> None:
    wms = wms_for(warehouse())
    assert isinstance(wms, QimenWms) and wms.warehouse == "WH-EAST"
    assert isinstance(wms_callbacks_for(warehouse()), QimenCallbacks)
    await wms.aclose()


def test_confirm_lines_without_item_codes_fall_back_to_the_parcels_items() -> None:
    """The spec marks no orderLine field required: lines naming only `orderLineNo`/`itemId`
    must not make the whole confirm unreadable (the WMS would resend it forever)."""
    body = (
        b"<request><deliveryOrder><deliveryOrderCode>C1</deliveryOrderCode>"
        b"<status>DELIVERED</status></deliveryOrder><packages><package>"
        b"<logisticsCode>ZTO</logisticsCode><expressCode>7300</expressCode><items>"
        b"<item><itemCode>A</itemCode><quantity>2</quantity></item></items></package></packages>"
        b"<orderLines><orderLine><orderLineNo>1</orderLineNo><itemId>9</itemId></orderLine>"
        b"</orderLines></request>"
    )
    confirm = QimenCallbacks(warehouse()).parse(callback_query(CONFIRM_METHOD, body), body)
    assert isinstance(confirm, ShipmentConfirm) and confirm.shipped_lines == (("A", 2),)


def test_characters_xml_cannot_carry_are_left_out_of_requests() -> None:
    element = build_xml("request", [("remark", "fragile\x0b please\x01 ✓🎁"), ("name", "王\x1f五")])
    parsed = read_xml(xml_text(element).encode(), "request")
    assert _text(parsed, "remark") == "fragile please ✓🎁" and _text(parsed, "name") == "王五"
