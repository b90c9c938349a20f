"""Keeping a job's lease while the job runs: one renewal loop for the daemon's jobs and for the
manual runs that share a job's lease (`ecomhub sync inventory` holds `stock-sync`).

A lease is a row (`Tx.acquire_lease`) that is free, expired, or already ours; held for `ttl` and
renewed every third of it. A renewal that fails (the database blinked) is tried again at the next
tick, which still lands before the lease ends; a renewal that finds the lease taken means another
process holds it now, so the work is cancelled rather than run twice.
"""

import asyncio
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
