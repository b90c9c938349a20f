"""Kuaidi100Tracker and Kuaidi100Callbacks against a stateful fake subscribe endpoint (respx)."""

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr, ValidationError

from config.settings import CarrierConfig, Kuaidi100Config, Settings
from connectors.base import TrackingRequest, TrackingUpdate
from connectors.errors import AuthError, BadPayload, RejectedError, TransientError
from connectors.kuaidi100 import Kuaidi100Callbacks, Kuaidi100Tracker, push_sign
from connectors.registry import tracker_for, tracking_callbacks_for
from models.domain import TrackingState
from tests.connectors import FIXTURES, NO_JITTER, Sleeps, form_of

API_URL = "https://poll.k100.test.invalid"
KEY = "k100-authorisation-key"
SALT = "pepper-salt-0042"
CALLBACK = "https://hub.example.com/webhooks/kuaidi100"
SUBSCRIBED = {"result": True, "returnCode": "200", "message": "提交成功"}


def config() -> Kuaidi100Config:
    return Kuaidi100Config(
        customer="CUST-K100", key=SecretStr(KEY), salt=SecretStr(SALT), api_url=API_URL
    )


def failed(code: str, message: str = "no") -> dict[str, Any]:
    return {"result": False, "returnCode": code, "message": message}


def request(carrier: str = "ZTO", **changes: Any) -> TrackingRequest:
    values: dict[str, Any] = {
        "carrier": carrier,
        "waybill": "73100000000001",
        "callback_url": CALLBACK,
        "phone": "13800001234",
        "destination": "杭州市",
    }
    values.update(changes)
    return TrackingRequest(**values)


class FakeKuaidi100:
    """The subscribe endpoint behind one strict respx route: answers in turn (the last repeats),
    records every form it received."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.answers: list[Any] = [SUBSCRIBED]
        self.forms: list[dict[str, str]] = []
        self.route = router.post(f"{API_URL}/poll").mock(side_effect=self._answer)

    def on(self, *answers: Any) -> None:
        self.answers = list(answers)

    @property
    def params(self) -> list[dict[str, Any]]:
        return [json.loads(f["param"]) for f in self.forms]

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(form_of(request))
        answer = self.answers[min(len(self.forms), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def k100(router: respx.MockRouter) -> FakeKuaidi100:
    return FakeKuaidi100(router)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_tracker(
    router: respx.MockRouter, sleeps: Sleeps, carriers: list[CarrierConfig] | None = None
) -> Kuaidi100Tracker:
    return Kuaidi100Tracker(
        config(),
        carriers or [],
        policy=NO_JITTER,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
    )


@pytest.fixture
async def tracker(router: respx.MockRouter, sleeps: Sleeps) -> AsyncIterator[Kuaidi100Tracker]:
    connector = make_tracker(router, sleeps)
    yield connector
    await connector.aclose()


# --- subscribe ---------------------------------------------------------------------------


async def test_subscribe_sends_the_spec_form(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker
) -> None:
    await tracker.subscribe(request())
    [form] = k100.forms
    assert form["schema"] == "json"
    assert set(form) == {"schema", "param"}
    assert k100.params == [
        {
            "company": "zhongtong",
            "number": "73100000000001",
            "from": "",
            "to": "杭州市",
            "key": KEY,
            "parameters": {"callbackurl": CALLBACK, "salt": SALT},
        }
    ]


async def test_sf_gets_the_phone_and_the_config_names_the_company(
    router: respx.MockRouter, k100: FakeKuaidi100, sleeps: Sleeps
) -> None:
    carriers = [
        CarrierConfig(code="SF", kuaidi100_code="shunfengkuaiyun"),
        CarrierConfig(code="ZTO"),
    ]
    tracker = make_tracker(router, sleeps, carriers)
    try:
        await tracker.subscribe(request("SF"))
        await tracker.subscribe(request("ZTO"))
    finally:
        await tracker.aclose()
    sf, zto = k100.params
    assert sf["company"] == "shunfengkuaiyun"
    assert sf["parameters"]["phone"] == "13800001234"
    assert zto["company"] == "zhongtong" and "phone" not in zto["parameters"]


async def test_an_unknown_carrier_lets_kuaidi100_guess(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker
) -> None:
    await tracker.subscribe(request("NEWCO"))
    [param] = k100.params
    assert param["company"] == ""
    assert param["parameters"]["autoCom"] == "1"


async def test_already_subscribed_is_done(k100: FakeKuaidi100, tracker: Kuaidi100Tracker) -> None:
    k100.on(failed("501", "重复订阅"))
    await tracker.subscribe(request())
    assert len(k100.forms) == 1


@pytest.mark.parametrize(
    ("code", "message"),
    [("700", "订阅数据存在错误"), ("702", "POLL:识别不到该单号对应的快递公司"), ("999", "?")],
)
async def test_a_refusal_is_rejected_with_its_code(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker, sleeps: Sleeps, code: str, message: str
) -> None:
    k100.on(failed(code, message))
    with pytest.raises(RejectedError) as caught:
        await tracker.subscribe(request())
    assert caught.value.code == code and message in str(caught.value)
    assert len(k100.forms) == 1 and sleeps.waits == []


async def test_a_wrong_key_is_an_auth_error_without_secrets(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker
) -> None:
    k100.on(failed("600", f"您不是合法的订阅者 {KEY}"))
    with pytest.raises(AuthError) as caught:
        await tracker.subscribe(request())
    assert KEY not in str(caught.value) and SALT not in str(caught.value)
    assert len(k100.forms) == 1


@pytest.mark.parametrize(
    "fault",
    [
        failed("500", "服务器错误"),
        httpx.Response(502, text="Bad Gateway"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["code-500", "http-502", "read-timeout"],
)
async def test_a_transient_failure_is_retried(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker, sleeps: Sleeps, fault: Any
) -> None:
    k100.on(fault, SUBSCRIBED)
    await tracker.subscribe(request())
    assert len(k100.forms) == 2 and sleeps.waits == [1.0]
    assert k100.params[0] == k100.params[1]


async def test_a_lasting_transient_failure_is_raised(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker
) -> None:
    k100.on(failed("500", "服务器错误"))
    with pytest.raises(TransientError):
        await tracker.subscribe(request())
    assert len(k100.forms) == NO_JITTER.max_attempts


async def test_an_answer_that_is_not_json_is_bad_payload(
    k100: FakeKuaidi100, tracker: Kuaidi100Tracker
) -> None:
    k100.on(httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(BadPayload):
        await tracker.subscribe(request())


# --- pushes ------------------------------------------------------------------------------


def push(**changes: Any) -> str:
    body = json.loads((FIXTURES / "kuaidi100_push.json").read_text(encoding="utf-8"))
    last = changes.pop("lastResult", {})
    body.update(changes)
    body["lastResult"].update(last)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def test_push_sign_known_answer() -> None:
    param = '{"nu":"1"}'
    assert push_sign(param, SALT) == hashlib.md5(f"{param}{SALT}".encode()).hexdigest().upper()


def test_verify_accepts_only_the_salted_signature() -> None:
    callbacks = Kuaidi100Callbacks(config())
    param = push()
    good = push_sign(param, SALT)
    assert callbacks.verify(param, good)
    assert callbacks.verify(param, good.lower())
    assert not callbacks.verify(param, push_sign(param, "another-salt"))
    assert not callbacks.verify(param + " ", good)
    assert not callbacks.verify(param, "")
    assert not callbacks.verify(param, "签名")


def test_parse_reads_a_delivered_push() -> None:
    update = Kuaidi100Callbacks(config()).parse(push())
    assert update == TrackingUpdate(
        waybill="73100000000001",
        company="zhongtong",
        state=TrackingState.DELIVERED,
        raw_state="3",
        stopped=True,
        detail="【杭州市】快件已签收，签收人：本人，感谢使用中通快递",
    )


@pytest.mark.parametrize(
    ("state", "ischeck", "expected"),
    [
        ("3", "1", TrackingState.DELIVERED),
        ("3", "0", TrackingState.SHIPPED),
        ("4", "1", TrackingState.REFUSED),
        ("14", "0", TrackingState.REFUSED),
        ("0", "0", TrackingState.SHIPPED),
        ("1", "0", TrackingState.SHIPPED),
        ("5", "0", TrackingState.SHIPPED),
        ("6", "0", TrackingState.SHIPPED),
    ],
)
def test_parse_maps_states(state: str, ischeck: str, expected: TrackingState) -> None:
    param = push(status="polling", lastResult={"state": state, "ischeck": ischeck})
    update = Kuaidi100Callbacks(config()).parse(param)
    assert update.state == expected and update.raw_state == state and not update.stopped


def test_parse_keeps_why_tracking_was_aborted() -> None:
    param = push(status="abort", message="3天查询无记录", lastResult={"state": "0", "ischeck": "0"})
    update = Kuaidi100Callbacks(config()).parse(param)
    assert update.stopped and update.message == "3天查询无记录"
    assert update.state == TrackingState.SHIPPED


@pytest.mark.parametrize(
    "param",
    ["not json", "[1,2]", '{"status":"polling"}', '{"lastResult":{"state":"3","nu":""}}'],
)
def test_an_unreadable_push_is_bad_payload(param: str) -> None:
    with pytest.raises(BadPayload):
        Kuaidi100Callbacks(config()).parse(param)


def test_answers_are_the_json_kuaidi100_expects() -> None:
    callbacks = Kuaidi100Callbacks(config())
    body, content_type = callbacks.success()
    assert json.loads(body) == {"result": True, "returnCode": "200", "message": "成功"}
    assert content_type.startswith("application/json")
    body, _ = callbacks.failure("签名校验失败")
    assert json.loads(body) == {"result": False, "returnCode": "500", "message": "签名校验失败"}


# --- configuration -----------------------------------------------------------------------


def test_the_registry_builds_both_only_when_configured() -> None:
    with pytest.raises(ValueError, match="kuaidi100"):
        tracker_for(Settings())
    with pytest.raises(ValueError, match="kuaidi100"):
        tracking_callbacks_for(Settings())
    assert isinstance(tracking_callbacks_for(Settings(kuaidi100=config())), Kuaidi100Callbacks)


def test_an_empty_salt_is_refused_by_the_config() -> None:
    with pytest.raises(ValidationError, match="salt"):
        Kuaidi100Config(customer="C", key=SecretStr(KEY), salt=SecretStr(""))
