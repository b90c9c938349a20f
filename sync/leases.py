"""Keeping a job's lease while the job runs: one renewal loop for the daemon's jobs and for the
manual runs that share a job's lease (`ecomhub sync inventory` holds `stock-sync`, a manual pull's
routing holds `route`).

A lease is a row (`Tx.acquire_lease`) that is free, expired, or already ours; held for `ttl` and
renewed every third of it. A renewal that fails (the database blinked) is tried again at the next
tick, which still lands before the lease ends; a renewal that finds the lease taken means another
process holds it now, so the work is cancelled rather than run twice.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import structlog

from models.store import Store

log = structlog.get_logger("ecomhub.sync.leases")


async def keep_lease(
    store: Store, name: str, owner: str, ttl: timedelta, work: asyncio.Future[Any]
) -> None:
    """Renew lease `name` for `owner` while `work` runs; cancel `work` if the lease is lost."""
    every = ttl.total_seconds() / 3
    while not work.done():
        await asyncio.sleep(every)
        if work.done():
            return
        try:
            async with store.transaction() as tx:
                kept = await tx.acquire_lease(name, owner, ttl)
        except Exception as exc:  # try again next tick, still inside the lease's lifetime
            log.warning("lease renewal failed", lease=name, error=str(exc))
            continue
        if not kept:
            log.error("lease lost to another process; stopping its work", lease=name)
            work.cancel()
            return


@contextlib.asynccontextmanager
async def hold_lease(
    store: Store, name: str, owner: str, ttl: timedelta, *, wait: float = 60.0
) -> AsyncIterator[None]:
    """Hold lease `name` (the daemon's job of that name holds the same one) while the body
    runs: wait up to `wait` seconds for it, keep it (`keep_lease`: the body is cancelled if it is
    lost), give it back at the end. `TimeoutError` names the holder when it stays taken."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        async with store.transaction() as tx:
            if await tx.acquire_lease(name, owner, ttl):
                break
            holder = await tx.lease_owner(name)
        if loop.time() >= deadline:
            who = holder[0] if holder else "another process"
            raise TimeoutError(f"{name} is running elsewhere ({who}); try again later")
        await asyncio.sleep(0.5)

    body = asyncio.current_task()
    assert body is not None
    renewer = asyncio.create_task(keep_lease(store, name, owner, ttl, body))
    try:
        yield
    finally:
        renewer.cancel()
        await asyncio.wait([renewer])  # lets a cancel of this job through, unlike `await renewer`
        async with store.transaction() as tx:
            await tx.release_lease(name, owner)
