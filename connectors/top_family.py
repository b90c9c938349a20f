"""What Taobao TOP and JD JOS share: signing, timestamps, envelopes, error tables, paging.

Wire contract (`specs/platforms.md` §1.1–1.2, §2.1; `specs/decisions.md`):

- POST `application/x-www-form-urlencoded;charset=utf-8` to the shop's `api_url`, every parameter
  (system and business) in the form body. System parameters: `method`, `app_key`, the token
  (`session` on TOP, `access_token` on JD), `timestamp` (`yyyy-MM-dd HH:mm:ss`, China Standard
  Time, from the injected clock), `v=2.0`, `sign_method`, plus the dialect's fixed ones
  (`format=json` on TOP), and `sign`.
- `sign` = HEX_UPPER of md5(secret + s + secret) | HMAC_MD5(secret, s) | HMAC_SHA256(secret, s),
  where s = concat(k + v) over every non-empty parameter except `sign`, in ASCII key order
  (Qimen appends its raw body to s). `top_sign` is that primitive; `TopSigner` is the one
  `httpx.Auth` that applies it (and adds the system parameters, so secrets live only there).
- Success: `{"<key>": {...}}` with `<key>` = `trades_sold_increment_get_response` on TOP (method
  without `taobao.`, dots → `_`, `_response`) and `jingdong_pop_order_search_responce` on JD
  (JD's spelling). Error: `{"error_response": {"code", "msg"/"zh_desc", "sub_code", "sub_msg"}}`
  with HTTP 200; TOP's code is an int, JD's a string. A JD answer may also carry a non-"0" `code`
  inside its own key.
- Error tables are ordered rules (first match wins) from code / sub_code prefix / message keyword
  to a `Fault`; `raise_error` is the one function that raises from a body.
"""

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import httpx
from pydantic import SecretStr

from config.settings import ShopConfig
from connectors.http import (
    DEFAULT_POLICY,
    Call,
    Fault,
    HttpTransport,
    RetryPolicy,
    Sleep,
    Timeouts,
)
from models.clock import CST, Clock

SignMethod = Literal["md5", "hmac", "hmac-sha256"]
CST_FORMAT = "%Y-%m-%d %H:%M:%S"


# --- time and money on the wire -----------------------------------------------------------


def cst_text(moment: datetime) -> str:
    """An aware datetime as the marketplaces write it: `yyyy-MM-dd HH:mm:ss` in CST."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(CST).strftime(CST_FORMAT)


def parse_cst(value: object) -> datetime:
    """A wire time (`yyyy-MM-dd HH:mm:ss`, CST unless it says otherwise) as aware UTC."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a time: {value!r}")
    # fromisoformat reads `yyyy-MM-dd HH:mm:ss` (and ISO with an offset) ~10x faster than
    # strptime; this runs several times per order on the ingest hot path.
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CST)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # "0001-01-01 00:00:00", a platform's "no time"
        raise ValueError(f"not a real time: {value!r}") from None


def parse_money(value: object, name: str) -> Decimal:
    """A yuan amount (decimal string, or a number) as `Decimal`; missing/empty is 0."""
    if value is None or value == "":
        return Decimal("0")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{name}: not an amount: {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{name}: not an amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"{name}: not an amount: {value!r}")
    return amount


def as_list(value: object) -> list[Any]:
    """A wire list that may be missing, empty, or a single object where a list is expected."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def unwrap_list(container: object, inner: str) -> list[Any]:
    """TOP's double-wrapped lists: `{"trades": {"trade": [..]}}` → `[..]`.

    Accepts the list directly, a missing/empty wrapper, and a single object for a list."""
    if container is None or container == "" or container == {} or container == []:
        return []
    if isinstance(container, dict):
        if inner in container:
            return as_list(container[inner])
        return [container]  # a bare object where a wrapped list was expected
    return as_list(container)


def text(value: object) -> str:
    """A wire scalar as text (ids come as int64 or strings)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def json_text(raw: object) -> str:
    return json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str)


# --- signing ------------------------------------------------------------------------------


def top_sign(params: Mapping[str, str], secret: str, method: str = "md5", body: str = "") -> str:
    """The TOP signature (also JD's md5, and Qimen's with its raw `body` appended)."""
    s = "".join(f"{k}{v}" for k, v in sorted(params.items()) if k and k != "sign" and v != "")
    s += body
    if method == "md5":
        return hashlib.md5((secret + s + secret).encode("utf-8")).hexdigest().upper()
    if method == "hmac":
        return hmac.new(secret.encode("utf-8"), s.encode("utf-8"), hashlib.md5).hexdigest().upper()
    if method == "hmac-sha256":
        digest = hmac.new(secret.encode("utf-8"), s.encode("utf-8"), hashlib.sha256)
        return digest.hexdigest().upper()
    raise ValueError(f"unknown sign_method {method!r}")


class TopSigner(httpx.Auth):
    """Adds the system parameters and the signature to a form-encoded TOP/JD request body.

    One instance per shop; it alone holds the app secret and the token. The timestamp is taken
    from the clock at signing time, so every retry is signed afresh."""

    requires_request_body = True

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: SecretStr,
        token: SecretStr,
        token_param: str,
        sign_method: SignMethod,
        clock: Clock,
        fixed: Mapping[str, str],
    ) -> None:
        self._app_key = app_key
        self._secret = app_secret
        self._token = token
        self._token_param = token_param
        self._sign_method = sign_method
        self._clock = clock
        self._fixed = dict(fixed)

    def __repr__(self) -> str:
        return f"TopSigner(app_key={self._app_key!r}, sign_method={self._sign_method!r})"

    def sign_params(self, params: Mapping[str, str]) -> dict[str, str]:
        signed = dict(params)
        signed.update(self._fixed)
        signed.update(
            {
                "app_key": self._app_key,
                self._token_param: self._token.get_secret_value(),
                "timestamp": cst_text(self._clock.now()),
                "sign_method": self._sign_method,
            }
        )
        signed.pop("sign", None)
        signed["sign"] = top_sign(signed, self._secret.get_secret_value(), self._sign_method)
        return signed

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        params = dict(parse_qsl(request.content.decode("utf-8"), keep_blank_values=True))
        body = urlencode(self.sign_params(params)).encode("utf-8")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        yield httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=body,
            extensions=request.extensions,
        )


# --- error tables -------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorRule:
    """One row of an error table: every criterion given must match."""

    fault: Fault
    codes: frozenset[str] = frozenset()
    sub_code_prefix: str = ""
    keywords: tuple[str, ...] = ()
    """Any of these in the message (lower-cased) matches."""

    def matches(self, code: str, sub_code: str, message: str) -> bool:
        if self.codes and code not in self.codes:
            return False
        if self.sub_code_prefix and not sub_code.startswith(self.sub_code_prefix):
            return False
        lowered = message.lower()
        return not self.keywords or any(k in lowered for k in self.keywords)


@dataclass(frozen=True)
class ErrorTable:
    rules: tuple[ErrorRule, ...]
    default: Fault = Fault.REJECTED

    def classify(self, code: str, sub_code: str = "", message: str = "") -> Fault:
        for rule in self.rules:
            if rule.matches(code, sub_code, message):
                return rule.fault
        return self.default


_BAN_SECONDS = re.compile(r"(\d+)\s*more\s+seconds", re.IGNORECASE)
_BAN_MINUTES = re.compile(r"(\d+)\s*分钟后")


def ban_seconds(sub_msg: str) -> float | None:
    """N from TOP's "This ban will last for N more seconds", or from "…3分钟后再查询"."""
    found = _BAN_SECONDS.search(sub_msg)
    if found:
        return float(found.group(1))
    found = _BAN_MINUTES.search(sub_msg)
    return float(found.group(1)) * 60 if found else None


def raise_error(
    call: Call,
    table: ErrorTable,
    *,
    code: object,
    sub_code: object = "",
    message: object = "",
    ban_text: object = "",
) -> None:
    """Raise the connector error this code/sub_code means (the one place bodies become errors)."""
    code_s, sub_s, msg_s = text(code), text(sub_code), text(message)
    fault = table.classify(code_s, sub_s, msg_s)
    retry_after = ban_seconds(text(ban_text) or msg_s) if fault is Fault.RATE_LIMITED else None
    call.fail(fault, msg_s or "error answer", code=code_s, sub_code=sub_s, retry_after=retry_after)


# --- envelopes ----------------------------------------------------------------------------


def _business_form(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: text(v) for k, v in params.items() if v is not None}


@dataclass(frozen=True)
class Dialect:
    """How one TOP-family platform spells the shared protocol."""

    platform: str
    token_param: str
    errors: ErrorTable
    response_suffix: str
    strip_prefix: str = ""
    fixed: Mapping[str, str] = field(default_factory=dict)
    encode: Callable[[Mapping[str, Any]], dict[str, str]] = _business_form
    """Business parameters → form fields (TOP: as they are; JD: one JSON string)."""

    def response_key(self, method: str) -> str:
        return method.removeprefix(self.strip_prefix).replace(".", "_") + self.response_suffix

    def parse(self, response: httpx.Response, call: Call) -> dict[str, Any]:
        """The method's own object from an answer, or the error the answer reports."""
        try:
            body = response.json()
        except ValueError:
            call.fail(Fault.BAD_PAYLOAD, "answer is not JSON")
        if not isinstance(body, dict):
            call.fail(Fault.BAD_PAYLOAD, "answer is not a JSON object")
        error = body.get("error_response")
        if error is not None:
            if not isinstance(error, dict) or "code" not in error:
                call.fail(Fault.BAD_PAYLOAD, "unreadable error_response")
            message = " ".join(
                text(error.get(k))
                for k in ("msg", "sub_msg", "zh_desc", "en_desc")
                if text(error.get(k))
            )
            raise_error(
                call,
                self.errors,
                code=error.get("code"),
                sub_code=error.get("sub_code"),
                message=message,
                ban_text=error.get("sub_msg"),
            )
        key = self.response_key(call.method)
        inner = body.get(key)
        if not isinstance(inner, dict):
            call.fail(Fault.BAD_PAYLOAD, f"answer lacks {key}")
        code = inner.get("code")
        if code is not None and text(code) not in ("0", ""):
            raise_error(
                call,
                self.errors,
                code=code,
                message=text(inner.get("zh_desc") or inner.get("en_desc") or inner.get("msg")),
            )
        return inner


class TopFamilyClient:
    """A shop's signed client for a TOP-family API: `call(method, params)` → the method's object."""

    def __init__(
        self,
        shop: ShopConfig,
        dialect: Dialect,
        *,
        clock: Clock,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        timeouts: Timeouts | None = None,
        sign_method: SignMethod | None = None,
    ) -> None:
        self.shop = shop
        self.dialect = dialect
        auth = TopSigner(
            app_key=shop.app_key,
            app_secret=shop.app_secret,
            token=shop.access_token,
            token_param=dialect.token_param,
            sign_method=sign_method or shop.sign_method,
            clock=clock,
            fixed=dialect.fixed,
        )
        self.http = HttpTransport(
            platform=dialect.platform,
            target=shop.code,
            url=str(shop.api_url),
            auth=auth,
            policy=policy or DEFAULT_POLICY,
            wait_cap=shop.rate_limit_wait_cap.total_seconds(),
            timeouts=timeouts,
            transport=transport,
            sleep=sleep,
            secrets=(shop.app_secret.get_secret_value(), shop.access_token.get_secret_value()),
        )

    async def call(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        idempotent: bool,
        check: Callable[[dict[str, Any], Call], None] | None = None,
    ) -> dict[str, Any]:
        """The method's own object; `check` inspects it inside the retry loop (so a transient
        failure reported inside a result, like JD's `apiResult`, is retried like any other)."""
        form = {"method": method, **self.dialect.encode(params)}

        def parse(response: httpx.Response, call: Call) -> dict[str, Any]:
            inner = self.dialect.parse(response, call)
            if check is not None:
                check(inner, call)
            return inner

        return await self.http.post_form(method, form, idempotent=idempotent, parse=parse)

    def fail(self, method: str, fault: Fault, message: str, **context: Any) -> Exception:
        """An error raised by the connector itself (not from a body), with the same context."""
        return self.http.call(method, idempotent=True).error(fault, message, **context)

    async def aclose(self) -> None:
        await self.http.aclose()


# --- paging -------------------------------------------------------------------------------


@dataclass
class NumberedPages:
    """Page numbers 1, 2, … until the reported total is covered; refuses to loop.

    `advance(total, keys)` records one page; it returns whether another page should be read and
    raises `ValueError` if a page repeats the previous one or the walk passes `max_pages`."""

    page_size: int
    max_pages: int = 500
    page: int = 1
    _last: tuple[str, ...] | None = None

    def advance(self, total: int, keys: Sequence[str]) -> bool:
        current = tuple(keys)
        if current and current == self._last:
            raise ValueError(f"page {self.page} repeats the previous page")
        self._last = current
        if not current or self.page * self.page_size >= total:
            return False
        if self.page >= self.max_pages:
            raise ValueError(f"more than {self.max_pages} pages")
        self.page += 1
        return True


def as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{name}: not an integer: {value!r}")
