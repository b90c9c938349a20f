"""TMC messages as hints: `sync.hints.consume_hints` with the real TOP connector against the
sandbox (live order changes → messages → hints → confirmations), and its containment rules
against a fake message source."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from config.settings import ShopConfig
from connectors.base import MessageSource, PlatformMessage
from connectors.errors import TransientError
from connectors.tmall import TmallMarketplace
from sandbox.server import Sandbox
from sync.hints import consume_hints
from tests.fakes import RecordingControl

SHOP = "tmall-flagship"


def shop_config(sandbox: Sandbox, code: str = SHOP) -> ShopConfig:
    info = sandbox.shop(code)
    return ShopConfig(
        code=info.code,
        platform=info.platform,
        api_url=info.api_url,
        app_key=info.app_key,
        app_secret=SecretStr(info.app_secret),
        access_token=SecretStr(info.access_token),
        sign_method=info.sign_method,
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=3, profile="calm", backlog=10, backlog_days=0.5, tmall_shops=2) as sb:
        sb.top.tmc_redeliver_after = 0.2
        yield sb


@pytest.fixture
async def tmall(sandbox: Sandbox) -> AsyncIterator[TmallMarketplace]:
    market = TmallMarketplace(shop_config(sandbox))
    yield market
    await market.aclose()


@pytest.fixture
def control() -> RecordingControl:
    return RecordingControl()


async def drain(shop: ShopConfig, source: MessageSource, control: RecordingControl) -> int:
    """Consume passes until one comes back empty; the number of messages consumed."""
    total = 0
    while count := await consume_hints(shop, source, control, quantity=10):
        total += count
    return total


# --- against the sandbox -------------------------------------------------------------------


async def test_order_changes_become_one_hint_per_order_and_confirmed_messages_stay_gone(
    sandbox: Sandbox, tmall: TmallMarketplace, control: RecordingControl
) -> None:
    world = sandbox.world
    first = world.create_order(SHOP)
    second = world.create_order(SHOP, paid=False)
    world.set_memo(SHOP, first.order_id, "加急")
    world.create_order("tmall-2")  # another shop's change: not in this shop's feed
    world.create_order("jd-flagship")

    assert await consume_hints(tmall.shop, tmall, control) == 3
    assert sorted(control.hints) == sorted([(SHOP, first.id), (SHOP, second.id)])
    assert sandbox.top.tmc_pending() == 0  # all three confirmed
    await asyncio.sleep(sandbox.top.tmc_redeliver_after + 0.1)
    assert await consume_hints(tmall.shop, tmall, control) == 0  # nothing comes back
    assert len(control.hints) == 2


async def test_live_changes_are_all_hinted(control: RecordingControl) -> None:
    live = Sandbox(seed=4, profile="calm", rate=40.0, backlog=10, backlog_days=0.5)
    start = len(live.world.changes)  # TMC feeds start when the simulator is built
    async with live:
        market = TmallMarketplace(shop_config(live))
        try:
            consumed = 0
            for _ in range(5):  # consume while the world keeps changing
                await asyncio.sleep(0.2)
                consumed += await drain(market.shop, market, control)
            await live.stop_live()
            consumed += await drain(market.shop, market, control)
        finally:
            await market.aclose()
        changes = [c for c in live.world.changes[start:] if c.shop == SHOP]
        assert changes, "the live world made no change to the shop"
        assert consumed == len(changes)
        assert {order for _, order in control.hints} == {str(c.order_id) for c in changes}
        assert {shop for shop, _ in control.hints} == {SHOP}
        assert live.top.tmc_pending() == 0


async def test_a_failed_hint_is_confirmed_as_failed_and_comes_back(
    sandbox: Sandbox, tmall: TmallMarketplace, control: RecordingControl
) -> None:
    failing = sandbox.world.create_order(SHOP)
    fine = sandbox.world.create_order(SHOP)
    control.fail_hints.add(failing.id)
    assert await consume_hints(tmall.shop, tmall, control) == 2
    assert control.hints == [(SHOP, fine.id)]
    assert sandbox.top.tmc_pending() == 1  # the failed one is still queued
    control.fail_hints.clear()
    # Confirmed as failed, so due again at once (no redelivery wait).
    assert await consume_hints(tmall.shop, tmall, control) == 1
    assert control.hints == [(SHOP, fine.id), (SHOP, failing.id)]
    assert sandbox.top.tmc_pending() == 0


async def test_each_shop_reads_its_own_messages(
    sandbox: Sandbox, control: RecordingControl
) -> None:
    other = sandbox.world.create_order("tmall-2")
    sandbox.world.create_order(SHOP)
    market = TmallMarketplace(shop_config(sandbox, "tmall-2"))
    try:
        assert await consume_hints(market.shop, market, control) == 1
    finally:
        await market.aclose()
    assert control.hints == [("tmall-2", other.id)]


# --- containment, against a fake source ----------------------------------------------------


@dataclass
class FakeSource:
    """A `MessageSource` that serves one batch and records confirmations."""

    batch: list[PlatformMessage]
    confirms: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    fail_confirm: bool = False

    async def consume_messages(self, group: str, quantity: int) -> list[PlatformMessage]:
        served, self.batch = self.batch[:quantity], self.batch[quantity:]
        return served

    async def confirm_messages(
        self, group: str, ok_ids: Sequence[str], failed_ids: Sequence[str]
    ) -> None:
        if self.fail_confirm:
            raise TransientError("confirm failed", platform="tmall", method="confirm")
        self.confirms.append((group, list(ok_ids), list(failed_ids)))


def message(message_id: str, order_id: str = "", problem: str = "") -> PlatformMessage:
    return PlatformMessage(message_id, "taobao_trade_TradeChanged", "s", order_id, problem=problem)


SHOP_CONFIG = ShopConfig(
    code="s",
    platform="tmall",
    api_url="http://127.0.0.1:1/router/rest",
    app_key="k",
    app_secret=SecretStr("x"),
    access_token=SecretStr("y"),
)


def test_the_fake_source_is_a_message_source() -> None:
    assert isinstance(FakeSource([]), MessageSource)


async def test_malformed_and_orderless_messages_never_stop_the_batch(
    control: RecordingControl,
) -> None:
    source = FakeSource(
        [
            message("1", "100"),
            message("2", problem="content is not JSON"),
            message("", problem="message has no id"),  # cannot be confirmed at all
            message("3"),  # about no order (an item topic): handled, nothing to fetch
            message("4", "100"),  # same order again: one hint
            message("5", "200"),
        ]
    )
    assert await consume_hints(SHOP_CONFIG, source, control, group="g") == 6
    assert control.hints == [("s", "100"), ("s", "200")]
    assert source.confirms == [("g", ["1", "3", "4", "5"], ["2"])]


async def test_every_message_of_an_order_whose_hint_failed_is_failed(
    control: RecordingControl,
) -> None:
    control.fail_hints.add("100")
    source = FakeSource([message("1", "100"), message("2", "200"), message("3", "100")])
    assert await consume_hints(SHOP_CONFIG, source, control) == 3
    assert control.hints == [("s", "200")]
    assert source.confirms == [("default", ["2"], ["1", "3"])]


async def test_an_empty_batch_confirms_nothing(control: RecordingControl) -> None:
    source = FakeSource([])
    assert await consume_hints(SHOP_CONFIG, source, control) == 0
    assert source.confirms == []


async def test_a_failed_confirm_raises_the_connector_error(control: RecordingControl) -> None:
    source = FakeSource([message("1", "100")], fail_confirm=True)
    with pytest.raises(TransientError):
        await consume_hints(SHOP_CONFIG, source, control)
    assert control.hints == [("s", "100")]  # hinted; the unconfirmed message comes back later
