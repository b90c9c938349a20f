"""TOP TMC over HTTP polling: `TmallMarketplace` as a `MessageSource` (respx, strict routing)."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from connectors.base import MessageSource, PlatformMessage
from connectors.errors import AuthError, RejectedError
from connectors.jd import JdMarketplace
from connectors.tmall import TmallMarketplace, to_message
from tests.connectors import (
    APP_KEY,
    NO_JITTER,
    NOW_CST_TEXT,
    TOKEN,
    TOP_URL,
    FakePlatform,
    Sleeps,
    clock,
    shop,
)

CONSUME = "taobao.tmc.messages.consume"
CONFIRM = "taobao.tmc.messages.confirm"


def tmc_message(
    message_id: int, topic: str = "taobao_trade_TradeBuyerPay", **content: Any
) -> dict[str, Any]:
    """A message as TOP sends it: `content` is a JSON string (platforms.md §1.5)."""
    body = {"tid": 1234567890123, "oid": 1234567890124, "status": "WAIT_SELLER_SEND_GOODS"}
    body.update(content)
    return {
        "id": message_id,
        "topic": topic,
        "pub_time": "2026-11-20 09:59:58",
        "pub_app_key": "12497914",
        "user_id": 2200000001,
        "user_nick": "旗舰店",
        "content": json.dumps(body, ensure_ascii=False),
    }


def consumed(*messages: dict[str, Any]) -> dict[str, Any]:
    inner: dict[str, Any] = {"request_id": "r"}
    if messages:
        inner["messages"] = {"tmc_message": list(messages)}
    return {"tmc_messages_consume_response": inner}


CONFIRMED = {"tmc_messages_confirm_response": {"is_success": True, "request_id": "r"}}


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def top(router: respx.MockRouter) -> FakePlatform:
    return FakePlatform(router, TOP_URL)


@pytest.fixture
async def tmall(router: respx.MockRouter) -> AsyncIterator[TmallMarketplace]:
    market = TmallMarketplace(
        shop("tmall"),
        clock=clock(),
        policy=NO_JITTER,
        transport=httpx.MockTransport(router.async_handler),
        sleep=Sleeps(),
    )
    yield market
    await market.aclose()


def test_tmall_is_a_message_source_and_jd_is_not() -> None:
    assert isinstance(TmallMarketplace(shop("tmall")), MessageSource)
    assert not isinstance(JdMarketplace(shop("jd")), MessageSource)


# --- consume -------------------------------------------------------------------------------


async def test_consume_sends_a_signed_call_and_reads_the_messages(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(CONSUME, consumed(tmc_message(7001), tmc_message(7002, tid=99)))
    messages = await tmall.consume_messages("ecomhub", 50)
    sent = top.calls[0]
    assert {k: v for k, v in sent.items() if k != "sign"} == {
        "method": CONSUME,
        "app_key": APP_KEY,
        "session": TOKEN,
        "timestamp": NOW_CST_TEXT,
        "v": "2.0",
        "format": "json",
        "sign_method": "md5",
        "group_name": "ecomhub",
        "quantity": "50",
    }
    assert sent["sign"]
    assert messages == [
        PlatformMessage(
            message_id="7001",
            topic="taobao_trade_TradeBuyerPay",
            shop="tmall-flagship",
            platform_order_id="1234567890123",
            published=datetime(2026, 11, 20, 1, 59, 58, tzinfo=UTC),
        ),
        PlatformMessage(
            message_id="7002",
            topic="taobao_trade_TradeBuyerPay",
            shop="tmall-flagship",
            platform_order_id="99",
            published=datetime(2026, 11, 20, 1, 59, 58, tzinfo=UTC),
        ),
    ]


@pytest.mark.parametrize(("asked", "sent"), [(1, "10"), (100, "100"), (5000, "200")])
async def test_consume_quantity_is_clamped_to_tops_limits(
    tmall: TmallMarketplace, top: FakePlatform, asked: int, sent: str
) -> None:
    top.on(CONSUME, consumed())
    assert await tmall.consume_messages("g", asked) == []
    assert top.calls[0]["quantity"] == sent


@pytest.mark.parametrize(
    "answer",
    [
        {"tmc_messages_consume_response": {}},
        {"tmc_messages_consume_response": {"messages": {}}},
        {"tmc_messages_consume_response": {"messages": {"tmc_message": []}}},
    ],
)
async def test_an_empty_queue_is_an_empty_list(
    tmall: TmallMarketplace, top: FakePlatform, answer: dict[str, Any]
) -> None:
    top.on(CONSUME, answer)
    assert await tmall.consume_messages("g", 100) == []


async def test_a_malformed_message_is_returned_with_its_problem_not_raised(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    broken = tmc_message(7003)
    broken["content"] = "{not json"
    top.on(CONSUME, consumed(tmc_message(7001), broken, tmc_message(7004)))
    messages = await tmall.consume_messages("g", 100)
    assert [(m.message_id, m.platform_order_id, m.problem) for m in messages] == [
        ("7001", "1234567890123", ""),
        ("7003", "", "content is not JSON"),
        ("7004", "1234567890123", ""),
    ]


async def test_consume_errors_are_connector_errors(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(CONSUME, {"error_response": {"code": 27, "msg": "Invalid session", "request_id": "r"}})
    with pytest.raises(AuthError):
        await tmall.consume_messages("g", 100)


# --- translation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "order_id", "problem"),
    [
        (tmc_message(1), "1234567890123", ""),
        (tmc_message(1, tid="1234567890123"), "1234567890123", ""),
        (tmc_message(1, "taobao_refund_RefundCreated", refund_id=5), "1234567890123", ""),
        (tmc_message(1, "taobao_trade_TradeClose", num_iid=6, title="杯子"), "1234567890123", ""),
        (tmc_message(1, "taobao_item_ItemUpdate", tid=None), "", ""),
        (tmc_message(1, tid=None), "", "content has no usable tid: ''"),
        (tmc_message(1, tid="12a"), "", "content has no usable tid: '12a'"),
        ({**tmc_message(1), "content": "[1]"}, "", "content is not an object"),
        ({**tmc_message(1), "content": {"tid": 42}}, "42", ""),
        ({**tmc_message(1), "id": None}, "", "message has no id"),
        ("not a message", "", "message is not an object"),
    ],
)
def test_to_message(raw: Any, order_id: str, problem: str) -> None:
    message = to_message(raw, shop="s")
    assert (message.platform_order_id, message.problem, message.shop) == (order_id, problem, "s")


def test_an_unreadable_pub_time_is_no_problem() -> None:
    message = to_message({**tmc_message(1), "pub_time": "yesterday"}, shop="s")
    assert message.published is None and message.problem == ""
    assert message.platform_order_id == "1234567890123"


# --- confirm -------------------------------------------------------------------------------


async def test_confirm_sends_ok_and_failed_ids(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(CONFIRM, CONFIRMED)
    await tmall.confirm_messages("ecomhub", ["1", "2"], ["3"])
    [sent] = top.called(CONFIRM)
    assert (sent["group_name"], sent["s_message_ids"], sent["f_message_ids"]) == (
        "ecomhub",
        "1,2",
        "3",
    )


async def test_confirm_omits_an_empty_list(tmall: TmallMarketplace, top: FakePlatform) -> None:
    top.on(CONFIRM, CONFIRMED)
    await tmall.confirm_messages("g", ["1"], [])
    [sent] = top.called(CONFIRM)
    assert sent["s_message_ids"] == "1" and "f_message_ids" not in sent


async def test_only_failed_ids_are_not_confirmed(router: respx.MockRouter) -> None:
    """`s_message_ids` is required by TOP: a batch with nothing to confirm makes no call, and
    its failed messages are delivered again anyway."""
    market = TmallMarketplace(
        shop("tmall"), clock=clock(), transport=httpx.MockTransport(router.async_handler)
    )
    await market.confirm_messages("g", [], ["3"])
    await market.aclose()
    assert not router.calls


async def test_confirm_of_nothing_sends_nothing(router: respx.MockRouter) -> None:
    market = TmallMarketplace(
        shop("tmall"), clock=clock(), transport=httpx.MockTransport(router.async_handler)
    )
    await market.confirm_messages("g", [], [])
    await market.aclose()
    assert not router.calls


async def test_confirm_sends_at_most_200_ids_of_each_per_call(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(CONFIRM, CONFIRMED)
    ok = [str(i) for i in range(450)]
    await tmall.confirm_messages("g", ok, ["x"])
    calls = top.called(CONFIRM)
    assert [len(c["s_message_ids"].split(",")) for c in calls] == [200, 200, 50]
    assert [c.get("f_message_ids") for c in calls] == ["x", None, None]
    assert ",".join(c["s_message_ids"] for c in calls) == ",".join(ok)


async def test_a_confirm_that_is_not_a_success_raises(
    tmall: TmallMarketplace, top: FakePlatform
) -> None:
    top.on(CONFIRM, {"tmc_messages_confirm_response": {"is_success": False}})
    with pytest.raises(RejectedError):
        await tmall.confirm_messages("g", ["1"], [])
