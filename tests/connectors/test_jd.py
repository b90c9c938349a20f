"""JdMarketplace against a stateful fake JOS router (respx, strict routing, fixed clock)."""

import copy
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx

from connectors.base import Listing, ShipRequest, StockUpdate
from connectors.errors import (
    AmbiguousError,
    AuthError,
    BadPayload,
    RateLimited,
    RejectedError,
)
from connectors.jd import JdMarketplace, to_order
from models.domain import OrderStatus, RefundState
from tests.connectors import (
    APP_KEY,
    APP_SECRET,
    JD_URL,
    NO_JITTER,
    NOW,
    NOW_CST_TEXT,
    TOKEN,
    FakePlatform,
    Sleeps,
    clock,
    fixture,
    shop,
)

SEARCH = "jingdong.pop.order.search"
SHIPMENT = "jingdong.pop.order.shipment"
STOCK = "jingdong.stock.write.updateSkuStock"
SKUS = "jingdong.sku.read.searchSkuList"
START = datetime(2026, 11, 19, 16, 0, tzinfo=UTC)
END = datetime(2026, 11, 19, 16, 30, tzinfo=UTC)


def info(**changes: Any) -> dict[str, Any]:
    body = fixture("jd_order_search.json")["jingdong_pop_order_search_responce"]
    raw: dict[str, Any] = copy.deepcopy(body["searchorderinfo_result"]["orderInfoList"][0])
    raw.update(changes)
    return raw


def search(orders: Any, total: int | None = None, **api: Any) -> dict[str, Any]:
    api_result = {"success": True, "chineseErrCode": "", "englishErrCode": "", "numberCode": 0}
    api_result.update(api)
    count = len(orders) if isinstance(orders, list) else 1
    return {
        "jingdong_pop_order_search_responce": {
            "code": "0",
            "searchorderinfo_result": {
                "apiResult": api_result,
                "orderTotal": count if total is None else total,
                "orderInfoList": orders,
            },
        }
    }


SYSTEM_BUSY = search([], 0, success=False, chineseErrCode="系统繁忙，请稍后重试", numberCode=10000)


def shipment(success: bool, zh: str = "", en: str = "", code: str = "") -> dict[str, Any]:
    return {
        "jingdong_pop_order_shipment_responce": {
            "code": "0",
            "sopjosshipment_result": {
                "success": success,
                "chineseErrCode": zh,
                "englishErrCode": en,
                "errorCode": code,
            },
        }
    }


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def jos(router: respx.MockRouter) -> FakePlatform:
    return FakePlatform(router, JD_URL)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def jd(router: respx.MockRouter, sleeps: Sleeps) -> AsyncIterator[JdMarketplace]:
    market = JdMarketplace(
        shop("jd", sign_method="hmac", cap=60),  # JOS signs md5 whatever the shop says
        clock=clock(),
        policy=NO_JITTER,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
    )
    yield market
    await market.aclose()


# --- the request on the wire ---------------------------------------------------------------


async def test_search_sends_exactly_these_signed_form_fields(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    jos.on(SEARCH, search([], 0))
    await jd.search_orders(START, END, 2, 100)
    sent = jos.calls[0]
    assert set(sent) == {
        "method", "app_key", "access_token", "timestamp", "v", "sign_method",
        "360buy_param_json", "sign",
    }  # fmt: skip
    assert sent["method"] == SEARCH and sent["app_key"] == APP_KEY
    assert sent["access_token"] == TOKEN and sent["timestamp"] == NOW_CST_TEXT
    assert sent["v"] == "2.0" and sent["sign_method"] == "md5"
    params = json.loads(sent["360buy_param_json"])
    fields = params.pop("optional_fields").split(",")
    assert params == {
        "start_date": "2026-11-20 00:00:00",
        "end_date": "2026-11-20 00:30:00",
        "order_state": "WAIT_SELLER_STOCK_OUT,WAIT_GOODS_RECEIVE_CONFIRM,FINISHED_L,"
        "TRADE_CANCELED,LOCKED,POP_ORDER_PAUSE",
        "page": "2",
        "page_size": "100",
        "sortType": 1,
        "dateType": 0,
    }
    assert ", " not in sent["360buy_param_json"] and '": ' not in sent["360buy_param_json"]
    assert {"orderId", "orderState", "modified", "itemInfoList", "consigneeInfo"} <= set(fields)
    canonical = "".join(f"{k}{v}" for k, v in sorted(sent.items()) if k != "sign")
    expected = hashlib.md5(f"{APP_SECRET}{canonical}{APP_SECRET}".encode()).hexdigest().upper()
    assert sent["sign"] == expected


# --- translation ---------------------------------------------------------------------------


async def test_spec_example_translates(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SEARCH, fixture("jd_order_search.json"))
    result = await jd.search_orders(START, END, 1, 100)
    assert result.total == 1 and result.errors == ()
    [order] = result.orders
    assert order.platform_order_id == "230000000001" and order.shop == "jd-flagship"
    assert order.status is OrderStatus.PAID and order.platform_status == "WAIT_SELLER_STOCK_OUT"
    assert order.created == datetime(2024, 5, 1, 1, 0, tzinfo=UTC)
    assert order.paid_at == datetime(2024, 5, 1, 1, 1, tzinfo=UTC)
    assert order.modified == datetime(2024, 5, 1, 1, 2, tzinfo=UTC)
    assert order.total == Decimal("109.00") and order.payment == Decimal("99.00")
    assert order.discount == Decimal("10.00") and order.post_fee == Decimal("0.00")
    assert order.buyer_remark == "周末送" and order.seller_remark == "vip"
    assert order.receiver is not None and order.receiver.province == "北京"
    assert order.receiver.district == "朝阳区" and order.receiver.name == "李*"
    assert order.receiver.detail == "北京市朝阳区建国路1号"
    [line] = order.lines
    assert line.line_id == "100012345678" == line.platform_sku_id
    assert line.merchant_code == "SKU-1" and line.qty == 1 and line.platform_item_id
    assert line.price == Decimal("109.00") and line.payment == Decimal("99.00")
    assert line.refund_state is RefundState.NONE


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        ("WAIT_SELLER_STOCK_OUT", OrderStatus.PAID),
        ("WAIT_GOODS_RECEIVE_CONFIRM", OrderStatus.SHIPPED),
        ("FINISHED_L", OrderStatus.FINISHED),
        ("TRADE_CANCELED", OrderStatus.CANCELLED),
        ("LOCKED", OrderStatus.PAUSED),
        ("POP_ORDER_PAUSE", OrderStatus.PAUSED),
        ("PAUSE", OrderStatus.PAUSED),
    ],
)
def test_every_order_state(wire: str, status: OrderStatus) -> None:
    assert to_order(info(orderState=wire), shop="s").status is status


def test_repeated_sku_gets_distinct_line_ids_and_no_payment_time() -> None:
    item = info()["itemInfoList"][0]
    order = to_order(
        info(itemInfoList=[item, item | {"itemTotal": "2"}], paymentConfirmTime=""), shop="s"
    )
    assert [line.line_id for line in order.lines] == ["100012345678", "100012345678-2"]
    assert order.paid_at is None


async def test_malformed_orders_become_sync_errors_and_the_rest_comes_back(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    orders = [
        info(orderId="1"),
        info(orderId="2", orderState="WAIT_SEND_CODE"),
        info(orderId="3", orderPayment="n/a"),
        info(orderId="4", itemInfoList=[{"skuId": "9", "itemTotal": "x"}]),
        "garbage",
        info(orderId="5"),
    ]
    jos.on(SEARCH, search(orders, 6))
    result = await jd.search_orders(START, END, 1, 100)
    assert [o.platform_order_id for o in result.orders] == ["1", "5"]
    assert [e.key for e in result.errors] == ["2", "3", "4", ""]
    assert "WAIT_SEND_CODE" in result.errors[0].reason
    assert all(e.source == "jd-flagship" for e in result.errors)


async def test_a_single_order_object_where_a_list_is_expected(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    jos.on(SEARCH, search(info(), 1))
    assert len((await jd.search_orders(START, END, 1, 100)).orders) == 1


async def test_the_english_spelling_of_the_key_is_not_jd(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    body = fixture("jd_order_search.json")
    jos.on(SEARCH, {"jingdong_pop_order_search_response": body.popitem()[1]})
    with pytest.raises(BadPayload):
        await jd.search_orders(START, END, 1, 100)


# --- errors --------------------------------------------------------------------------------


async def test_system_error_in_api_result_is_retried(
    jd: JdMarketplace, jos: FakePlatform, sleeps: Sleeps
) -> None:
    jos.on(SEARCH, SYSTEM_BUSY, fixture("jd_order_search.json"))
    assert len((await jd.search_orders(START, END, 1, 100)).orders) == 1
    assert len(jos.calls) == 2 and sleeps.waits == [1.0]


async def test_business_failure_in_api_result_is_rejected(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    jos.on(SEARCH, search([], 0, success=False, chineseErrCode="参数错误: page", numberCode=10100))
    with pytest.raises(RejectedError) as caught:
        await jd.search_orders(START, END, 1, 100)
    assert caught.value.code == "10100" and "参数错误" in str(caught.value)
    assert len(jos.calls) == 1


async def test_nonzero_code_inside_the_answer_is_an_error(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    jos.on(SEARCH, {"jingdong_pop_order_search_responce": {"code": "19", "zh_desc": "token"}})
    with pytest.raises(AuthError):
        await jd.search_orders(START, END, 1, 100)


@pytest.mark.parametrize(
    "error",
    [
        fixture("jd_error_token.json"),
        {"error_response": {"code": "12", "zh_desc": "签名无效", "en_desc": "invalid signature"}},
    ],
    ids=["19-token", "12-signature"],
)
async def test_auth_failures_are_not_retried(
    jd: JdMarketplace, jos: FakePlatform, error: dict[str, Any]
) -> None:
    jos.on(SEARCH, error)
    with pytest.raises(AuthError) as caught:
        await jd.search_orders(START, END, 1, 100)
    assert len(jos.calls) == 1 and TOKEN not in str(caught.value)


async def test_http_503_with_retry_after_is_a_rate_limit(
    jd: JdMarketplace, jos: FakePlatform, sleeps: Sleeps
) -> None:
    jos.on(
        SEARCH,
        httpx.Response(503, headers={"Retry-After": "12"}, text="call limit"),
        search([], 0),
    )
    await jd.search_orders(START, END, 1, 100)
    assert sleeps.waits == [12.0]


async def test_ban_over_the_cap_is_raised(
    jd: JdMarketplace, jos: FakePlatform, sleeps: Sleeps
) -> None:
    jos.on(SEARCH, httpx.Response(503, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as caught:
        await jd.search_orders(START, END, 1, 100)
    assert caught.value.retry_after == 3600 and sleeps.waits == [] and len(jos.calls) == 1


async def test_plain_5xx_is_retried_for_reads(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SEARCH, httpx.Response(502), search([], 0))
    await jd.search_orders(START, END, 1, 100)
    assert len(jos.calls) == 2


async def test_other_gateway_errors_are_rejected(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SEARCH, {"error_response": {"code": "11", "zh_desc": "时间戳错误", "en_desc": "ts"}})
    with pytest.raises(RejectedError):
        await jd.search_orders(START, END, 1, 100)


# --- get_order, ship -----------------------------------------------------------------------

HINT = NOW - timedelta(hours=2)


async def test_get_order_searches_from_the_hint(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SEARCH, search([info(orderId="7"), info(orderId="230000000001")], 2))
    order = await jd.get_order("230000000001", modified_hint=HINT)
    assert order is not None and order.platform_order_id == "230000000001"
    params = json.loads(jos.calls[0]["360buy_param_json"])
    assert params["start_date"] == "2026-11-20 07:59:00"  # hint − 1 min, CST
    assert params["end_date"] == NOW_CST_TEXT and params["dateType"] == 0


async def test_get_order_without_a_hint_is_none(jd: JdMarketplace) -> None:
    assert await jd.get_order("230000000001") is None


async def test_get_order_walks_pages_and_windows_back_to_the_hint(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    jd.page_size = 2
    hint = NOW - timedelta(days=1, hours=1)
    jos.on(
        SEARCH,
        search([info(orderId="1"), info(orderId="2")], 3),
        search([info(orderId="3")], 3),
        search([info(orderId="4"), info(orderId="9")], 2),
    )
    order = await jd.get_order("9", modified_hint=hint)
    assert order is not None and order.platform_order_id == "9"
    windows = [json.loads(c["360buy_param_json"]) for c in jos.calls]
    assert [(w["page"], w["end_date"]) for w in windows] == [
        ("1", NOW_CST_TEXT),
        ("2", NOW_CST_TEXT),
        ("1", "2026-11-19 10:00:00"),
    ]
    assert windows[2]["start_date"] == "2026-11-19 08:59:00"


async def test_ship_sends_the_waybill(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SHIPMENT, shipment(True))
    result = await jd.ship(ShipRequest("230000000001", "SF", 467, "SF100"))
    assert result.already_shipped is False
    assert json.loads(jos.calls[0]["360buy_param_json"]) == {
        "orderId": "230000000001",
        "logiCoprId": "467",
        "logiNo": "SF100",
    }


async def test_ship_without_a_jd_carrier_id_is_rejected_without_a_call(jd: JdMarketplace) -> None:
    # No route is mocked: any request would fail the test (assert_all_mocked).
    with pytest.raises(RejectedError) as caught:
        await jd.ship(ShipRequest("1", "SF", None, "SF100"))
    assert "jd_id" in str(caught.value)


async def test_repeat_ship_shows_shipped_with_the_same_waybill(
    jd: JdMarketplace, jos: FakePlatform
) -> None:
    jos.on(SHIPMENT, fixture("jd_order_shipment_failed.json"))
    shipped = info(orderState="WAIT_GOODS_RECEIVE_CONFIRM", waybill="SF100")
    jos.on(SEARCH, search([shipped]))
    result = await jd.ship(ShipRequest("230000000001", "SF", 467, "SF100", modified_hint=HINT))
    assert result.already_shipped is True
    params = json.loads(jos.called(SEARCH)[0]["360buy_param_json"])
    assert params["start_date"] == "2026-11-20 07:59:00"


@pytest.mark.parametrize(
    ("state", "waybill"),
    [("WAIT_SELLER_STOCK_OUT", ""), ("WAIT_GOODS_RECEIVE_CONFIRM", "YT999"), ("LOCKED", "SF100")],
)
async def test_repeat_ship_not_shown_shipped_by_us_is_rejected(
    jd: JdMarketplace, jos: FakePlatform, state: str, waybill: str
) -> None:
    jos.on(SHIPMENT, shipment(False, "订单状态不允许出库", "not shippable", "10400002"))
    jos.on(SEARCH, search([info(orderState=state, waybill=waybill)]))
    with pytest.raises(RejectedError) as caught:
        await jd.ship(ShipRequest("230000000001", "SF", 467, "SF100", modified_hint=HINT))
    assert "订单状态不允许出库" in str(caught.value)


async def test_system_error_on_ship_is_ambiguous(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SHIPMENT, shipment(False, "系统繁忙，请稍后重试", "system error", "10000"))
    with pytest.raises(AmbiguousError):
        await jd.ship(ShipRequest("230000000001", "SF", 467, "SF100"))
    assert len(jos.calls) == 1


async def test_read_timeout_on_ship_is_ambiguous(jd: JdMarketplace, jos: FakePlatform) -> None:
    jos.on(SHIPMENT, httpx.ReadTimeout("late"))
    with pytest.raises(AmbiguousError):
        await jd.ship(ShipRequest("230000000001", "SF", 467, "SF100"))
    assert len(jos.calls) == 1


# --- listings and stock --------------------------------------------------------------------


async def test_listings_come_from_the_sku_search(jd: JdMarketplace, jos: FakePlatform) -> None:
    jd.sku_page_size = 2

    def page(rows: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"page": {"data": rows, "totalItem": 3, "pageNo": 1, "pageSize": 2}, "code": "0"}
        return {"jingdong_sku_read_searchSkuList_responce": body}

    jos.on(
        SKUS,
        page([
            {"skuId": 11, "wareId": 1, "outerId": "SKU-11", "stockNum": 5},
            {"skuId": 12, "wareId": 1, "outerId": "SKU-12", "stockNum": 0},
        ]),
        page([{"skuId": 21, "wareId": 2, "outerId": "SKU-21"}]),
    )  # fmt: skip
    found = await jd.listings()
    assert list(found) == [
        Listing("jd-flagship", "1", "11", "SKU-11", 5),
        Listing("jd-flagship", "1", "12", "SKU-12", 0),
        Listing("jd-flagship", "2", "21", "SKU-21", None),
    ]
    params = [json.loads(c["360buy_param_json"]) for c in jos.calls]
    assert [p["pageNo"] for p in params] == [1, 2]
    assert "outerId" in params[0]["field"] and params[0]["skuStatuValue"] == "1,2"


async def test_stock_is_set_per_sku(jd: JdMarketplace, jos: FakePlatform) -> None:
    ok = {"jingdong_stock_write_updateSkuStock_responce": {"code": "0", "success": True}}
    refused = {
        "jingdong_stock_write_updateSkuStock_responce": {
            "code": "0",
            "success": False,
            "chineseErrCode": "sku不存在",
            "englishErrCode": "sku does not exist",
            "numberCode": 10500001,
        }
    }
    jos.on(STOCK, ok, refused)
    updates = [
        StockUpdate(Listing("jd-flagship", "1", "11", "SKU-11"), 4),
        StockUpdate(Listing("jd-flagship", "1", "99", "SKU-99"), 1),
        StockUpdate(Listing("jd-flagship", "1", "", "SKU-X"), 1),
    ]
    result = await jd.update_stock(updates)
    assert [json.loads(c["360buy_param_json"]) for c in jos.calls] == [
        {"skuId": "11", "stockNum": 4},
        {"skuId": "99", "stockNum": 1},
    ]
    assert result.done == (updates[0],)
    assert [(u.listing.sku_id, "sku" in r) for u, r in result.failed] == [("99", True), ("", True)]


async def test_stock_timeout_is_ambiguous(
    jd: JdMarketplace, jos: FakePlatform, sleeps: Sleeps
) -> None:
    jos.on(STOCK, httpx.RemoteProtocolError("dropped"))
    with pytest.raises(AmbiguousError):
        await jd.update_stock([StockUpdate(Listing("jd-flagship", "1", "11", "A"), 4)])
    assert len(jos.calls) == 1 and sleeps.waits == []
