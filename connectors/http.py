"""The one transport every HTTP connector uses: an `httpx.AsyncClient` and one retry policy.

Contract:

- One `HttpTransport` (hence one `httpx.AsyncClient`) per connector instance; timeouts default to
  connect 5 s / read 30 s. Signing is the client's `httpx.Auth`; nothing here sees a secret except
  to scrub it out of error text.
- Two shapes of request, one code path: `post` sends query parameters plus a raw body of any
  content type (Qimen: system parameters in the query, XML body); `post_form` is `post` with a
  url-encoded form body (TOP, JD). Both share the attempt, the error mapping and the retries.
- Every call declares whether it is idempotent. Reads are; writes (ship, stock) are not, because
  the transport cannot know whether a lost answer means the effect happened.
- Failures are classified once, by what the caller must do (`Fault`), then raised as the
  `connectors.errors` tree. httpx exceptions and HTTP statuses are mapped here and nowhere else:

      httpx ConnectError / ConnectTimeout / PoolTimeout / ProxyError   → TRANSIENT (never sent)
      any other httpx TransportError (ReadTimeout, RemoteProtocolError,
          ReadError, WriteError …)                                      → MAYBE_DONE
      HTTP 429, HTTP 503 with Retry-After                               → RATE_LIMITED
      other HTTP 5xx                                                    → MAYBE_DONE
      HTTP 401 / 403                                                    → AUTH
      other HTTP 3xx / 4xx                                              → REJECTED
      DecodingError / TooManyRedirects / unparseable answer             → BAD_PAYLOAD

  `MAYBE_DONE` becomes `TransientError` on an idempotent call and `AmbiguousError` on a write.
- Exactly one tenacity policy (`RetryPolicy`, frozen data) retries `TransientError` — never
  `AmbiguousError`, which goes up to the outbox. A `RateLimited` waits its `retry_after` (the ban
  seconds or Retry-After) when that is within the shop's `rate_limit_wait_cap`; a longer ban is
  raised at once. Other retries back off exponentially (`base_delay · 2ⁿ`, at most `max_delay`) plus
  up to `jitter` seconds. The total time one call spends waiting never exceeds
  `max(policy.max_total_wait, wait_cap)`: a wait that would pass it stops the retries and raises the
  last error.
- Each retry is logged (`connector.retry`) with platform, shop, method, attempt, code and the wait;
  never the URL, the body, a token or a signature.
"""

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlencode

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from connectors.errors import (
    AmbiguousError,
    AuthError,
    BadPayload,
    ConnectorError,
    RateLimited,
    RejectedError,
    TransientError,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=utf-8"


@dataclass(frozen=True)
class RetryPolicy:
    """The transport retry policy (one for every connector; STYLE 6)."""

    max_attempts: int = 5
    base_delay: float = 0.5
    """Seconds before the second attempt; doubles each time."""
    max_delay: float = 30.0
    """Longest single backoff wait (rate-limit waits are capped by the shop instead)."""
    max_total_wait: float = 60.0
    """Budget of waiting for one call (the shop's rate-limit cap raises it when larger)."""
    jitter: float = 0.5
    """Up to this many random seconds added to every wait."""


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(self.read, connect=self.connect)


class Fault(StrEnum):
    """What the caller must do about a failure; error tables map platform codes to these."""

    TRANSIENT = "transient"
    """Nothing happened at the target; try again."""
    MAYBE_DONE = "maybe_done"
    """Failed at or after the target received it: a retry for reads, ambiguous for writes."""
    RATE_LIMITED = "rate_limited"
    AUTH = "auth"
    REJECTED = "rejected"
    BAD_PAYLOAD = "bad_payload"


_FAULT_CLASSES: dict[Fault, type[ConnectorError]] = {
    Fault.TRANSIENT: TransientError,
    Fault.RATE_LIMITED: RateLimited,
    Fault.AUTH: AuthError,
    Fault.REJECTED: RejectedError,
    Fault.BAD_PAYLOAD: BadPayload,
}

# First match wins (subclasses before their bases).
_HTTPX_FAULTS: tuple[tuple[type[httpx.HTTPError], Fault], ...] = (
    (httpx.ConnectError, Fault.TRANSIENT),
    (httpx.ConnectTimeout, Fault.TRANSIENT),
    (httpx.PoolTimeout, Fault.TRANSIENT),
    (httpx.ProxyError, Fault.TRANSIENT),
    (httpx.UnsupportedProtocol, Fault.REJECTED),
    (httpx.LocalProtocolError, Fault.REJECTED),
    (httpx.DecodingError, Fault.BAD_PAYLOAD),
    (httpx.TooManyRedirects, Fault.BAD_PAYLOAD),
    (httpx.TransportError, Fault.MAYBE_DONE),
)

# Signatures are 32 (md5) or 64 (sha256) hex digits; never let one through in error text.
_HEX_RUN = re.compile(r"\b[0-9A-Fa-f]{32,}\b")


@dataclass(frozen=True)
class Call:
    """One logical call (all its attempts): who, what, and whether repeating it is safe."""

    platform: str
    shop: str
    method: str
    idempotent: bool
    secrets: tuple[str, ...] = ()

    def error(
        self,
        fault: Fault,
        message: str,
        *,
        code: str = "",
        sub_code: str = "",
        retry_after: float | None = None,
    ) -> ConnectorError:
        """The exception for `fault` on this call, with a scrubbed message."""
        cls: type[ConnectorError]
        if fault is Fault.MAYBE_DONE:
            cls = TransientError if self.idempotent else AmbiguousError
        else:
            cls = _FAULT_CLASSES[fault]
        return cls(
            self.scrub(message),
            platform=self.platform,
            target=self.shop,
            method=self.method,
            code=self.scrub(code),
            sub_code=self.scrub(sub_code),
            retry_after=retry_after,
        )

    def fail(self, fault: Fault, message: str, **context: Any) -> NoReturn:
        raise self.error(fault, message, **context)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return _HEX_RUN.sub("***", text)

    def log_context(self) -> dict[str, Any]:
        return {"platform": self.platform, "shop": self.shop, "method": self.method}


def fault_for_status(status: int, retry_after: float | None) -> Fault | None:
    """The fault an HTTP status means, or None for 2xx."""
    if 200 <= status < 300:
        return None
    if status == 429 or (status == 503 and retry_after is not None):
        return Fault.RATE_LIMITED
    if status >= 500:
        return Fault.MAYBE_DONE
    if status in (401, 403):
        return Fault.AUTH
    return Fault.REJECTED


def fault_for_exception(exc: httpx.HTTPError) -> Fault:
    for kind, fault in _HTTPX_FAULTS:
        if isinstance(exc, kind):
            return fault
    return Fault.MAYBE_DONE


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; an HTTP-date (rare on these APIs) is ignored (→ backoff)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(0.0, seconds)


class HttpTransport:
    """One shop's (or warehouse's) HTTP client: signing auth, timeouts, error mapping, retries."""

    def __init__(
        self,
        *,
        platform: str,
        target: str,
        url: str,
        auth: httpx.Auth | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        wait_cap: float,
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        rng: Callable[[], float] | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.platform = platform
        self.target = target
        self.url = url
        self.policy = policy
        self.wait_cap = wait_cap
        self._secrets = tuple(s for s in secrets if s)
        self._sleep: Sleep = sleep or asyncio.sleep
        self._rng = rng or random.random
        self._client = httpx.AsyncClient(
            auth=auth, timeout=(timeouts or Timeouts()).httpx(), transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def call(self, method: str, *, idempotent: bool) -> Call:
        return Call(self.platform, self.target, method, idempotent, self._secrets)

    async def post_form(
        self,
        method: str,
        form: Mapping[str, str],
        *,
        idempotent: bool,
        parse: Callable[[httpx.Response, Call], T],
    ) -> T:
        """POST `form` (url-encoded) and return `parse(response)`, retrying per the policy.

        `parse` raises the connector error a body reports; it runs inside the retry loop, so a
        transient error inside an HTTP 200 is retried like any other."""
        return await self.post(
            method,
            urlencode(form).encode("utf-8"),
            content_type=FORM_CONTENT_TYPE,
            idempotent=idempotent,
            parse=parse,
        )

    async def post(
        self,
        method: str,
        content: bytes,
        *,
        content_type: str,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
        parse: Callable[[httpx.Response, Call], T],
        url: str | None = None,
    ) -> T:
        """POST a raw `content` body of `content_type` with `params` in the query string, and
        return `parse(response)`, retrying per the policy (`post_form` is this with a form).

        `url` replaces the transport's URL for this call (a service with one URL per operation,
        K3Cloud). The auth sees the whole request (query and body) on every attempt, so a signer
        that rewrites the query (Qimen) signs each retry afresh."""
        call = self.call(method, idempotent=idempotent)
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._should_retry),
            wait=self._wait,
            stop=self._stop,
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(call, state),
            reraise=True,
        )
        return await retrying(
            self._attempt, call, dict(params or {}), content, content_type, parse, url or self.url
        )

    async def _attempt(
        self,
        call: Call,
        params: dict[str, str],
        content: bytes,
        content_type: str,
        parse: Callable[[httpx.Response, Call], T],
        url: str,
    ) -> T:
        # Merged, not passed as `params=`: httpx would drop a query the configured URL carries.
        target = httpx.URL(url).copy_merge_params(params) if params else url
        try:
            response = await self._client.post(
                target,
                content=content,
                headers={"Content-Type": content_type},
            )
        except httpx.HTTPError as exc:
            # The text of an httpx error names the failure, not the request; keep only its kind.
            raise call.error(
                fault_for_exception(exc), f"HTTP transport failed ({type(exc).__name__})"
            ) from exc
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        fault = fault_for_status(response.status_code, retry_after)
        if fault is not None:
            call.fail(
                fault,
                f"HTTP {response.status_code}",
                code=f"http_{response.status_code}",
                retry_after=retry_after,
            )
        return parse(response, call)

    # --- the policy, as tenacity callables ---------------------------------------------

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, TransientError) or isinstance(exc, AmbiguousError):
            return False
        if isinstance(exc, RateLimited) and (exc.retry_after or 0.0) > self.wait_cap:
            log.warning(
                "connector.rate_limited",
                **exc.context(),
                wait_cap=self.wait_cap,
                action="raised: ban longer than the wait cap",
            )
            return False
        return True

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ConnectorError) and exc.retry_after is not None:
            base = exc.retry_after
        else:
            base = min(
                self.policy.max_delay, self.policy.base_delay * 2 ** (state.attempt_number - 1)
            )
        return base + self.policy.jitter * self._rng()

    def _stop(self, state: RetryCallState) -> bool:
        budget = max(self.policy.max_total_wait, self.wait_cap)
        return (
            state.attempt_number >= self.policy.max_attempts
            or state.idle_for + state.upcoming_sleep > budget
        )

    def _log_retry(self, call: Call, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        context: dict[str, Any] = call.log_context()
        if isinstance(exc, ConnectorError):
            context.update(code=exc.code, sub_code=exc.sub_code, error=type(exc).__name__)
        log.warning(
            "connector.retry",
            **context,
            attempt=state.attempt_number,
            wait=round(state.upcoming_sleep, 3),
        )
