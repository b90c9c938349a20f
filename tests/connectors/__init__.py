"""Helpers for connector tests: shops, a fixed clock, a recording sleep, a stateful fake platform.

`FakePlatform` is the respx side effect of one strict route: it dispatches on the form's `method`
to the handlers a test registers, records every call's form, and fails the test on any method it
was not told about. Handlers return a JSON body, an `httpx.Response`, or raise an httpx error.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import respx
from pydantic import SecretStr

from config.settings import ShopConfig
from connectors.http import RetryPolicy
from models.clock import FixedClock

FIXTURES = Path(__file__).parent / "fixtures"
APP_SECRET = "s3cr3t-app-secret-42"
TOKEN = "6100e21b-session-token-77"
APP_KEY = "12345678"
TOP_URL = "https://gw.test.invalid/router/rest"
JD_URL = "https://jos.test.invalid/routerjson"
NOW = datetime(2026, 11, 20, 2, 0, 0, tzinfo=UTC)
"""10:00:00 CST."""
NOW_CST_TEXT = "2026-11-20 10:00:00"
NO_JITTER = RetryPolicy(
    max_attempts=4, base_delay=1.0, max_delay=8.0, max_total_wait=30.0, jitter=0
)

Handler = Callable[[dict[str, str]], Any]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def shop(
    platform: str = "tmall",
    *,
    sign_method: str = "md5",
    cap: float = 120,
    code: str | None = None,
) -> ShopConfig:
    return ShopConfig(
        code=code or f"{platform}-flagship",
        platform=platform,
        api_url=TOP_URL if platform == "tmall" else JD_URL,
        app_key=APP_KEY,
        app_secret=SecretStr(APP_SECRET),
        access_token=SecretStr(TOKEN),
        sign_method=sign_method,
        rate_limit_wait_cap=timedelta(seconds=cap),
    )


def clock() -> FixedClock:
    return FixedClock(NOW)


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def form_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode("utf-8"), keep_blank_values=True))


class FakePlatform:
    """A stateful fake of a TOP-family router, behind one strict respx route."""

    def __init__(self, router: respx.MockRouter, url: str) -> None:
        self.handlers: dict[str, list[Handler]] = {}
        self.calls: list[dict[str, str]] = []
        self.requests: list[httpx.Request] = []
        self.route = router.post(url).mock(side_effect=self._dispatch)

    def on(self, method: str, *answers: Any) -> None:
        """Answer `method` with these, in turn (the last one repeats). An answer is a JSON
        body, an `httpx.Response`, an exception to raise, or a callable of the call's form."""
        self.handlers[method] = [a if callable(a) else _const(a) for a in answers]

    def called(self, method: str) -> list[dict[str, str]]:
        return [c for c in self.calls if c.get("method") == method]

    def _dispatch(self, request: httpx.Request) -> httpx.Response:
        form = form_of(request)
        method = form.get("method", "")
        assert method in self.handlers, f"unexpected call to {method!r}"
        index = len(self.called(method))
        self.calls.append(form)
        self.requests.append(request)
        answers = self.handlers[method]
        answer = answers[min(index, len(answers) - 1)](form)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)


def _const(value: Any) -> Handler:
    def answer(_form: dict[str, str]) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value

    return answer
