"""TOP simulator contract, over real HTTP on loopback (platforms.md §1, decisions.md TOP)."""

import asyncio
import json
import re
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sandbox.faults import FaultProfile
from sandbox.gateway import visibility_delay
from sandbox.server import Sandbox
from sandbox.signing import top_sign
from sandbox.world import cst_text, to_cst
from tests.sandbox.conftest import TopClient, day_window, now_cst

INCREMENT = "taobao.trades.sold.increment.get"
MONEY = re.compile(r"^\d+\.\d{2}$")

# Known answers computed by hand with hashlib / hmac (not with sandbox.signing), so a bug shared
# by the signer and the checker cannot pass.
VECTOR_PARAMS = {
    "app_key": "12345678",
    "method": "taobao.item.seller.get",
    "timestamp": "2026-11-20 08:00:00",
    "v": "2.0",
    "fields": "num_iid,title",
    "sign": "ignored",
    "session": "",  # empty values are not signed
}
VECTORS = {
    "md5": "615DFEDBF2EDE52F528984480B5DB9C2",
    "hmac": "E0DB5D1AEEB439642A91FCBF0F6E00E5",
    "hmac-sha256": "317BE17E62EC6D1B20031590148E8D66BDD087472BECB75480809EF0677F27C7",
}


def error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error_response"}, body
    err: dict[str, Any] = body["error_response"]
    assert set(err) == {"code", "msg", "sub_code", "sub_msg", "request_id"}
    assert isinstance(err["code"], int)
    return err


def trades(body: dict[str, Any]) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = (
        body["trades_sold_increment_get_response"].get("trades", {}).get("trade", [])
    )
    return page


@pytest.mark.parametrize("method", sorted(VECTORS))
def test_signature_known_answers(method: str) -> None:
    params = {**VECTOR_PARAMS, "sign_method": method}
    assert top_sign(params, "helloworld", method) == VECTORS[method]


@pytest.mark.parametrize("sign_method", ["md5", "hmac", "hmac-sha256"])
async def test_each_sign_method_is_accepted_and_a_wrong_sign_is_code_25(
    top: TopClient, sign_method: str
) -> None:
    start, end = day_window()
    ok = await top.increment(start, end, sign_method=sign_method)
    assert "trades_sold_increment_get_response" in ok
    bad = await top.increment(start, end, sign_method=sign_method, secret="not-the-secret")
    assert error(bad)["code"] == 25


async def test_system_params_in_the_query_string_as_the_sdk_sends_them(top: TopClient) -> None:
    start, end = day_window()
    params = top.params(
        INCREMENT,
        {"fields": "tid", "start_modified": cst_text(start), "end_modified": cst_text(end)},
    )
    system = {k: params.pop(k) for k in ("method", "app_key", "session", "timestamp", "v", "sign")}
    response = await top.http.post(top.shop.api_url, params=system, data=params)
    assert "trades_sold_increment_get_response" in response.json()


async def test_timestamp_more_than_ten_minutes_off_is_code_31(top: TopClient) -> None:
    start, end = day_window()
    stale = cst_text(now_cst() - timedelta(minutes=11))
    assert error(await top.increment(start, end, timestamp=stale))["code"] == 31
    in_skew = cst_text(now_cst() - timedelta(minutes=9))
    assert "error_response" not in await top.increment(start, end, timestamp=in_skew)
    epoch_ms = str(int(time.time() * 1000))  # what the official Python SDK sends
    assert "error_response" not in await top.increment(start, end, timestamp=epoch_ms)


async def test_wrong_session_is_code_27_and_unknown_app_key_29(top: TopClient) -> None:
    start, end = day_window()
    assert error(await top.increment(start, end, session="6100bad"))["code"] == 27
    params = top.params(INCREMENT, {"fields": "tid"})
    params["app_key"] = "99999999"
    response = await top.http.post(top.shop.api_url, data=params)
    assert error(response.json())["code"] == 29


async def test_missing_parameter_is_code_40_with_its_name(top: TopClient) -> None:
    start, _ = day_window()
    body = await top.call(INCREMENT, {"fields": "tid", "start_modified": cst_text(start)})
    err = error(body)
    assert (err["code"], err["sub_code"]) == (40, "isv.missing-parameter:end_modified")


async def test_window_longer_than_a_day_is_code_41(top: TopClient) -> None:
    _, end = day_window()
    err = error(await top.increment(end - timedelta(days=1, seconds=1), end))
    assert err["code"] == 41 and err["sub_code"].startswith("isv.invalid-parameter")
    assert "error_response" not in await top.increment(end - timedelta(days=1), end)


@pytest.mark.parametrize("page_size", [0, 101])
async def test_page_size_outside_1_to_100_is_code_41(top: TopClient, page_size: int) -> None:
    start, end = day_window()
    err = error(await top.increment(start, end, page_size=page_size))
    assert (err["code"], err["sub_code"]) == (41, "isv.invalid-parameter:page_size")


async def test_increment_envelope_money_ids_and_sort_order(top: TopClient) -> None:
    start, end = day_window()
    body = await top.increment(start, end, page_size=100)
    response = body["trades_sold_increment_get_response"]
    assert response["request_id"] and response["total_results"] > 10
    assert "has_next" not in response
    page = trades(body)
    assert len(page) == response["total_results"]
    modified = [t["modified"] for t in page]
    assert modified == sorted(modified, reverse=True)
    for trade in page:
        assert isinstance(trade["tid"], int) and trade["tid_str"] == str(trade["tid"])
        assert MONEY.match(trade["payment"])
        for order in trade["orders"]["order"]:
            assert isinstance(order["oid"], int) and isinstance(order["num_iid"], int)
            assert MONEY.match(order["price"]) and MONEY.match(order["payment"])
            assert order["refund_status"] in {"NO_REFUND", "SUCCESS"}
            assert "outer_sku_id" in order or "outer_iid" in order
            if "sku_id" in order:
                assert isinstance(order["sku_id"], str)


async def test_results_are_exactly_the_worlds_orders_of_the_window(
    top: TopClient, sandbox: Sandbox
) -> None:
    start, end = day_window()
    page = trades(await top.increment(start, end, page_size=100))
    truth = {
        (o.id, o.status, cst_text(o.modified))
        for o in sandbox.world.orders("tmall-flagship")
        if start <= o.modified <= end
    }
    assert {(t["tid_str"], t["status"], t["modified"]) for t in page} == truth


async def test_fields_select_what_comes_back(top: TopClient) -> None:
    start, end = day_window()
    body = await top.call(
        INCREMENT,
        {
            "fields": "tid,status,orders.oid,orders.outer_sku_id",
            "start_modified": cst_text(start),
            "end_modified": cst_text(end),
        },
    )
    trade = trades(body)[0]
    assert set(trade) == {"tid", "tid_str", "status", "orders"}
    assert set(trade["orders"]["order"][0]) <= {"oid", "outer_sku_id"}


async def test_use_has_next_replaces_total_results(top: TopClient) -> None:
    start, end = day_window()
    first = await top.increment(start, end, page_size=5, use_has_next="true")
    response = first["trades_sold_increment_get_response"]
    assert response["has_next"] is True and "total_results" not in response
    last = await top.increment(start, end, page_size=5, page_no=1000, use_has_next="true")
    assert last["trades_sold_increment_get_response"]["has_next"] is False


async def test_an_empty_page_omits_trades_or_sends_it_empty(top: TopClient) -> None:
    start, end = day_window()
    shapes = set()
    for page_no in range(200, 216):
        body = await top.increment(start, end, page_no=page_no)
        response = body["trades_sold_increment_get_response"]
        shapes.add(json.dumps(response.get("trades")))
    assert shapes == {"null", '{"trade": []}'}


async def test_fullinfo_returns_the_current_trade(top: TopClient, sandbox: Sandbox) -> None:
    order = sandbox.world.orders("tmall-flagship")[0]
    body = await top.call(
        "taobao.trade.fullinfo.get", {"fields": "tid,status,modified,orders", "tid": order.id}
    )
    trade = body["trade_fullinfo_get_response"]["trade"]
    assert (trade["tid_str"], trade["status"]) == (order.id, order.status)
    missing = await top.call("taobao.trade.fullinfo.get", {"fields": "tid", "tid": "1"})
    assert error(missing)["sub_code"] == "isv.trade-not-exist"


async def test_offline_send_ships_and_a_repeat_is_b04(top: TopClient, sandbox: Sandbox) -> None:
    order = next(
        o for o in sandbox.world.orders("tmall-flagship") if o.status == "WAIT_SELLER_SEND_GOODS"
    )
    send = {"tid": order.id, "out_sid": "ZTO7700001", "company_code": "ZTO"}
    body = await top.call("taobao.logistics.offline.send", send)
    assert body["logistics_offline_send_response"]["shipping"] == {"is_success": True}
    shipped = sandbox.world.order("tmall-flagship", order.order_id)
    assert (shipped.status, shipped.waybill, shipped.company_code) == (
        "WAIT_BUYER_CONFIRM_GOODS",
        "ZTO7700001",
        "ZTO",
    )
    again = error(await top.call("taobao.logistics.offline.send", send))
    assert (again["code"], again["sub_code"]) == (15, "isv.logistics-offline-service-error:B04")
    full = await top.call("taobao.trade.fullinfo.get", {"fields": "tid,status", "tid": order.id})
    assert full["trade_fullinfo_get_response"]["trade"]["status"] == "WAIT_BUYER_CONFIRM_GOODS"
    assert [
        (s["tid"], s["out_sid"], s["company_code"], s["outcome"]) for s in sandbox.top.shipments
    ] == [
        (order.id, "ZTO7700001", "ZTO", "shipped"),
        (order.id, "ZTO7700001", "ZTO", "B04"),
    ]
    state = (await top.http.get(sandbox.base_url + "/_sandbox/state")).json()
    assert state["top"]["shipments"][0]["out_sid"] == "ZTO7700001"


async def test_stock_updates_are_applied_and_recorded_in_order(
    top: TopClient, sandbox: Sandbox
) -> None:
    listings = sandbox.world.shops["tmall-flagship"].listings
    with_skus = next(li for li in listings if li.sku_id is not None)
    plain = next(li for li in listings if li.sku_id is None)
    body = await top.call(
        "taobao.skus.quantity.update",
        {"num_iid": with_skus.item_id, "skuid_quantities": f"{with_skus.sku_id}:42", "type": 1},
    )
    item = body["skus_quantity_update_response"]["item"]
    assert item["skus"]["sku"][0] == {
        "sku_id": with_skus.sku_id,
        "quantity": 42,
        "modified": item["modified"],
    }
    await top.call("taobao.item.quantity.update", {"num_iid": plain.item_id, "quantity": 7})
    assert [(u["outer_id"], u["quantity"]) for u in sandbox.top.stock_updates] == [
        (with_skus.merchant_code, 42),
        (plain.merchant_code, 7),
    ]
    too_many = ";".join(f"{with_skus.sku_id}:1" for _ in range(21))
    err = error(
        await top.call(
            "taobao.skus.quantity.update",
            {"num_iid": with_skus.item_id, "skuid_quantities": too_many},
        )
    )
    assert (err["code"], err["sub_code"]) == (41, "isv.invalid-parameter:skuid_quantities")
    seller = await top.call(
        "taobao.item.seller.get", {"fields": "num_iid,title,sku", "num_iid": with_skus.item_id}
    )
    skus = seller["item_seller_get_response"]["item"]["skus"]["sku"]
    assert {
        "sku_id": with_skus.sku_id,
        "outer_id": with_skus.merchant_code,
        "quantity": 42,
    }.items() <= next(s for s in skus if s["sku_id"] == with_skus.sku_id).items()


async def test_items_onsale_lists_every_item(top: TopClient, sandbox: Sandbox) -> None:
    body = await top.call(
        "taobao.items.onsale.get", {"fields": "num_iid,title,outer_id", "page_size": 200}
    )
    response = body["items_onsale_get_response"]
    items = {li.item_id for li in sandbox.world.shops["tmall-flagship"].listings}
    assert response["total_results"] == len(items)
    assert {i["num_iid"] for i in response["items"]["item"]} == items


async def test_tmc_messages_are_redelivered_until_confirmed(
    top: TopClient, sandbox: Sandbox
) -> None:
    sandbox.top.tmc_redeliver_after = 0.3
    order = sandbox.world.create_order("tmall-flagship")
    sandbox.world.set_memo("tmall-flagship", order.order_id, "加急")

    async def consume() -> list[dict[str, Any]]:
        body = await top.call("taobao.tmc.messages.consume", {"group_name": "hub", "quantity": 10})
        response = body["tmc_messages_consume_response"]
        messages: list[dict[str, Any]] = response.get("messages", {}).get("tmc_message", [])
        return messages

    first = await consume()
    assert [m["topic"] for m in first] == [
        "taobao_trade_TradeBuyerPay",
        "taobao_trade_TradeMemoModified",
    ]
    content = json.loads(first[0]["content"])
    assert (content["tid"], content["status"]) == (order.order_id, "WAIT_SELLER_SEND_GOODS")
    assert await consume() == []  # in flight, not yet due again
    await top.call(
        "taobao.tmc.messages.confirm", {"group_name": "hub", "s_message_ids": str(first[0]["id"])}
    )
    await asyncio.sleep(0.35)
    again = await consume()
    assert [m["id"] for m in again] == [first[1]["id"]]  # the unconfirmed one came back
    await top.call(
        "taobao.tmc.messages.confirm", {"group_name": "hub", "f_message_ids": str(again[0]["id"])}
    )
    assert [m["id"] for m in await consume()] == [first[1]["id"]]  # failed: redelivered at once


# --- faults --------------------------------------------------------------------------------


async def test_rate_limit_bans_the_app_for_the_seconds_it_names(
    top: TopClient, sandbox: Sandbox
) -> None:
    start, end = day_window()
    sandbox.set_faults(FaultProfile(rate_limit=1.0, ban_seconds=1))
    err = error(await top.increment(start, end))
    assert (err["code"], err["sub_code"]) == (7, "accesscontrol.limited-by-app-access-count")
    assert err["sub_msg"] == "This ban will last for 1 more seconds"
    sandbox.set_faults("calm")
    assert error(await top.increment(start, end))["code"] == 7  # the ban holds
    await asyncio.sleep(1.05)
    assert "error_response" not in await top.increment(start, end)


async def test_transient_fault_is_code_15_isp(top: TopClient, sandbox: Sandbox) -> None:
    start, end = day_window()
    sandbox.set_faults(FaultProfile(transient=1.0))
    err = error(await top.increment(start, end))
    assert (err["code"], err["sub_code"]) == (15, "isp.top-remote-service-unavailable")


async def test_http_5xx_fault_is_a_bare_502_or_503(top: TopClient, sandbox: Sandbox) -> None:
    sandbox.set_faults(FaultProfile(http_5xx=1.0))
    params = top.params(INCREMENT, {"fields": "tid"})
    statuses = set()
    for _ in range(8):
        response = await top.http.post(top.shop.api_url, data=params)
        statuses.add(response.status_code)
        with pytest.raises(json.JSONDecodeError):
            response.json()
    assert statuses == {502, 503}


async def test_slow_fault_delays_the_answer(top: TopClient, sandbox: Sandbox) -> None:
    start, end = day_window()
    sandbox.set_faults(FaultProfile(slow=1.0, slow_seconds=0.3))
    began = time.monotonic()
    assert "error_response" not in await top.increment(start, end)
    assert time.monotonic() - began >= 0.3


async def test_visibility_latency_hides_a_change_until_its_delay_passes(
    top: TopClient, sandbox: Sandbox
) -> None:
    latency = 3.0
    sandbox.set_faults(FaultProfile(visibility_latency=latency))
    world = sandbox.world
    old = next(o for o in world.orders("tmall-flagship") if o.status == "WAIT_SELLER_SEND_GOODS")
    # Changes until one whose seeded delay leaves enough time to look before it shows.
    for attempt in range(50):
        changed = world.set_memo("tmall-flagship", old.order_id, f"memo {attempt}")
        visible_at = changed.modified + timedelta(seconds=visibility_delay(7, changed, latency))
        if (visible_at - now_cst()).total_seconds() > 0.8:
            break
    else:
        pytest.fail("no change with a long enough delay")
    start, end = day_window()
    start, end = start + timedelta(seconds=5), end + timedelta(seconds=5)

    async def served_modified() -> str:
        page = trades(await top.increment(start, end, page_size=100))
        return next(t["modified"] for t in page if t["tid"] == old.order_id)

    assert await served_modified() != cst_text(changed.modified)  # an older version is served
    await asyncio.sleep((visible_at - now_cst()).total_seconds() + 0.1)
    assert await served_modified() == cst_text(changed.modified)


async def page_all(top: TopClient, start: Any, end: Any, pages: list[int]) -> set[int]:
    seen: set[int] = set()
    for page_no in pages:
        seen |= {
            t["tid"] for t in trades(await top.increment(start, end, page_no=page_no, page_size=10))
        }
    return seen


async def test_paging_drift_makes_a_forward_pager_miss_but_not_a_backward_one(
    http: httpx.AsyncClient,
) -> None:
    async with Sandbox(seed=11, backlog=80, backlog_days=1.0) as sandbox:
        top = TopClient(http, sandbox.shop("tmall-flagship"))
        start, end = day_window()
        sandbox.set_faults(FaultProfile(paging_drift=1.0))

        def truth() -> set[int]:
            return {
                o.order_id
                for o in sandbox.world.orders("tmall-flagship")
                if start <= to_cst(o.modified) <= end
            }

        first = await top.increment(start, end, page_size=10)
        total = first["trades_sold_increment_get_response"]["total_results"]
        pages = (total + 9) // 10
        assert pages >= 3
        forward = {t["tid"] for t in trades(first)} | await page_all(
            top, start, end, list(range(2, pages + 1))
        )
        assert truth() - forward, "a forward pager should have missed a drifted order"
        assert sandbox.top.pager.drifts

        # A new window (shifted by a second) is a new query: page 1 for the count, then backwards.
        start, end = start + timedelta(seconds=1), end + timedelta(seconds=1)
        first = await top.increment(start, end, page_size=10)
        total = first["trades_sold_increment_get_response"]["total_results"]
        backward = await page_all(top, start, end, list(range((total + 9) // 10, 0, -1)))
        assert backward == truth()
        assert len(sandbox.top.pager.drifts) > pages  # drift went on while paging backwards
