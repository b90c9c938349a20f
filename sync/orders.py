"""The incremental order pull: every order a marketplace reports ends up stored, at its newest version.

Windows. For each shop the live stream keeps a cursor. A pull reads `[cursor − overlap, now − lag]`
in slices no longer than the platform's maximum window, oldest first. `lag` keeps the window's end
behind the platform's visibility latency; `overlap` re-reads the recent past, which is cheap because
unchanged orders are not rewritten.

Drift. Results come newest-first, so an order modified while the hub pages through a window moves
between pages, and an order that becomes visible late pushes others to later pages: a client paging
forwards can miss orders. The engine avoids paging where it can: a window holding more orders than
one page is split in time (using the total the platform reports) until every sub-window fits in one
page, so each sub-window is read by one request, which the platform answers atomically. Only a
window one second wide that still holds more than a page is paged, from the last page backwards
(removals then shift orders onto pages not read yet), and re-read until its total stays the same.

Progress. Each completed sub-window's orders, its malformed-order records and the cursor's advance
are written in one transaction, with the review of newly paid orders; the cursor never moves over a
sub-window that did not complete, so a crash or a failed request resumes exactly there. A failed
slice is retried from its start a bounded number of times (the transport has already retried each
request); after that the run stops and the next pull resumes from the cursor. A backfill
(`since/until`) keeps its own cursor and never moves the live one.
"""

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from config import Settings, ShopConfig
from connectors.base import Marketplace, OrderPage
from connectors.errors import AuthError, BadPayload, ConnectorError, RateLimited
from models.clock import Clock, SystemClock
from models.domain import Cursor, Order, RunStatus, SyncError, SyncRun
from models.store import Store
from sync.fulfilment import react_to_changes
from sync.mapping import SkuResolver
from sync.review import load_resolver, review_orders, review_pending

LIVE_STREAM = "orders"
ONE_SECOND = timedelta(seconds=1)
# Split so that each sub-window is expected to fill at most this share of a page: orders are not
# spread evenly in time, and a sub-window that still overflows is split again.
SPLIT_FILL = 0.6
DENSE_REREADS = 3
PREFETCH = 2
"""Sub-windows fetched ahead of the one being committed."""

log = structlog.get_logger("ecomhub.sync.orders")


class PullProgress(Protocol):
    """Receives progress for a progress bar or a metrics exporter."""

    def windows_planned(self, count: int) -> None: ...
    def window_done(self) -> None: ...
    def page_read(self, orders: int) -> None: ...
    def orders_written(self, count: int) -> None: ...


class _NoProgress:
    def windows_planned(self, count: int) -> None:
        pass

    def window_done(self) -> None:
        pass

    def page_read(self, orders: int) -> None:
        pass

    def orders_written(self, count: int) -> None:
        pass


@dataclass
class _Chunk:
    """The orders of one completed sub-window, ending at `end`."""

    end: datetime
    orders: dict[str, Order] = field(default_factory=dict)
    errors: list[SyncError] = field(default_factory=list)

    def add(self, page: OrderPage) -> None:
        for order in page.orders:
            known = self.orders.get(order.platform_order_id)
            if known is None or order.version >= known.version:
                self.orders[order.platform_order_id] = order
        self.errors.extend(page.errors)


def floor_second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def slices(start: datetime, end: datetime, longest: timedelta) -> list[tuple[datetime, datetime]]:
    """[start, end] cut into windows no longer than `longest`, sharing their boundary second."""
    out = []
    cursor = start
    while cursor < end:
        stop = min(cursor + longest, end)
        out.append((cursor, stop))
        cursor = stop
    return out


def split(start: datetime, end: datetime, parts: int) -> list[tuple[datetime, datetime]]:
    """[start, end] in `parts` windows of whole seconds, each sharing its boundary second with the
    next, so an order on a boundary is read whether the platform's end bound is inclusive or not."""
    width = int((end - start).total_seconds())
    parts = max(2, min(parts, width))
    bounds = sorted({start + timedelta(seconds=round(width * i / parts)) for i in range(parts + 1)})
    return list(itertools.pairwise(bounds))


MAX_BLIND_PAGES = 200
"""Pages read forward within one second when the platform reports no total (a safety stop)."""
PLATFORM_HISTORY = timedelta(days=89)
"""How far back a modified-time query may start: "the last 3 months" (TOP, JD), with a margin."""


class OrderPuller:
    """Pulls one shop's orders into the store (live increments, backfills, single orders)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        shop: ShopConfig,
        marketplace: Marketplace,
        *,
        clock: Clock | None = None,
        owner: str = "",
        slice_attempts: int = 3,
        progress: PullProgress | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.shop = shop
        self.marketplace = marketplace
        self.clock = clock or store.clock or SystemClock()
        self.owner = owner
        self.slice_attempts = slice_attempts
        self.progress: PullProgress = progress or _NoProgress()
        self.page_size = min(marketplace.page_size, 100)
        self._resolver: SkuResolver | None = None

    async def pull(self) -> SyncRun:
        """One live increment: from the cursor (less the overlap) to now less the lag."""
        now = self.clock.now()
        async with self.store.read() as tx:
            cursor = await tx.get_cursor(self.shop.code, LIVE_STREAM)
        position = cursor.position if cursor else now - self.shop.initial_lookback
        start = floor_second(position - self.shop.effective_overlap)
        end = floor_second(now - self.shop.effective_lag)
        return await self._run("pull", LIVE_STREAM, start, end)

    async def backfill(self, since: datetime, until: datetime) -> SyncRun:
        """Re-read a past range on its own cursor; an interrupted backfill of the same range
        resumes where it stopped. `until` later than now − lag is clamped to now − lag."""
        until = min(until, self.clock.now() - self.shop.effective_lag)
        since, until = floor_second(since), floor_second(until)
        stream = f"backfill:{since:%Y%m%dT%H%M%S}-{until:%Y%m%dT%H%M%S}"
        async with self.store.read() as tx:
            cursor = await tx.get_cursor(self.shop.code, stream)
        start = max(since, cursor.position) if cursor else since
        return await self._run("backfill", stream, start, until)

    async def fetch_one(self, platform_order_id: str) -> bool:
        """A targeted fetch (a webhook's hint): store the order's current version. The live
        cursor does not move; the periodic pull still reconciles everything."""
        order = await self.marketplace.get_order(platform_order_id)
        if order is None:
            return False
        async with self.store.transaction() as tx:
            result = await tx.upsert_orders([order])
            await review_pending(
                tx, self.settings, [self.shop.code], only=[order.platform_order_id]
            )
            await react_to_changes(tx, result.events, self.shop.code)
        self.progress.orders_written(result.written)
        return True

    async def _run(self, job: str, stream: str, start: datetime, end: datetime) -> SyncRun:
        async with self.store.transaction() as tx:
            run_id = await tx.start_run(job, self.shop.code, self.owner)
            # One catalog snapshot per run: the review of every page uses it (an import during
            # the run re-reviews what it affects itself).
            self._resolver = await load_resolver(tx)
            # Orders a crashed run stored but did not review.
            await review_pending(tx, self.settings, [self.shop.code], self._resolver)
        run = SyncRun(id=run_id, job=job, shop=self.shop.code, started_at=self.clock.now())
        logger = log.bind(shop=self.shop.code, job=job, run_id=run_id)
        oldest = floor_second(self.clock.now() - PLATFORM_HISTORY)
        if start < oldest:
            # TOP and JD answer modified-time queries for the last 3 months only; asking for more
            # fails every slice, and the cursor would never move again.
            logger.warning(
                "the platform keeps 3 months of order changes: starting at its oldest",
                asked=start.isoformat(),
                start=oldest.isoformat(),
            )
            start = oldest
        windows = slices(start, end, self.shop.effective_max_window) if end > start else []
        self.progress.windows_planned(len(windows))
        stats = _Stats(run_id=run_id)
        status, message = RunStatus.OK, ""
        if end <= oldest:  # a backfill wholly beyond the platform's reach reads nothing
            status = RunStatus.FAILED
            message = (
                f"{end.isoformat()} is more than 3 months ago: the platform no longer answers "
                "for changes that old"
            )
        for number, (w_start, w_end) in enumerate(windows):
            try:
                await self._read_slice(stream, w_start, w_end, stats)
            except AuthError as exc:
                async with self.store.transaction() as tx:
                    await tx.flag_auth_failure(self.shop.code, str(exc))
                logger.error("auth failed: re-authorise this shop", **exc.context())
                status = RunStatus.FAILED
                message = f"authorisation failed, re-authorise shop {self.shop.code}: {exc}"
                break
            except RateLimited as exc:
                logger.warning("rate limited beyond the wait cap; next pull continues")
                status, message = RunStatus.PARTIAL, f"rate limited: {exc}"
                break
            except ConnectorError as exc:
                logger.error("slice failed after retries", error=str(exc), **exc.context())
                status = RunStatus.PARTIAL if number else RunStatus.FAILED
                message = f"window {w_start.isoformat()}..{w_end.isoformat()} failed: {exc}"
                break
            self.progress.window_done()
            stats.windows += 1
        else:
            if windows:
                async with self.store.transaction() as tx:
                    await tx.clear_auth_failure(self.shop.code)
        run = run.model_copy(
            update={
                "finished_at": self.clock.now(),
                "status": status,
                "windows": stats.windows,
                "pages": stats.pages,
                "orders_seen": stats.seen,
                "orders_written": stats.written,
                "errors": stats.errors,
                "message": message,
            }
        )
        async with self.store.transaction() as tx:
            await tx.finish_run(run)
        logger.info(
            "pull finished",
            status=status.value,
            windows=stats.windows,
            pages=stats.pages,
            seen=stats.seen,
            written=stats.written,
            errors=stats.errors,
        )
        return run

    async def _read_slice(
        self, stream: str, start: datetime, end: datetime, stats: "_Stats"
    ) -> None:
        last_error: ConnectorError | None = None
        for attempt in range(1, self.slice_attempts + 1):
            try:
                await self._pipeline(stream, start, end, stats)
                return
            except (AuthError, RateLimited):
                raise
            except ConnectorError as exc:
                last_error = exc
                log.warning(
                    "slice failed; retrying from the cursor",
                    shop=self.shop.code,
                    attempt=attempt,
                    error=str(exc),
                )
                # Resume after the sub-windows this slice already committed.
                if stats.committed_until is not None and start < stats.committed_until < end:
                    start = stats.committed_until
        assert last_error is not None
        raise last_error

    async def _pipeline(self, stream: str, start: datetime, end: datetime, stats: "_Stats") -> None:
        """Fetch the next sub-window while the current one is committed. Commits stay in order
        (one consumer), so the cursor still only moves over completed sub-windows."""
        queue: asyncio.Queue[_Chunk | Exception | None] = asyncio.Queue(maxsize=PREFETCH)

        async def produce() -> None:
            try:
                async for chunk in self._chunks(start, end, stats):
                    await queue.put(chunk)
            except Exception as exc:
                await queue.put(exc)
            else:
                await queue.put(None)

        producer = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                await self._commit(stream, item, stats)
        finally:
            producer.cancel()
            await asyncio.wait([producer])  # lets a cancel of the pull through, unlike `await`

    async def _chunks(
        self, start: datetime, end: datetime, stats: "_Stats"
    ) -> AsyncIterator[_Chunk]:
        first = await self._page(start, end, 1, stats)
        if first.window_total <= self.page_size:
            chunk = _Chunk(end)
            chunk.add(first)
            yield chunk
            return
        if end - start > ONE_SECOND:
            parts = math.ceil(first.window_total / (self.page_size * SPLIT_FILL))
            for sub_start, sub_end in split(start, end, parts):
                async for chunk in self._chunks(sub_start, sub_end, stats):
                    yield chunk
            return
        yield await self._dense(start, end, first, stats)

    async def _dense(
        self, start: datetime, end: datetime, first: OrderPage, stats: "_Stats"
    ) -> _Chunk:
        """More than a page of orders within one second: page backwards, then check the total."""
        chunk = _Chunk(end)
        if first.window_total != first.total:
            # No usable total to page backwards from: read forward until a page comes back
            # short (the overlap of the next pull re-reads what moved meanwhile).
            chunk.add(first)
            last, number = first, 1
            while last.records >= self.page_size:
                number += 1
                if number > MAX_BLIND_PAGES:
                    raise BadPayload(
                        f"{self.shop.code}: {MAX_BLIND_PAGES} full pages in one second and no "
                        "total: the platform does not seem to page"
                    )
                last = await self._page(start, end, number, stats)
                chunk.add(last)
            return chunk
        for _ in range(DENSE_REREADS):
            pages = max(1, math.ceil(first.window_total / self.page_size))
            for page in range(pages, 1, -1):
                chunk.add(await self._page(start, end, page, stats))
            again = await self._page(start, end, 1, stats)
            chunk.add(again)
            chunk.add(first)
            if again.total == first.total:
                return chunk
            first = again
        log.warning(
            "window kept changing while read; the overlap of the next pull re-reads it",
            shop=self.shop.code,
            start=start.isoformat(),
        )
        return chunk

    async def _page(self, start: datetime, end: datetime, page: int, stats: "_Stats") -> OrderPage:
        result = await self.marketplace.search_orders(start, end, page, self.page_size)
        stats.pages += 1
        stats.seen += len(result.orders)
        self.progress.page_read(len(result.orders))
        return result

    async def _commit(self, stream: str, chunk: _Chunk, stats: "_Stats") -> None:
        resolver = self._resolver
        assert resolver is not None, "set by _run"
        async with self.store.transaction() as tx:
            result = await tx.upsert_orders(list(chunk.orders.values()))
            if chunk.errors:
                await tx.record_errors(chunk.errors, run_id=stats.run_id)
            cursor = await tx.get_cursor(self.shop.code, stream)
            if cursor is None or chunk.end > cursor.position:
                await tx.set_cursor(Cursor(shop=self.shop.code, stream=stream, position=chunk.end))
            # New orders are reviewed from memory; changed ones as stored (they may be held).
            new = [chunk.orders[order_id] for order_id in result.inserted]
            await review_orders(tx, self.settings, new, resolver)
            await review_pending(tx, self.settings, [self.shop.code], resolver, only=result.updated)
        stats.written += result.written
        stats.errors += len(chunk.errors)
        stats.committed_until = chunk.end
        for error in chunk.errors:
            log.warning(
                "malformed order skipped", shop=self.shop.code, key=error.key, reason=error.reason
            )
        self.progress.orders_written(result.written)


@dataclass
class _Stats:
    run_id: int | None = None
    """The run the skipped records are filed under (the admin API lists them per run)."""
    windows: int = 0
    pages: int = 0
    seen: int = 0
    written: int = 0
    errors: int = 0
    committed_until: datetime | None = None
