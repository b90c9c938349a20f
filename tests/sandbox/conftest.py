"""Fixtures for the simulator contract tests: a running sandbox and signed clients for it.

`sandbox` is self-contained (no fixture of tests/conftest.py), so it can move there unchanged.
The clients sign with `sandbox.signing`, whose rules `test_top.py` pins with known-answer vectors.
"""

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from sandbox.server import Sandbox, ShopInfo
from sandbox.signing import top_sign
from sandbox.world import CST, cst_text


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A started sandbox: calm profile, seed 7, 80 backlog orders over the last day, no live rate."""
    async with Sandbox(seed=7, profile="calm", backlog=80, backlog_days=1.0) as started:
        yield started


def now_cst() -> datetime:
    return datetime.now(CST)


SIGNING = {"sign_method", "secret", "timestamp", "session", "token"}
"""Client keywords that change how a call is signed or authorised rather than its business."""


class TopClient:
    """Signs and sends TOP calls for one shop; keyword overrides break one rule at a time."""

    def __init__(self, http: httpx.AsyncClient, shop: ShopInfo) -> None:
        self.http = http
        self.shop = shop

    def params(
        self,
        method: str,
        business: dict[str, Any],
        *,
        sign_method: str | None = None,
        secret: str | None = None,
        timestamp: str | None = None,
        session: str | None = None,
    ) -> dict[str, str]:
        params = {
            "method": method,
            "app_key": self.shop.app_key,
            "session": self.shop.access_token if session is None else session,
            "timestamp": cst_text(now_cst()) if timestamp is None else timestamp,
            "v": "2.0",
            "format": "json",
            "sign_method": sign_method or self.shop.sign_method,
            **{k: str(v) for k, v in business.items()},
        }
        params["sign"] = top_sign(params, secret or self.shop.app_secret, params["sign_method"])
        return params

    async def post(
        self, method: str, business: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.http.post(
            self.shop.api_url, data=self.params(method, business or {}, **kw)
        )

    async def call(
        self, method: str, business: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        response = await self.post(method, business, **kw)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def increment(self, start: datetime, end: datetime, **kw: Any) -> dict[str, Any]:
        """`taobao.trades.sold.increment.get`; keywords are business params or signing overrides."""
        fields = "tid,status,modified,created,payment,orders"
        body = {"fields": fields, "start_modified": cst_text(start), "end_modified": cst_text(end)}
        signing = {k: kw.pop(k) for k in SIGNING & set(kw)}
        return await self.call("taobao.trades.sold.increment.get", {**body, **kw}, **signing)


class JdClient:
    """Signs and sends JOS calls for one shop (business params as `360buy_param_json`)."""

    def __init__(self, http: httpx.AsyncClient, shop: ShopInfo) -> None:
        self.http = http
        self.shop = shop

    def params(
        self,
        method: str,
        business: dict[str, Any],
        *,
        secret: str | None = None,
        timestamp: str | None = None,
        token: str | None = None,
    ) -> dict[str, str]:
        params = {
            "method": method,
            "app_key": self.shop.app_key,
            "access_token": self.shop.access_token if token is None else token,
            "timestamp": cst_text(now_cst()) if timestamp is None else timestamp,
            "v": "2.0",
            "format": "json",
            "sign_method": "md5",
            "360buy_param_json": json.dumps(business, ensure_ascii=False),
        }
        params["sign"] = top_sign(params, secret or self.shop.app_secret, "md5")
        return params

    async def get(
        self, method: str, business: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.http.get(
            self.shop.api_url, params=self.params(method, business or {}, **kw)
        )

    async def call(
        self, method: str, business: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        response = await self.get(method, business, **kw)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def search(self, start: datetime, end: datetime, **kw: Any) -> dict[str, Any]:
        """`jingdong.pop.order.search`'s result; keywords are business params or signing overrides."""
        body = {"start_date": cst_text(start), "end_date": cst_text(end), "dateType": "0"}
        signing = {k: kw.pop(k) for k in SIGNING & set(kw)}
        answer = await self.call("jingdong.pop.order.search", {**body, **kw}, **signing)
        result: dict[str, Any] = answer["jingdong_pop_order_search_responce"][
            "searchorderinfo_result"
        ]
        return result


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def top(sandbox: Sandbox, http: httpx.AsyncClient) -> TopClient:
    return TopClient(http, sandbox.shop("tmall-flagship"))


@pytest.fixture
def jd(sandbox: Sandbox, http: httpx.AsyncClient) -> JdClient:
    return JdClient(http, sandbox.shop("jd-flagship"))


def day_window() -> tuple[datetime, datetime]:
    end = now_cst().replace(microsecond=0)
    return end - timedelta(days=1), end
