"""The pull engine against the fake marketplace: nothing lost, cursor honest, faults contained."""

import itertools
from datetime import timedelta

import pytest

from config import Settings, ShopConfig
from connectors.errors import AuthError, RateLimited, TransientError
from models.clock import FixedClock
from models.domain import HoldReason, MasterSku, OrderStatus, ReviewState, RunStatus, SyncError
from models.store import Store
from sync.orders import LIVE_STREAM, PLATFORM_HISTORY, OrderPuller, split
from tests.factories import make_order
from tests.fakes import FakeMarketplace

SHOP = "tmall-flagship"


def shop_config(**overrides: object) -> ShopConfig:
    values: dict[str, object] = {
        "code": SHOP,
        "platform": "tmall",
        "api_url": "http://127.0.0.1:1/router/rest",
        "app_key": "k",
        "app_secret": "s",
        "access_token": "t",
        "initial_lookback": "1d",
    }
    values.update(overrides)
    return ShopConfig.model_validate(values)


@pytest.fixture
def market(clock: FixedClock) -> FakeMarketplace:
    return FakeMarketplace(clock=clock)


def puller(store: Store, market: FakeMarketplace, **shop: object) -> OrderPuller:
    config = shop_config(**shop)
    return OrderPuller(store, Settings(shops=[config]), config, market, clock=market.clock)


def seed(
    market: FakeMarketplace, count: int, *, start_minutes: float, spread_minutes: float
) -> None:
    base = market.clock.now() + timedelta(minutes=start_minutes)
    for n in range(count):
        minutes = spread_minutes * n / max(count, 1)
        order = make_order(str(100_000 + n), modified_minutes=0)
        market.put(order.model_copy(update={"modified": base + timedelta(minutes=minutes)}))


async def stored_ids(store: Store) -> dict[str, str]:
    async with store.transaction() as tx:
        return {
            s.order.platform_order_id: s.order.modified.isoformat()
            async for s in tx.iter_orders(SHOP)
        }


def truth(market: FakeMarketplace) -> dict[str, str]:
    return {k: o.modified.isoformat() for k, o in market.orders.items()}


async def test_first_pull_reads_lookback_and_stores_everything(
    store: Store, market: FakeMarketplace
) -> None:
    seed(market, 950, start_minutes=-20 * 60, spread_minutes=19 * 60)
    run = await puller(store, market).pull()
    assert run.status == RunStatus.OK
    assert await stored_ids(store) == truth(market)
    # split until every request fits one page: no request of a window held more than a page
    assert all(start < end for start, end, _ in market.calls)
    async with store.transaction() as tx:
        cursor = await tx.get_cursor(SHOP, LIVE_STREAM)
    assert cursor is not None
    assert cursor.position == market.clock.now() - timedelta(seconds=120)


async def test_lookback_longer_than_max_window_is_sliced(
    store: Store, market: FakeMarketplace
) -> None:
    seed(market, 300, start_minutes=-3 * 24 * 60 + 5, spread_minutes=3 * 24 * 60 - 10)
    run = await puller(store, market, initial_lookback="3d").pull()
    assert run.status == RunStatus.OK and run.windows == 4  # 3 days + overlap, 1-day slices
    assert await stored_ids(store) == truth(market)


async def test_no_window_starts_beyond_the_platforms_three_months(
    store: Store, market: FakeMarketplace
) -> None:
    """A cursor or backfill older than the platforms keep would fail every slice forever."""
    now = market.clock.now()
    run = await puller(store, market).backfill(now - timedelta(days=200), now - timedelta(days=80))
    assert run.status == RunStatus.OK
    assert min(start for start, _, _ in market.calls) >= now - PLATFORM_HISTORY
    too_old = await puller(store, market).backfill(
        now - timedelta(days=200), now - timedelta(days=150)
    )
    assert too_old.status == RunStatus.FAILED and "3 months" in too_old.message


async def test_a_full_page_without_a_total_is_not_taken_for_the_whole_window(
    store: Store, market: FakeMarketplace
) -> None:
    market.reports_totals = False
    seed(market, 450, start_minutes=-20 * 60, spread_minutes=19 * 60)
    run = await puller(store, market).pull()
    assert run.status == RunStatus.OK
    assert await stored_ids(store) == truth(market)


async def test_drift_while_reading_loses_nothing(store: Store, market: FakeMarketplace) -> None:
    seed(market, 600, start_minutes=-60, spread_minutes=50)
    moved: list[str] = []

    def drift(fake: FakeMarketplace, page: int) -> None:
        # After each page, an order in the middle of the window is modified (moves out of it).
        candidates = sorted(fake.orders)[len(moved) * 7 % 600 :]
        if candidates and len(moved) < 40:
            order_id = candidates[0]
            moved.append(order_id)
            fake.modify(order_id, fake.clock.now() - timedelta(seconds=200 + len(moved)))

    market.on_page = drift
    run = await puller(store, market).pull()
    assert run.status == RunStatus.OK
    market.on_page = None
    market.clock.advance(timedelta(minutes=1))
    await puller(store, market).pull()  # the overlap re-reads the recent past
    assert await stored_ids(store) == truth(market)


async def test_visibility_latency_is_covered_by_lag_and_overlap(
    store: Store, market: FakeMarketplace
) -> None:
    late = make_order("LATE", modified_minutes=0)
    late = late.model_copy(update={"modified": market.clock.now() - timedelta(minutes=5)})
    market.put(late, visible_after=timedelta(minutes=8))  # shows up 3 minutes from now
    await puller(store, market).pull()
    assert "LATE" not in await stored_ids(store)
    market.clock.advance(timedelta(minutes=4))
    await puller(store, market).pull()
    assert "LATE" in await stored_ids(store)


async def test_more_than_a_page_in_one_second_pages_backwards(
    store: Store, market: FakeMarketplace
) -> None:
    moment = market.clock.now() - timedelta(minutes=30)
    for n in range(250):
        market.put(make_order(f"D{n:04d}").model_copy(update={"modified": moment}))
    await puller(store, market).pull()
    assert await stored_ids(store) == truth(market)
    dense = [page for start, end, page in market.calls if end - start <= timedelta(seconds=1)]
    assert 3 in dense and dense.index(3) < dense.index(2)  # last page first


async def test_a_dense_second_without_totals_is_read_until_a_short_page(
    store: Store, market: FakeMarketplace
) -> None:
    market.reports_totals = False
    moment = market.clock.now() - timedelta(minutes=30)
    for n in range(250):
        market.put(make_order(f"D{n:04d}").model_copy(update={"modified": moment}))
    await puller(store, market).pull()
    assert await stored_ids(store) == truth(market)


async def test_failed_slice_is_retried_from_its_start(
    store: Store, market: FakeMarketplace
) -> None:
    seed(market, 400, start_minutes=-120, spread_minutes=100)
    market.failures = [TransientError("isp down"), TransientError("isp down")]
    run = await puller(store, market).pull()
    assert run.status == RunStatus.OK
    assert await stored_ids(store) == truth(market)


async def test_slice_failing_every_time_leaves_the_cursor_where_it_was(
    store: Store, market: FakeMarketplace
) -> None:
    seed(market, 50, start_minutes=-60, spread_minutes=30)
    await puller(store, market).pull()
    async with store.transaction() as tx:
        before = await tx.get_cursor(SHOP, LIVE_STREAM)
    market.clock.advance(timedelta(hours=1))
    market.failures = [TransientError("down")] * 3
    run = await puller(store, market).pull()
    assert run.status == RunStatus.FAILED and "failed" in run.message
    async with store.transaction() as tx:
        assert await tx.get_cursor(SHOP, LIVE_STREAM) == before


async def test_auth_failure_flags_the_shop(store: Store, market: FakeMarketplace) -> None:
    market.failures = [AuthError("Invalid session", code="27")]
    run = await puller(store, market).pull()
    assert run.status == RunStatus.FAILED and "re-authorise" in run.message
    async with store.transaction() as tx:
        (summary,) = await tx.shop_summaries([SHOP])
    assert summary.auth_failed_at is not None
    await puller(store, market).pull()  # a later good pull clears the flag
    async with store.transaction() as tx:
        (summary,) = await tx.shop_summaries([SHOP])
    assert summary.auth_failed_at is None


async def test_rate_limit_beyond_cap_stops_the_run_as_partial(
    store: Store, market: FakeMarketplace
) -> None:
    market.failures = [RateLimited("banned", retry_after=3600)]
    run = await puller(store, market).pull()
    assert run.status == RunStatus.PARTIAL and "rate limited" in run.message


async def test_malformed_orders_are_recorded_and_the_rest_stored(
    store: Store, market: FakeMarketplace
) -> None:
    seed(market, 30, start_minutes=-60, spread_minutes=30)
    market.malformed.append(
        (
            market.clock.now() - timedelta(minutes=40),
            SyncError(source=SHOP, key="BAD1", reason="unparsable money 'abc'", raw="{}"),
        )
    )
    run = await puller(store, market).pull()
    assert run.errors == 1 and run.status == RunStatus.OK
    assert len(await stored_ids(store)) == 30
    async with store.transaction() as tx:
        assert [e.key for e in await tx.recent_errors(SHOP)] == ["BAD1"]


async def test_backfill_never_moves_the_live_cursor(store: Store, market: FakeMarketplace) -> None:
    seed(market, 100, start_minutes=-10 * 24 * 60, spread_minutes=60)
    await puller(store, market).pull()
    async with store.transaction() as tx:
        live = await tx.get_cursor(SHOP, LIVE_STREAM)
    assert len(await stored_ids(store)) == 0  # ten days ago: outside the 1-day lookback
    now = market.clock.now()
    run = await puller(store, market).backfill(now - timedelta(days=11), now - timedelta(days=9))
    assert run.status == RunStatus.OK
    assert await stored_ids(store) == truth(market)
    async with store.transaction() as tx:
        assert await tx.get_cursor(SHOP, LIVE_STREAM) == live


async def test_review_holds_and_passes(store: Store, market: FakeMarketplace) -> None:
    async with store.transaction() as tx:
        await tx.upsert_master_skus([MasterSku(sku="SKU-0001")])
    now = market.clock.now() - timedelta(minutes=30)
    market.put(make_order("OK").model_copy(update={"modified": now}))
    market.put(make_order("TWO", lines=2).model_copy(update={"modified": now}))
    market.put(make_order("NOADDR", receiver=None).model_copy(update={"modified": now}))
    market.put(make_order("REMARK", buyer_remark="请发顺丰").model_copy(update={"modified": now}))
    market.put(
        make_order("SHIPPED", status=OrderStatus.SHIPPED).model_copy(update={"modified": now})
    )
    await puller(store, market, hold_on_remark=True).pull()
    async with store.transaction() as tx:
        states = {
            s.order.platform_order_id: (s.review_state, s.hold_reason, s.shipped_elsewhere)
            async for s in tx.iter_orders(SHOP)
        }
    assert states == {
        "OK": (ReviewState.PASSED, None, False),
        "TWO": (ReviewState.HELD, HoldReason.UNKNOWN_SKU.value, False),
        "NOADDR": (ReviewState.HELD, HoldReason.MISSING_ADDRESS.value, False),
        "REMARK": (ReviewState.HELD, HoldReason.BUYER_REMARK.value, False),
        "SHIPPED": (ReviewState.NOT_APPLICABLE, None, True),
    }
    # the unknown SKU is added to the catalog and the order changes: it is reviewed again
    async with store.transaction() as tx:
        await tx.upsert_master_skus([MasterSku(sku="SKU-0001"), MasterSku(sku="SKU-0002")])
    market.modify("TWO", market.clock.now() - timedelta(minutes=5), buyer_nick="changed")
    market.clock.advance(timedelta(minutes=1))
    await puller(store, market, hold_on_remark=True).pull()
    stored = await store.get_order(SHOP, "TWO")
    assert stored is not None and stored.review_state == ReviewState.PASSED
    stored = await store.get_order(SHOP, "REMARK")  # unchanged: still held
    assert stored is not None and stored.review_state == ReviewState.HELD


def test_split_shares_boundaries_and_covers_the_window(clock: FixedClock) -> None:
    start = clock.now()
    parts = split(start, start + timedelta(seconds=10), 4)
    assert parts[0][0] == start and parts[-1][1] == start + timedelta(seconds=10)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert split(start, start + timedelta(seconds=2), 50) == [
        (start, start + timedelta(seconds=1)),
        (start + timedelta(seconds=1), start + timedelta(seconds=2)),
    ]
