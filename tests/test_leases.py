"""Keeping a lease while its work runs (`sync.leases.keep_lease`)."""

import asyncio
from datetime import timedelta

from models.clock import FixedClock
from models.store import Store
from sync.leases import keep_lease

TTL = timedelta(seconds=0.3)


async def test_renewals_keep_the_lease_and_stop_with_the_work(
    store: Store, clock: FixedClock
) -> None:
    async with store.transaction() as tx:
        assert await tx.acquire_lease("job", "a", TTL)
    work = asyncio.ensure_future(asyncio.sleep(0.5))
    keeper = asyncio.create_task(keep_lease(store, "job", "a", TTL, work))
    for _ in range(4):  # the clock moves past the first term; renewals push the end out
        await asyncio.sleep(0.1)
        clock.advance(timedelta(seconds=0.1))
    async with store.transaction() as tx:
        assert not await tx.acquire_lease("job", "b", TTL)
    await asyncio.wait_for(keeper, 2)
    assert work.done() and not work.cancelled()


async def test_a_lost_lease_cancels_the_work(store: Store, clock: FixedClock) -> None:
    async with store.transaction() as tx:
        assert await tx.acquire_lease("job", "a", TTL)
    work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    keeper = asyncio.create_task(keep_lease(store, "job", "a", TTL, work))
    clock.advance(timedelta(seconds=1))  # expired before its first renewal: "b" takes it
    async with store.transaction() as tx:
        assert await tx.acquire_lease("job", "b", TTL)
    await asyncio.wait_for(keeper, 2)
    assert work.cancelled()
