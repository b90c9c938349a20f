"""TmallMarketplace against a stateful fake TOP router (respx, strict routing, fixed clock)."""

import copy
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from connectors.base import Listing, ShipRequest, StockUpdate
from connectors.errors import (
    AmbiguousError,
    AuthError,
    BadPayload,
    RateLimited,
    RejectedError,
    TransientError,
)
from connectors.jd import JdMarketplace
from connectors.registry import marketplace_for
from connectors.tmall import MalformedOrder, TmallMarketplace, to_order
from models.domain import OrderStatus, RefundState
from tests.connectors import (
    APP_KEY,
    APP_SECRET,
    NO_JITTER,
    NOW_CST_TEXT,
    TOKEN,
    TOP_URL,
    FakePlatform,
    Sleeps,
    clock,
    fixture,
    shop,
)

SEARCH = "taobao.trades.sold.increment.get"
FULLINFO = "taobao.trade.fullinfo.get"
SEND = "taobao.logistics.offline.send"
START = datetime(2026, 11, 19, 16, 0, tzinfo=UTC)  # 2026-11-20 00:00:00 CST
END = datetime(2026, 11, 19, 16, 30, tzinfo=UTC)


def trade(**changes: Any) -> dict[str, Any]:
    body = fixture("top_trades_increment.json")["trades_sold_increment_get_response"]
    raw: dict[str, Any] = copy.deepcopy(body["trades"]["trade"][0])
    raw.update(changes)
    return raw


def page(trades: Any, total: int = 1, *, key: str = "trades") -> dict[str, Any]:
    inner: dict[str, Any] = {"total_results": total, "request_id": "x"}
    if trades is not None:
        inner[key] = trades
    return {"trades_sold_increment_get_response": inner}


def top_error(code: int, sub_code: str = "", sub_msg: str = "", msg: str = "") -> dict[str, Any]:
    return {
        "error_response": {
            "code": code,
            "msg": msg or "Remote service error",
            "sub_code": sub_code,
            "sub_msg": sub_msg,
            "request_id": "r",
        }
    }


def fullinfo(status: str, orders: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    raw = trade(status=status)
    if orders is not None:
        raw["orders"] = {"order": orders}
    return {"trade_fullinfo_get_response": {"trade": raw}}


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def top(router: respx.MockRouter) -> FakePlatform:
    return FakePlatform(router, TOP_URL)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def tmall(router: respx.MockRouter, sleeps: Sleeps) -> AsyncIterator[TmallMarketplace]:
    market = TmallMarketplace(
        shop("tmall", cap=60),
        clock=clock(),
        policy=NO_JITTER,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
    )
    yield market
    await market.aclose()


# --- the request on the wire ---------------------------------------------------------------


@pytest.mark.parametrize("sign_method", ["md5", "hmac", "hmac-sha256"])
async def test_search_sends_exactly_these_signed_form_fields(
    router: respx.MockRouter, top: FakePlatform, sign_method: str
) -> None:
    top.on(SEARCH, page(None, 0))
    market = marketplace_for(
        shop("tmall", sign_method=sign_method),
        clock=clock(),
        transport=httpx.MockTransport(router.async_handler),
    )
    await market.search_orders(START, END, 3, 100)
    await market.aclose()
    [request] = top.requests
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded;charset=utf-8"
    assert request.url.query == b""  # everything in the body
    sent = top.calls[0]
    assert sent == {
        "method": SEARCH,
        "app_key": APP_KEY,
        "session": TOKEN,
        "timestamp": NOW_CST_TEXT,
        "v": "2.0",
        "format": "json",
        "sign_method": sign_method,
        "fields": sent["fields"],
        "start_modified": "2026-11-20 00:00:00",
        "end_modified": "2026-11-20 00:30:00",
        "page_no": "3",
        "page_size": "100",
        "sign": sent["sign"],
    }
    assert "orders" in sent["fields"].split(",") and "tid" in sent["fields"].split(",")
    canonical = "".join(f"{k}{v}" for k, v in sorted(sent.items()) if k != "sign")
    secret, data = APP_SECRET.encode(), canonical.encode()
    expected = {
        "md5": hashlib.md5(secret + data + secret).hexdigest(),
        "hmac": hmac.new(secret, data, hashlib.md5).hexdigest(),
        "hmac-sha256": hmac.new(secret, data, hashlib.sha256).hexdigest(),
    }[sign_method].upper()
    assert sent["sign"] == expected


def test_registry_picks_the_connector_by_platform() -> None:
    assert isinstance(marketplace_for(shop("tmall")), TmallMarketplace)
    assert isinstance(marketplace_for(shop("jd")), JdMarketplace)


# --- translation ---------------------------------------------------------------------------


async def test_spec_example_translates(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(SEARCH, fixture("top_trades_increment.json"))
    result = await tmall.search_orders(START, END, 1, 100)
    assert result.total == 1 and result.errors == () and result.page == 1
    [order] = result.orders
    assert order.platform_order_id == "1234567890123" and order.shop == "tmall-flagship"
    assert order.status is OrderStatus.PAID and order.platform_status == "WAIT_SELLER_SEND_GOODS"
    assert order.created == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    assert order.modified == datetime(2024, 5, 1, 2, 5, tzinfo=UTC)
    assert order.paid_at == datetime(2024, 5, 1, 2, 1, tzinfo=UTC)
    assert order.payment == Decimal("199.00") and isinstance(order.payment, Decimal)
    assert order.total == Decimal("209.00") and order.discount == Decimal("10.00")
    assert order.receiver is not None and order.receiver.province == "浙江"
    assert order.receiver.oaid == "1a2b3c" and order.receiver.detail == "文一西路969号"
    assert order.buyer_remark == "请尽快发货" and order.seller_remark == ""
    [line] = order.lines
    assert line.line_id == "1234567890124" and line.platform_item_id == "600000000001"
    assert line.platform_sku_id == "5000000001" and line.merchant_code == "SKU-1"
    assert line.qty == 1 and line.price == Decimal("209.00") and line.payment == Decimal("199.00")
    assert line.refund_state is RefundState.NONE


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        ("WAIT_BUYER_PAY", OrderStatus.WAIT_PAY),
        ("TRADE_NO_CREATE_PAY", OrderStatus.WAIT_PAY),
        ("PAY_PENDING", OrderStatus.WAIT_PAY),
        ("WAIT_PRE_AUTH_CONFIRM", OrderStatus.WAIT_PAY),
        ("WAIT_SELLER_SEND_GOODS", OrderStatus.PAID),
        ("PAID_FORBID_CONSIGN", OrderStatus.PAUSED),
        ("SELLER_CONSIGNED_PART", OrderStatus.PARTLY_SHIPPED),
        ("WAIT_BUYER_CONFIRM_GOODS", OrderStatus.SHIPPED),
        ("TRADE_BUYER_SIGNED", OrderStatus.SHIPPED),
        ("TRADE_FINISHED", OrderStatus.FINISHED),
        ("TRADE_CLOSED", OrderStatus.CANCELLED),
        ("TRADE_CLOSED_BY_TAOBAO", OrderStatus.CLOSED),
    ],
)
def test_every_trade_status(wire: str, status: OrderStatus) -> None:
    order = to_order(trade(status=wire), shop="s")
    assert order.status is status and order.platform_status == wire


@pytest.mark.parametrize(
    ("wire", "state"),
    [
        ("NO_REFUND", RefundState.NONE),
        ("WAIT_SELLER_AGREE", RefundState.REQUESTED),
        ("WAIT_BUYER_RETURN_GOODS", RefundState.REQUESTED),
        ("WAIT_SELLER_CONFIRM_GOODS", RefundState.REQUESTED),
        ("SELLER_REFUSE_BUYER", RefundState.REFUSED),
        ("CLOSED", RefundState.CLOSED),
        ("SUCCESS", RefundState.SUCCESS),
    ],
)
def test_every_refund_status(wire: str, state: RefundState) -> None:
    line = trade()["orders"]["order"][0] | {"refund_status": wire}
    order = to_order(trade(orders={"order": [line]}), shop="s")
    assert order.lines[0].refund_state is state


def test_item_without_sku_uses_outer_iid_and_provinces_are_short() -> None:
    line = {"oid": 7, "num_iid": 8, "outer_iid": "ITEM-9", "num": 2, "price": "1.50"}
    order = to_order(trade(orders={"order": line}, receiver_state="广西壮族自治区"), shop="s")
    assert order.lines[0].merchant_code == "ITEM-9" and order.lines[0].platform_sku_id == ""
    assert order.lines[0].qty == 2 and order.receiver is not None
    assert order.receiver.province == "广西"


def test_a_sku_line_without_its_sku_code_does_not_take_the_items_code() -> None:
    """decisions.md: lines of items with SKUs map by `outer_sku_id` only; the item's code
    would map every SKU of the item to one product. Such a line is held as unknown instead."""
    line = {"oid": 7, "num_iid": 8, "sku_id": "55", "outer_iid": "ITEM-9", "num": 1, "price": "1"}
    order = to_order(trade(orders={"order": line}), shop="s")
    assert order.lines[0].merchant_code == "" and order.lines[0].platform_sku_id == "55"


def test_a_year_one_time_is_a_malformed_trade_not_a_crash() -> None:
    with pytest.raises(MalformedOrder):
        to_order(trade(modified="0001-01-01 00:00:00"), shop="s")


def test_tid_falls_back_to_the_int_tid() -> None:
    raw = trade()
    del raw["tid_str"]
    assert to_order(raw, shop="s").platform_order_id == "1234567890123"


@pytest.mark.parametrize(
    "trades",
    [None, {}, [], {"trade": []}, ""],
    ids=["missing", "empty-object", "empty-list", "empty-wrapped", "empty-string"],
)
async def test_a_page_without_trades(
    tmall: TmallMarketplace, top: FakePlatform, trades: Any
) -> None:
    top.on(SEARCH, page(trades, 0))
    result = await tmall.search_orders(START, END, 1, 100)
    assert result.orders == () and result.errors == () and result.total == 0


async def test_a_single_trade_object_where_a_list_is_expected(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    single = trade()
    single["orders"] = {"order": single["orders"]["order"][0]}
    top.on(SEARCH, page({"trade": single}))
    [order] = (await tmall.search_orders(START, END, 1, 100)).orders
    assert len(order.lines) == 1


async def test_malformed_trades_become_sync_errors_and_the_rest_comes_back(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    no_tid = trade()
    del no_tid["tid"], no_tid["tid_str"]
    trades = [
        trade(tid_str="1", tid=1),
        no_tid,
        trade(tid_str="2", tid=2, payment="12,00"),
        trade(tid_str="3", tid=3, status="TRADE_WHATEVER"),
        trade(tid_str="4", tid=4, modified="yesterday"),
        trade(tid_str="5", tid=5),
    ]
    top.on(SEARCH, page({"trade": trades}, 6))
    result = await tmall.search_orders(START, END, 1, 100)
    assert [o.platform_order_id for o in result.orders] == ["1", "5"]
    assert [e.key for e in result.errors] == ["", "2", "3", "4"]
    reasons = [e.reason for e in result.errors]
    assert "missing tid" in reasons[0] and "payment" in reasons[1]
    assert "TRADE_WHATEVER" in reasons[2]
    assert all(e.source == "tmall-flagship" and e.raw.startswith("{") for e in result.errors)
    assert result.total == 6


# --- errors --------------------------------------------------------------------------------


async def test_ban_under_the_cap_is_waited_then_the_call_succeeds(
    tmall: TmallMarketplace, top: FakePlatform, sleeps: Sleeps
) -> None:
    top.on(SEARCH, fixture("top_error_ban.json"), page(None, 0))
    await tmall.search_orders(START, END, 1, 100)
    assert sleeps.waits == [31.0] and len(top.calls) == 2
    assert top.calls[0]["timestamp"] == top.calls[1]["timestamp"]  # fixed clock; signed afresh


async def test_ban_over_the_cap_is_raised(
    tmall: TmallMarketplace, top: FakePlatform, sleeps: Sleeps
) -> None:
    top.on(
        SEARCH,
        top_error(
            7,
            "accesscontrol.limited-by-api-access-count",
            "This ban will last for 31062 more seconds",
        ),
    )
    with pytest.raises(RateLimited) as info:
        await tmall.search_orders(START, END, 1, 100)
    assert info.value.retry_after == 31062 and info.value.code == "7"
    assert sleeps.waits == [] and len(top.calls) == 1


async def test_trade_service_rejection_is_a_three_minute_throttle(
    tmall: TmallMarketplace, top: FakePlatform, sleeps: Sleeps
) -> None:
    top.on(
        SEARCH,
        top_error(
            15, "isv.trade-service-rejection", "超时请求过多，请将查询时间间隔缩短,3分钟后再查询！"
        ),
    )
    with pytest.raises(RateLimited) as info:  # over the test shop's wait cap
        await tmall.search_orders(START, END, 1, 100)
    assert info.value.retry_after == 180


@pytest.mark.parametrize(
    "error",
    [
        top_error(15, "isp.top-remote-connection-timeout", "timeout"),
        top_error(10, "", "", "Service Currently Unavailable"),
    ],
    ids=["isp", "code-10"],
)
async def test_transient_is_retried_then_succeeds(
    tmall: TmallMarketplace, top: FakePlatform, error: dict[str, Any]
) -> None:
    top.on(SEARCH, error, httpx.Response(503), page(None, 0))
    await tmall.search_orders(START, END, 1, 100)
    assert len(top.calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        top_error(25, "isv.invalid-signature", "", "Invalid Signature"),
        top_error(26, "", "", "Missing Session"),
        top_error(27, "invalid-sessionkey", "SessionKey非法", "Invalid Session"),
        top_error(15, "session-expired", "session expired"),
    ],
    ids=["25", "26", "27", "session-expired"],
)
async def test_auth_failures_are_not_retried(
    tmall: TmallMarketplace, top: FakePlatform, error: dict[str, Any]
) -> None:
    top.on(SEARCH, error)
    with pytest.raises(AuthError):
        await tmall.search_orders(START, END, 1, 100)
    assert len(top.calls) == 1


async def test_isv_is_rejected_with_its_sub_code_and_message(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(SEARCH, top_error(41, "isv.invalid-parameter:end_modified", "时间跨度不能超过1天"))
    with pytest.raises(RejectedError) as info:
        await tmall.search_orders(START, END, 1, 100)
    assert info.value.sub_code == "isv.invalid-parameter:end_modified"
    assert "时间跨度不能超过1天" in str(info.value) and len(top.calls) == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>gateway</html>"),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(200, json={"error_response": "broken"}),
        httpx.Response(200, json={"something_else_response": {}}),
        httpx.Response(200, json={"trades_sold_increment_get_response": {"total_results": "x"}}),
    ],
    ids=["not-json", "not-object", "bad-error", "wrong-key", "bad-total"],
)
async def test_unreadable_answers_are_bad_payload(
    tmall: TmallMarketplace, top: FakePlatform, answer: httpx.Response
) -> None:
    top.on(SEARCH, answer)
    with pytest.raises(BadPayload):
        await tmall.search_orders(START, END, 1, 100)
    assert len(top.calls) == 1


async def test_no_secret_in_errors_or_logs(tmall: TmallMarketplace, top: FakePlatform) -> None:
    echo = f"got session={TOKEN} secret {APP_SECRET}"
    top.on(SEARCH, top_error(15, "isp.remote-service-timeout", echo), top_error(27, "", echo))
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        await tmall.search_orders(START, END, 1, 100)
    sign = top.calls[0]["sign"]
    for text in (str(info.value), repr(info.value), str(logs)):
        assert TOKEN not in text and APP_SECRET not in text and sign not in text
    assert any(e["event"] == "connector.retry" and e["method"] == SEARCH for e in logs)


# --- get_order, ship -----------------------------------------------------------------------


async def test_get_order(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(
        FULLINFO,
        fullinfo("WAIT_BUYER_CONFIRM_GOODS"),
        top_error(15, "isv.trade-not-exist", "交易不存在"),
    )
    order = await tmall.get_order("1234567890123")
    assert order is not None and order.status is OrderStatus.SHIPPED
    assert top.calls[0]["tid"] == "1234567890123" and top.calls[0]["include_oaid"] == "true"
    assert await tmall.get_order("999") is None


async def test_ship_sends_the_waybill(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(SEND, fixture("top_logistics_offline_send.json"))
    result = await tmall.ship(ShipRequest("1234567890123", "SF", 467, "SF100200300"))
    assert result.already_shipped is False
    sent = top.calls[0]
    assert (sent["tid"], sent["out_sid"], sent["company_code"]) == (
        "1234567890123",
        "SF100200300",
        "SF",
    )
    assert "sub_tid" not in sent


async def test_partial_ship_names_the_lines(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(SEND, fixture("top_logistics_offline_send.json"))
    await tmall.ship(ShipRequest("1", "ZTO", None, "ZT1", line_ids=("11", "12", "11")))
    assert top.calls[0]["sub_tid"] == "11,12" and top.calls[0]["is_split"] == "1"


B04 = top_error(15, "isv.logistics-offline-service-error:B04", "该订单已经发货，不能重复发货")


async def test_repeat_ship_of_a_shipped_trade_is_already_shipped(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(SEND, B04)
    top.on(FULLINFO, fullinfo("WAIT_BUYER_CONFIRM_GOODS"))
    result = await tmall.ship(ShipRequest("1234567890123", "SF", None, "SF1"))
    assert result.already_shipped is True
    assert len(top.called(SEND)) == 1 and top.called(FULLINFO)[0]["tid"] == "1234567890123"


async def test_b04_on_a_trade_that_is_not_shipped_is_rejected(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(SEND, B04)
    top.on(FULLINFO, fullinfo("WAIT_SELLER_SEND_GOODS"))
    with pytest.raises(RejectedError) as info:
        await tmall.ship(ShipRequest("1234567890123", "SF", None, "SF1"))
    assert info.value.sub_code.endswith(":B04")


async def test_b04_for_a_partial_ship_checks_the_lines(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(SEND, B04)
    lines = [
        {"oid": 11, "status": "WAIT_BUYER_CONFIRM_GOODS", "num": 1},
        {"oid": 12, "status": "WAIT_SELLER_SEND_GOODS", "num": 1},
    ]
    top.on(FULLINFO, fullinfo("SELLER_CONSIGNED_PART", lines))
    shipped = await tmall.ship(ShipRequest("1", "SF", None, "SF1", line_ids=("11",)))
    assert shipped.already_shipped is True
    with pytest.raises(RejectedError):
        await tmall.ship(ShipRequest("1", "SF", None, "SF2", line_ids=("12",)))


async def test_other_ship_refusals_are_rejected_without_a_read(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(SEND, top_error(15, "isv.logistics-offline-service-error:B60", "交易状态不允许发货"))
    with pytest.raises(RejectedError):
        await tmall.ship(ShipRequest("1", "SF", None, "SF1"))


async def test_read_timeout_on_ship_is_ambiguous_and_not_retried(
    tmall: TmallMarketplace, top: FakePlatform, sleeps: Sleeps
) -> None:
    top.on(SEND, httpx.ReadTimeout("no answer"))
    with pytest.raises(AmbiguousError):
        await tmall.ship(ShipRequest("1", "SF", None, "SF1"))
    assert len(top.calls) == 1 and sleeps.waits == []


async def test_isp_error_on_ship_is_ambiguous(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(SEND, top_error(15, "isp.top-remote-connection-timeout", "timeout"))
    with pytest.raises(AmbiguousError):
        await tmall.ship(ShipRequest("1", "SF", None, "SF1"))
    assert len(top.calls) == 1


# --- listings and stock --------------------------------------------------------------------


async def test_listings_page_items_and_read_their_skus(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    tmall.listing_page_size = 2  # type: ignore[misc]
    onsale = [
        {"items_onsale_get_response": {"total_results": 3, "items": {"item": [
            {"num_iid": 1}, {"num_iid": 2}]}}},
        {"items_onsale_get_response": {"total_results": 3, "items": {"item": {"num_iid": 3}}}},
    ]  # fmt: skip
    top.on("taobao.items.onsale.get", *onsale)

    def item(form: dict[str, str]) -> dict[str, Any]:
        num_iid = form["num_iid"]
        body: dict[str, Any] = {"num_iid": int(num_iid), "num": 9}
        if num_iid == "2":
            body["outer_id"] = "ITEM-2"
        else:
            body["skus"] = {"sku": [
                {"sku_id": int(num_iid) * 10 + k, "outer_id": f"SKU-{num_iid}{k}", "quantity": k}
                for k in (1, 2)
            ]}  # fmt: skip
        assert "sku" in form["fields"].split(",")
        return {"item_seller_get_response": {"item": body}}

    top.on("taobao.item.seller.get", item)
    found = await tmall.listings()
    assert [c["page_no"] for c in top.called("taobao.items.onsale.get")] == ["1", "2"]
    assert list(found) == [
        Listing("tmall-flagship", "1", "11", "SKU-11", 1),
        Listing("tmall-flagship", "1", "12", "SKU-12", 2),
        Listing("tmall-flagship", "2", "", "ITEM-2", 9),
        Listing("tmall-flagship", "3", "31", "SKU-31", 1),
        Listing("tmall-flagship", "3", "32", "SKU-32", 2),
    ]


async def test_stock_batches_skus_by_twenty(tmall: TmallMarketplace, top: FakePlatform) -> None:
    updates = [
        StockUpdate(Listing("tmall-flagship", "600", str(5000 + n), f"SKU-{n}"), n)
        for n in range(45)
    ]
    plain = StockUpdate(Listing("tmall-flagship", "700", "", "ITEM-7"), 3)
    top.on("taobao.skus.quantity.update", {"skus_quantity_update_response": {"item": {}}})
    top.on("taobao.item.quantity.update", {"item_quantity_update_response": {"item": {}}})
    result = await tmall.update_stock([*updates, plain])
    calls = top.called("taobao.skus.quantity.update")
    assert [len(c["skuid_quantities"].split(";")) for c in calls] == [20, 20, 5]
    assert calls[0]["skuid_quantities"].startswith("5000:0;5001:1;")
    assert all(c["num_iid"] == "600" and c["type"] == "1" for c in calls)
    [single] = top.called("taobao.item.quantity.update")
    assert (single["num_iid"], single["quantity"], single["type"]) == ("700", "3", "1")
    assert "sku_id" not in single
    assert len(result.done) == 46 and result.failed == ()


async def test_a_rejected_stock_batch_is_reported_failed(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    updates = [
        StockUpdate(Listing("s", "600", "1", "A"), 1),
        StockUpdate(Listing("s", "601", "2", "B"), -1),
    ]
    top.on("taobao.skus.quantity.update", top_error(15, "isv.item-not-exist", "商品不存在"))
    result = await tmall.update_stock(updates)
    assert result.done == ()
    assert [(u.listing.sku_id, "不存在" in r or "negative" in r) for u, r in result.failed] == [
        ("2", True),
        ("1", True),
    ]


async def test_stock_write_timeout_is_ambiguous(
    tmall: TmallMarketplace, top: FakePlatform, sleeps: Sleeps
) -> None:
    top.on("taobao.skus.quantity.update", httpx.ReadTimeout("late"))
    with pytest.raises(AmbiguousError):
        await tmall.update_stock([StockUpdate(Listing("s", "600", "1", "A"), 1)])
    assert len(top.calls) == 1 and sleeps.waits == []


async def test_connection_refused_is_transient_and_retried(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(SEARCH, httpx.ConnectError("refused"))
    with pytest.raises(TransientError) as info:
        await tmall.search_orders(START, END, 1, 100)
    assert not isinstance(info.value, AmbiguousError)
    assert len(top.calls) == NO_JITTER.max_attempts
