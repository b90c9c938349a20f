"""The outbox: claims, the retry schedule, dead letters, replay, concurrent dispatchers."""

import asyncio
import random
from collections import Counter
from datetime import timedelta

from connectors.errors import AmbiguousError, RateLimited, RejectedError, TransientError
from models.clock import FixedClock
from models.domain import OutboxMessage, OutboxStatus
from models.store import Store
from sync.outbox import Dispatcher, RetrySchedule, maybe_sent


def message(n: int, target: str = "WH-EAST", kind: str = "test.send") -> OutboxMessage:
    return OutboxMessage(kind=kind, target=target, idempotency_key=f"k{n}", payload={"n": n})


async def enqueue(store: Store, messages: list[OutboxMessage]) -> None:
    async with store.transaction() as tx:
        await tx.enqueue(messages)


async def statuses(store: Store) -> Counter[str]:
    async with store.transaction() as tx:
        return Counter(m.status.value for m in await tx.outbox_messages())


def test_retry_schedule_is_data() -> None:
    schedule = RetrySchedule(delays=(1, 10), jitter=0.0, max_attempts=4)
    now = FixedClock().now()
    rng = random.Random(1)
    assert schedule.next_attempt(1, now, rng) == now + timedelta(seconds=1)
    assert schedule.next_attempt(2, now, rng) == now + timedelta(seconds=10)
    assert schedule.next_attempt(3, now, rng) == now + timedelta(seconds=10)
    assert schedule.next_attempt(4, now, rng) is None
    assert schedule.next_attempt(1, now, rng, not_before=30) == now + timedelta(seconds=30)


async def test_claim_marks_an_attempt_and_excludes_others(store: Store) -> None:
    await enqueue(store, [message(1), message(2)])
    async with store.transaction() as tx:
        first = await tx.claim_outbox("a", 10, timedelta(seconds=60))
        second = await tx.claim_outbox("b", 10, timedelta(seconds=60))
    assert [m.payload["n"] for m in first] == [1, 2]
    assert all(m.attempts == 1 for m in first) and second == []


async def test_expired_claim_is_taken_over(store: Store, clock: FixedClock) -> None:
    await enqueue(store, [message(1)])
    async with store.transaction() as tx:
        (claimed,) = await tx.claim_outbox("dead-replica", 10, timedelta(seconds=60))
    clock.advance(timedelta(seconds=61))
    async with store.transaction() as tx:
        (again,) = await tx.claim_outbox("b", 10, timedelta(seconds=60))
        assert not await tx.complete_outbox(claimed.id or 0, "dead-replica")
        assert await tx.complete_outbox(again.id or 0, "b")
    assert again.attempts == 2 and maybe_sent(again)


async def test_outcomes_done_retry_dead(store: Store, clock: FixedClock) -> None:
    await enqueue(store, [message(n) for n in range(4)])
    calls: Counter[int] = Counter()

    async def handler(m: OutboxMessage) -> None:
        n = m.payload["n"]
        calls[n] += 1
        if n == 1:
            raise TransientError("isp busy")
        if n == 2:
            raise RejectedError("bad order", code="PARAM_ERROR")
        if n == 3:
            raise AmbiguousError("read timeout")

    dispatcher = Dispatcher(
        store,
        {"test.send": handler},
        owner="d1",
        schedule=RetrySchedule(delays=(5,), jitter=0, max_attempts=2),
        clock=clock,
    )
    stats = await dispatcher.drain_once()
    assert (stats.done, stats.retried, stats.dead) == (1, 2, 1)
    assert await dispatcher.drain_once() == type(stats)()  # nothing due yet
    clock.advance(timedelta(seconds=5))
    stats = await dispatcher.drain_once()
    assert (stats.done, stats.retried, stats.dead) == (0, 0, 2)  # second failure: dead
    async with store.transaction() as tx:
        dead = {m.payload["n"]: m for m in await tx.dead_letters()}
    assert set(dead) == {1, 2, 3}
    assert dead[2].last_error.endswith("[PARAM_ERROR]") and dead[2].attempts == 1
    assert dead[3].ambiguous and dead[3].attempts == 2


async def test_replay_revives_dead_letters_and_keeps_attempts(
    store: Store, clock: FixedClock
) -> None:
    await enqueue(store, [message(1), message(2)])
    fail = True

    async def handler(m: OutboxMessage) -> None:
        if fail:
            raise RejectedError("warehouse closed")

    dispatcher = Dispatcher(store, {"test.send": handler}, owner="d1", clock=clock)
    await dispatcher.drain_once()
    assert (await statuses(store))["dead"] == 2
    async with store.transaction() as tx:
        assert await tx.replay_dead([1]) == [1]
    fail = False
    seen: list[OutboxMessage] = []

    async def recording(m: OutboxMessage) -> None:
        seen.append(m)

    dispatcher.handlers["test.send"] = recording
    await dispatcher.drain_once()
    assert [m.payload["n"] for m in seen] == [1] and maybe_sent(seen[0])
    async with store.transaction() as tx:
        assert await tx.replay_dead(None) == [2]
    assert await statuses(store) == Counter({"pending": 1, "done": 1})


async def test_rate_limit_waits_its_ban(store: Store, clock: FixedClock) -> None:
    await enqueue(store, [message(1)])

    async def handler(m: OutboxMessage) -> None:
        raise RateLimited("banned", retry_after=90)

    dispatcher = Dispatcher(
        store,
        {"test.send": handler},
        owner="d1",
        clock=clock,
        schedule=RetrySchedule(delays=(1,), jitter=0),
    )
    await dispatcher.drain_once()
    async with store.transaction() as tx:
        (m,) = await tx.outbox_messages()
    assert m.next_attempt_at == clock.now() + timedelta(seconds=90)


async def test_missing_handler_keeps_the_message(store: Store) -> None:
    await enqueue(store, [message(1, kind="unknown.kind")])
    stats = await Dispatcher(store, {}, owner="d1").drain_once()
    assert stats.retried == 1 and (await statuses(store))["pending"] == 1


async def test_one_slow_target_does_not_starve_the_others(store: Store) -> None:
    await enqueue(store, [message(n, target="SLOW") for n in range(8)])
    await enqueue(store, [message(100 + n, target="FAST") for n in range(8)])
    order: list[str] = []
    slow_started = asyncio.Event()

    async def handler(m: OutboxMessage) -> None:
        if m.target == "SLOW":
            slow_started.set()
            await asyncio.sleep(0.2)
        order.append(m.target)

    dispatcher = Dispatcher(store, {"test.send": handler}, owner="d1", per_target=2)
    await dispatcher.drain_once()
    assert order[:8] == ["FAST"] * 8 and len(order) == 16


async def test_two_dispatchers_never_send_the_same_message(store: Store, database_url: str) -> None:
    """Two dispatchers (separate engines, as two replicas would have) drain one outbox."""
    stores = [Store.open(database_url), Store.open(database_url)]
    try:
        await enqueue(stores[0], [message(n, target=f"T{n % 5}") for n in range(300)])
        sent: Counter[int] = Counter()

        async def handler(m: OutboxMessage) -> None:
            await asyncio.sleep(0.001)
            sent[m.payload["n"]] += 1

        dispatchers = [
            Dispatcher(s, {"test.send": handler}, owner=f"d{i}", batch=20)
            for i, s in enumerate(stores)
        ]
        results = await asyncio.gather(*(d.drain_once() for d in dispatchers))
        assert sum(r.done for r in results) == 300
        assert set(sent) == set(range(300)) and set(sent.values()) == {1}
        assert await statuses(stores[0]) == Counter({"done": 300})
    finally:
        for s in stores:
            await s.close()


async def test_run_stops_and_releases_claims(store: Store) -> None:
    await enqueue(store, [message(1)])
    sent = asyncio.Event()

    async def handler(m: OutboxMessage) -> None:
        sent.set()

    dispatcher = Dispatcher(store, {"test.send": handler}, owner="d1")
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop, idle=0.05))
    await asyncio.wait_for(sent.wait(), 5)
    await enqueue(store, [message(2)])
    dispatcher.wake.set()
    for _ in range(100):
        if (await statuses(store))["done"] == 2:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert (await statuses(store)) == Counter({OutboxStatus.DONE.value: 2})
