"""The Kuaidi100 simulator over real HTTP on loopback, with a fake receiver for its pushes."""

import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.faults import FaultInjector, FaultProfile
from sandbox.kuaidi100 import Kuaidi100Sim
from tests.loopback import serve_url, wait_for

CUSTOMER = "CUST-1"
KEY = "k100-key"
SALT = "pepper"


@dataclass
class Receiver:
    """The hub's `/webhooks/kuaidi100` stand-in: checks the sign, fails the first `fail_first`."""

    fail_first: int = 0
    received: list[tuple[dict[str, Any], str, bool]] = field(default_factory=list)
    """(param decoded, sign, sign ok) of every push, failed ones included."""

    async def endpoint(self, request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        param = form["param"]
        expected = hashlib.md5((param + SALT).encode()).hexdigest().upper()
        sign = form.get("sign", "")
        self.received.append((json.loads(param), sign, sign == expected))
        if len(self.received) <= self.fail_first:
            return JSONResponse({"result": False, "returnCode": "500", "message": "busy"})
        return JSONResponse({"result": True, "returnCode": "200", "message": "成功"})

    def states(self) -> list[tuple[str, str, str]]:
        """(number, status, state) of every push received."""
        return [
            (p["lastResult"]["nu"], p["status"], p["lastResult"]["state"])
            for p, *_ in self.received
        ]


@dataclass
class Env:
    sim: Kuaidi100Sim
    url: str
    receiver: Receiver
    client: httpx.AsyncClient

    async def subscribe(self, number: str, *, key: str = KEY, **extra: Any) -> dict[str, Any]:
        param = {
            "company": extra.pop("company", "shunfeng"),
            "number": number,
            "from": "上海市浦东新区",
            "to": "浙江省杭州市西湖区",
            "key": key,
            "parameters": {
                "callbackurl": f"{self.url}/webhooks/kuaidi100",
                "salt": SALT,
                "resultv2": "1",
                **extra,
            },
        }
        form = {"schema": "json", "param": json.dumps(param, ensure_ascii=False)}
        response = await self.client.post(f"{self.url}/poll", data=form)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def query(self, number: str, *, sign: str | None = None) -> dict[str, Any]:
        param = json.dumps({"com": "shunfeng", "num": number, "resultv2": "1", "show": "0"})
        by_hand = hashlib.md5((param + KEY + CUSTOMER).encode()).hexdigest().upper()
        form = {"customer": CUSTOMER, "param": param, "sign": sign or by_hand}
        response = await self.client.post(f"{self.url}/poll/query.do", data=form)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@asynccontextmanager
async def running(
    *, profile: FaultProfile | None = None, seed: int = 1, fail_first: int = 0, **options: Any
) -> AsyncIterator[Env]:
    options.setdefault("retry_backoff", (0.02, 0.1))
    sim = Kuaidi100Sim(
        CUSTOMER, KEY, FaultInjector(profile or FaultProfile(), seed), 0.05, **options
    )
    receiver = Receiver(fail_first)
    app = Starlette(
        routes=[*sim.routes(), Route("/webhooks/kuaidi100", receiver.endpoint, methods=["POST"])]
    )
    await sim.start()
    try:
        async with serve_url(app) as url, httpx.AsyncClient() as client:
            yield Env(sim, url, receiver, client)
    finally:
        await sim.stop()


OK = {"result": True, "returnCode": "200", "message": "提交成功"}


async def test_subscribe_then_in_transit_and_delivered_pushes_signed() -> None:
    async with running(refuse_rate=0.0) as env:
        assert await env.subscribe("SF1234567890123") == OK
        await wait_for(lambda: len(env.sim.pushes_sent) == 2)
        assert env.receiver.states() == [
            ("SF1234567890123", "polling", "0"),
            ("SF1234567890123", "shutdown", "3"),
        ]
        assert all(ok for *_, ok in env.receiver.received)
        final = env.receiver.received[-1][0]
        assert final["lastResult"]["ischeck"] == "1"
        assert final["lastResult"]["com"] == "shunfeng"
        data = final["lastResult"]["data"]
        assert [d["status"] for d in data] == ["签收", "在途", "揽收"]  # newest first
        assert {"time", "ftime", "context", "areaName"} <= set(data[0])


async def test_push_retried_until_acknowledged() -> None:
    async with running(refuse_rate=0.0, fail_first=3) as env:
        await env.subscribe("SF1")
        await wait_for(lambda: len(env.sim.pushes_sent) == 2)
        assert len(env.receiver.received) == 5
        assert sum(p.attempts for p in env.sim.pushes) == 5
        # every retry of a push carries the same param: 2 distinct bodies over 5 calls
        bodies = {json.dumps(p, sort_keys=True) for p, *_ in env.receiver.received}
        assert len(bodies) == 2


async def test_subscribe_errors() -> None:
    async with running() as env:
        wrong = await env.subscribe("SF2", key="stolen")
        assert (wrong["result"], wrong["returnCode"]) == (False, "600")
        assert await env.subscribe("SF2") == OK
        again = await env.subscribe("SF2")
        assert (again["result"], again["returnCode"], again["message"]) == (
            False,
            "501",
            "重复订阅",
        )
        unknown = await env.subscribe("XX-99", company="", autoCom="1")
        assert unknown["returnCode"] == "702"
        guessed = await env.subscribe("JDVA00000000001", company="", autoCom="1")
        assert guessed == OK
        assert env.sim.subscriptions[-1].company == "jd"
        bad = await env.client.post(f"{env.url}/poll", data={"schema": "json", "param": "{"})
        assert bad.json()["returnCode"] == "700"
        assert [s.number for s in env.sim.subscriptions] == ["SF2", "JDVA00000000001"]

        # once tracking has ended the number may be subscribed again; it gets its final state
        track = env.sim.track("SF2")
        assert track is not None
        await wait_for(lambda: track.status == "shutdown")
        assert await env.subscribe("SF2") == OK
        await wait_for(lambda: len([p for p in env.sim.pushes_sent if p.number == "SF2"]) == 3)


async def test_refused_parcels() -> None:
    async with running(refuse_rate=1.0) as env:
        for n in range(4):
            await env.subscribe(f"SF-R{n}")
        await wait_for(lambda: len(env.sim.pushes_sent) == 8)
        finals = [s for s in env.receiver.states() if s[1] == "shutdown"]
        assert len(finals) == 4
        assert {state for *_, state in finals} <= {"4", "14"}


async def test_query_track() -> None:
    async with running(refuse_rate=0.0) as env:
        await env.subscribe("SF3")
        early = await env.query("SF3")
        assert (early["result"], early["returnCode"]) == (False, "500")
        await wait_for(lambda: len(env.sim.pushes_sent) == 2)
        track = await env.query("SF3")
        assert (track["status"], track["state"], track["ischeck"], track["nu"]) == (
            "200",
            "3",
            "1",
            "SF3",
        )
        assert len(track["data"]) == 3
        assert (await env.query("SF3", sign="0" * 32))["returnCode"] == "503"
        assert (await env.query("SF-NONE"))["returnCode"] == "500"


async def test_duplicate_push_fault() -> None:
    async with running(profile=FaultProfile(duplicate_callbacks=1.0), refuse_rate=0.0) as env:
        await env.subscribe("SF4")
        await wait_for(lambda: len(env.sim.pushes_sent) == 4)
        assert [s[1:] for s in env.receiver.states()] == [
            ("polling", "0"),
            ("polling", "0"),
            ("shutdown", "3"),
            ("shutdown", "3"),
        ]


async def test_request_faults() -> None:
    async with running(profile=FaultProfile(transient=1.0)) as env:
        assert (await env.subscribe("SF5"))["returnCode"] == "500"
        assert (await env.query("SF5"))["returnCode"] == "502"
        assert env.sim.subscriptions == []
    async with running(profile=FaultProfile(http_5xx=1.0)) as env:
        response = await env.client.post(f"{env.url}/poll", data={"schema": "json"})
        assert response.status_code in (502, 503)
    async with running(profile=FaultProfile(slow=1.0, slow_seconds=0.2)) as env:
        started = time.monotonic()
        assert await env.subscribe("SF6") == OK
        assert time.monotonic() - started >= 0.2


def test_same_seed_same_outcomes() -> None:
    def outcomes(seed: int) -> list[str]:
        sim = Kuaidi100Sim(CUSTOMER, KEY, FaultInjector(FaultProfile(), seed), 1.0, refuse_rate=0.3)
        for n in range(40):
            param = {
                "company": "zhongtong",
                "number": f"7{n:013d}",
                "key": KEY,
                "parameters": {"callbackurl": "http://127.0.0.1:9/cb"},
            }
            sim.subscribe({"schema": "json", "param": json.dumps(param)})
        return [sim.track(f"7{n:013d}").outcome for n in range(40)]  # type: ignore[union-attr]

    assert outcomes(5) == outcomes(5)
    assert outcomes(5) != outcomes(6)
    assert set(outcomes(5)) <= {"3", "4", "14"}
    assert json.loads(
        json.dumps(Kuaidi100Sim(CUSTOMER, KEY, FaultInjector(FaultProfile()), 1).snapshot())
    )
