"""The Qimen WMS simulator over real HTTP on loopback, with a fake hub receiving its callbacks."""

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.faults import FaultInjector, FaultProfile
from sandbox.qimen import CONFIRM, ENTRY_CONFIRM, STOCK_REPORT, QimenWms, WarehouseSpec
from sandbox.signing import qimen_sign
from tests.loopback import serve_url, wait_for

CST = timezone(timedelta(hours=8))
WH = WarehouseSpec(
    code="WH-EAST",
    app_key="wms-key",
    app_secret="wms-secret",
    customer_id="OWNER1",
    stock={"SKU-1": 10, "SKU-2": 5, "SKU-0": 0},
    carriers=["SF", "ZTO"],
)


@dataclass
class FakeHub:
    """Receives Qimen callbacks, checks their signature, fails the first `fail_first` of them."""

    secrets: dict[str, str]
    fail_first: int = 0
    received: list[tuple[str, dict[str, str], str, bool]] = field(default_factory=list)
    """(warehouse, query, body, sign ok) of every call, failed ones included."""

    async def endpoint(self, request: Request) -> Response:
        warehouse = request.path_params["warehouse"]
        query = dict(request.query_params)
        body = (await request.body()).decode("utf-8")
        ok = qimen_sign(query, body, self.secrets[warehouse]) == query.get("sign")
        self.received.append((warehouse, query, body, ok))
        if len(self.received) <= self.fail_first:
            flag, code = "failure", "HUB_BUSY"
        else:
            flag, code = "success", "0"
        xml = f"<response><flag>{flag}</flag><code>{code}</code><message>m</message></response>"
        return Response(xml, media_type="text/xml")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/qimen/{warehouse}", self.endpoint, methods=["POST"])])

    def bodies(self, method: str) -> list[ET.Element]:
        return [
            SafeET.fromstring(body)
            for _, query, body, _ in self.received
            if query["method"] == method
        ]


@dataclass
class Env:
    wms: QimenWms
    url: str
    hub: FakeHub
    client: httpx.AsyncClient
    set_hub: Callable[[], None]

    async def call(
        self,
        method: str,
        body: str,
        *,
        secret: str = WH.app_secret,
        timestamp: str | None = None,
        wait: float = 5.0,
    ) -> ET.Element:
        query = {
            "method": method,
            "app_key": WH.app_key,
            "timestamp": timestamp or datetime.now(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "v": "2.0",
            "format": "xml",
            "sign_method": "md5",
            "customerId": WH.customer_id,
        }
        query["sign"] = qimen_sign(query, body, secret)
        response = await self.client.post(
            f"{self.url}/router/qimen/service",
            params=query,
            content=body.encode(),
            headers={"Content-Type": "text/xml;charset=utf-8"},
            timeout=wait,
        )
        assert response.status_code == 200, response.text
        root: ET.Element = SafeET.fromstring(response.content)
        return root


@asynccontextmanager
async def running(
    *,
    profile: FaultProfile | None = None,
    seed: int = 1,
    ship_delay: float = 0.05,
    fail_first: int = 0,
    hub_online: bool = True,
    **options: Any,
) -> AsyncIterator[Env]:
    hub = FakeHub({WH.code: WH.app_secret}, fail_first=fail_first)
    base: list[str | None] = [None]
    options.setdefault("adjust_every", None)
    options.setdefault("retry_backoff", (0.02, 0.1))
    wms = QimenWms(
        [WH],
        FaultInjector(profile or FaultProfile(), seed),
        ship_delay,
        lambda: base[0],
        **options,
    )
    await wms.start()
    # One server hosts both the WMS and the fake hub: half the start/stop cost per test.
    app = Starlette(routes=[*wms.routes(), *hub.app().routes])
    try:
        async with serve_url(app) as url, httpx.AsyncClient() as client:
            if hub_online:
                base[0] = url
            yield Env(wms, url, hub, client, lambda: base.__setitem__(0, url))
    finally:
        await wms.stop()


def create_body(
    code: str = "SHOP-1001", *, logistics: str = "SF", qty: int = 2, without: str = ""
) -> str:
    """A §4.2 create; `without` names one element to leave out."""
    head = {
        "deliveryOrderCode": code,
        "orderType": "JYCK",
        "warehouseCode": WH.code,
        "sourcePlatformCode": "TB",
        "createTime": "2026-11-20 10:00:00",
        "placeOrderTime": "2026-11-20 09:58:00",
        "payTime": "2026-11-20 09:59:00",
        "operateTime": "2026-11-20 10:00:00",
        "shopNick": "flagship",
        "logisticsCode": logistics,
    }
    receiver = {
        "name": "张三",
        "mobile": "13800000000",
        "province": "浙江",
        "city": "杭州市",
        "detailAddress": "西湖区 1 号",
    }
    sender = {**receiver, "name": "东仓", "detailAddress": "物流园 1 号"}
    line = {
        "orderLineNo": "1",
        "ownerCode": WH.customer_id,
        "itemCode": "SKU-1",
        "inventoryType": "ZP",
        "planQty": str(qty),
        "actualPrice": "99.00",
    }

    def xml(d: dict[str, str]) -> str:
        return "".join(f"<{k}>{v}</{k}>" for k, v in d.items() if k != without)

    return (
        f"<request><deliveryOrder>{xml(head)}<senderInfo>{xml(sender)}</senderInfo>"
        f"<receiverInfo>{xml(receiver)}</receiverInfo></deliveryOrder><orderLines><orderLine>{xml(line)}</orderLine></orderLines></request>"
    )


def cancel_body(code: str) -> str:
    return (
        f"<request><warehouseCode>{WH.code}</warehouseCode><ownerCode>{WH.customer_id}</ownerCode>"
        f"<orderCode>{code}</orderCode><orderType>JYCK</orderType>"
        "<cancelReason>refund</cancelReason></request>"
    )


def query_body(code: str) -> str:
    return (
        f"<request><orderCode>{code}</orderCode><warehouseCode>{WH.code}</warehouseCode>"
        f"<ownerCode>{WH.customer_id}</ownerCode></request>"
    )


def flag(root: ET.Element) -> tuple[str, str]:
    return root.findtext("flag") or "", root.findtext("code") or ""


# --- signature -----------------------------------------------------------------------------------


def test_known_answer_signature() -> None:
    query = {
        "method": "taobao.qimen.deliveryorder.query",
        "app_key": "testkey",
        "timestamp": "2026-11-20 10:00:00",
        "v": "2.0",
        "format": "xml",
        "sign_method": "md5",
        "customerId": "C1",
    }
    body = "<request><orderCode>A1</orderCode></request>"
    by_hand = hashlib.md5(
        b"secret"
        b"app_keytestkey"
        b"customerIdC1"
        b"formatxml"
        b"methodtaobao.qimen.deliveryorder.query"
        b"sign_methodmd5"
        b"timestamp2026-11-20 10:00:00"
        b"v2.0"
        b"<request><orderCode>A1</orderCode></request>"
        b"secret"
    ).hexdigest()
    assert by_hand.upper() == "39B87C8EECE1262E81DD9881DD8B8376"
    assert qimen_sign(query, body, "secret") == "39B87C8EECE1262E81DD9881DD8B8376"


async def test_signature_accepted_and_rejected() -> None:
    async with running() as env:
        ok = await env.call("taobao.qimen.deliveryorder.create", create_body())
        assert flag(ok) == ("success", "0")
        bad = await env.call("taobao.qimen.deliveryorder.create", create_body(), secret="nope")
        assert flag(bad) == ("failure", "sign-check-failure")
        assert bad.findtext("message") == "Illegal request"
        old = (datetime.now(CST) - timedelta(minutes=11)).strftime("%Y-%m-%d %H:%M:%S")
        late = await env.call("deliveryorder.create", create_body(), timestamp=old)
        assert flag(late) == ("failure", "invalid-timestamp")
        assert len(env.wms.creates) == 1


async def test_method_accepted_without_prefix() -> None:
    async with running() as env:
        for method in ("taobao.qimen.deliveryorder.create", "qimen.deliveryorder.create"):
            assert flag(await env.call(method, create_body()))[0] == "success"
        assert flag(await env.call("deliveryorder.create", create_body()))[0] == "success"
        assert flag(await env.call("taobao.qimen.nonsense", create_body()))[1] == "invalid-method"


# --- create, confirm, duplicates -----------------------------------------------------------------


async def test_create_confirm_is_signed_and_retried_until_success() -> None:
    async with running(fail_first=2) as env:
        answer = await env.call("taobao.qimen.deliveryorder.create", create_body(qty=2))
        assert flag(answer) == ("success", "0")
        order_id = answer.findtext("deliveryOrderId")
        assert answer.findtext("warehouseCode") == WH.code
        assert answer.findtext("logisticsCode") == "SF"
        await wait_for(lambda: len(env.wms.confirms_sent) == 1)

        calls = [r for r in env.hub.received if r[1]["method"] == CONFIRM]
        assert len(calls) == 3  # two failures, then success
        assert all(ok for *_, ok in calls)
        assert {r[0] for r in calls} == {WH.code}
        assert {r[2] for r in calls} == {calls[0][2]}  # same body (same outBizCode) each time
        q = calls[0][1]
        assert (q["app_key"], q["customerId"], q["v"], q["format"], q["sign_method"]) == (
            WH.app_key,
            WH.customer_id,
            "2.0",
            "xml",
            "md5",
        )
        confirm = SafeET.fromstring(calls[0][2])
        assert confirm.findtext("deliveryOrder/deliveryOrderCode") == "SHOP-1001"
        assert confirm.findtext("deliveryOrder/deliveryOrderId") == order_id
        assert confirm.findtext("deliveryOrder/status") == "DELIVERED"
        assert confirm.findtext("deliveryOrder/confirmType") == "0"
        assert confirm.findtext("deliveryOrder/orderType") == "JYCK"
        assert confirm.findtext("deliveryOrder/outBizCode")
        packages = confirm.findall("packages/package")
        assert 1 <= len(packages) <= 2
        for p in packages:
            assert p.findtext("logisticsCode") in WH.carriers
            weight = p.findtext("weight") or ""
            assert len(weight.split(".")[1]) == 3
        shipped = sum(int(i.findtext("quantity") or 0) for i in confirm.iter("item"))
        assert shipped == 2
        line = confirm.find("orderLines/orderLine")
        assert line is not None
        assert (
            line.findtext("itemCode"),
            line.findtext("planQty"),
            line.findtext("actualQty"),
        ) == (
            "SKU-1",
            "2",
            "2",
        )
        assert env.wms.stock(WH.code)["SKU-1"] == 8
        assert env.wms.locked(WH.code) == {}
        assert env.wms.confirms_sent[0].attempts == 3


async def test_duplicate_creates_are_recorded_and_shipped_twice() -> None:
    async with running() as env:
        for _ in range(2):
            answer = await env.call("taobao.qimen.deliveryorder.create", create_body("DUP-1"))
            assert flag(answer)[0] == "success"
        assert [o.code for o in env.wms.creates] == ["DUP-1", "DUP-1"]
        assert env.wms.creates[0].order_id != env.wms.creates[1].order_id
        await wait_for(lambda: len(env.wms.confirms_sent) == 2)
        assert len({c.out_biz_code for c in env.wms.confirms_sent}) == 2
        assert env.wms.stock(WH.code)["SKU-1"] == 6


async def test_create_param_errors_name_the_field() -> None:
    async with running() as env:
        for missing in ("shopNick", "logisticsCode", "deliveryOrderCode", "mobile", "actualPrice"):
            answer = await env.call("deliveryorder.create", create_body(without=missing))
            assert flag(answer) == ("failure", "PARAM_ERROR")
            assert missing in (answer.findtext("message") or "")
        unknown = create_body().replace("SKU-1", "SKU-404")
        assert flag(await env.call("deliveryorder.create", unknown))[1] == "ITEM_NOT_EXIST"
        bad_xml = await env.call("deliveryorder.create", "<request><oops></request>")
        assert flag(bad_xml) == ("failure", "PARAM_ERROR")
        assert env.wms.creates == []


async def test_out_of_stock_order_waits_until_stock_arrives() -> None:
    async with running(stock_retry=0.05) as env:
        body = create_body("NOSTOCK").replace("SKU-1", "SKU-0")
        assert flag(await env.call("deliveryorder.create", body))[0] == "success"
        await asyncio.sleep(0.15)
        assert env.wms.order(WH.code, "NOSTOCK").status == "ACCEPT"  # type: ignore[union-attr]
        await env.wms.report_stock_change(WH.code, "SKU-0", 5)
        await wait_for(lambda: len(env.wms.confirms_sent) == 1)
        assert env.wms.stock(WH.code)["SKU-0"] == 3


# --- cancel and query ----------------------------------------------------------------------------


async def test_cancel_before_and_after_shipping() -> None:
    async with running(ship_delay=0.3) as env:
        await env.call("deliveryorder.create", create_body("EARLY"))
        assert env.wms.locked(WH.code) == {"SKU-1": 2}
        assert (
            flag(await env.call("taobao.qimen.order.cancel", cancel_body("EARLY")))[0] == "success"
        )
        assert (
            flag(await env.call("taobao.qimen.order.cancel", cancel_body("EARLY")))[0] == "success"
        )
        assert env.wms.locked(WH.code) == {}

        await env.call("deliveryorder.create", create_body("LATE"))
        await wait_for(lambda: len(env.wms.confirms_sent) == 1)
        after = await env.call("taobao.qimen.order.cancel", cancel_body("LATE"))
        assert flag(after) == ("failure", "ORDER_ALREADY_DELIVERED")
        unknown = await env.call("taobao.qimen.order.cancel", cancel_body("NOPE"))
        assert flag(unknown) == ("failure", "ORDER_NOT_EXIST")

        # EARLY was due before LATE shipped, so it would have shipped by now
        assert [c.order_code for c in env.wms.confirms_sent] == ["LATE"]
        assert [(c.order_code, c.outcome) for c in env.wms.cancels] == [
            ("EARLY", "0"),
            ("EARLY", "0"),
            ("LATE", "ORDER_ALREADY_DELIVERED"),
            ("NOPE", "ORDER_NOT_EXIST"),
        ]


async def test_query_known_and_unknown() -> None:
    async with running(ship_delay=0.2) as env:
        await env.call("deliveryorder.create", create_body("Q-1"))
        known = await env.call("taobao.qimen.deliveryorder.query", query_body("Q-1"))
        assert flag(known) == ("success", "0")
        assert known.findtext("deliveryOrder/deliveryOrderCode") == "Q-1"
        assert known.findtext("deliveryOrder/status") == "NEW"
        assert known.findtext("deliveryOrder/deliveryOrderId") == env.wms.creates[0].order_id
        await wait_for(lambda: env.wms.creates[0].status == "DELIVERED")
        shipped = await env.call("taobao.qimen.deliveryorder.query", query_body("Q-1"))
        assert shipped.findtext("deliveryOrder/status") == "DELIVERED"
        assert shipped.findtext("packages/package/expressCode") == env.wms.creates[0].express_code
        unknown = await env.call("taobao.qimen.deliveryorder.query", query_body("Q-404"))
        assert flag(unknown) == ("failure", "ORDER_NOT_EXIST")


# --- stock ---------------------------------------------------------------------------------------


def inventory_body(*items: str) -> str:
    criteria = "".join(
        f"<criteria><warehouseCode>{WH.code}</warehouseCode><ownerCode>{WH.customer_id}</ownerCode>"
        f"<itemCode>{item}</itemCode><inventoryType>ZP</inventoryType></criteria>"
        for item in items
    )
    return f"<request><criteriaList>{criteria}</criteriaList></request>"


async def test_inventory_query() -> None:
    async with running(ship_delay=5) as env:
        await env.call("deliveryorder.create", create_body(qty=3))
        answer = await env.call(
            "taobao.qimen.inventory.query", inventory_body("SKU-1", "SKU-2", "SKU-404")
        )
        assert flag(answer) == ("success", "0")
        rows = {
            i.findtext("itemCode"): (i.findtext("quantity"), i.findtext("lockQuantity"))
            for i in answer.findall("items/item")
        }
        assert rows == {"SKU-1": ("7", "3"), "SKU-2": ("5", "0")}
        no_item = await env.call("taobao.qimen.inventory.query", inventory_body(""))
        assert flag(no_item) == ("failure", "PARAM_ERROR")
        too_many = await env.call("inventory.query", inventory_body(*["SKU-1"] * 101))
        assert flag(too_many) == ("failure", "PARAM_ERROR")


async def test_stock_change_report_is_signed_and_applied() -> None:
    async with running() as env:
        report = await env.wms.report_stock_change(WH.code, "SKU-2", -3)
        await wait_for(lambda: len(env.wms.stock_reports_sent) == 1)
        assert env.wms.stock(WH.code)["SKU-2"] == 2
        (root,) = env.hub.bodies(STOCK_REPORT)
        item = root.find("items/item")
        assert item is not None
        assert item.findtext("quantity") == "-3"
        assert item.findtext("itemCode") == "SKU-2"
        assert item.findtext("outBizCode") == report.out_biz_code
        assert item.findtext("ownerCode") == WH.customer_id
        assert all(ok for *_, ok in env.hub.received)


async def test_random_adjustments_are_reported() -> None:
    async with running(adjust_every=0.02, seed=3) as env:
        await wait_for(lambda: len(env.wms.stock_reports_sent) >= 3)
        await env.wms.stop()  # freeze stock and queue for the check below
        queued: dict[str, int] = {}
        for cb in env.wms.callbacks:
            for item in SafeET.fromstring(cb.body).iter("item"):
                code = item.findtext("itemCode") or ""
                queued[code] = queued.get(code, 0) + int(item.findtext("quantity") or 0)
        assert queued  # something really moved
        expected = {k: v + queued.get(k, 0) for k, v in WH.stock.items()}
        assert env.wms.stock(WH.code) == expected
        assert {b.findtext("items/item/orderType") for b in env.hub.bodies(STOCK_REPORT)} <= {
            "QTRK",
            "QTCK",
            "XTRK",
        }


async def test_entry_order_partial_then_final_confirm() -> None:
    body = (
        "<request><entryOrder><entryOrderCode>PO-1</entryOrderCode>"
        f"<ownerCode>{WH.customer_id}</ownerCode><warehouseCode>{WH.code}</warehouseCode>"
        "<orderType>CGRK</orderType><supplierCode>SUP1</supplierCode></entryOrder><orderLines>"
        f"<orderLine><orderLineNo>11</orderLineNo><ownerCode>{WH.customer_id}</ownerCode>"
        "<itemCode>SKU-2</itemCode><planQty>5</planQty></orderLine>"
        f"<orderLine><orderLineNo>12</orderLineNo><ownerCode>{WH.customer_id}</ownerCode>"
        "<itemCode>SKU-NEW</itemCode><planQty>4</planQty></orderLine>"
        "</orderLines></request>"
    )
    async with running(entry_split=1.0) as env:
        answer = await env.call("taobao.qimen.entryorder.create", body)
        assert flag(answer) == ("success", "0")
        assert answer.findtext("entryOrderId")
        await wait_for(lambda: len(env.wms.entry_confirms_sent) == 2)
        first, final = env.hub.bodies(ENTRY_CONFIRM)
        assert first.findtext("entryOrder/confirmType") == "1"
        assert first.findtext("entryOrder/status") == "PARTFULFILLED"
        assert final.findtext("entryOrder/confirmType") == "0"
        assert final.findtext("entryOrder/status") == "FULFILLED"
        codes = {c.findtext("entryOrder/outBizCode") for c in (first, final)}
        assert len(codes) == 2
        assert {c.findtext("entryOrder/entryOrderCode") for c in (first, final)} == {"PO-1"}
        received: dict[str, int] = {}
        for confirm in (first, final):
            for line in confirm.findall("orderLines/orderLine"):
                no = line.findtext("orderLineNo") or ""
                received[no] = received.get(no, 0) + int(line.findtext("actualQty") or 0)
        assert received == {"11": 5, "12": 4}
        assert env.wms.stock(WH.code)["SKU-2"] == 10
        assert env.wms.stock(WH.code)["SKU-NEW"] == 4
        assert env.wms.stock_reports_sent == []  # receipts are reported by their confirms only


# --- callback delivery ---------------------------------------------------------------------------


async def test_callbacks_wait_for_a_hub_and_survive_refused_connections() -> None:
    async with running(hub_online=False) as env:
        await env.call("deliveryorder.create", create_body("WAIT"))
        await wait_for(lambda: bool(env.wms.callbacks) and env.wms.callbacks[0].attempts >= 2)
        assert env.wms.callbacks[0].last_error == "no callback base yet"
        env.set_hub()
        await wait_for(lambda: len(env.wms.confirms_sent) == 1)

    refused: list[str | None] = ["http://127.0.0.1:9"]  # discard port: nothing listens
    wms = QimenWms(
        [WH],
        FaultInjector(FaultProfile(), 0),
        0.01,
        lambda: refused[0],
        adjust_every=None,
        retry_backoff=(0.02, 0.05),
    )
    await wms.start()
    try:
        await wms.report_stock_change(WH.code, "SKU-1", 1)
        await wait_for(lambda: wms.callbacks[0].attempts >= 3)
        assert not wms.callbacks[0].delivered
        assert "ConnectError" in wms.callbacks[0].last_error
    finally:
        await wms.stop()


# --- faults --------------------------------------------------------------------------------------


async def test_transient_fault_answers_system_error_and_records_nothing() -> None:
    async with running(profile=FaultProfile(transient=1.0)) as env:
        answer = await env.call("deliveryorder.create", create_body())
        assert flag(answer) == ("failure", "SYSTEM_ERROR")
        assert env.wms.creates == []


async def test_http_5xx_fault() -> None:
    async with running(profile=FaultProfile(http_5xx=1.0)) as env:
        response = await env.client.post(f"{env.url}/router/qimen/service", content=b"x")
        assert response.status_code in (502, 503)
        assert "<response>" not in response.text
        assert env.wms.creates == []


async def test_slow_fault() -> None:
    async with running(profile=FaultProfile(slow=1.0, slow_seconds=0.3)) as env:
        started = time.monotonic()
        answer = await env.call("deliveryorder.create", create_body())
        assert time.monotonic() - started >= 0.3
        assert flag(answer)[0] == "success"


async def test_ambiguous_drop_records_the_create() -> None:
    profile = FaultProfile(ambiguous=1.0)
    async with running(profile=profile, ambiguous_mode="drop") as env:
        with pytest.raises(httpx.RemoteProtocolError):
            await env.call("deliveryorder.create", create_body("AMB-1"))
        assert [(o.code, o.ambiguous) for o in env.wms.creates] == [("AMB-1", "drop")]
        # the hub's way out: ask before re-sending
        known = await env.call("deliveryorder.query", query_body("AMB-1"))
        assert flag(known)[0] == "success"
        await wait_for(lambda: len(env.wms.confirms_sent) == 1)


async def test_ambiguous_late_answer_records_create_and_cancel() -> None:
    profile = FaultProfile(ambiguous=1.0, ambiguous_delay=0.4)
    async with running(profile=profile, ambiguous_mode="late", ship_delay=5) as env:
        with pytest.raises(httpx.ReadTimeout):
            await env.call("deliveryorder.create", create_body("AMB-2"), wait=0.1)
        assert [(o.code, o.ambiguous) for o in env.wms.creates] == [("AMB-2", "late")]
        started = time.monotonic()
        answer = await env.call("order.cancel", cancel_body("AMB-2"))
        assert time.monotonic() - started >= 0.4
        assert flag(answer)[0] == "success"
        assert env.wms.creates[0].status == "CANCELED"
        assert env.wms.cancels[0].ambiguous == "late"


async def test_duplicate_callback_fault_sends_same_confirm_twice() -> None:
    async with running(profile=FaultProfile(duplicate_callbacks=1.0)) as env:
        await env.call("deliveryorder.create", create_body("TWICE"))
        await wait_for(lambda: len(env.wms.confirms_sent) == 2)
        bodies = env.hub.bodies(CONFIRM)
        assert len(bodies) == 2
        assert len({b.findtext("deliveryOrder/outBizCode") for b in bodies}) == 1
        assert [c.duplicate for c in env.wms.confirms_sent] == [False, True]
        assert len(env.wms.creates) == 1


# --- determinism ---------------------------------------------------------------------------------


async def _shipments(seed: int) -> list[tuple[str, str, tuple[str, ...]]]:
    async with running(seed=seed) as env:
        for n in range(5):
            await env.call("deliveryorder.create", create_body(f"D-{n}", logistics="ZTO", qty=2))
        await wait_for(lambda: len(env.wms.confirms_sent) == 5)
        return [
            (o.code, o.carrier, tuple(f"{p.express_code}/{p.weight}" for p in o.packages))
            for o in env.wms.creates
        ]


async def test_same_seed_same_shipments() -> None:
    first = await _shipments(seed=42)
    assert first == await _shipments(seed=42)
    assert first != await _shipments(seed=43)
    waybills = [p.split("/")[0] for _, _, packages in first for p in packages]
    assert all(w.startswith(("SF", "7")) for w in waybills)


def test_snapshot_is_json() -> None:
    wms = QimenWms([WH], FaultInjector(FaultProfile(), 0), 1.0, lambda: None)
    query = {
        "method": "deliveryorder.create",
        "app_key": WH.app_key,
        "timestamp": datetime.now(CST).strftime("%Y-%m-%d %H:%M:%S"),
        "customerId": WH.customer_id,
    }
    query["sign"] = qimen_sign(query, create_body(), WH.app_secret)
    wms.handle(query, create_body())
    snap = json.loads(json.dumps(wms.snapshot()))
    assert snap["creates"][0]["deliveryOrderCode"] == "SHOP-1001"
    assert snap["warehouses"][WH.code]["locked"] == {"SKU-1": 2}
