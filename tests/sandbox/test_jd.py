"""JD JOS simulator contract, over real HTTP on loopback (platforms.md §2, decisions.md JD)."""

import asyncio
import re
from datetime import timedelta
from typing import Any

from sandbox.faults import FaultProfile
from sandbox.server import Sandbox
from sandbox.signing import top_sign
from sandbox.world import cst_text
from tests.sandbox.conftest import JdClient, day_window, now_cst

SEARCH = "jingdong.pop.order.search"
SHIPMENT = "jingdong.pop.order.shipment"
STOCK = "jingdong.stock.write.updateSkuStock"
MONEY = re.compile(r"^\d+\.\d{2}$")


def error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error_response"}, body
    err: dict[str, Any] = body["error_response"]
    assert set(err) == {"code", "zh_desc", "en_desc"} and isinstance(err["code"], str)
    return err


def test_signature_known_answer_includes_the_param_json() -> None:
    params = {
        "360buy_param_json": '{"orderId":"230000000001"}',
        "access_token": "tok",
        "app_key": "AK",
        "method": SHIPMENT,
        "sign_method": "md5",
        "timestamp": "2026-11-20 08:00:00",
        "v": "2.0",
    }
    assert top_sign(params, "sec") == "35C9B742F6F682CC4893A5AB0199C674"  # by hand with hashlib


async def test_search_envelope_and_order_shape(jd: JdClient, sandbox: Sandbox) -> None:
    start, end = day_window()
    answer = await jd.call(SEARCH, {"start_date": cst_text(start), "end_date": cst_text(end)})
    response = answer["jingdong_pop_order_search_responce"]
    assert response["code"] == "0"
    result = response["searchorderinfo_result"]
    assert result["apiResult"] == {
        "success": True,
        "chineseErrCode": "",
        "englishErrCode": "",
        "numberCode": 0,
    }
    assert result["orderTotal"] > 0
    info = result["orderInfoList"][0]
    for key in (
        "orderTotalPrice",
        "orderSellerPrice",
        "orderPayment",
        "freightPrice",
        "sellerDiscount",
    ):
        assert MONEY.match(info[key]), key
    assert isinstance(info["orderId"], str)
    assert set(info["consigneeInfo"]) >= {
        "fullname",
        "mobile",
        "fullAddress",
        "province",
        "city",
        "county",
    }
    item = info["itemInfoList"][0]
    assert isinstance(item["skuId"], str) and isinstance(item["itemTotal"], str)
    assert MONEY.match(item["jdPrice"]) and item["outerSkuId"]
    open_order = next(
        o for o in result["orderInfoList"] if o["orderState"] == "WAIT_SELLER_STOCK_OUT"
    )
    assert open_order["orderEndTime"] == "0001-01-01 00:00:00"  # JD's "not finished"


async def test_search_sorts_desc_pages_and_matches_the_world(
    jd: JdClient, sandbox: Sandbox
) -> None:
    start, end = day_window()
    first = await jd.search(start, end, page="1", page_size="10", sortType="1")
    total = first["orderTotal"]
    seen = []
    for page in range(1, (total + 9) // 10 + 1):
        seen += (await jd.search(start, end, page=str(page), page_size="10", sortType="1"))[
            "orderInfoList"
        ]
    modified = [o["modified"] for o in seen]
    assert modified == sorted(modified, reverse=True)
    truth = {
        (o.id, o.status, cst_text(o.modified))
        for o in sandbox.world.orders("jd-flagship")
        if start <= o.modified <= end
    }
    assert {(o["orderId"], o["orderState"], o["modified"]) for o in seen} == truth
    assert all(o["orderState"] != "WAIT_BUYER_PAY" for o in seen)  # paid orders only


async def test_order_state_and_optional_fields_filter(jd: JdClient) -> None:
    start, end = day_window()
    result = await jd.search(
        start,
        end,
        order_state="WAIT_SELLER_STOCK_OUT",
        optional_fields="orderId,orderState,modified",
        page_size="100",
    )
    assert result["orderInfoList"]
    for info in result["orderInfoList"]:
        assert set(info) == {"orderId", "orderState", "modified"}
        assert info["orderState"] == "WAIT_SELLER_STOCK_OUT"


async def test_wrong_sign_is_12_wrong_token_19_stale_timestamp_11(jd: JdClient) -> None:
    start, end = day_window()
    business = {"start_date": cst_text(start), "end_date": cst_text(end)}
    assert error(await jd.call(SEARCH, business, secret="nope"))["code"] == "12"
    assert error(await jd.call(SEARCH, business, token="expired"))["code"] == "19"
    stale = cst_text(now_cst() + timedelta(minutes=11))
    assert error(await jd.call(SEARCH, business, timestamp=stale))["code"] == "11"


async def test_post_form_is_accepted_too(jd: JdClient) -> None:
    start, end = day_window()
    params = jd.params(SEARCH, {"start_date": cst_text(start), "end_date": cst_text(end)})
    response = await jd.http.post(jd.shop.api_url, data=params)
    assert response.json()["jingdong_pop_order_search_responce"]["code"] == "0"


async def test_bad_window_or_page_size_fail_in_api_result(jd: JdClient) -> None:
    _, end = day_window()
    too_long = await jd.search(end - timedelta(days=1, seconds=1), end)
    assert too_long["apiResult"]["success"] is False
    big_page = await jd.search(end - timedelta(hours=1), end, page_size="101")
    assert big_page["apiResult"]["success"] is False and big_page["orderInfoList"] == []


async def test_shipment_ships_once_and_a_repeat_fails(jd: JdClient, sandbox: Sandbox) -> None:
    order = next(
        o for o in sandbox.world.orders("jd-flagship") if o.status == "WAIT_SELLER_STOCK_OUT"
    )
    body = {"orderId": order.id, "logiCoprId": "467", "logiNo": "SF1000001"}
    first = await jd.call(SHIPMENT, body)
    result = first["jingdong_pop_order_shipment_responce"]
    assert result["code"] == "0" and result["sopjosshipment_result"]["success"] is True
    again = (await jd.call(SHIPMENT, body))["jingdong_pop_order_shipment_responce"]
    assert again["sopjosshipment_result"]["success"] is False
    shipped = sandbox.world.order("jd-flagship", order.order_id)
    assert (shipped.status, shipped.waybill) == ("WAIT_GOODS_RECEIVE_CONFIRM", "SF1000001")
    around = await jd.search(
        shipped.modified - timedelta(minutes=1), shipped.modified + timedelta(minutes=1)
    )
    listed = next(o for o in around["orderInfoList"] if o["orderId"] == order.id)
    assert (listed["orderState"], listed["waybill"]) == ("WAIT_GOODS_RECEIVE_CONFIRM", "SF1000001")
    assert [s["outcome"] for s in sandbox.jd.shipments] == ["shipped", "order already shipped"]


async def test_stock_update_is_applied_and_recorded(jd: JdClient, sandbox: Sandbox) -> None:
    listing = sandbox.world.shops["jd-flagship"].listings[3]
    answer = await jd.call(STOCK, {"skuId": str(listing.sku_id), "stockNum": "12"})
    assert answer["jingdong_stock_write_updateSkuStock_responce"] == {"code": "0", "success": True}
    assert listing.quantity == 12
    assert sandbox.jd.stock_updates == [
        {
            "shop": "jd-flagship",
            "skuId": str(listing.sku_id),
            "outerSkuId": listing.merchant_code,
            "stockNum": 12,
        }
    ]
    unknown = await jd.call(STOCK, {"skuId": "1", "stockNum": "1"})
    assert unknown["jingdong_stock_write_updateSkuStock_responce"]["success"] is False


async def test_transient_fault_is_a_system_error_in_api_result(
    jd: JdClient, sandbox: Sandbox
) -> None:
    start, end = day_window()
    sandbox.set_faults(FaultProfile(transient=1.0))
    result = await jd.search(start, end)
    assert result["apiResult"]["success"] is False and result["apiResult"]["numberCode"] == 10000


async def test_rate_limit_is_503_with_retry_after_and_the_ban_holds(
    jd: JdClient, sandbox: Sandbox
) -> None:
    start, end = day_window()
    business = {"start_date": cst_text(start), "end_date": cst_text(end)}
    sandbox.set_faults(FaultProfile(rate_limit=1.0, ban_seconds=1))
    response = await jd.get(SEARCH, business)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    sandbox.set_faults("calm")
    assert (await jd.get(SEARCH, business)).status_code == 503
    await asyncio.sleep(1.05)
    assert (await jd.get(SEARCH, business)).status_code == 200


async def test_paging_drift_applies_to_jd_too(jd: JdClient, sandbox: Sandbox) -> None:
    start, end = day_window()
    sandbox.set_faults(FaultProfile(paging_drift=1.0))
    await jd.search(start, end, page="1", page_size="5", sortType="1")
    assert sandbox.jd.pager.drifts
