"""Kuaidi100 (快递100) courier tracking: subscribe a waybill, then read what Kuaidi100 pushes back.

Wire contract (`specs/platforms.md` §5.1, `specs/decisions.md` "Logistics"):

- Subscribe: POST form to `{api_url}/poll` with `schema=json` and `param` = the JSON
  `{"company","number","from","to","key","parameters":{"callbackurl","salt"[,"autoCom","phone"]}}`.
  `company` is the Kuaidi100 name of the courier (`CarrierConfig.kuaidi100_code`, else
  `COMPANIES` by the hub's carrier code); when neither knows the carrier, `company` is empty and
  `autoCom=1` lets Kuaidi100 guess from the number. `phone` (the receiver's) goes only to the
  couriers that require it (`PHONE_REQUIRED`). The account `key` travels inside `param`; nothing
  is signed on this call.
- Answer: `{"result":true|false,"returnCode","message"}`, HTTP 200 either way:

      result true / returnCode 200   subscribed
      501 重复订阅                    subscribed (the number is being tracked already)
      500 服务器错误, 502 服务器繁忙    TransientError (retried by the transport)
      600 您不是合法的订阅者           AuthError (wrong key)
      700 订阅数据存在错误, 702 识别不到快递公司, any other code
                                      RejectedError
      not a JSON object               BadPayload

  A repeat is harmless (501), so subscribe is idempotent for the transport: a timeout, a dropped
  connection or an HTTP 5xx is retried there rather than raised as ambiguous.
- Push (to the callback URL, form fields `param` and `sign`): `sign` = UPPER(MD5(param + salt))
  over the raw `param` string; `param` = `{"status","billstatus","message","autoCheck","comOld",
  "comNew","lastResult":{"state","ischeck","com","nu","data":[{"time","ftime","context"…}]}}`,
  data newest first. The hub always subscribes with the configured salt, so an unsigned push is
  refused. State (`lastResult.state`): 3 with `ischeck=1` → DELIVERED; 4 (退签) or 14 (拒签) →
  REFUSED; anything else → SHIPPED (in transit). `status` shutdown / abort = tracking stopped.
- The receiver answers `{"result":true,"returnCode":"200","message":"成功"}` once stored;
  anything else makes Kuaidi100 push again (3 times, 35 min apart).
"""

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from config.settings import CarrierConfig, Kuaidi100Config
from connectors.base import TrackingRequest, TrackingUpdate
from connectors.http import DEFAULT_POLICY, Call, Fault, HttpTransport, RetryPolicy, Sleep, Timeouts
from connectors.top_family import ErrorRule, ErrorTable, raise_error, text
from models.domain import TrackingState

PLATFORM = "kuaidi100"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"

COMPANIES: dict[str, str] = {
    "SF": "shunfeng",
    "ZTO": "zhongtong",
    "YTO": "yuantong",
    "STO": "shentong",
    "YUNDA": "yunda",
    "EMS": "ems",
    "JD": "jd",
    "HTKY": "huitongkuaidi",
    "DBL": "debangwuliu",
}
"""The hub's carrier code (WMS `logisticsCode` / TOP `company_code`) → Kuaidi100 `company`."""

PHONE_REQUIRED = frozenset({"shunfeng", "shunfengkuaiyun"})
"""Couriers whose tracking Kuaidi100 serves only with the receiver's (or sender's) phone."""

ALREADY_SUBSCRIBED = "501"
SUBSCRIBE_ERRORS = ErrorTable(
    rules=(
        ErrorRule(Fault.TRANSIENT, codes=frozenset({"500", "502"})),
        ErrorRule(Fault.AUTH, codes=frozenset({"600"})),
    ),
    default=Fault.REJECTED,
)

DELIVERED_STATE = "3"
REFUSED_STATES = frozenset({"4", "14"})
STOPPED_STATUSES = frozenset({"shutdown", "abort"})


def push_sign(param: str, salt: str) -> str:
    """The signature of a push: UPPER(MD5(param + salt))."""
    return hashlib.md5((param + salt).encode("utf-8")).hexdigest().upper()


def tracking_state(state: str, ischeck: str) -> TrackingState:
    """Kuaidi100 `state` / `ischeck` → the hub's tracking state (decisions.md, Logistics)."""
    if state in REFUSED_STATES:
        return TrackingState.REFUSED
    if state == DELIVERED_STATE and ischeck == "1":
        return TrackingState.DELIVERED
    return TrackingState.SHIPPED


def company_for(carrier: str, carriers: Sequence[CarrierConfig] = ()) -> str:
    """The Kuaidi100 `company` of a hub carrier code; "" when unknown (Kuaidi100 guesses)."""
    configured = next((c.kuaidi100_code for c in carriers if c.code == carrier), None)
    return configured or COMPANIES.get(carrier.upper(), "")


def _answer(ok: bool, code: str, message: str) -> tuple[str, str]:
    body = {"result": ok, "returnCode": code, "message": message}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")), JSON_CONTENT_TYPE


def _json_object(raw: str | bytes, call: Call, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        call.fail(Fault.BAD_PAYLOAD, f"{what} is not JSON")
    if not isinstance(value, dict):
        call.fail(Fault.BAD_PAYLOAD, f"{what} is not a JSON object")
    return value


def read_subscribe_answer(response: httpx.Response, call: Call) -> None:
    """Return when subscribed (or already subscribed); raise what the answer's code means."""
    body = _json_object(response.content, call, "answer")
    code = text(body.get("returnCode"))
    if text(body.get("result")) == "true" or code == ALREADY_SUBSCRIBED:
        return
    raise_error(call, SUBSCRIBE_ERRORS, code=code, message=body.get("message"))


class Kuaidi100Tracker:
    """One Kuaidi100 account's subscribe endpoint (see the module docstring)."""

    platform: ClassVar[str] = PLATFORM
    subscribe_method: ClassVar[str] = "poll"
    rate_limit_wait_cap: ClassVar[float] = 60.0

    def __init__(
        self,
        config: Kuaidi100Config,
        carriers: Sequence[CarrierConfig] = (),
        *,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.config = config
        self.carriers = tuple(carriers)
        self._key = config.key.get_secret_value()
        self._salt = config.salt.get_secret_value()
        self.http = HttpTransport(
            platform=PLATFORM,
            target=config.customer,
            url=f"{str(config.api_url).rstrip('/')}/{self.subscribe_method}",
            policy=policy or DEFAULT_POLICY,
            wait_cap=self.rate_limit_wait_cap,
            timeouts=timeouts,
            transport=transport,
            sleep=sleep,
            secrets=(self._key, self._salt),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def param(self, request: TrackingRequest) -> str:
        """The subscribe `param` JSON for one waybill."""
        company = company_for(request.carrier, self.carriers)
        parameters = {"callbackurl": request.callback_url, "salt": self._salt}
        if not company:
            parameters["autoCom"] = "1"
        if request.phone and company in PHONE_REQUIRED:
            parameters["phone"] = request.phone
        param = {
            "company": company,
            "number": request.waybill,
            "from": "",
            "to": request.destination,
            "key": self._key,
            "parameters": parameters,
        }
        return json.dumps(param, ensure_ascii=False, separators=(",", ":"))

    async def subscribe(self, request: TrackingRequest) -> None:
        form = {"schema": "json", "param": self.param(request)}
        await self.http.post_form(
            self.subscribe_method, form, idempotent=True, parse=read_subscribe_answer
        )


class Kuaidi100Callbacks:
    """Verifies and reads Kuaidi100's pushes (`/webhooks/kuaidi100`), renders its answers."""

    platform: ClassVar[str] = PLATFORM
    push_method: ClassVar[str] = "push"

    def __init__(self, config: Kuaidi100Config) -> None:
        self.config = config
        self._salt = config.salt.get_secret_value()

    def verify(self, param: str, sign: str) -> bool:
        if not sign:
            return False
        expected = push_sign(param, self._salt)
        return hmac.compare_digest(expected.encode("ascii"), sign.upper().encode("utf-8"))

    def parse(self, param: str) -> TrackingUpdate:
        call = Call(
            PLATFORM, self.config.customer, self.push_method, idempotent=True, secrets=(self._salt,)
        )
        body = _json_object(param, call, "push param")
        last = body.get("lastResult")
        if not isinstance(last, dict):
            call.fail(Fault.BAD_PAYLOAD, "push without lastResult")
        waybill = text(last.get("nu"))
        if not waybill:
            call.fail(Fault.BAD_PAYLOAD, "push without a waybill (lastResult.nu)")
        status = text(body.get("status"))
        raw_state = text(last.get("state"))
        data = last.get("data")
        newest = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        return TrackingUpdate(
            waybill=waybill,
            company=text(last.get("com")) or text(body.get("comNew")),
            state=tracking_state(raw_state, text(last.get("ischeck"))),
            raw_state=raw_state,
            stopped=status in STOPPED_STATUSES,
            message=text(body.get("message")) if status == "abort" else "",
            detail=text(newest.get("context")),
        )

    def success(self) -> tuple[str, str]:
        return _answer(True, "200", "成功")

    def failure(self, message: str) -> tuple[str, str]:
        return _answer(False, "500", message)
