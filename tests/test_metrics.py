"""HubMetrics: the counters the engine moves, and the gauges read from the store at scrape time."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import metrics_router
from models.clock import FixedClock
from models.domain import (
    Cursor,
    HoldReason,
    OutboxMessage,
    ReviewState,
    RunStatus,
    SyncRun,
)
from models.store import Store
from sync.metrics import HubMetrics
from tests.factories import SECRETS, make_order, make_settings


def value(metrics: HubMetrics, metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def run(shop: str, status: RunStatus, seen: int, written: int, errors: int) -> SyncRun:
    return SyncRun(
        id=1,
        job="pull",
        shop=shop,
        started_at=datetime(2026, 11, 20, tzinfo=UTC),
        status=status,
        orders_seen=seen,
        orders_written=written,
        errors=errors,
    )


def message(target: str, kind: str, key: str) -> OutboxMessage:
    return OutboxMessage(kind=kind, target=target, idempotency_key=key)


def test_pull_runs_add_up_per_shop_and_status() -> None:
    metrics = HubMetrics()
    metrics.pull_finished(run("tmall-flagship", RunStatus.OK, 10, 7, 1))
    metrics.pull_finished(run("tmall-flagship", RunStatus.PARTIAL, 5, 5, 0))
    metrics.pull_finished(run("jd-store", RunStatus.FAILED, 0, 0, 0))
    assert value(metrics, "ecomhub_orders_pulled_total", shop="tmall-flagship") == 15
    assert value(metrics, "ecomhub_orders_upserted_total", shop="tmall-flagship") == 12
    assert value(metrics, "ecomhub_orders_malformed_total", shop="tmall-flagship") == 1
    assert value(metrics, "ecomhub_orders_pulled_total", shop="jd-store") == 0
    runs = "ecomhub_pull_runs_total"
    assert value(metrics, runs, shop="tmall-flagship", mode="pull", status="ok") == 1
    assert value(metrics, runs, shop="tmall-flagship", mode="pull", status="partial") == 1
    assert value(metrics, runs, shop="jd-store", mode="pull", status="failed") == 1


def test_outbox_outcomes_count_sends_and_failures_by_target_and_kind() -> None:
    metrics = HubMetrics()
    create = message("WH-EAST", "wms.create", "DO-1")
    metrics.outbox_outcome(create, "retry", "timeout")
    metrics.outbox_outcome(create, "done", "")
    metrics.outbox_outcome(message("tmall-flagship", "platform.ship", "S-1"), "dead", "refused")
    sends = "ecomhub_outbox_sends_total"
    assert value(metrics, sends, target="WH-EAST", kind="wms.create", outcome="done") == 1
    assert value(metrics, sends, target="WH-EAST", kind="wms.create", outcome="retry") == 1
    assert value(metrics, sends, target="tmall-flagship", kind="platform.ship", outcome="dead") == 1
    failures = "ecomhub_outbox_failures_total"
    assert value(metrics, failures, target="WH-EAST", kind="wms.create") == 1
    assert value(metrics, failures, target="tmall-flagship", kind="platform.ship") == 1


def test_webhooks_and_job_durations() -> None:
    metrics = HubMetrics()
    metrics.webhook("mall", "accepted")
    metrics.webhook("mall", "accepted")
    metrics.webhook("mall", "rejected")
    assert (
        value(metrics, "ecomhub_webhook_deliveries_total", source="mall", outcome="accepted") == 2
    )
    assert (
        value(metrics, "ecomhub_webhook_deliveries_total", source="mall", outcome="rejected") == 1
    )

    metrics.job_finished("pull:tmall-flagship", 0.3, "ok")
    metrics.job_finished("pull:tmall-flagship", 42.0, "ok")
    metrics.job_finished("pull:tmall-flagship", 0.0, "skipped")
    labels = {"name": "pull:tmall-flagship", "outcome": "ok"}
    assert value(metrics, "ecomhub_job_duration_seconds_count", **labels) == 2
    assert value(metrics, "ecomhub_job_duration_seconds_sum", **labels) == pytest.approx(42.3)
    assert value(metrics, "ecomhub_job_duration_seconds_bucket", le="0.5", **labels) == 1
    assert value(metrics, "ecomhub_job_duration_seconds_bucket", le="60.0", **labels) == 2
    skipped = {"name": "pull:tmall-flagship", "outcome": "skipped"}
    assert value(metrics, "ecomhub_job_duration_seconds_count", **skipped) == 1


def test_each_instance_has_its_own_registry() -> None:
    first, second = HubMetrics(), HubMetrics()
    first.webhook("mall", "accepted")
    assert (
        value(second, "ecomhub_webhook_deliveries_total", source="mall", outcome="accepted") is None
    )
    given = CollectorRegistry()
    third = HubMetrics(given)
    third.webhook("mall", "accepted")
    assert third.registry is given
    assert given.get_sample_value("process_cpu_seconds_total") is None  # only ours are added


def test_render_is_the_text_exposition_format() -> None:
    metrics = HubMetrics()
    metrics.pull_finished(run("tmall-flagship", RunStatus.OK, 3, 3, 0))
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "ecomhub_orders_pulled" in families  # the parser drops `_total` from a counter's name
    samples = {s.name: s.value for s in families["ecomhub_orders_pulled"].samples}
    assert samples["ecomhub_orders_pulled_total"] == 3
    ours = {name for name in families if name.startswith("ecomhub_")}
    assert ours and "process_cpu_seconds" in families and "python_info" in families
    assert set(families) - ours <= {n for n in families if n.startswith(("process_", "python_"))}


async def seed(store: Store, clock: FixedClock) -> None:
    """Two pending creates (one 10 minutes old), a dead waybill, a held order, a live cursor."""
    async with store.transaction() as tx:
        await tx.enqueue([message("WH-EAST", "wms.create", "DO-1")])
    clock.advance(timedelta(minutes=10))
    async with store.transaction() as tx:
        await tx.enqueue(
            [
                message("WH-EAST", "wms.create", "DO-2"),
                message("tmall-flagship", "platform.ship", "SHIP-1"),
            ]
        )
        claimed = await tx.claim_outbox(
            "test", 10, timedelta(minutes=1), targets=["tmall-flagship"]
        )
        assert claimed[0].id is not None
        await tx.retry_outbox(claimed[0].id, "test", "refused", None, ambiguous=False)
        await tx.upsert_orders([make_order("1001"), make_order("1002")])
        await tx.set_review("tmall-flagship", "1001", ReviewState.HELD, HoldReason.BUYER_REMARK)
        await tx.set_cursor(
            Cursor(
                shop="tmall-flagship", stream="orders", position=clock.now() - timedelta(hours=1)
            )
        )


async def test_refresh_reads_the_store(store: Store, clock: FixedClock) -> None:
    expires = clock.current + timedelta(days=3, minutes=10)
    shops = make_settings().model_dump()["shops"]
    shops[0]["token_expires_at"] = expires
    settings = make_settings(shops=shops)
    await seed(store, clock)
    metrics = HubMetrics()
    await metrics.refresh(settings, store)

    assert value(metrics, "ecomhub_store_up") == 1
    pending = "ecomhub_outbox_pending_messages"
    assert value(metrics, pending, target="WH-EAST", kind="wms.create") == 2
    assert value(metrics, pending, target="tmall-flagship", kind="platform.ship") is None
    oldest = "ecomhub_outbox_oldest_pending_age_seconds"
    assert value(metrics, oldest, target="WH-EAST", kind="wms.create") == 600
    assert value(metrics, "ecomhub_outbox_dead_letters", target="tmall-flagship") == 1
    assert value(metrics, "ecomhub_outbox_dead_letters", target="WH-EAST") == 0
    assert value(metrics, "ecomhub_outbox_dead_letters", target="jd-store") == 0
    assert value(metrics, "ecomhub_orders_held", shop="tmall-flagship") == 1
    assert value(metrics, "ecomhub_orders_held", shop="jd-store") == 0
    assert value(metrics, "ecomhub_pull_lag_seconds", shop="tmall-flagship") == 3600
    assert value(metrics, "ecomhub_pull_lag_seconds", shop="jd-store") is None  # never pulled
    assert value(metrics, "ecomhub_pull_interval_seconds", shop="jd-store") == 30
    assert value(metrics, "ecomhub_shop_auth_failed", shop="tmall-flagship") == 0
    expires_in = "ecomhub_shop_token_expires_in_seconds"
    assert (
        value(metrics, expires_in, shop="tmall-flagship") == (expires - clock.now()).total_seconds()
    )
    assert value(metrics, expires_in, shop="jd-store") is None  # no token_expires_at configured


async def test_refresh_follows_the_store_as_it_changes(store: Store, clock: FixedClock) -> None:
    settings = make_settings()
    await seed(store, clock)
    metrics = HubMetrics()
    await metrics.refresh(settings, store)
    async with store.transaction() as tx:
        await tx.replay_dead(None)
        for m in await tx.claim_outbox("test", 10, timedelta(minutes=1)):
            assert m.id is not None
            await tx.complete_outbox(m.id, "test")
        await tx.release_order("tmall-flagship", "1001")
        await tx.flag_auth_failure("jd-store", "session expired")
    clock.advance(timedelta(minutes=5))
    await metrics.refresh(settings, store)

    # Drained outbox: no stale depth or age is left behind, and dead letters read 0.
    pending = "ecomhub_outbox_pending_messages"
    assert value(metrics, pending, target="WH-EAST", kind="wms.create") is None
    oldest = "ecomhub_outbox_oldest_pending_age_seconds"
    assert value(metrics, oldest, target="WH-EAST", kind="wms.create") is None
    assert value(metrics, "ecomhub_outbox_dead_letters", target="tmall-flagship") == 0
    assert value(metrics, "ecomhub_orders_held", shop="tmall-flagship") == 0
    assert value(metrics, "ecomhub_pull_lag_seconds", shop="tmall-flagship") == 3900
    assert value(metrics, "ecomhub_shop_auth_failed", shop="jd-store") == 1


async def test_refresh_with_the_store_down_empties_the_state_gauges(
    store: Store, clock: FixedClock
) -> None:
    settings = make_settings()
    await seed(store, clock)
    metrics = HubMetrics()
    await metrics.refresh(settings, store)
    metrics.webhook("mall", "accepted")
    broken = Store.open("sqlite:////nonexistent-dir/for/ecomhub/metrics.db", clock)
    try:
        await metrics.refresh(settings, broken)
    finally:
        await broken.close()
    assert value(metrics, "ecomhub_store_up") == 0
    assert value(metrics, "ecomhub_outbox_dead_letters", target="tmall-flagship") is None
    assert value(metrics, "ecomhub_orders_held", shop="tmall-flagship") is None
    assert value(metrics, "ecomhub_pull_interval_seconds", shop="jd-store") == 30  # from the config
    # Events survive: a scrape still reports what the process did.
    assert (
        value(metrics, "ecomhub_webhook_deliveries_total", source="mall", outcome="accepted") == 1
    )


async def test_the_metrics_endpoint_refreshes_then_renders(store: Store, clock: FixedClock) -> None:
    settings = make_settings()
    await seed(store, clock)
    metrics = HubMetrics()
    metrics.webhook("orders:my-mall", "duplicate")
    app = FastAPI()
    app.include_router(metrics_router(settings, store, metrics))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        response = await client.get("/metrics")  # no token: scrapers are not admins
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("ecomhub_store_up", ())] == 1
    assert samples[("ecomhub_outbox_dead_letters", (("target", "tmall-flagship"),))] == 1
    assert samples[("ecomhub_orders_held", (("shop", "tmall-flagship"),))] == 1
    webhook = (("outcome", "duplicate"), ("source", "orders:my-mall"))
    assert samples[("ecomhub_webhook_deliveries_total", webhook)] == 1
    for secret in SECRETS.values():
        assert secret not in response.text
