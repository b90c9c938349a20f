"""The hub's Prometheus metrics (served at `/metrics`; README "Metrics" lists what each means).

Two kinds, kept apart on purpose:

- **Events** — counters and a histogram moved by the engine as things happen (`pull_finished`,
  `outbox_outcome`, `webhook`, `job_finished`). They count what *this replica* did; sum them over
  replicas in the queries.
- **State** — gauges set at scrape time (`refresh`): outbox depth and age, dead letters, held
  orders, pull lag and auth failures from the store; poll interval and token expiry from the
  config. They describe the shared database, so every replica reports the same values; use `max`
  (not `sum`) over replicas.

No label carries a `job` or `instance` name: Prometheus attaches those to every scraped series
itself, and a clash would rename ours to `exported_job`.
"""

from collections.abc import Iterable
from datetime import datetime

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from config import Settings
from models.domain import OutboxMessage, ReconciliationReport, SyncRun
from models.store import Store
from sync.erp import ERP_TARGET

log = structlog.get_logger("ecomhub.sync.metrics")

JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds: a quiet pull takes well under a second, a day-long backfill many minutes."""


class HubMetrics:
    """The hub's Prometheus metrics, in their own CollectorRegistry (tests make one each)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            # The standard process_* (CPU, memory, open fds, start time) and python_* metrics; a
            # registry handed in (prometheus_client's global one) has its own already.
            for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(standard)
        self.registry = registry
        r = registry

        # --- events ---------------------------------------------------------------------------
        self.orders_pulled = Counter(
            "ecomhub_orders_pulled_total",
            "Orders the marketplace returned to pulls and backfills (before dedupe).",
            ["shop"],
            registry=r,
        )
        self.orders_upserted = Counter(
            "ecomhub_orders_upserted_total",
            "Orders inserted or changed in the store by pulls and backfills.",
            ["shop"],
            registry=r,
        )
        self.orders_malformed = Counter(
            "ecomhub_orders_malformed_total",
            "Orders skipped as malformed (recorded with their reason; see /admin/runs).",
            ["shop"],
            registry=r,
        )
        self.pull_runs = Counter(
            "ecomhub_pull_runs_total",
            "Finished pull runs by mode (pull or backfill) and status (ok, partial, failed).",
            ["shop", "mode", "status"],
            registry=r,
        )
        self.outbox_sends = Counter(
            "ecomhub_outbox_sends_total",
            "Outbox send attempts by outcome: done, retry (scheduled again) or dead.",
            ["target", "kind", "outcome"],
            registry=r,
        )
        self.outbox_failures = Counter(
            "ecomhub_outbox_failures_total",
            "Outbox send attempts that failed (retry or dead).",
            ["target", "kind"],
            registry=r,
        )
        self.webhooks = Counter(
            "ecomhub_webhook_deliveries_total",
            "Inbound webhook deliveries by outcome: accepted, duplicate, rejected, error.",
            ["source", "outcome"],
            registry=r,
        )
        self.stock_enqueued = Counter(
            "ecomhub_stock_values_enqueued_total",
            "Channel stock values written to the outbox (changed since the last push, or all on a "
            "full sync).",
            ["shop"],
            registry=r,
        )
        self.stock_pushed = Counter(
            "ecomhub_stock_values_pushed_total",
            "Channel stock values the marketplace accepted.",
            ["shop"],
            registry=r,
        )
        self.reconciliation_differences = Gauge(
            "ecomhub_reconciliation_differences",
            "Rows of each kind in the latest reconciliation report of a subject made by this "
            "replica (subject: warehouse for inventory, carrier for freight bills).",
            ["report", "subject", "kind"],
            registry=r,
        )
        self.erp_calls = Counter(
            "ecomhub_erp_calls_total",
            "ERP calls (after the transport's retries) by operation and outcome: ok, transient, "
            "rate_limited, ambiguous, auth, rejected, bad_payload.",
            ["operation", "outcome"],
            registry=r,
        )
        self.erp_failures = Counter(
            "ecomhub_erp_failures_total",
            "ERP calls that failed (every outcome but ok).",
            ["operation"],
            registry=r,
        )
        self.job_duration = Histogram(
            "ecomhub_job_duration_seconds",
            "Scheduled job runs by job name and outcome (ok, failed, skipped: another replica "
            "held the lease).",
            ["name", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )

        # --- state, read from the store at scrape time ------------------------------------------
        self.store_up = Gauge(
            "ecomhub_store_up",
            "1 if the last scrape could read the store, else 0 (the store's gauges are then absent).",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "ecomhub_outbox_pending_messages",
            "Outbox messages waiting to be sent (due now or scheduled for a retry).",
            ["target", "kind"],
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "ecomhub_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox message (absent when none is pending).",
            ["target", "kind"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "ecomhub_outbox_dead_letters",
            "Outbox messages that gave up (dead letters); 0 for every configured target.",
            ["target"],
            registry=r,
        )
        self.held_orders = Gauge(
            "ecomhub_orders_held",
            "Orders held by review, waiting for an operator (see /admin/orders/held).",
            ["shop"],
            registry=r,
        )
        self.pull_lag = Gauge(
            "ecomhub_pull_lag_seconds",
            "Now minus the shop's live pull cursor (absent until the first pull commits).",
            ["shop"],
            registry=r,
        )
        self.pull_interval = Gauge(
            "ecomhub_pull_interval_seconds",
            "The shop's configured poll_interval (to write lag alerts relative to it).",
            ["shop"],
            registry=r,
        )
        self.auth_failed = Gauge(
            "ecomhub_shop_auth_failed",
            "1 while the shop's last pull failed authorisation (re-authorise the shop), else 0.",
            ["shop"],
            registry=r,
        )
        self.token_expires_in = Gauge(
            "ecomhub_shop_token_expires_in_seconds",
            "Seconds until the shop's configured token_expires_at (negative once expired).",
            ["shop"],
            registry=r,
        )

    # --- events -------------------------------------------------------------------------------

    def pull_finished(self, run: SyncRun) -> None:
        """A pull or backfill run ended (whatever its status)."""
        shop = run.shop or ""
        self.orders_pulled.labels(shop).inc(run.orders_seen)
        self.orders_upserted.labels(shop).inc(run.orders_written)
        self.orders_malformed.labels(shop).inc(run.errors)
        self.pull_runs.labels(shop, run.job, run.status.value).inc()

    def outbox_outcome(self, message: OutboxMessage, outcome: str, error: str) -> None:
        """`sync.outbox.Dispatcher`'s `on_outcome`: one attempt ended `done`, `retry` or `dead`.
        The error text never becomes a label (unbounded, and it may quote the target)."""
        self.outbox_sends.labels(message.target, message.kind, outcome).inc()
        if outcome != "done":
            self.outbox_failures.labels(message.target, message.kind).inc()

    def stock_values_enqueued(self, shop: str, count: int) -> None:
        """A stock sync wrote `count` values of `shop` to the outbox."""
        self.stock_enqueued.labels(shop).inc(count)

    def stock_values_pushed(self, shop: str, count: int) -> None:
        """`sync.channel_stock.StockPusher`'s `on_pushed`: the marketplace took `count` values."""
        self.stock_pushed.labels(shop).inc(count)

    def erp_call(self, operation: str, outcome: str) -> None:
        """`sync.erp`'s `observe`: one ERP call ended `ok` or failed with `outcome`."""
        self.erp_calls.labels(operation, outcome).inc()
        if outcome != "ok":
            self.erp_failures.labels(operation).inc()

    def webhook(self, source: str, outcome: str) -> None:
        """One inbound delivery: `accepted`, `duplicate`, `rejected` or `error`."""
        self.webhooks.labels(source, outcome).inc()

    def reconciled(self, report: ReconciliationReport) -> None:
        """A reconciliation report was stored: its counts by kind (0 for kinds it lacks)."""
        counts = report.totals.get("by_kind", {})
        for kind, count in counts.items():
            self.reconciliation_differences.labels(report.kind.value, report.subject, kind).set(
                count
            )

    def job_finished(self, job: str, seconds: float, outcome: str) -> None:
        """A scheduled job ended `ok`, `failed` or `skipped` (lease held elsewhere)."""
        self.job_duration.labels(job, outcome).observe(max(seconds, 0.0))

    # --- state --------------------------------------------------------------------------------

    async def refresh(self, settings: Settings, store: Store) -> None:
        """Read the state gauges from the store. Never raises: when the store cannot be read,
        `ecomhub_store_up` is 0 and the state gauges are emptied rather than left stale."""
        shops = [s.code for s in settings.shops]
        try:
            async with store.read() as tx:
                depth = await tx.outbox_depth()
                summaries = await tx.shop_summaries(shops)  # the cursor is the live one
        except Exception as exc:  # a scrape must not fail because the database did
            log.warning("metrics: the store could not be read", error=type(exc).__name__)
            self.store_up.set(0)
            for gauge in self._store_gauges():
                gauge.clear()
            self._config_gauges(settings, store.clock.now())
            return
        now = store.clock.now()
        # Everything below is synchronous: a concurrent scrape never sees half-cleared gauges.
        for gauge in self._store_gauges():
            gauge.clear()
        self.store_up.set(1)
        self._config_gauges(settings, now)
        targets = {w.code for w in settings.warehouses} | set(shops)
        if settings.erp is not None:
            targets.add(ERP_TARGET)
        dead: dict[str, int] = dict.fromkeys(targets, 0)
        for d in depth:
            dead[d.target] = dead.get(d.target, 0) + d.dead
            if d.pending:
                self.outbox_pending.labels(d.target, d.kind).set(d.pending)
            if d.oldest_pending is not None:
                age = (now - d.oldest_pending).total_seconds()
                self.outbox_oldest.labels(d.target, d.kind).set(max(age, 0.0))
        for target, count in dead.items():
            self.dead_letters.labels(target).set(count)
        for summary in summaries:
            self.held_orders.labels(summary.shop).set(summary.held)
            self.auth_failed.labels(summary.shop).set(1 if summary.auth_failed_at else 0)
            if summary.cursor is not None:
                self.pull_lag.labels(summary.shop).set((now - summary.cursor).total_seconds())

    def _config_gauges(self, settings: Settings, now: datetime) -> None:
        """The gauges that come from the config and the clock alone."""
        self.pull_interval.clear()
        self.token_expires_in.clear()
        for shop in settings.shops:
            self.pull_interval.labels(shop.code).set(shop.poll_interval.total_seconds())
            if shop.token_expires_at is not None:
                left = (shop.token_expires_at - now).total_seconds()
                self.token_expires_in.labels(shop.code).set(left)

    def _store_gauges(self) -> Iterable[Gauge]:
        return (
            self.outbox_pending,
            self.outbox_oldest,
            self.dead_letters,
            self.held_orders,
            self.pull_lag,
            self.auth_failed,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
