"""Courier tracking: a stored shipment subscribes its waybill (outbox `tracking.subscribe`), and
Kuaidi100's signed pushes to `/webhooks/kuaidi100` move it to delivered / refused, once.

The first tests drive the receiver and the handler against the store with fakes; the last runs
the whole flow against the sandbox: Qimen ships and confirms, the hub subscribes at the Kuaidi100
simulator, whose pushes (some sent twice) reach the hub over HTTP."""

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from api.app import create_app
from api.kuaidi100 import kuaidi100_router
from api.server import free_port, serve
from config import Settings
from config.settings import Kuaidi100Config
from connectors.base import ShipmentConfirm, TrackingRequest
from connectors.kuaidi100 import COMPANIES, push_sign
from models.domain import Shipment, TrackingState
from models.store import Store
from sandbox.faults import FaultProfile
from sandbox.server import Sandbox
from sync.catalog import import_catalog
from sync.fulfilment import TRACKING_SUBSCRIBE, Effects, apply_callback
from sync.outbox import Dispatcher
from sync.runtime import pull_shops, push_once, refresh_stock, route
from tests.e2e import diagnose, everything_settled, hub_settings, write_catalog

SALT = "tracking-salt-7"
WAYBILL = "73100000000001"
HUB = "https://hub.example.com"


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate(
        {
            "server": {"public_url": HUB},
            "kuaidi100": Kuaidi100Config(customer="C", key=SecretStr("K"), salt=SecretStr(SALT)),
        }
    )


def confirm(waybill: str = WAYBILL, out_biz_code: str = "OB-1") -> ShipmentConfirm:
    shipment = Shipment(
        delivery_order_code="tmall-flagship-1001",
        warehouse="WH-EAST",
        carrier="ZTO",
        waybill=waybill,
        shipped_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC),
        out_biz_code=out_biz_code,
    )
    return ShipmentConfirm(shipment=shipment, final=True, status="DELIVERED")


def push_param(state: str, ischeck: str, waybill: str = WAYBILL, status: str = "shutdown") -> str:
    body = {
        "status": status,
        "billstatus": "check",
        "message": "",
        "autoCheck": "0",
        "comOld": "",
        "comNew": "",
        "lastResult": {
            "message": "ok",
            "state": state,
            "status": "200",
            "condition": "F00",
            "ischeck": ischeck,
            "com": "zhongtong",
            "nu": waybill,
            "data": [{"time": "2026-11-22 14:05:11", "context": "【杭州市】已签收"}],
        },
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class Metrics:
    """Records `webhook(source, outcome)` like `HubMetrics`."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def webhook(self, source: str, outcome: str) -> None:
        assert source == "kuaidi100"
        self.outcomes.append(outcome)


class Receiver:
    """The hub's tracking receiver on an in-process ASGI transport."""

    def __init__(self, client: httpx.AsyncClient, metrics: Metrics) -> None:
        self.client = client
        self.metrics = metrics

    async def push(self, param: str, sign: str | None = None) -> tuple[int, dict[str, Any]]:
        form = {"param": param, "sign": push_sign(param, SALT) if sign is None else sign}
        response = await self.client.post("/webhooks/kuaidi100", data=form)
        return response.status_code, response.json()


@pytest.fixture
async def receiver(settings: Settings, store: Store) -> AsyncIterator[Receiver]:
    metrics = Metrics()
    app = FastAPI()
    app.include_router(kuaidi100_router(settings, store, metrics=metrics))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield Receiver(client, metrics)


async def shipped(store: Store, settings: Settings, waybill: str = WAYBILL) -> None:
    async with store.transaction() as tx:
        await apply_callback(tx, settings, "WH-EAST", confirm(waybill))


async def state_of(store: Store, waybill: str = WAYBILL) -> TrackingState | None:
    async with store.transaction() as tx:
        return await tx.tracking_state(waybill)


OK = {"result": True, "returnCode": "200", "message": "成功"}


# --- the subscribe message -----------------------------------------------------------------


async def test_a_stored_shipment_subscribes_its_waybill_once(
    store: Store, settings: Settings
) -> None:
    await shipped(store, settings)
    async with store.transaction() as tx:
        assert await apply_callback(tx, settings, "WH-EAST", confirm()) == "shipment repeated"
        messages = [m for m in await tx.outbox_messages() if m.kind == TRACKING_SUBSCRIBE]
        assert await tx.tracking_state(WAYBILL) == TrackingState.SHIPPED
    [message] = messages
    assert message.idempotency_key == f"tracking.subscribe:ZTO:{WAYBILL}"
    assert message.target == "kuaidi100"
    assert message.payload == {
        "carrier": "ZTO",
        "waybill": WAYBILL,
        "code": "tmall-flagship-1001",
    }


async def test_without_kuaidi100_nothing_is_subscribed(store: Store) -> None:
    await shipped(store, Settings())
    async with store.transaction() as tx:
        assert not [m for m in await tx.outbox_messages() if m.kind == TRACKING_SUBSCRIBE]


class FakeTracker:
    def __init__(self) -> None:
        self.requests: list[TrackingRequest] = []
        self.closed = False

    async def subscribe(self, request: TrackingRequest) -> None:
        self.requests.append(request)

    async def aclose(self) -> None:
        self.closed = True


async def test_the_handler_subscribes_with_the_hub_callback_url(
    store: Store, settings: Settings
) -> None:
    await shipped(store, settings)
    tracker = FakeTracker()
    effects = Effects(
        store,
        settings,
        wms_for=lambda _: pytest.fail("no WMS call expected"),
        marketplace_for=lambda _: pytest.fail("no marketplace call expected"),
        tracker_for=lambda _: tracker,
    )
    stats = await Dispatcher(store, effects.handlers(), owner="test").drain_once()
    await effects.aclose()
    assert stats.done == 1 and tracker.closed
    assert tracker.requests == [
        TrackingRequest(carrier="ZTO", waybill=WAYBILL, callback_url=f"{HUB}/webhooks/kuaidi100")
    ]


# --- the receiver --------------------------------------------------------------------------


async def test_a_delivered_push_moves_the_shipment_once(
    store: Store, settings: Settings, receiver: Receiver
) -> None:
    await shipped(store, settings)
    assert await receiver.push(push_param("0", "0", status="polling")) == (200, OK)
    assert await state_of(store) == TrackingState.SHIPPED
    delivered = push_param("3", "1")
    assert await receiver.push(delivered) == (200, OK)
    assert await state_of(store) == TrackingState.DELIVERED
    assert await receiver.push(delivered) == (200, OK)  # Kuaidi100 sends it again
    assert await receiver.push(push_param("14", "0")) == (200, OK)  # never back from final
    assert await state_of(store) == TrackingState.DELIVERED
    assert receiver.metrics.outcomes == ["accepted", "accepted", "duplicate", "duplicate"]


@pytest.mark.parametrize(("state", "ischeck"), [("14", "0"), ("4", "1")])
async def test_a_refused_push_moves_the_shipment_to_refused(
    store: Store, settings: Settings, receiver: Receiver, state: str, ischeck: str
) -> None:
    await shipped(store, settings)
    assert await receiver.push(push_param(state, ischeck)) == (200, OK)
    assert await state_of(store) == TrackingState.REFUSED
    assert await receiver.push(push_param("3", "1")) == (200, OK)
    assert await state_of(store) == TrackingState.REFUSED


@pytest.mark.parametrize(
    "sign",
    ["", "0" * 32, push_sign(push_param("3", "1"), "wrong-salt")],
    ids=["none", "zeros", "salt"],
)
async def test_a_bad_sign_changes_nothing(
    store: Store, settings: Settings, receiver: Receiver, sign: str
) -> None:
    await shipped(store, settings)
    status, answer = await receiver.push(push_param("3", "1"), sign=sign)
    assert status == 200 and answer["result"] is False and answer["returnCode"] != "200"
    assert await state_of(store) == TrackingState.SHIPPED
    async with store.transaction() as tx:
        assert await tx.recent_errors("kuaidi100") == []
    assert receiver.metrics.outcomes == ["rejected"]


async def test_a_signed_but_unreadable_push_is_refused(
    store: Store, settings: Settings, receiver: Receiver
) -> None:
    status, answer = await receiver.push('{"status":"polling"}')
    assert status == 200 and answer["result"] is False
    assert receiver.metrics.outcomes == ["rejected"]


async def test_a_push_for_an_unknown_waybill_is_recorded_and_acknowledged(
    store: Store, receiver: Receiver
) -> None:
    assert await receiver.push(push_param("3", "1", waybill="UNKNOWN-1")) == (200, OK)
    async with store.transaction() as tx:
        [error] = await tx.recent_errors("kuaidi100")
    assert error.key == "UNKNOWN-1" and "never shipped" in error.reason
    assert receiver.metrics.outcomes == ["rejected"]


async def test_a_push_that_gave_up_is_recorded(
    store: Store, settings: Settings, receiver: Receiver
) -> None:
    await shipped(store, settings)
    param = push_param("0", "0", status="abort").replace(
        '"message":""', '"message":"3天查询无记录"', 1
    )
    assert await receiver.push(param) == (200, OK)
    assert await state_of(store) == TrackingState.SHIPPED
    async with store.transaction() as tx:
        [error] = await tx.recent_errors("kuaidi100")
    assert "3天查询无记录" in error.reason


async def test_without_kuaidi100_the_receiver_is_not_there(store: Store) -> None:
    app = FastAPI()
    app.include_router(kuaidi100_router(Settings(), store))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hub"
    ) as client:
        response = await client.post("/webhooks/kuaidi100", data={"param": "{}", "sign": "x"})
    assert response.status_code == 404


# --- end to end against the sandbox ---------------------------------------------------------


async def shipped_waybills(hub: Store) -> dict[str, str]:
    """waybill → carrier of every shipment stored."""
    async with hub.transaction() as tx:
        stored = [s async for s in tx.iter_orders()]
        return {
            w.waybill: w.carrier
            for s in stored
            for d in s.delivery_orders
            for w in await tx.shipments_of(d["code"])
        }


async def tracked(hub: Store) -> dict[str, TrackingState | None]:
    """The tracking state of every shipped waybill."""
    waybills = await shipped_waybills(hub)
    async with hub.transaction() as tx:
        return {w: await tx.tracking_state(w) for w in waybills}


@pytest.mark.slow
async def test_waybills_confirmed_by_the_wms_are_tracked_to_the_end(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    profile = FaultProfile(duplicate_callbacks=0.3)
    async with Sandbox(
        seed=11, profile=profile, backlog=40, backlog_days=0.5, ship_delay=0.2, push_delay=0.2
    ) as sb:
        sb.kuaidi100.refuse_rate = 0.4
        settings = hub_settings(sb, tmp_path, database_url, port)
        sb.hub_url = settings.server.callback_base
        hub = Store.open(database_url)
        try:
            app = create_app(settings, hub)
            async with serve(app, port=port):
                await import_catalog(hub, settings, write_catalog(sb, tmp_path / "catalog.csv"))
                await pull_shops(settings, hub, settings.shops)
                await refresh_stock(settings, hub)
                await route(settings, hub)
                for _ in range(200):
                    await push_once(settings, hub)
                    states = await tracked(hub)
                    if (
                        states
                        and all(s and s.final for s in states.values())
                        and await everything_settled(hub)
                    ):
                        break
                    await asyncio.sleep(0.1)
                assert await everything_settled(hub), await diagnose(hub, sb)
                states = await tracked(hub)
                assert states and all(s and s.final for s in states.values()), Counter(
                    (p.status, p.delivered, p.last_error[:80]) for p in sb.kuaidi100.pushes
                )

                # A push Kuaidi100 sends again, and one with a forged sign, change nothing.
                last = next(p for p in sb.kuaidi100.pushes if p.status == "shutdown")
                before = await tracked(hub)
                async with httpx.AsyncClient(base_url=settings.server.callback_base) as client:
                    again = await client.post(
                        "/webhooks/kuaidi100", data={"param": last.param, "sign": last.sign}
                    )
                    forged = await client.post(
                        "/webhooks/kuaidi100", data={"param": last.param, "sign": "0" * 32}
                    )
                assert again.json() == OK and forged.json()["result"] is False
                assert await tracked(hub) == before
                carriers = await shipped_waybills(hub)
        finally:
            await hub.close()

    subscribed = Counter(s.number for s in sb.kuaidi100.subscriptions)
    assert set(subscribed) == set(states), "every shipped waybill, and only those, subscribed"
    assert set(subscribed.values()) == {1}, "a waybill was subscribed twice"
    for sub in sb.kuaidi100.subscriptions:
        assert sub.callback_url == f"{settings.server.callback_base}/webhooks/kuaidi100"
        assert sub.company == COMPANIES[carriers[sub.number]]
    outcomes = {n: track.outcome for n in states if (track := sb.kuaidi100.track(n))}
    assert states == {
        n: TrackingState.DELIVERED if outcome == "3" else TrackingState.REFUSED
        for n, outcome in outcomes.items()
    }
    assert set(states.values()) == {TrackingState.DELIVERED, TrackingState.REFUSED}
    assert any(p.duplicate and p.delivered for p in sb.kuaidi100.pushes), "no repeated push"
