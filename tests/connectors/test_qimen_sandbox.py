"""QimenWms and QimenCallbacks against the independent Qimen simulator over loopback.

The sandbox checks what the connector sends with its own signature code and its own reading of
§4.2; its callbacks reach a tiny receiver that uses only `QimenCallbacks.verify/parse/success`.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.settings import WarehouseConfig
from connectors.base import (
    CancelOutcome,
    DeliveryLine,
    DeliveryOrderRequest,
    ShipmentConfirm,
    StockChange,
    WmsOrderState,
)
from connectors.errors import AmbiguousError, AuthError, BadPayload
from connectors.qimen import QimenCallbacks, QimenWms
from connectors.registry import wms_callbacks_for, wms_for
from models.clock import SystemClock
from models.domain import Address
from sandbox.faults import FaultProfile
from sandbox.server import Sandbox, WarehouseInfo
from tests.connectors import NO_JITTER
from tests.loopback import serve_url, wait_for


def config_of(info: WarehouseInfo, **changes: object) -> WarehouseConfig:
    values: dict[str, object] = {
        "code": info.code,
        "api_url": info.api_url,
        "app_key": info.app_key,
        "app_secret": SecretStr(info.app_secret),
        "customer_id": info.customer_id,
        "provinces": info.provinces,
        "priority": info.priority,
        "default_carrier": info.default_carrier,
        "sender": {
            "name": "东仓",
            "mobile": "13800000000",
            "province": "浙江省",
            "city": "杭州市",
            "detail": "物流园 1 号",
        },
    }
    values.update(changes)
    return WarehouseConfig.model_validate(values)


@dataclass
class Receiver:
    """The hub's side of the callbacks, reduced to the codec: verify, parse, answer."""

    callbacks: dict[str, QimenCallbacks] = field(default_factory=dict)
    received: list[tuple[str, object]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        warehouse = request.path_params["warehouse"]
        query = dict(request.query_params)
        body = await request.body()
        codec = self.callbacks.get(warehouse)
        if codec is None or not codec.verify(query, body):
            self.refused.append((warehouse, "sign"))
            return Response("unknown or unsigned", status_code=403)
        try:
            parsed = codec.parse(query, body)
        except BadPayload as exc:
            self.refused.append((warehouse, str(exc)))
            text, content_type = codec.failure("BAD_PAYLOAD", "unreadable")
            return Response(text, media_type=content_type)
        self.received.append((warehouse, parsed))
        text, content_type = codec.success()
        return Response(text, media_type=content_type)

    def of(self, kind: type) -> list[object]:
        return [p for _, p in self.received if isinstance(p, kind)]


@dataclass
class Env:
    sandbox: Sandbox
    receiver: Receiver
    wms: QimenWms
    config: WarehouseConfig

    def sku(self, *, in_stock: bool = True) -> str:
        stock = self.sandbox.qimen.stock(self.config.code)
        for sku, _, _, _ in self.sandbox.world.catalog():
            if (stock.get(sku, 0) >= 5) == in_stock:
                return sku
        raise AssertionError("no such catalogue item")

    def status(self, code: str) -> str:
        order = self.sandbox.qimen.order(self.config.code, code)
        assert order is not None
        return order.status


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    receiver = Receiver()
    async with serve_url(
        Starlette(routes=[Route("/qimen/{warehouse}", receiver.endpoint, methods=["POST"])])
    ) as hub_url:
        sandbox = Sandbox(
            seed=5,
            profile="calm",
            warehouses=2,
            ship_delay=0.2,
            backlog=0,
            tmall_shops=1,
            jd_shops=0,
            hub_url=hub_url,
        )
        async with sandbox:
            configs = [config_of(info) for info in sandbox.warehouses]
            for config in configs:
                codec = wms_callbacks_for(config)
                assert isinstance(codec, QimenCallbacks)
                receiver.callbacks[config.code] = codec
            wms = wms_for(configs[0], clock=SystemClock(), policy=NO_JITTER)
            assert isinstance(wms, QimenWms)
            try:
                yield Env(sandbox, receiver, wms, configs[0])
            finally:
                await wms.aclose()


def request(code: str, sku: str, qty: int = 2, carrier: str = "ZTO") -> DeliveryOrderRequest:
    return DeliveryOrderRequest(
        code=code,
        shop="tmall-flagship",
        platform="tmall",
        platform_order_id=code.rsplit("-", 1)[-1],
        carrier=carrier,
        created=datetime(2026, 11, 20, 1, 0, tzinfo=UTC),
        paid=datetime(2026, 11, 20, 1, 1, tzinfo=UTC),
        buyer_nick="buyer",
        receiver=Address(
            name="王小明",
            mobile="13800000000",
            province="浙江",
            city="杭州市",
            district="西湖区",
            detail="文一西路 1 号",
        ),
        lines=(DeliveryLine(1, sku, qty, Decimal("12.50"), code.rsplit("-", 1)[-1], "L1"),),
        total=Decimal("25.00"),
        payment=Decimal("25.00"),
    )


async def test_create_query_ship_and_confirm_callback(env: Env) -> None:
    code = "tmall-flagship-1001"
    sku = env.sku()
    order_id = await env.wms.create_delivery_order(request(code, sku))
    assert order_id.startswith("DO")
    opened = await env.wms.query_delivery_order(code)
    assert opened.state is WmsOrderState.OPEN and opened.wms_order_id == order_id

    await wait_for(lambda: bool(env.receiver.of(ShipmentConfirm)))
    shipped = await env.wms.query_delivery_order(code)
    assert shipped.state is WmsOrderState.SHIPPED and shipped.raw_status == "DELIVERED"

    [confirm] = env.receiver.of(ShipmentConfirm)
    assert isinstance(confirm, ShipmentConfirm)
    sim_order = env.sandbox.qimen.order(env.config.code, code)
    assert sim_order is not None
    shipment = confirm.shipment
    assert shipment.delivery_order_code == code and shipment.warehouse == env.config.code
    assert (shipment.carrier, shipment.waybill) == (sim_order.carrier, sim_order.express_code)
    assert shipment.out_biz_code == sim_order.out_biz_code and confirm.final
    assert confirm.shipped_lines == ((sku, 2),)
    assert sum(qty for p in shipment.packages for _, qty in p.items) == 2
    assert shipment.weight_kg == sum(Decimal(p.weight) for p in sim_order.packages)
    await wait_for(lambda: len(env.sandbox.qimen.confirms_sent) == 1)
    assert env.receiver.refused == []


async def test_an_ambiguous_create_is_found_by_the_query(env: Env) -> None:
    """Both ambiguous modes of the simulator: the connection drops after the WMS recorded the
    create, or the answer comes later than the warehouse's timeout."""
    env.sandbox.qimen.ship_delay = 60  # keep them open
    env.sandbox.set_faults(FaultProfile(ambiguous=1.0, ambiguous_delay=0.6))
    late = QimenWms(
        env.config.model_copy(update={"timeout": timedelta(seconds=0.25)}),
        clock=SystemClock(),
        policy=NO_JITTER,
    )
    cases: list[tuple[Literal["drop", "late"], QimenWms, str]] = [
        ("drop", env.wms, "tmall-flagship-2001"),
        ("late", late, "tmall-flagship-2002"),
    ]
    for mode, wms, code in cases:
        env.sandbox.qimen.ambiguous_mode = mode
        with pytest.raises(AmbiguousError):
            await wms.create_delivery_order(request(code, env.sku()))
        status = await wms.query_delivery_order(code)
        assert status.state is WmsOrderState.OPEN  # it is there: the hub must not send it again
    await late.aclose()
    assert [o.code for o in env.sandbox.qimen.creates] == [code for _, _, code in cases]
    assert [o.ambiguous for o in env.sandbox.qimen.creates] == ["drop", "late"]
    assert (await env.wms.query_delivery_order("tmall-flagship-2003")).state is (
        WmsOrderState.NOT_FOUND
    )


async def test_cancel_before_and_after_shipping(env: Env) -> None:
    env.sandbox.qimen.ship_delay = 60
    held = "tmall-flagship-3001"
    await env.wms.create_delivery_order(request(held, env.sku()))
    env.sandbox.qimen.ship_delay = 0.2
    shipped = "tmall-flagship-3002"
    await env.wms.create_delivery_order(request(shipped, env.sku()))
    await wait_for(lambda: env.status(shipped) == "DELIVERED")

    assert await env.wms.cancel_delivery_order(held, "refunded") is CancelOutcome.CANCELLED
    assert env.status(held) == "CANCELED"
    assert (await env.wms.query_delivery_order(held)).state is WmsOrderState.CANCELLED
    assert await env.wms.cancel_delivery_order(held, "again") is CancelOutcome.CANCELLED

    outcome = await env.wms.cancel_delivery_order(shipped, "refunded")
    assert outcome is CancelOutcome.ALREADY_SHIPPED
    unknown = await env.wms.cancel_delivery_order("tmall-flagship-3999", "refunded")
    assert unknown is CancelOutcome.CANCELLED
    outcomes = [(c.order_code, c.outcome) for c in env.sandbox.qimen.cancels]
    assert outcomes == [
        (held, "0"),
        (held, "0"),
        (shipped, "ORDER_ALREADY_DELIVERED"),
        ("tmall-flagship-3999", "ORDER_NOT_EXIST"),
    ]


async def test_inventory_is_on_hand_for_the_catalogue(env: Env) -> None:
    env.sandbox.qimen.ship_delay = 60
    sku = env.sku()
    await env.wms.create_delivery_order(request("tmall-flagship-4001", sku, qty=3))
    assert env.sandbox.qimen.locked(env.config.code)[sku] == 3
    catalogue = [entry[0] for entry in env.sandbox.world.catalog()]
    unknown = [f"NOPE-{n:03d}" for n in range(150)]  # more than one batch of 100
    got = await env.wms.inventory([*catalogue, *unknown])
    assert got == env.sandbox.qimen.stock(env.config.code)  # on hand, the locked 3 included
    assert set(got) == set(catalogue)


async def test_stock_change_report_reaches_the_receiver(env: Env) -> None:
    sku = env.sku()
    await env.sandbox.qimen.report_stock_change(env.config.code, sku, -2)
    await wait_for(lambda: bool(env.receiver.of(tuple)))
    [changes] = env.receiver.of(tuple)
    assert isinstance(changes, tuple)
    [change] = changes
    assert isinstance(change, StockChange)
    assert (change.warehouse, change.sku, change.delta) == (env.config.code, sku, -2)
    assert change.order_type == "QTCK" and change.out_biz_code.startswith("SC")


async def test_wrong_credentials_are_refused_by_the_sandbox(env: Env) -> None:
    wrong = QimenWms(
        env.config.model_copy(update={"app_secret": SecretStr("not-the-secret")}),
        clock=SystemClock(),
        policy=NO_JITTER,
    )
    with pytest.raises(AuthError) as info:
        await wrong.query_delivery_order("tmall-flagship-5001")
    await wrong.aclose()
    assert info.value.code == "sign-check-failure"
