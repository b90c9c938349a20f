"""The outbox: claims, the retry schedule, dead letters, replay, concurrent dispatchers."""

import asyncio
import random
from collections import Counter
from datetime import timedelta

from connectors.errors import AmbiguousError, RateLimited, RejectedError, TransientError
from models.clock import FixedClock
from models.domain import Cursor, OutboxMessage, OutboxStatus
from models.store import Store, Tx
from sync.outbox import Dispatcher, Record, RetrySchedule, maybe_sent
from tests.factories import BASE


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


async def test_a_deep_backlog_of_one_target_hides_no_other_target(store: Store) -> None:
    """Per-target room must hold however many messages one target has queued: a claim takes
    each target's oldest due messages up to its free slots, never the first N of all."""
    backlog = [message(n, "wms:SLOW") for n in range(3000)]
    await enqueue(store, [*backlog, message(9001, "shop:A"), message(9002, "erp")])
    async with store.transaction() as tx:
        claimed = await tx.claim_outbox(
            "a", 10, timedelta(seconds=60), per_target=4, in_flight={"wms:SLOW": 1}
        )
    by_target = Counter(m.target for m in claimed)
    assert by_target == {"wms:SLOW": 3, "shop:A": 1, "erp": 1}
    assert [m.payload["n"] for m in claimed if m.target == "wms:SLOW"] == [0, 1, 2]
    async with store.transaction() as tx:  # a full target takes nothing; the others' turn
        again = await tx.claim_outbox(
            "a", 10, timedelta(seconds=60), per_target=4, in_flight={"wms:SLOW": 4}
        )
    assert again == []


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


async def test_a_message_written_mid_drain_does_not_wait_for_the_slow_ones(store: Store) -> None:
    """No batch barrier: a message written (and the dispatcher woken) while an earlier claim is
    still in flight is sent at once, not after the slowest message of that claim."""
    await enqueue(store, [message(1, target="SLOW")])
    release = asyncio.Event()
    sent: list[int] = []

    async def handler(m: OutboxMessage) -> None:
        if m.target == "SLOW":
            await release.wait()
        sent.append(m.payload["n"])

    dispatcher = Dispatcher(store, {"test.send": handler}, owner="d1")
    drain = asyncio.create_task(dispatcher.drain_once())
    await asyncio.sleep(0.1)
    await enqueue(store, [message(2, target="FAST")])
    dispatcher.wake.set()
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.02)
    assert sent == [2] and not drain.done()
    release.set()
    stats = await asyncio.wait_for(drain, 5)
    assert sent == [2, 1] and stats.done == 2
    assert await statuses(store) == Counter({"done": 2})


async def test_a_full_target_is_left_out_of_claims(store: Store) -> None:
    """A claim takes no more of a target than its free slots: the rest stay unclaimed (their
    claim would only age waiting for a slot, and another replica may send them) and are claimed
    as slots free up; other targets' messages behind them are still claimed."""
    await enqueue(store, [message(n, target="SLOW") for n in range(6)])
    await enqueue(store, [message(6, target="OTHER")])
    release = asyncio.Event()

    async def handler(m: OutboxMessage) -> None:
        if m.target == "SLOW":
            await release.wait()

    dispatcher = Dispatcher(store, {"test.send": handler}, owner="d1", per_target=2)
    drain = asyncio.create_task(dispatcher.drain_once())
    await asyncio.sleep(0.2)
    async with store.transaction() as tx:
        claimed = Counter(m.target for m in await tx.outbox_messages() if m.attempts)
    assert claimed == Counter({"SLOW": 2, "OTHER": 1})
    release.set()
    stats = await asyncio.wait_for(drain, 5)
    assert stats.done == 7


async def test_a_handlers_record_commits_with_the_completion(store: Store) -> None:
    """What a handler returns is written in the transaction that marks its message done; if
    writing it fails, the message is retried as ambiguous (its effect happened: ask first)."""
    await enqueue(store, [message(1), message(2)])
    cursor_at = BASE

    async def handler(m: OutboxMessage) -> Record:
        async def record(tx: Tx) -> None:
            if m.payload["n"] == 2:
                raise RuntimeError("disk full")
            await tx.set_cursor(Cursor(shop="s", stream=f"n{m.payload['n']}", position=cursor_at))

        return record

    stats = await Dispatcher(store, {"test.send": handler}, owner="d1").drain_once()
    assert (stats.done, stats.retried) == (1, 1)
    async with store.read() as tx:
        assert await tx.get_cursor("s", "n1") is not None
        assert await tx.get_cursor("s", "n2") is None
        by_n = {m.payload["n"]: m for m in await tx.outbox_messages()}
    assert by_n[1].status == OutboxStatus.DONE
    assert by_n[2].status == OutboxStatus.PENDING and by_n[2].ambiguous
    assert "disk full" in by_n[2].last_error


async def test_a_send_outliving_its_claim_is_not_sent_again(
    store: Store, clock: FixedClock
) -> None:
    """A send that takes longer than the claim: the dispatcher keeps the claim, never claims
    the message again itself, and records its outcome once."""
    await enqueue(store, [message(1)])
    release = asyncio.Event()
    calls: list[int] = []

    async def handler(m: OutboxMessage) -> Record:
        calls.append(m.attempts)
        await release.wait()

        async def record(tx: Tx) -> None:
            await tx.set_cursor(Cursor(shop="s", stream="sent", position=BASE))

        return record

    dispatcher = Dispatcher(
        store, {"test.send": handler}, owner="d1", claim_ttl=timedelta(seconds=1.5)
    )
    drain = asyncio.create_task(dispatcher.drain_once())
    await asyncio.sleep(0.1)
    for _ in range(4):  # 2.4 s in all, past the first claim's end; each wake-up claims
        clock.advance(timedelta(seconds=0.6))
        dispatcher.wake.set()
        await asyncio.sleep(0.6)
    async with store.transaction() as tx:  # kept: another replica cannot take it either
        assert await tx.claim_outbox("d2", 10, timedelta(minutes=1)) == []
    release.set()
    stats = await asyncio.wait_for(drain, 5)
    assert calls == [1] and stats.done == 1
    assert await statuses(store) == Counter({"done": 1})


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
