"""The daemon in-process: jobs under leases, triggers, hints, the SQLite single-replica rule,
shutdown giving back leases and claims, and the whole flow against the sandbox."""

import asyncio
import socket
import subprocess
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from api.app import create_app
from api.server import free_port, serve
from config import DaemonConfig, Settings, load_settings
from models import tables as t
from models.domain import OutboxMessage
from models.store import Store
from sandbox.server import Sandbox
from sync.catalog import import_catalog
from sync.daemon import REPLICA_LEASE, Daemon, holder_is_dead
from sync.errors import HubError
from tests.e2e import (
    check_exactly_once,
    diagnose,
    everything_settled,
    write_catalog,
    write_hub_config,
)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def quick_settings(database_url: str, **daemon: object) -> Settings:
    options = {"lease_ttl": timedelta(seconds=3), "grace_period": timedelta(seconds=2), **daemon}
    return Settings(database_url=database_url, daemon=DaemonConfig(**options))  # type: ignore[arg-type]


async def counting_job(calls: list[str], seconds: float = 0.0) -> Callable[[], Awaitable[None]]:
    async def work() -> None:
        calls.append("run")
        await asyncio.sleep(seconds)

    return work


def test_holder_is_dead_only_for_a_gone_process_on_this_host() -> None:
    host = socket.gethostname()
    assert holder_is_dead(f"{host}:{dead_pid()}")
    assert not holder_is_dead(f"{host}:1")  # init runs
    assert not holder_is_dead(f"elsewhere-{host}:{dead_pid()}")  # another host: wait for expiry
    assert not holder_is_dead("garbage")


async def test_a_second_daemon_on_one_sqlite_file_refuses(sqlite_url: str) -> None:
    settings = quick_settings(sqlite_url)
    first = Store.open(sqlite_url)
    second = Store.open(sqlite_url)
    try:
        a = Daemon(settings, first, owner="other-host:4242")
        await a.start()
        try:
            with pytest.raises(HubError, match="single-node store"):
                await Daemon(settings, second).start()
        finally:
            await a.stop()
        b = Daemon(settings, second)  # the first gave its lease back on stop
        await b.start()
        await b.stop()
    finally:
        await first.close()
        await second.close()


async def test_a_crashed_daemons_replica_lease_and_claims_are_taken_at_once(
    sqlite_url: str,
) -> None:
    settings = quick_settings(sqlite_url, lease_ttl=timedelta(hours=1))
    store = Store.open(sqlite_url)
    crashed = f"{socket.gethostname()}:{dead_pid()}"
    try:
        async with store.transaction() as tx:
            assert await tx.acquire_lease(REPLICA_LEASE, crashed, timedelta(hours=1))
            await tx.enqueue(
                [OutboxMessage(kind="noop", target="x", idempotency_key="k1", payload={})]
            )
            (claimed,) = await tx.claim_outbox(crashed, 10, timedelta(hours=1))
        daemon = Daemon(settings, store)
        await daemon.start()
        try:
            async with store.transaction() as tx:
                owner, _ = await tx.lease_owner(REPLICA_LEASE) or ("", None)
            assert owner == daemon.owner
            for _ in range(50):  # the dispatcher tries the message again at once
                async with store.transaction() as tx:
                    message = await tx.outbox_message(claimed.id or 0)
                assert message is not None
                if message.last_error:
                    break
                await asyncio.sleep(0.1)
            assert message.attempts == 2 and "no handler" in message.last_error
        finally:
            await daemon.stop()
    finally:
        await store.close()


async def test_a_job_runs_only_under_its_lease(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        daemon = Daemon(quick_settings(database_url), store, owner="me:1")
        calls: list[str] = []
        work = await counting_job(calls)
        async with store.transaction() as tx:
            assert await tx.acquire_lease("job:x", "elsewhere:1", timedelta(minutes=1))
        await daemon._run_job("job:x", work)
        assert calls == []  # another live replica holds it
        async with store.transaction() as tx:
            await tx.release_lease("job:x", "elsewhere:1")
        await daemon._run_job("job:x", work)
        assert calls == ["run"]
        async with store.transaction() as tx:
            assert await tx.lease_owner("job:x") is None  # given back after the run
    finally:
        await store.close()


async def test_a_job_whose_lease_cannot_be_taken_is_skipped_not_raised(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restart must not surface as a scheduler traceback: the job is skipped, counted
    as failed, and the next tick tries again."""
    store = Store.open(sqlite_url)
    try:
        daemon = Daemon(quick_settings(sqlite_url), store, owner="me:1")
        calls: list[str] = []
        work = await counting_job(calls)

        async def store_down(name: str) -> bool:
            raise ConnectionError("connection refused")

        monkeypatch.setattr(daemon, "_acquire", store_down)
        await daemon._run_job("job:w", work)  # does not raise
        assert calls == []
        monkeypatch.undo()
        await daemon._run_job("job:w", work)
        assert calls == ["run"]
    finally:
        await store.close()


async def test_a_request_during_a_run_runs_it_once_more_not_twice(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    try:
        daemon = Daemon(quick_settings(sqlite_url), store)
        calls: list[str] = []
        work = await counting_job(calls, 0.2)
        first = asyncio.create_task(daemon._run_job("job:y", work))
        await asyncio.sleep(0.05)
        for _ in range(3):
            daemon._trigger("job:y", work)
        await first
        assert calls == ["run", "run"]
    finally:
        await store.close()


async def test_a_lost_lease_stops_the_job(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        settings = quick_settings(database_url, lease_ttl=timedelta(milliseconds=300))
        daemon = Daemon(settings, store, owner="me:1")
        finished: list[str] = []

        async def long_work() -> None:
            await asyncio.sleep(0.1)
            async with store.transaction() as tx:  # another replica takes the lease
                await tx.release_lease("job:z", "me:1")
                assert await tx.acquire_lease("job:z", "thief:1", timedelta(minutes=1))
            await asyncio.sleep(5)
            finished.append("yes")

        await asyncio.wait_for(daemon._run_job("job:z", long_work), 3)
        assert finished == []
        async with store.transaction() as tx:
            assert (await tx.lease_owner("job:z") or ("",))[0] == "thief:1"
    finally:
        await store.close()


async def test_stop_gives_back_leases_and_claims(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    try:
        daemon = Daemon(quick_settings(sqlite_url), store)
        await daemon.start()
        assert daemon.running
        async with store.transaction() as tx:
            await tx.enqueue(
                [OutboxMessage(kind="noop", target="x", idempotency_key="k2", payload={})]
            )
            await tx.acquire_lease("job:w", daemon.owner, timedelta(minutes=1))
        await daemon.stop()
        assert not daemon.running
        async with store.transaction() as tx:
            assert await tx.leases() == []
            claims = (await tx.connection.execute(select(t.outbox.c.claimed_by))).scalars().all()
        assert claims == [None]
    finally:
        await store.close()


@pytest.mark.slow
async def test_the_daemon_pulls_routes_pushes_and_confirms(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    """The whole flow on the daemon's own schedule, and a hint fetching one order at once."""
    async with Sandbox(seed=5, profile="calm", backlog=60, backlog_days=0.5, ship_delay=0.2) as sb:
        port = free_port()
        config = write_hub_config(
            sb,
            tmp_path / "ecomhub.toml",
            database_url,
            port,
        )
        settings = load_settings(
            config,
            environ={
                "ECOMHUB_SHOPS__0__POLL_INTERVAL": "1h",  # one pull at start, then hints only
                "ECOMHUB_SHOPS__1__POLL_INTERVAL": "1h",
            },
        )
        hub = Store.open(database_url)
        await import_catalog(hub, settings, write_catalog(sb, tmp_path / "catalog.csv"))
        daemon = Daemon(settings, hub)
        await daemon.start()
        try:
            async with serve(create_app(settings, hub, control=daemon), port=port):
                sb.hub_url = settings.server.callback_base
                for _ in range(300):
                    if await everything_settled(hub):
                        break
                    await asyncio.sleep(0.1)
                assert await everything_settled(hub), await diagnose(hub, sb)
                await check_exactly_once(sb, hub)

                fresh = sb.world.create_order("tmall-flagship")
                await asyncio.sleep(settings.shop("tmall-flagship").effective_lag.seconds / 10)
                daemon.hint("tmall-flagship", str(fresh.order_id))
                for _ in range(100):
                    async with hub.transaction() as tx:
                        if await tx.get_order("tmall-flagship", str(fresh.order_id)):
                            break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the hinted order was not fetched")
        finally:
            await daemon.stop()
            await hub.close()
        async with store.transaction() as tx:
            assert await tx.leases() == []
