"""Outgoing callbacks that are retried until the receiver acknowledges them.

Both the WMS (Qimen confirms, stock reports) and the courier (Kuaidi100 pushes) call the hub back
and keep trying, with a capped exponential backoff, until it answers success: a callback is never
dropped. One loop serves both simulators, and `Loops` runs each simulator's background tasks.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import httpx

TICK = 0.02
"""How often the loop looks for due deliveries (seconds)."""
PARALLEL = 8
"""Callbacks in flight at once: real WMSs and couriers push from several workers, so the hub
must take them concurrently and in any order."""


class Outgoing(Protocol):
    seq: int
    attempts: int
    delivered: bool
    last_error: str
    next_at: float


T = TypeVar("T", bound=Outgoing)


async def deliver_until_acknowledged(
    items: Sequence[T],
    post: Callable[[httpx.AsyncClient, T], Awaitable[str | None]],
    *,
    request_timeout: float,
    backoff: tuple[float, float],
    parallel: int = PARALLEL,
) -> None:
    """Run forever: post every due item (oldest first, up to `parallel` at once, as a real
    system's sender pool does); `post` returns None on success or the error text, after which
    the item waits `first · 2ⁿ` seconds, at most `cap`."""
    first, cap = backoff
    in_flight = asyncio.Semaphore(parallel)
    oldest = 0
    """Index of the oldest undelivered item: `items` only grows, and what lies before it is
    delivered, so a tick looks at the open tail, not at every callback ever made."""
    async with httpx.AsyncClient(timeout=request_timeout) as client:
        while True:
            while oldest < len(items) and items[oldest].delivered:
                oldest += 1
            now = time.monotonic()
            due = sorted(
                (item for item in items[oldest:] if not item.delivered and item.next_at <= now),
                key=lambda item: (item.next_at, item.seq),
            )

            async def deliver(item: T) -> None:
                async with in_flight:
                    item.attempts += 1
                    error = await post(client, item)
                if error is None:
                    item.delivered = True
                    item.last_error = ""
                else:
                    item.last_error = error
                    item.next_at = time.monotonic() + min(cap, first * 2 ** (item.attempts - 1))

            await asyncio.gather(*(deliver(item) for item in due))
            await asyncio.sleep(TICK)


class Loops:
    """A simulator's background loops: started once, cancelled and awaited on stop."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, loops: dict[str, Callable[[], Coroutine[Any, Any, None]]]) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(loop(), name=name) for name, loop in loops.items()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # `asyncio.wait`, unlike `await task`, never mistakes a cancel of this caller for
            # the loop's own: suppressing CancelledError there would swallow ours too.
            await asyncio.wait(self._tasks)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if not task.cancelled() and (crash := task.exception()) is not None:
                raise crash
