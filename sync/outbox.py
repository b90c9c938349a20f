"""The outbox dispatcher: every effect on an external system is a message, sent exactly once.

A message is written in the same transaction as the state change that causes it (a route writes
`wms.create`, a refund `wms.cancel`, a shipment `platform.ship`). The dispatcher claims due
messages, hands each to the handler registered for its kind, and records the outcome:

- the handler returns → `done`;
- `AmbiguousError` (the request may have arrived) or `TransientError` → retried on the schedule,
  `RateLimited` not before its ban ends;
- `RejectedError` (the target said no) → dead letter at once, with the target's message;
- other failures (auth, unreadable answers, bugs) → retried on the schedule, then dead.

A claim counts as an attempt and is committed before the handler runs, so a message whose
`attempts > 1` may have reached its target already (a timeout, or a crash after sending):
handlers call `maybe_sent(message)` and ask the target before sending again. Per-target
semaphores keep one slow warehouse or throttled shop from starving the others.
"""

import asyncio
import random
import time
from asyncio import FIRST_COMPLETED
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from config import DaemonConfig
from connectors.errors import (
    AmbiguousError,
    ConnectorError,
    RateLimited,
    RejectedError,
    TransientError,
)
from models.clock import Clock, SystemClock
from models.domain import OutboxMessage
from models.store import Store, Tx

Record = Callable[[Tx], Awaitable[None]]
"""What a handler's success changes in the store (a delivery order now `created`, a document
saved); the dispatcher runs it in the transaction that marks the message done, so the two
commit together and the send costs one transaction, not two."""

Handler = Callable[[OutboxMessage], Awaitable[Record | None]]

log = structlog.get_logger("ecomhub.sync.outbox")


@dataclass(frozen=True)
class RetrySchedule:
    """When to try a failed message again: attempt n waits `delays[n-1]` seconds (the last delay
    repeats), ± `jitter` of it; after `max_attempts` attempts the message is a dead letter."""

    delays: tuple[float, ...] = (2, 10, 30, 120, 600, 1800, 3600)
    jitter: float = 0.2
    max_attempts: int = 10

    @classmethod
    def from_config(cls, options: DaemonConfig) -> "RetrySchedule":
        return cls(
            delays=tuple(d.total_seconds() for d in options.retry_delays),
            jitter=options.retry_jitter,
            max_attempts=options.max_attempts,
        )

    def next_attempt(
        self, attempts: int, now: datetime, rng: random.Random, not_before: float = 0.0
    ) -> datetime | None:
        if attempts >= self.max_attempts:
            return None
        delay = self.delays[min(max(attempts, 1), len(self.delays)) - 1]
        delay *= 1 + rng.uniform(-self.jitter, self.jitter)
        return now + timedelta(seconds=max(delay, not_before))


def maybe_sent(message: OutboxMessage) -> bool:
    """Could an earlier attempt of this message have reached its target?"""
    return message.attempts > 1 or message.ambiguous


@dataclass(frozen=True)
class _Attempt:
    outcome: str  # done | retry | dead
    error: str
    retry_at: datetime | None  # for a retry; None = dead letter
    ambiguous: bool
    record: Record | None = None


class HandlerMissing(Exception):
    """No handler is registered for a message kind (a bug or a half-deployed upgrade)."""


@dataclass
class DrainStats:
    done: int = 0
    retried: int = 0
    dead: int = 0
    by_target: dict[str, int] = field(default_factory=dict)

    @property
    def handled(self) -> int:
        return self.done + self.retried + self.dead


class Dispatcher:
    """Claims and sends outbox messages; one per process, any number per database."""

    # While messages are in flight, look for newly due ones (retries) at least this often.
    RECLAIM_AFTER = 1.0

    def __init__(
        self,
        store: Store,
        handlers: Mapping[str, Handler],
        *,
        owner: str,
        schedule: RetrySchedule | None = None,
        per_target: int = 4,
        batch: int = 200,
        claim_ttl: timedelta = timedelta(minutes=2),
        clock: Clock | None = None,
        seed: int | None = None,
        on_outcome: Callable[[OutboxMessage, str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.owner = owner
        self.schedule = schedule or RetrySchedule()
        self.per_target = per_target
        self.batch = batch
        self.claim_ttl = claim_ttl
        self.clock = clock or store.clock or SystemClock()
        self.rng = random.Random(seed)
        self.on_outcome = on_outcome
        self._limits: dict[str, asyncio.Semaphore] = {}
        self.wake = asyncio.Event()

    def _limit(self, target: str) -> asyncio.Semaphore:
        if target not in self._limits:
            self._limits[target] = asyncio.Semaphore(self.per_target)
        return self._limits[target]

    async def drain_once(self, stop: asyncio.Event | None = None) -> DrainStats:
        """Send everything that is due now (including what becomes due while sending, e.g. a
        message written by a handler), then return; with `stop`, claim nothing once it is set.

        Claims are continuous, not batch by batch: a message written while others are in flight
        is claimed as soon as `wake` is set or a slot of its target frees up, instead of waiting
        for the slowest message of an earlier batch. A claim takes no more of a target's
        messages than it has free slots (`per_target`), so what is claimed starts at once and
        the rest stay free for other replicas."""
        stats = DrainStats()
        in_flight: dict[asyncio.Future[Any], OutboxMessage] = {}
        full: set[str] = set()  # targets the last claim left no free slot
        claim_now = True
        last_claim = last_extended = time.monotonic()
        keep_every = self.claim_ttl.total_seconds() / 3
        try:
            while True:
                if in_flight and time.monotonic() - last_extended >= keep_every:
                    last_extended = time.monotonic()
                    await self._keep_claims(list(in_flight.values()))
                may_claim = len(in_flight) < self.batch and not (stop and stop.is_set())
                if claim_now and may_claim:
                    self.wake.clear()
                    last_claim = time.monotonic()
                    try:
                        claimed = await self._claim(list(in_flight.values()))
                    except Exception:
                        if not in_flight:
                            raise  # nothing under way: the caller reports and retries
                        log.exception("claiming outbox messages failed; sends under way go on")
                        claimed = []
                    for message in claimed:
                        in_flight[asyncio.ensure_future(self._send(message, stats))] = message
                    counts = Counter(m.target for m in in_flight.values())
                    full = {target for target, n in counts.items() if n >= self.per_target}
                if not in_flight:
                    break  # all sent, and the claim just made found nothing (or may not be made)
                waiting = list(in_flight)
                if may_claim:
                    waiting.append(asyncio.ensure_future(self.wake.wait()))
                try:
                    done, _ = await asyncio.wait(
                        waiting, timeout=self.RECLAIM_AFTER, return_when=FIRST_COMPLETED
                    )
                finally:
                    if may_claim:
                        waiting[-1].cancel()
                freed = set()
                for task in done:
                    if task in in_flight:
                        message = in_flight.pop(task)
                        freed.add(message.target)
                        if (failure := task.exception()) is not None:
                            # Its outcome could not be recorded (the database failed): the claim
                            # expires and the message is sent again, asked about first.
                            log.error(
                                "recording an outcome failed",
                                message_id=message.id,
                                error=repr(failure),
                            )
                # Claim again when something new was written, when a target left out for being
                # full has a free slot, when nothing is in flight, or after a while (retries come
                # due on their own).
                claim_now = (
                    self.wake.is_set()
                    or bool(freed & full)
                    or not in_flight
                    or time.monotonic() - last_claim >= self.RECLAIM_AFTER
                )
        finally:
            # Cancelled (shutdown past its grace period): stop the sends in flight; their claims
            # expire, and each message is asked about before it is sent again.
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.wait(in_flight)
        return stats

    async def _keep_claims(self, sending: list[OutboxMessage]) -> None:
        """Sends that outlive a third of their claim keep it: nobody else (and not this
        dispatcher) may take a message while it is being sent."""
        ids = [m.id for m in sending if m.id is not None]
        try:
            async with self.store.transaction() as tx:
                await tx.extend_outbox_claims(self.owner, ids, self.claim_ttl)
        except Exception:  # tried again a third of the claim later, before it ends
            log.exception("extending outbox claims failed")

    async def _claim(self, sending: list[OutboxMessage]) -> list[OutboxMessage]:
        """Claim what fits beside the messages being sent (never one of them again)."""
        ids = [m.id for m in sending if m.id is not None]
        async with self.store.transaction() as tx:
            return await tx.claim_outbox(
                self.owner,
                self.batch - len(sending),
                self.claim_ttl,
                per_target=self.per_target,
                in_flight=Counter(m.target for m in sending),
                exclude_ids=ids,
            )

    async def _send(self, message: OutboxMessage, stats: DrainStats) -> None:
        async with self._limit(message.target):
            attempt = await self._attempt(message)
        assert message.id is not None
        if attempt.outcome == "done":
            try:
                async with self.store.transaction() as tx:
                    recorded = await tx.complete_outbox(message.id, self.owner)
                    # With the claim lost, whoever holds the message now records its outcome
                    # (or a callback settled it): never both.
                    if recorded and attempt.record is not None:
                        await attempt.record(tx)
            except Exception as exc:  # the effect happened; its record failed: ask, then retry
                log.exception("recording a sent message failed", message_id=message.id)
                attempt = self._retry(message, f"{type(exc).__name__}: {exc}", ambiguous=True)
        if attempt.outcome != "done":
            async with self.store.transaction() as tx:
                recorded = await tx.retry_outbox(
                    message.id,
                    self.owner,
                    attempt.error,
                    attempt.retry_at,
                    ambiguous=attempt.ambiguous,
                )
        if not recorded:
            log.warning("claim lost before the outcome was recorded", message_id=message.id)
        outcome = attempt.outcome
        if outcome == "done":
            stats.done += 1
        elif attempt.retry_at is None:
            stats.dead += 1
            outcome = "dead"
        else:
            stats.retried += 1
        stats.by_target[message.target] = stats.by_target.get(message.target, 0) + 1
        if self.on_outcome is not None:
            self.on_outcome(message, outcome, attempt.error)

    def _retry(
        self, message: OutboxMessage, error: str, *, ambiguous: bool, not_before: float = 0.0
    ) -> "_Attempt":
        retry_at = self.schedule.next_attempt(
            message.attempts, self.clock.now(), self.rng, not_before
        )
        return _Attempt("retry", error, retry_at, ambiguous)

    async def _attempt(self, message: OutboxMessage) -> "_Attempt":
        """Run the handler: done (with what to record), to retry (when), or dead."""
        logger = log.bind(
            message_id=message.id,
            kind=message.kind,
            target=message.target,
            key=message.idempotency_key,
            attempt=message.attempts,
        )
        handler = self.handlers.get(message.kind)
        try:
            if handler is None:
                raise HandlerMissing(f"no handler for message kind {message.kind!r}")
            record = await handler(message)
        except RejectedError as exc:
            logger.warning("rejected: dead letter", error=str(exc), **exc.context())
            return _Attempt("dead", str(exc), None, False)
        except ConnectorError as exc:
            ambiguous = isinstance(exc, AmbiguousError) or message.ambiguous
            not_before = (exc.retry_after or 0.0) if isinstance(exc, RateLimited) else 0.0
            retry = self._retry(message, str(exc), ambiguous=ambiguous, not_before=not_before)
            level = "warning" if isinstance(exc, TransientError) else "error"
            getattr(logger, level)(
                "send failed" + ("; dead letter" if retry.retry_at is None else "; will retry"),
                error=str(exc),
                ambiguous=ambiguous,
                retry_at=retry.retry_at.isoformat() if retry.retry_at else None,
                **exc.context(),
            )
            return retry
        except Exception as exc:  # a bug or an unexpected answer: keep the message, retry later
            logger.exception("handler failed", error=repr(exc))
            return self._retry(message, f"{type(exc).__name__}: {exc}", ambiguous=True)
        logger.debug("sent")
        return _Attempt("done", "", None, False, record)

    async def run(self, stop: asyncio.Event, idle: float = 1.0) -> None:
        """Drain continuously until `stop` is set; `wake` (set when messages are written) cuts
        the idle wait short."""
        while not stop.is_set():
            try:
                await self.drain_once(stop)
            except Exception:
                log.exception("dispatch pass failed; retrying")
            self.wake.clear()
            wait = idle
            async with self.store.read() as tx:
                due = await tx.next_outbox_due()
            if due is not None:
                wait = min(idle, max(0.0, (due - self.clock.now()).total_seconds()))
            stopper = asyncio.ensure_future(stop.wait())
            waker = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait({stopper, waker}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            waker.cancel()
        async with self.store.transaction() as tx:
            await tx.release_outbox_claims(self.owner)
