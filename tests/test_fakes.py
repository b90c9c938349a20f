"""The fakes behave like the platforms in the ways the engine relies on."""

from datetime import timedelta

import pytest

from connectors.errors import RejectedError
from models.clock import FixedClock
from tests.factories import make_order
from tests.fakes import FakeMarketplace


@pytest.fixture
def market(clock: FixedClock) -> FakeMarketplace:
    fake = FakeMarketplace(clock=clock)
    for n in range(250):
        order = make_order(f"{n:04d}")
        fake.put(order.model_copy(update={"modified": clock.now() - timedelta(seconds=1000 - n)}))
    return fake


async def test_newest_first_with_total_and_limits(market: FakeMarketplace) -> None:
    now = market.clock.now()
    page = await market.search_orders(now - timedelta(hours=1), now, 1, 100)
    assert page.total == 250 and len(page.orders) == 100
    times = [o.modified for o in page.orders]
    assert times == sorted(times, reverse=True)
    last = await market.search_orders(now - timedelta(hours=1), now, 3, 100)
    assert len(last.orders) == 50
    with pytest.raises(RejectedError):
        await market.search_orders(now - timedelta(days=2), now, 1, 100)
    with pytest.raises(RejectedError):
        await market.search_orders(now - timedelta(hours=1), now, 1, 101)


async def test_a_forward_pager_misses_orders_under_drift(market: FakeMarketplace) -> None:
    """What the engine must defend against: modifications push unread orders onto read pages."""
    now = market.clock.now()
    start = now - timedelta(hours=1)
    bumped = iter(range(900, 1000))

    def drift(fake: FakeMarketplace, page: int) -> None:
        # an old order is modified to a new time inside the window: it jumps to the front
        fake.modify(f"{next(bumped) - 900:04d}", now - timedelta(seconds=1))

    market.on_page = drift
    seen: set[str] = set()
    for page in (1, 2, 3):
        result = await market.search_orders(start, now, page, 100)
        seen.update(o.platform_order_id for o in result.orders)
    assert len(seen) < 250
