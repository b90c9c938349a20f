"""What the TOP and JD simulators share: request admission, faults, and windowed order queries.

Both gateways sign with the TOP rule, allow ±10 minutes of clock skew, name the shop by `app_key`
and its authorisation by a token parameter (`session` on TOP, `access_token` on JD). `Gateway`
checks all of that once and raises `ApiError` with a platform-neutral key; each platform renders
the key in its own error envelope from a table. Faults are decided here too, before any effect:

- `HttpFault`: answer a bare HTTP 502/503 (no envelope);
- `slow`: sleep before answering;
- rate limit: the app is banned for `ban_seconds`, and every call in that time is refused;
- transient: a server-side error after admission, with no effect applied.

`Pager` serves one shop's orders in a time window, page by page, sorted by `modified`, with the
two query faults of the marketplaces: visibility latency and paging drift.
"""

import asyncio
import math
import random
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from starlette.requests import Request

from sandbox.faults import FaultInjector
from sandbox.signing import constant_time_equal, top_sign
from sandbox.world import CST, OrderState, Platform, World, to_cst

MAX_SKEW = timedelta(minutes=10)

ErrorKey = Literal[
    "missing_param",
    "invalid_param",
    "missing_method",
    "invalid_method",
    "missing_app_key",
    "invalid_app_key",
    "missing_session",
    "invalid_session",
    "missing_timestamp",
    "invalid_timestamp",
    "missing_version",
    "invalid_version",
    "invalid_format",
    "missing_signature",
    "invalid_signature",
    "rate_limited",
    "transient",
    "business",
]


class ApiError(Exception):
    """A call the gateway refuses; `key` picks the platform's error from its table.

    `business` is a refusal by the API itself: `param` is then the platform's sub_code.
    """

    def __init__(self, key: ErrorKey, param: str = "", detail: str = "", retry_after: int = 0):
        super().__init__(f"{key}:{param}" if param else key)
        self.key = key
        self.param = param
        self.detail = detail
        self.retry_after = retry_after


class HttpFault(Exception):
    """Answer with this bare HTTP status and no envelope (a proxy in front of the API failing)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class ShopCredentials:
    """What a hub needs to call one simulated shop (also what the gateway checks)."""

    code: str
    platform: Platform
    app_key: str
    app_secret: str
    access_token: str
    sign_method: str


@dataclass(frozen=True)
class Rules:
    """The parts of admission that differ between TOP and JD."""

    session_param: str
    sign_methods: tuple[str, ...]
    require_json_format: bool


def parse_timestamp(text: str) -> datetime | None:
    """`yyyy-MM-dd HH:mm:ss` in CST, or epoch milliseconds (what TOP's Python SDK sends)."""
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, CST)
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
    except ValueError:
        return None


async def read_params(request: Request) -> dict[str, str]:
    """Query string and urlencoded form body merged (the body wins), as TOP and JD accept them.

    Parsed by hand: a form body is all these routers take, and it spares a multipart dependency.
    """
    params = dict(request.query_params)
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        params.update(urllib.parse.parse_qsl(body, keep_blank_values=True))
    return params


@dataclass
class Gateway:
    """Admission shared by the TOP and JD simulators; one instance per simulator."""

    rules: Rules
    shops: dict[str, ShopCredentials]
    """By app_key."""
    methods: frozenset[str]
    faults: FaultInjector
    clock: Callable[[], datetime]
    calls: Counter[str] = field(default_factory=Counter)
    """Outcome counts: `<method>` for admitted calls, `fault:<kind>` and `error:<key>` otherwise."""
    log: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=500))
    _banned_until: dict[str, float] = field(default_factory=dict)

    def _note(self, method: str, app_key: str, outcome: str) -> None:
        self.calls[outcome] += 1
        self.log.append({"method": method, "app_key": app_key, "outcome": outcome})

    async def admit(self, params: Mapping[str, str]) -> ShopCredentials:
        """Check a call; return the shop it is for, or raise `ApiError` / `HttpFault`."""
        method = params.get("method", "")
        app_key = params.get("app_key", "")
        try:
            shop = await self._admit(params, method, app_key)
        except ApiError as exc:
            self._note(method, app_key, f"error:{exc.key}")
            raise
        except HttpFault as exc:
            self._note(method, app_key, f"fault:http_{exc.status}")
            raise
        self._note(method, app_key, method)
        return shop

    async def _admit(self, params: Mapping[str, str], method: str, app_key: str) -> ShopCredentials:
        profile = self.faults.profile
        if self.faults.roll(profile.http_5xx):
            raise HttpFault(502 if self.faults.roll(0.5) else 503)
        if self.faults.roll(profile.slow):
            self.calls["fault:slow"] += 1
            await asyncio.sleep(profile.slow_seconds)
        if not method:
            raise ApiError("missing_method")
        if method not in self.methods:
            raise ApiError("invalid_method", detail=method)
        if not app_key:
            raise ApiError("missing_app_key")
        shop = self.shops.get(app_key)
        if shop is None:
            raise ApiError("invalid_app_key")
        self._check_ban(app_key)
        self._check_timestamp(params.get("timestamp", ""))
        if not params.get("v"):
            raise ApiError("missing_version")
        if params["v"] != "2.0":
            raise ApiError("invalid_version")
        fmt = params.get("format", "")
        if (self.rules.require_json_format or fmt) and fmt != "json":
            raise ApiError("invalid_format", detail="the sandbox answers format=json only")
        self._check_signature(params, shop)
        token = params.get(self.rules.session_param, "")
        if not token:
            raise ApiError("missing_session")
        if not constant_time_equal(token, shop.access_token):
            raise ApiError("invalid_session")
        if self.faults.roll(profile.transient):
            raise ApiError("transient")
        return shop

    def _check_ban(self, app_key: str) -> None:
        profile = self.faults.profile
        now = time.monotonic()
        until = self._banned_until.get(app_key, 0.0)
        if until <= now and self.faults.roll(profile.rate_limit):
            until = now + profile.ban_seconds
            self._banned_until[app_key] = until
        if until > now:
            raise ApiError("rate_limited", retry_after=max(1, math.ceil(until - now)))

    def _check_timestamp(self, text: str) -> None:
        if not text:
            raise ApiError("missing_timestamp")
        sent = parse_timestamp(text)
        if sent is None or abs(sent - self.clock()) > MAX_SKEW:
            raise ApiError("invalid_timestamp", detail=f"timestamp {text} is more than 10 min off")

    def _check_signature(self, params: Mapping[str, str], shop: ShopCredentials) -> None:
        sign_method = params.get("sign_method") or "md5"
        if sign_method not in self.rules.sign_methods:
            raise ApiError("invalid_signature", detail=f"unsupported sign_method {sign_method}")
        sign = params.get("sign", "")
        if not sign:
            raise ApiError("missing_signature")
        expected = top_sign(params, shop.app_secret, sign_method)
        if not constant_time_equal(sign.upper(), expected):
            raise ApiError("invalid_signature")


# --- business parameter helpers -------------------------------------------------------------


def required(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None or str(value) == "":
        raise ApiError("missing_param", name)
    return str(value)


def int_param(
    params: Mapping[str, Any],
    name: str,
    default: int | None = None,
    low: int = 0,
    high: int = 2**63,
) -> int:
    raw = params.get(name)
    if raw is None or str(raw) == "":
        if default is None:
            raise ApiError("missing_param", name)
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise ApiError("invalid_param", name, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError("invalid_param", name, f"{name} must be between {low} and {high}")
    return value


def time_param(params: Mapping[str, Any], name: str) -> datetime:
    text = required(params, name)
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
    except ValueError:
        raise ApiError("invalid_param", name, f"{name} must be yyyy-MM-dd HH:mm:ss") from None


def window_params(
    params: Mapping[str, Any], start_name: str, end_name: str
) -> tuple[datetime, datetime]:
    """A query window of at most one day (both marketplaces' limit, as the sandbox applies it)."""
    start, end = time_param(params, start_name), time_param(params, end_name)
    if end < start:
        raise ApiError("invalid_param", end_name, f"{end_name} is before {start_name}")
    if end - start > timedelta(days=1):
        raise ApiError(
            "invalid_param", end_name, "the window between start and end exceeds one day"
        )
    return start, end


# --- windowed order queries -----------------------------------------------------------------


def visibility_delay(seed: int, state: OrderState, latency: float) -> float:
    """Seconds after `state.modified` before queries show this version: seeded per change."""
    if latency <= 0:
        return 0.0
    key = f"{seed}:{state.shop}:{state.order_id}:{int(state.modified.timestamp())}"
    return latency * random.Random(key).random()


@dataclass(frozen=True)
class WindowQuery:
    shop: str
    start: datetime
    end: datetime
    by_created: bool = False
    statuses: frozenset[str] | None = None
    descending: bool = True


@dataclass(frozen=True)
class Drift:
    shop: str
    order_id: int
    old_modified: str
    new_modified: str


class Pager:
    """Pages of one shop's orders in a window, as a marketplace's search index serves them.

    - Visibility latency: a version modified at T is served only from T + `visibility_delay`;
      until then the previous version (if any) is what queries see.
    - Paging drift: after a page is served, with probability `paging_drift` one order of the
      window that has not been served to this query yet is modified to a time inside the window
      newer than the oldest order served so far, so (sorted newest first) it jumps onto a page
      already read. A client paging forwards misses it; one paging from the last page backwards,
      or re-reading until stable, does not.
    """

    def __init__(self, world: World, faults: FaultInjector, seed: int) -> None:
        self.world = world
        self.faults = faults
        self.seed = seed
        self.drifts: list[Drift] = []
        self._served: dict[WindowQuery, set[int]] = {}

    def page(
        self, query: WindowQuery, page_no: int, page_size: int
    ) -> tuple[list[OrderState], int]:
        """The orders on page `page_no` (from 1) and the window's total."""
        now = self.world.clock()
        matches = self.matches(query, now)
        first = (page_no - 1) * page_size
        served_page = matches[first : first + page_size]
        if len(self._served) > 2000:  # forget old windows; drift only needs the current ones
            self._served.clear()
        served = self._served.setdefault(query, set())
        served.update(state.order_id for state in served_page)
        if (
            served_page
            and not query.by_created
            and self.faults.roll(self.faults.profile.paging_drift)
        ):
            self._drift(query, matches, served, now)
        return served_page, len(matches)

    def matches(self, query: WindowQuery, now: datetime) -> list[OrderState]:
        latency = self.faults.profile.visibility_latency
        found = []
        histories = (
            self.world.versions(query.shop)
            if query.by_created
            else self.world.touched(query.shop, query.start, query.end)
        )
        for versions in histories:
            state = self._visible(versions, now, latency)
            if state is None:
                continue
            moment = state.created if query.by_created else state.modified
            if not query.start <= moment <= query.end:
                continue
            if query.statuses is not None and state.status not in query.statuses:
                continue
            found.append(state)
        found.sort(key=lambda s: (self._key(query, s), s.order_id), reverse=query.descending)
        return found

    @staticmethod
    def _key(query: WindowQuery, state: OrderState) -> datetime:
        return state.created if query.by_created else state.modified

    def _visible(
        self, versions: list[OrderState], now: datetime, latency: float
    ) -> OrderState | None:
        for state in reversed(versions):
            delay = visibility_delay(self.seed, state, latency)
            if state.modified + timedelta(seconds=delay) <= now:
                return state
        return None

    def _drift(
        self, query: WindowQuery, matches: list[OrderState], served: set[int], now: datetime
    ) -> None:
        candidates = [
            s
            for s in matches
            if s.order_id not in served and self.world.order(s.shop, s.order_id) is s
        ]
        served_times = [s.modified for s in matches if s.order_id in served]
        if not candidates or not served_times:
            return
        victim = candidates[self.faults.choice(list(range(len(candidates))))]
        low = max(victim.modified, min(served_times)) + timedelta(seconds=1)
        high = min(query.end, to_cst(now))
        if low > high:
            return
        at = low + timedelta(seconds=int(self.faults.uniform(0, (high - low).total_seconds())))
        moved = self.world.set_memo(query.shop, victim.order_id, "改价/备注变更", at)
        self.drifts.append(
            Drift(query.shop, victim.order_id, str(victim.modified), str(moved.modified))
        )
