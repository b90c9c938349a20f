"""Kuaidi100 (快递100) tracking simulator: subscribe, push and query of `platforms.md` §5.1.

Endpoints (form-encoded POSTs, JSON answers):
- `POST /poll` — subscribe. Form `schema=json`, `param={"company","number","from","to","key",
  "parameters":{"callbackurl","salt","resultv2","autoCom"}}`. Success
  `{"result":true,"returnCode":"200","message":"提交成功"}`. Failures
  `{"result":false,"returnCode":…,"message":…}` with the codes of Kuaidi100's subscribe document:
  `600` 您不是合法的订阅者（即授权Key出错） (wrong `key`); `700` 订阅数据存在错误 (no/bad `param`,
  `schema` not json, empty or > 32-char `number`, no `callbackurl`, no `company` without
  `autoCom=1`); `702` POLL:识别不到该单号对应的快递公司 (`autoCom=1` and the number matches no
  carrier); `501` 重复订阅 — the number is already being tracked (its status is still `polling`);
  the real service ignores such a subscribe, and accepts a new one only after the number's status
  became `shutdown`/`abort` (it asks to wait half an hour; the sandbox does not); `500` 服务器错误
  (the `transient` fault). Numbers are tracked per number, whatever the company.
- `POST /poll/query.do` — real-time query. Form `customer`, `param={"com","num","phone",
  "resultv2","show","order"}`, `sign=UPPER(MD5(param + key + customer))`. Answer
  `{"message":"ok","nu","ischeck","condition","com","status":"200","state","data":[…]}` (data
  newest first unless `order=asc`). Failures: `503` 验证签名失败 (wrong sign or unknown customer),
  `400` 找不到对应公司 / 数据不完整 (no `num` or `com`, bad JSON), `500` 查询无结果，请隔段时间再查
  (number unknown or no event yet), `502` 服务器繁忙 (the `transient` fault).

Pushes: each accepted subscription gets, `push_delay` s after subscribing, an in-transit push
(`status=polling`, `lastResult.state="0"`, `ischeck="0"`; data: 揽收 then 在途), and
`2 × push_delay` s after subscribing the final push: delivered (`status=shutdown`, `state="3"`
签收, `ischeck="1"`) for most, refused for a seeded share (`refuse_rate`): `state="14"` 拒签
(`ischeck="0"`) or `state="4"` 退签 (`ischeck="1"`, signed back by the sender), both with
`status=shutdown` (the sandbox stops tracking there). A push is a form POST to `callbackurl` with
`param` = the JSON `{"status","billstatus","message","autoCheck","comOld","comNew",
"lastResult":{"message","state","status","condition","ischeck","com","nu","data":[{"time",
"ftime","context","location"[, "areaCode","areaName","status" when resultv2 is set]}]}}` (all
values strings, data newest first) and, when a `salt` was given, `sign=UPPER(MD5(param + salt))`.
A push counts as delivered only when the receiver answers JSON with `result` true and `returnCode`
"200"; otherwise it is retried with backoff 0.2 s doubling to a 2 s cap, forever. (The real
service retries 3 times, 35 minutes apart, then gives up, and its first push comes 15 min–4 h
after subscribing.) `duplicate_callbacks` sends that share of pushes twice. Faults on requests:
`slow`, `http_5xx` (bare 502/503), `transient` (codes above).

Keyword knobs of `Kuaidi100Sim` (defaults): `refuse_rate` 0.1, `retry_backoff` (0.2, 2.0),
`push_timeout` 5.0 s. Inspection: `subscriptions` (accepted, in order), `rejected`
((returnCode, message) of every failure answered), `pushes` (every queued push with attempts /
delivered / last_error), `pushes_sent` (acknowledged, duplicates included), `queries`,
`faults_served`, `track(number)`, `snapshot()`.

Deliberate differences: any number is accepted and gets a generated track (the real service
only knows real waybills, and answers `abort` "3天查询无记录" for unknown ones); `areaCode` is empty;
only two pushes per number; `show` other than 0 is ignored (always JSON); the query's `com` is
not checked against the subscribed company; `phone` is not required for any carrier.
"""

import asyncio
import heapq
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.faults import FaultInjector
from sandbox.redelivery import Loops, deliver_until_acknowledged
from sandbox.signing import constant_time_equal, kuaidi100_push_sign, kuaidi100_query_sign

CST = timezone(timedelta(hours=8))
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TICK = 0.02
MAX_NUMBER_LENGTH = 32

COMPANY_NAMES = {
    "shunfeng": "顺丰速运",
    "zhongtong": "中通快递",
    "yuantong": "圆通速递",
    "shentong": "申通快递",
    "yunda": "韵达快递",
    "jd": "京东物流",
    "ems": "EMS",
    "jtexpress": "极兔速递",
}
# `autoCom=1`: guess the company from the number's shape, like the carrier formats the WMS uses.
AUTO_COM = (
    ("SF", "shunfeng"),
    ("JDVA", "jd"),
    ("YT", "yuantong"),
    ("JT", "jtexpress"),
    ("E", "ems"),
    ("77", "shentong"),
    ("43", "yunda"),
    ("7", "zhongtong"),
)
STATE_TEXT = {"0": "在途", "1": "揽收", "3": "签收", "4": "退签", "5": "派件", "14": "拒签"}


def _subscribe_answer(ok: bool, code: str, message: str) -> JSONResponse:
    return JSONResponse({"result": ok, "returnCode": code, "message": message})


class Kuaidi100Error(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TrackEvent:
    time: str
    context: str
    state: str
    area: str


@dataclass
class Track:
    """What happened to one waybill; `events` are revealed stage by stage, oldest first."""

    company: str
    number: str
    outcome: str
    """`3` delivered, `14` refused, `4` returned to sender."""
    events: list[TrackEvent] = field(default_factory=list)
    status: str = "polling"

    @property
    def state(self) -> str:
        return self.events[-1].state if self.events else "0"

    @property
    def ischeck(self) -> str:
        return "1" if self.state in ("3", "4") else "0"


@dataclass
class Subscription:
    """One accepted subscribe request."""

    company: str
    number: str
    callback_url: str
    salt: str
    resultv2: str
    origin: str
    destination: str
    param: str


@dataclass
class Push:
    """One queued push; a duplicate copy is a separate object with the same `param`."""

    seq: int
    number: str
    url: str
    param: str
    sign: str
    status: str
    state: str
    duplicate: bool = False
    attempts: int = 0
    delivered: bool = False
    last_error: str = ""
    next_at: float = 0.0


def _cst(at: float) -> str:
    return datetime.fromtimestamp(at, CST).strftime(TIME_FORMAT)


class Kuaidi100Sim:
    """Kuaidi100 subscribe / push / query for one customer account (see the module docstring).

    Inspection: `subscriptions` (accepted, in order), `rejected` (returnCode, message),
    `pushes` (all queued), `pushes_sent` (acknowledged), `track(number)`, `snapshot()`.
    """

    def __init__(
        self,
        customer: str,
        key: str,
        faults: FaultInjector,
        push_delay: float,
        *,
        refuse_rate: float = 0.1,
        retry_backoff: tuple[float, float] = (0.2, 2.0),
        push_timeout: float = 5.0,
    ) -> None:
        self.customer = customer
        self.key = key
        self._faults = faults
        self._rng = random.Random(f"kuaidi100:{faults.seed}")
        self.push_delay = push_delay
        self.refuse_rate = refuse_rate
        self.retry_backoff = retry_backoff
        self.push_timeout = push_timeout

        self.subscriptions: list[Subscription] = []
        self.rejected: list[tuple[str, str]] = []
        self.pushes: list[Push] = []
        self.queries: list[str] = []
        self.faults_served: list[tuple[str, str]] = []
        self._tracks: dict[str, Track] = {}
        self._stages: list[tuple[float, int, Subscription, int]] = []
        self._ids = itertools.count(1)
        self._loops = Loops()

    # --- lifecycle -------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/poll", self._subscribe_endpoint, methods=["POST"]),
            Route("/poll/query.do", self._query_endpoint, methods=["POST"]),
        ]

    async def start(self) -> None:
        self._loops.start(
            {"kuaidi100-stages": self._stage_loop, "kuaidi100-pushes": self._push_loop}
        )

    async def stop(self) -> None:
        await self._loops.stop()

    # --- inspection ------------------------------------------------------------------------------

    def track(self, number: str) -> Track | None:
        return self._tracks.get(number)

    @property
    def pushes_sent(self) -> list[Push]:
        """Pushes the receiver acknowledged, duplicates included."""
        return [p for p in self.pushes if p.delivered]

    def snapshot(self) -> dict[str, Any]:
        return {
            "subscriptions": [
                {"company": s.company, "number": s.number, "callbackurl": s.callback_url}
                for s in self.subscriptions
            ],
            "tracks": {
                n: {
                    "company": t.company,
                    "state": t.state,
                    "status": t.status,
                    "events": len(t.events),
                }
                for n, t in self._tracks.items()
            },
            "pushes": [
                {
                    "number": p.number,
                    "status": p.status,
                    "state": p.state,
                    "duplicate": p.duplicate,
                    "attempts": p.attempts,
                    "delivered": p.delivered,
                    "last_error": p.last_error,
                }
                for p in self.pushes
            ],
            "rejected": [list(r) for r in self.rejected],
            "queries": list(self.queries),
            "faults": [list(f) for f in self.faults_served],
        }

    # --- HTTP ------------------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str]:
        # parse_qs instead of request.form(): no python-multipart needed, and the raw `param`
        # string (what the signature covers) comes back exactly as sent.
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    async def _gateway_faults(self, path: str) -> Response | None:
        profile = self._faults.profile
        if self._faults.roll(profile.slow):
            self.faults_served.append((path, "slow"))
            await asyncio.sleep(profile.slow_seconds)
        if self._faults.roll(profile.http_5xx):
            self.faults_served.append((path, "http_5xx"))
            status = 502 if self._faults.roll(0.5) else 503
            return Response("Bad Gateway" if status == 502 else "Service Unavailable", status)
        return None

    async def _subscribe_endpoint(self, request: Request) -> Response:
        faulted = await self._gateway_faults("/poll")
        if faulted is not None:
            return faulted
        form = await self._form(request)
        try:
            self.subscribe(form)
        except Kuaidi100Error as exc:
            self.rejected.append((exc.code, exc.message))
            return _subscribe_answer(False, exc.code, exc.message)
        return _subscribe_answer(True, "200", "提交成功")

    async def _query_endpoint(self, request: Request) -> Response:
        faulted = await self._gateway_faults("/poll/query.do")
        if faulted is not None:
            return faulted
        form = await self._form(request)
        try:
            return JSONResponse(self.query(form))
        except Kuaidi100Error as exc:
            self.rejected.append((exc.code, exc.message))
            return _subscribe_answer(False, exc.code, exc.message)

    # --- subscribe -------------------------------------------------------------------------------

    def subscribe(self, form: dict[str, str]) -> Subscription:
        """Validate and record one subscribe; raises `Kuaidi100Error` with the answer's code."""
        if form.get("schema", "json") != "json":
            raise Kuaidi100Error("700", "订阅数据存在错误: schema 只支持 json")
        param = _json_object(form.get("param", ""), "700", "订阅数据存在错误: param 不是 JSON")
        if not constant_time_equal(str(param.get("key", "")), self.key):
            raise Kuaidi100Error("600", "您不是合法的订阅者（即授权Key出错）")
        if self._faults.roll(self._faults.profile.transient):
            self.faults_served.append(("/poll", "transient"))
            raise Kuaidi100Error("500", "服务器错误")
        parameters = param.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise Kuaidi100Error("700", "订阅数据存在错误: parameters 不是对象")
        number = str(param.get("number", "")).strip()
        if not number or len(number) > MAX_NUMBER_LENGTH:
            raise Kuaidi100Error("700", "订阅数据存在错误: 单号为空或超长")
        callback_url = str(parameters.get("callbackurl", "")).strip()
        if not callback_url.startswith(("http://", "https://")):
            raise Kuaidi100Error("700", "订阅数据存在错误: 回调地址错误")
        company = self._company(str(param.get("company", "")).strip().lower(), number, parameters)
        existing = self._tracks.get(number)
        if existing is not None and existing.status == "polling":
            raise Kuaidi100Error("501", "重复订阅")
        sub = Subscription(
            company=company,
            number=number,
            callback_url=callback_url,
            salt=str(parameters.get("salt", "")),
            resultv2=str(parameters.get("resultv2", "")),
            origin=str(param.get("from", "")),
            destination=str(param.get("to", "")),
            param=form.get("param", ""),
        )
        self.subscriptions.append(sub)
        now = time.monotonic()
        if existing is None:
            outcome = self._outcome()
            self._tracks[number] = Track(company, number, outcome)
            heapq.heappush(self._stages, (now + self.push_delay, next(self._ids), sub, 1))
            heapq.heappush(self._stages, (now + 2 * self.push_delay, next(self._ids), sub, 2))
        else:
            # A finished number subscribed again: push its whole (final) track once more.
            heapq.heappush(self._stages, (now + self.push_delay, next(self._ids), sub, 0))
        return sub

    def _company(self, company: str, number: str, parameters: dict[str, Any]) -> str:
        if company:
            return company
        if str(parameters.get("autoCom", "")) != "1":
            raise Kuaidi100Error("700", "订阅数据存在错误: 快递公司编码为空")
        for prefix, guessed in AUTO_COM:
            if number.upper().startswith(prefix):
                return guessed
        raise Kuaidi100Error("702", "POLL:识别不到该单号对应的快递公司")

    def _outcome(self) -> str:
        if self._rng.random() < self.refuse_rate:
            return self._rng.choice(["14", "4"])
        return "3"

    # --- time passing ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Reveal every due stage of every track and queue its push."""
        now = time.monotonic()
        due = []
        while self._stages and self._stages[0][0] <= now:  # a heap: no scan of what is not due
            due.append(heapq.heappop(self._stages))
        for _, _, sub, stage in due:
            track = self._tracks[sub.number]
            if stage:
                self._advance(track, sub, stage)
            self._queue_push(sub, track)

    async def _stage_loop(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK)

    def _advance(self, track: Track, sub: Subscription, stage: int) -> None:
        name = COMPANY_NAMES.get(track.company, track.company)
        origin = sub.origin or "上海市"
        dest = sub.destination or "北京市"
        at = time.time()
        if stage == 1:
            track.events.append(
                TrackEvent(_cst(at - 3600), f"【{origin}】{name} 已揽收", "1", origin)
            )
            track.events.append(
                TrackEvent(_cst(at), f"【{origin}】快件已发往 {dest} 转运中心", "0", origin)
            )
            return
        texts = {
            "3": f"【{dest}】快件已签收，签收人：本人，感谢使用{name}",
            "14": f"【{dest}】收件人拒收，快件将退回寄件人",
            "4": f"【{origin}】退回件已由寄件人签收",
        }
        track.events.append(TrackEvent(_cst(at), texts[track.outcome], track.outcome, dest))
        track.status = "shutdown"

    def _data(self, track: Track, resultv2: str, newest_first: bool = True) -> list[dict[str, str]]:
        rows = []
        for ev in track.events:
            row = {"time": ev.time, "ftime": ev.time, "context": ev.context, "location": ev.area}
            if resultv2 and resultv2 != "0":
                row |= {"areaCode": "", "areaName": ev.area, "status": STATE_TEXT[ev.state]}
            rows.append(row)
        return rows[::-1] if newest_first else rows

    def _queue_push(self, sub: Subscription, track: Track) -> None:
        payload = {
            "status": track.status,
            "billstatus": "check" if track.status == "shutdown" else "sending",
            "message": "",
            "autoCheck": "0",
            "comOld": "",
            "comNew": "",
            "lastResult": {
                "message": "ok",
                "state": track.state,
                "status": "200",
                "condition": "F00",
                "ischeck": track.ischeck,
                "com": track.company,
                "nu": track.number,
                "data": self._data(track, sub.resultv2),
            },
        }
        param = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        sign = kuaidi100_push_sign(param, sub.salt) if sub.salt else ""
        copies = 2 if self._faults.roll(self._faults.profile.duplicate_callbacks) else 1
        for n in range(copies):
            self.pushes.append(
                Push(
                    next(self._ids),
                    sub.number,
                    sub.callback_url,
                    param,
                    sign,
                    track.status,
                    track.state,
                    duplicate=n > 0,
                )
            )

    async def _push_loop(self) -> None:
        await deliver_until_acknowledged(
            self.pushes, self._post, request_timeout=self.push_timeout, backoff=self.retry_backoff
        )

    @staticmethod
    async def _post(client: httpx.AsyncClient, push: Push) -> str | None:
        form = {"param": push.param}
        if push.sign:
            form["sign"] = push.sign
        try:
            response = await client.post(push.url, data=form)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        try:
            answer = response.json()
        except ValueError:
            return "answer is not JSON"
        if not isinstance(answer, dict):
            return "answer is not a JSON object"
        if answer.get("result") not in (True, "true") or str(answer.get("returnCode")) != "200":
            return f"result={answer.get('result')} returnCode={answer.get('returnCode')}"
        return None

    # --- query -----------------------------------------------------------------------------------

    def query(self, form: dict[str, str]) -> dict[str, Any]:
        """Answer one real-time query; raises `Kuaidi100Error` with the answer's code."""
        raw = form.get("param", "")
        expected = kuaidi100_query_sign(raw, self.key, self.customer)
        if form.get("customer") != self.customer or not constant_time_equal(
            expected, form.get("sign", "")
        ):
            raise Kuaidi100Error("503", "验证签名失败")
        if self._faults.roll(self._faults.profile.transient):
            self.faults_served.append(("/poll/query.do", "transient"))
            raise Kuaidi100Error("502", "服务器繁忙")
        param = _json_object(raw, "400", "数据不完整")
        number = str(param.get("num", "")).strip()
        company = str(param.get("com", "")).strip().lower()
        if not number or not company:
            raise Kuaidi100Error("400", "找不到对应公司或数据不完整")
        self.queries.append(number)
        track = self._tracks.get(number)
        if track is None or not track.events:
            raise Kuaidi100Error("500", "查询无结果，请隔段时间再查")
        newest_first = str(param.get("order", "desc")) != "asc"
        return {
            "message": "ok",
            "nu": track.number,
            "ischeck": track.ischeck,
            "condition": "F00",
            "com": track.company,
            "status": "200",
            "state": track.state,
            "data": self._data(track, str(param.get("resultv2", "")), newest_first),
        }


def _json_object(raw: str, code: str, message: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise Kuaidi100Error(code, message) from None
    if not isinstance(value, dict):
        raise Kuaidi100Error(code, message)
    return value
