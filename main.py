"""The `ecomhub` command line (also `python main.py …`): wiring only, no business logic.

Exit codes: 0 success; 1 the work failed (the message says what); 2 bad usage or bad config (the
message names the field and the file). No command ends in a bare traceback.
"""

import asyncio
import contextlib
import csv
import json
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import structlog
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from config import ConfigError, Settings, event_loop, load_settings
from config.logging import Redactor, configure_logging
from connectors.registry import wms_for
from models.clock import parse_cli_time
from models.db import UnsupportedDatabase, create_engine, safe_url, upgrade
from models.domain import OutboxMessage, ReconciliationReport, RunStatus, SyncRun
from models.store import Store
from sync import reconcile
from sync.catalog import CatalogFileError, import_catalog
from sync.channel_stock import StockSync
from sync.erp import poll_erp
from sync.errors import HubError
from sync.fulfilment import RoutingStats
from sync.outbox import DrainStats
from sync.runtime import (
    open_store,
    pull_shops,
    push_once,
    refresh_stock,
    route,
    stock_sync_once,
)
from sync.status import collect_status
from sync.stock import StockReading

if TYPE_CHECKING:
    from sync.daemon import Daemon
    from sync.lifecycle import SystemdNotifier

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class CliState:
    config_path: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)
    redactor: Redactor = field(default_factory=Redactor)

    def settings(self, *, require_file: bool = True) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path, require_file=require_file)
            except ConfigError as exc:
                fail(str(exc), code=2)
            self.redactor = configure_logging(
                self._settings.log_level, secrets=self._settings.secret_values(), stream=sys.stderr
            )
        return self._settings


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def _state(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):
        state = CliState()
        ctx.find_root().obj = state
    return state


def execute(ctx: typer.Context, work: Coroutine[Any, Any, T]) -> T:
    """Run one async piece of work; turn every failure into a message and an exit code."""
    state = _state(ctx)
    try:
        return event_loop.run(work)
    except ConfigError as exc:
        fail(state.redactor.scrub(str(exc)), code=2)
    except HubError as exc:
        fail(state.redactor.scrub(str(exc)))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as exc:
        fail(state.redactor.scrub(f"{type(exc).__name__}: {exc}"))


async def with_store(settings: Settings, use: Callable[[Store], Awaitable[T]]) -> T:
    store = await open_store(settings)
    try:
        return await use(store)
    finally:
        await store.close()


class BarProgress:
    """Feeds a rich progress bar from the pull engine (sync.orders.PullProgress)."""

    def __init__(self, bar: Progress, shop: str) -> None:
        self.bar = bar
        self.task = bar.add_task(shop, total=None, pages=0, orders=0)
        self.pages = 0
        self.orders = 0

    def windows_planned(self, count: int) -> None:
        self.bar.update(self.task, total=count)

    def window_done(self) -> None:
        self.bar.advance(self.task)

    def page_read(self, orders: int) -> None:
        self.pages += 1
        self.orders += orders
        self.bar.update(self.task, pages=self.pages, orders=self.orders)

    def orders_written(self, count: int) -> None:
        pass


def not_built(what: str, issue: str) -> NoReturn:
    fail(f"{what} is not built yet (it lands with {issue}); nothing was done.")


app = typer.Typer(
    name="ecomhub",
    help="Self-hosted e-commerce integration hub: marketplace orders in, WMS out, stock, bills.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
sync_app = typer.Typer(help="Run one sync now.", no_args_is_help=True)
outbox_app = typer.Typer(help="The outbox of effects on external systems.", no_args_is_help=True)
orders_app = typer.Typer(help="Orders in the central store.", no_args_is_help=True)
catalog_app = typer.Typer(help="Master SKUs and platform-SKU mappings.", no_args_is_help=True)
reconcile_app = typer.Typer(help="Reconciliation reports.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sync_app, name="sync")
app.add_typer(outbox_app, name="outbox")
app.add_typer(orders_app, name="orders")
app.add_typer(catalog_app, name="catalog")
app.add_typer(reconcile_app, name="reconcile")

Format = Annotated[str, typer.Option("--format", help="table or json")]
ReportFormat = Annotated[str, typer.Option("--format", help="table, json or csv")]


def check_format(format: str, allowed: tuple[str, ...]) -> None:
    if format not in allowed:
        fail(f"--format must be {' or '.join(allowed)}, not {format!r}", code=2)


def check_shop(settings: Settings, shop: str | None) -> None:
    """An unknown --shop is bad usage (exit 2), never an empty answer."""
    if shop is not None and shop not in {s.code for s in settings.shops}:
        fail(f"no shop {shop!r} in the config (shops: {[s.code for s in settings.shops]})", code=2)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Config file (default: $ECOMHUB_CONFIG, else ./ecomhub.toml).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    ctx.obj = CliState(config_path=config)


# --- daemon and sandbox --------------------------------------------------------------------


@app.command()
def run(ctx: typer.Context) -> None:
    """The daemon: scheduler + HTTP server until SIGTERM/SIGINT, then drain and exit 0."""
    settings = _state(ctx).settings()
    execute(ctx, run_daemon(settings))


async def run_daemon(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve the HTTP surface and run the scheduler until SIGTERM/SIGINT (or `stop`)."""
    import signal

    from api.app import create_app
    from api.server import serve
    from sync.daemon import Daemon, wait_first
    from sync.lifecycle import SystemdNotifier
    from sync.metrics import HubMetrics

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    systemd = SystemdNotifier()
    store = await open_store(settings)
    try:
        metrics = HubMetrics()
        daemon = Daemon(settings, store, metrics=metrics)
        await daemon.start()
        try:
            app = create_app(settings, store, control=daemon, metrics=metrics)
            host, port = settings.server.host, settings.server.port
            async with serve(app, host, port) as bound:
                log = structlog.get_logger("ecomhub.run")
                log.info("listening", url=f"http://{host}:{bound}", docs="/docs")
                systemd.ready(f"serving on {host}:{bound}")
                watchdog = (
                    asyncio.create_task(_watchdog(systemd, daemon, stop))
                    if systemd.watchdog_seconds
                    else None
                )
                await wait_first(stop, daemon.halted)
                log.info("stopping: draining")
                systemd.stopping()
                if watchdog is not None:
                    watchdog.cancel()
        finally:
            await daemon.stop()
        if daemon.halted.is_set():
            raise HubError(daemon.lost)
    finally:
        await store.close()


async def _watchdog(systemd: "SystemdNotifier", daemon: "Daemon", stop: asyncio.Event) -> None:
    """Ping systemd's watchdog at half its interval while the scheduler runs; a wedged daemon
    stops pinging and systemd restarts it."""
    interval = (systemd.watchdog_seconds or 2.0) / 2
    while not stop.is_set():
        if daemon.running:
            systemd.watchdog()
        await asyncio.sleep(interval)


@app.command()
def demo(
    ctx: typer.Context,
    seconds: Annotated[
        float | None,
        typer.Option(help="Stop after N seconds (default: run until Ctrl-C, then the summary)."),
    ] = None,
    rate: Annotated[float, typer.Option(help="Live orders per second in the sandbox.")] = 4.0,
    seed: Annotated[int, typer.Option(help="Sandbox world seed.")] = 1,
    backlog: Annotated[
        int, typer.Option(help="Orders the marketplaces already hold when the demo starts.")
    ] = 300,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo's config and SQLite file go.")
    ] = Path("demo-data"),
) -> None:
    """Sandbox + embedded SQLite + the daemon: the whole flow live, then a summary."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("ecomhub.db*"):  # each demo starts from an empty store
        leftover.unlink()
    execute(
        ctx,
        run_demo(seconds=seconds, rate=rate, seed=seed, backlog=backlog, directory=directory),
    )


async def run_demo(
    *, seconds: float | None, rate: float, seed: int, backlog: int, directory: Path
) -> None:
    from rich.live import Live

    from api.app import create_app
    from api.server import free_port, serve
    from sandbox.server import Sandbox
    from sync.daemon import Daemon
    from sync.metrics import HubMetrics
    from sync.orders import LIVE_STREAM

    database = directory / "ecomhub.db"
    async with Sandbox(
        seed=seed,
        profile="calm",
        rate=rate,
        backlog=backlog,
        backlog_days=1.0,
        ship_delay=1.0,
        purchase_every=10.0,  # the ERP audits a new purchase order now and then
    ) as sb:
        port = free_port()
        config = directory / "ecomhub.toml"
        config.write_text(
            sb.hub_config_toml(f"sqlite:///{database.resolve()}", "127.0.0.1", port),
            encoding="utf-8",
        )
        settings = load_settings(config, environ={})
        configure_logging("warning", secrets=settings.secret_values(), stream=sys.stderr)
        engine = create_engine(settings.database_url)
        await upgrade(engine)
        await engine.dispose()
        catalog = directory / "catalog.csv"
        catalog.write_text(
            "sku,name,barcode,weight_kg\n"
            + "".join(f"{c},{n},{b},{w}\n" for c, n, b, w in sb.world.catalog()),
            encoding="utf-8",
        )
        store = await open_store(settings)
        try:
            await import_catalog(store, settings, catalog)
            daemon = Daemon(settings, store, metrics=HubMetrics())
            await daemon.start()
            try:
                app = create_app(settings, store, control=daemon, metrics=daemon.metrics)
                async with serve(app, "127.0.0.1", port):
                    sb.hub_url = settings.server.callback_base
                    out.print(
                        f"sandbox at {sb.base_url} (seed {seed}, {rate}/s live orders); the "
                        f"daemon serves {sb.hub_url} (try {sb.hub_url}/docs and /metrics); "
                        f"config and database in {directory}/"
                    )
                    loop = asyncio.get_running_loop()
                    deadline = None if seconds is None else loop.time() + seconds
                    # Ctrl-C (or SIGTERM) ends the live part; the summary still comes. A second
                    # one during the wind-down interrupts for good.
                    stop = asyncio.Event()
                    for signum in (signal.SIGINT, signal.SIGTERM):
                        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C ends it
                            loop.add_signal_handler(signum, stop.set)
                    with Live(console=out, refresh_per_second=2) as live:
                        while not stop.is_set() and (deadline is None or loop.time() < deadline):
                            live.update(await demo_table(settings, store, sb))
                            left = 0.5 if deadline is None else deadline - loop.time()
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), max(0.0, min(0.5, left)))
                        for signum in (signal.SIGINT, signal.SIGTERM):
                            with contextlib.suppress(NotImplementedError):
                                loop.remove_signal_handler(signum)
                        await sb.stop_live()
                        stopped = store.clock.now()
                        # Wait until every shop's live cursor has passed the moment the world
                        # stood still, and everything routed has shipped and been confirmed.
                        for _ in range(240):
                            live.update(await demo_table(settings, store, sb))
                            async with store.read() as tx:
                                cursors = [
                                    await tx.get_cursor(s.code, LIVE_STREAM) for s in settings.shops
                                ]
                            caught_up = all(c and c.position >= stopped for c in cursors)
                            if caught_up and (await demo_counts(store))["open"] == 0:
                                break
                            await asyncio.sleep(0.5)
                    truth = {(o.shop, str(o.order_id)) for o in sb.world.orders()}
                    async with store.read() as tx:
                        stored = {
                            (s.order.shop, s.order.platform_order_id)
                            async for s in tx.iter_orders()
                        }
                    counts = await demo_counts(store)
                    created = Counter(c.code for c in sb.qimen.creates)
                    erp = (await collect_status(settings, store))["erp"]
                    notices = Counter(e.code for e in sb.qimen.entry_creates)
                    erp_docs = Counter((d.form, d.number) for d in sb.k3cloud.documents)
            finally:
                await daemon.stop()
        finally:
            await store.close()
    missing = truth - stored
    out.print(
        f"\nsummary: {len(truth)} orders on the marketplaces, {len(stored)} in the hub, "
        f"{len(missing)} missing; {counts['deliveries']} delivery orders routed, "
        f"{len(created)} created in the WMS ({sum(created.values()) - len(created)} twice), "
        f"{counts['shipped']} shipped, {counts['confirmed']} waybills confirmed on the marketplaces"
    )
    if erp:
        forms = Counter(form for form, _ in erp_docs)
        out.print(
            f"ERP: {len(notices)} purchase orders sent to the WMS as inbound notices "
            f"({sum(notices.values()) - len(notices)} twice), "
            f"{erp['purchase_orders_received']} received in full; "
            f"{forms['STK_InStock']} receipts and {forms['SAL_OUTSTOCK']} sales documents in "
            f"K3Cloud ({sum(erp_docs.values()) - len(erp_docs)} twice), "
            f"{erp['receipts_pending'] + erp['sales_outbounds_pending']} still on their way"
        )
    if missing:
        raise HubError(f"{len(missing)} orders were not pulled: {sorted(missing)[:5]}")
    out.print("every order the marketplaces report is in the central store.")


async def demo_counts(store: Store) -> dict[str, int]:
    async with store.read() as tx:
        deliveries = await tx.delivery_counts()
        ships = await tx.outbox_counts("platform.ship")
    by_state: Counter[str] = Counter()
    for (_, state), (_, n) in deliveries.items():
        by_state[state] += n
    confirmed = sum(n for (_, status), n in ships.items() if status == "done")
    open_ = by_state["pending"] + by_state["created"] + by_state["cancel_pending"]
    return {
        "deliveries": sum(by_state.values()),
        "shipped": by_state["shipped"],
        "confirmed": confirmed,
        "open": open_ + (by_state["shipped"] - confirmed),
    }


async def demo_table(settings: Settings, store: Store, sb: Any) -> Table:
    report = await collect_status(settings, store)
    flow: dict[str, Counter[str]] = {}
    async with store.read() as tx:
        held = await tx.held_orders()
        deliveries = await tx.delivery_counts()
        ships = await tx.outbox_counts("platform.ship")
    for (shop, state), (orders, n) in deliveries.items():
        counter = flow.setdefault(shop, Counter())
        counter[f"do_{state}"] += n
        counter["routed"] += orders  # an order split over warehouses counts per state
    for (target, status), n in ships.items():
        flow.setdefault(target, Counter())["confirmed"] += n if status == "done" else 0
    reasons: dict[str, Counter[str]] = {}
    for h in held:
        reasons.setdefault(h.shop, Counter())[h.reason] += 1
    table = Table(
        "shop", "marketplace", "hub", "held (why)", "routed", "in WMS", "shipped", "waybill back"
    )
    erp = report.get("erp")
    if erp:
        table.caption = (
            f"ERP: purchase orders → WMS {erp['purchase_orders_waiting_for_goods']} arriving, "
            f"{erp['purchase_orders_received']} received; receipts in K3Cloud "
            f"{erp['receipts_saved']} (+{erp['receipts_pending']} pending); sales documents "
            f"{erp['sales_outbounds_saved']} (+{erp['sales_outbounds_pending']} pending)"
        )
    for s in report["shops"]:
        code = s["code"]
        f = flow.get(code, Counter())
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.get(code, Counter()).items()))
        table.add_row(
            code,
            str(len(sb.world.orders(code))),
            str(s["orders"]),
            f"{s['held']}" + (f" ({why})" if why else ""),
            str(f["routed"]),
            str(f["do_created"] + f["do_shipped"]),
            str(f["do_shipped"]),
            str(f["confirmed"]),
        )
    return table


@app.command()
def sandbox(
    ctx: typer.Context,
    profile: Annotated[str, typer.Option(help="calm or adversarial")] = "calm",
    seed: Annotated[int, typer.Option(help="World seed (same seed, same world).")] = 1,
    rate: Annotated[float, typer.Option(help="Live orders per second.")] = 1.0,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0 = any free port).")] = 8790,
    hub_port: Annotated[int, typer.Option(help="Port the printed config gives the hub.")] = 8780,
    database_url: Annotated[
        str, typer.Option(help="database_url written into the printed config.")
    ] = "sqlite:///ecomhub.db",
) -> None:
    """Run the simulators alone and print their URLs, credentials and a ready ecomhub.toml."""
    try:
        from sandbox.cli import serve
    except ImportError:
        not_built("`ecomhub sandbox`", "issue #3, the sandbox")
    if profile not in ("calm", "adversarial"):
        fail(f"--profile must be calm or adversarial, not {profile!r}", code=2)
    try:
        execute(
            ctx,
            serve(
                profile=profile,
                seed=seed,
                rate=rate,
                host=host,
                port=port,
                hub_port=hub_port,
                database_url=database_url,
            ),
        )
    except typer.Exit as exc:
        if exc.exit_code != 130:  # Ctrl-C is how the sandbox is meant to stop
            raise


# --- database ------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply the schema migrations (creates the SQLite file if needed)."""
    settings = _state(ctx).settings()

    async def work() -> None:
        try:
            engine = create_engine(settings.database_url)
        except UnsupportedDatabase as exc:
            raise ConfigError(f"database_url: {exc}", source=str(settings.config_path)) from None
        try:
            await upgrade(engine)
        except Exception as exc:
            raise HubError(f"migrating {safe_url(settings.database_url)} failed: {exc}") from None
        finally:
            await engine.dispose()

    execute(ctx, work())
    out.print(f"database {safe_url(settings.database_url)} is at the current schema")


# --- syncs ---------------------------------------------------------------------------------


@sync_app.command("orders")
def sync_orders(
    ctx: typer.Context,
    shop: Annotated[str | None, typer.Option(help="Only this shop code.")] = None,
    since: Annotated[str | None, typer.Option(help="Backfill start (ISO 8601 or CST).")] = None,
    until: Annotated[str | None, typer.Option(help="Backfill end.")] = None,
) -> None:
    """One order pull now (a backfill with --since/--until)."""
    settings = _state(ctx).settings()
    shops = [s for s in settings.shops if shop is None or s.code == shop]
    if not shops:
        fail(f"no shop {shop!r} in the config" if shop else "the config has no [[shops]]", code=2)
    if until is not None and since is None:
        fail("--until needs --since", code=2)
    try:
        start = parse_cli_time(since) if since else None
        end = parse_cli_time(until) if until else None
    except ValueError as exc:
        fail(str(exc), code=2)
    if start and end and end <= start:
        fail("--until must be later than --since", code=2)

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} windows"),
        TextColumn("{task.fields[pages]} pages · {task.fields[orders]} orders"),
        console=err,
        transient=False,
    ) as bar:

        async def work(store: Store) -> tuple[list[SyncRun], RoutingStats]:
            runs = await pull_shops(
                settings,
                store,
                shops,
                since=start,
                until=end,
                progress=lambda s: BarProgress(bar, s.code),
            )
            return runs, await route(settings, store)

        runs, routed = execute(ctx, with_store(settings, work))
    failed = False
    for run in runs:
        out.print(
            f"{run.shop}: {run.status.value} — {run.windows} windows, {run.pages} pages, "
            f"{run.orders_seen} orders seen, {run.orders_written} written, "
            f"{run.errors} malformed" + (f" — {run.message}" if run.message else "")
        )
        failed = failed or run.status in (RunStatus.FAILED, RunStatus.PARTIAL)
    out.print(
        f"routed {routed.routed} orders into {routed.delivery_orders} delivery orders "
        + (
            "(" + ", ".join(f"{w} {n}" for w, n in sorted(routed.by_warehouse.items())) + ")"
            if routed.by_warehouse
            else ""
        )
        + (f"; {routed.held} held for no stock" if routed.held else "")
        + " — `ecomhub push` (or the daemon) sends them"
    )
    if failed:
        fail("some shops did not complete; see above (`ecomhub status` for details)")


@sync_app.command("inventory")
def sync_inventory(
    ctx: typer.Context,
    shop: Annotated[str | None, typer.Option(help="Only this shop code.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Push every listing.")] = False,
) -> None:
    """One stock sync now: read every warehouse's stock, compute every listing's sellable stock,
    push what changed (all with --full), then drain the outbox once."""
    settings = _state(ctx).settings()
    check_shop(settings, shop)
    shops = [settings.shop(shop)] if shop is not None else None

    async def work(store: Store) -> tuple[StockReading, StockSync, DrainStats, int]:
        reading = await refresh_stock(settings, store)
        return reading, *await stock_sync_once(settings, store, shops, full=full)

    reading, result, sent, unsent = execute(ctx, with_store(settings, work))
    for warehouse, skus in sorted(reading.warehouses.items()):
        out.print(f"{warehouse}: stock of {skus} SKUs read")
    for warehouse, problem in sorted(reading.failed.items()):
        err.print(f"{warehouse}: stock reading failed: {problem}")
    if result.skipped:
        fail(f"stock sync skipped: {result.skipped}")
    for s in result.shops:
        out.print(
            f"{s.shop}: {s.listings} listings ({s.unmapped} unmapped), "
            f"{s.values} values to push in {s.messages} messages, {s.unchanged} unchanged"
            + (" — listings refreshed" if s.refreshed else "")
            + (f" — listing failed: {s.refresh_error}" if s.refresh_error else "")
        )
    out.print(
        f"sent {sent.done}, retry later {sent.retried}, dead letters {sent.dead}"
        + (" (see `ecomhub outbox dead`)" if sent.dead else "")
    )
    if unsent:
        fail(
            f"{unsent} stock messages did not reach their marketplace yet (retried later, or "
            "dead letters: `ecomhub outbox dead`)"
        )
    if any(s.refresh_error for s in result.shops):
        fail("a shop's listings could not be read; its stock went to the listings known")


@sync_app.command("erp")
def sync_erp(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="Only orders approved at or after (ISO 8601 or CST).")
    ] = None,
) -> None:
    """One purchase-order poll of the ERP now: new audited orders become WMS inbound notices."""
    settings = _state(ctx).settings()
    if settings.erp is None:
        where = settings.config_path or "ecomhub.toml"
        fail(f"the config has no \\[erp] section: there is no ERP to poll ({where})", code=2)
    try:
        start = parse_cli_time(since) if since else None
    except ValueError as exc:
        fail(str(exc), code=2)
    poll = execute(ctx, with_store(settings, lambda store: poll_erp(store, settings, since=start)))
    out.print(
        f"{poll.open} audited open purchase orders in the ERP, {poll.new} new: their inbound "
        f"notices go to {settings.inbound_warehouse} with `ecomhub push` (or the daemon)"
        + (f"; {poll.problems} unusable (see `ecomhub status`)" if poll.problems else "")
    )


@app.command()
def push(ctx: typer.Context) -> None:
    """Drain the outbox once."""
    settings = _state(ctx).settings()
    stats = execute(ctx, with_store(settings, lambda store: push_once(settings, store)))
    out.print(
        f"sent {stats.done}, retry later {stats.retried}, dead letters {stats.dead}"
        + (" (see `ecomhub outbox dead`)" if stats.dead else "")
    )


@outbox_app.command("dead")
def outbox_dead(ctx: typer.Context) -> None:
    """List dead letters with their last error."""
    settings = _state(ctx).settings()

    async def work(store: Store) -> list[OutboxMessage]:
        async with store.read() as tx:
            return await tx.dead_letters()

    dead = execute(ctx, with_store(settings, work))
    table = Table("id", "kind", "target", "key", "attempts", "last error")
    for m in dead:
        table.add_row(str(m.id), m.kind, m.target, m.idempotency_key, str(m.attempts), m.last_error)
    out.print(table if dead else "no dead letters")


@outbox_app.command("replay")
def outbox_replay(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Send dead letters again: they are queued as due now (counting as attempts that may have
    arrived, so each asks its target first) and the outbox is drained once."""
    settings = _state(ctx).settings()
    if not ids and not all_:
        fail("name dead-letter ids (see `ecomhub outbox dead`) or pass --all", code=2)

    async def work(store: Store) -> tuple[list[int], list[OutboxMessage]]:
        async with store.transaction() as tx:
            revived = await tx.replay_dead(None if all_ else ids)
        if revived:
            await push_once(settings, store)
        async with store.read() as tx:
            after = [await tx.outbox_message(i) for i in revived]
        return revived, [m for m in after if m is not None]

    revived, after = execute(ctx, with_store(settings, work))
    missing = sorted(set(ids or ()) - set(revived))
    outcome = Counter(m.status.value for m in after)
    out.print(
        f"replayed {len(revived)} messages: {outcome.get('done', 0)} sent, "
        f"{outcome.get('pending', 0)} to retry, {outcome.get('dead', 0)} dead again"
        + (" (see `ecomhub outbox dead`)" if outcome.get("dead") else "")
    )
    if missing:
        fail(f"not dead letters: {missing}")


# --- orders and catalog --------------------------------------------------------------------


@orders_app.command("held")
def orders_held(
    ctx: typer.Context,
    shop: Annotated[str | None, typer.Option(help="Only this shop code.")] = None,
    format: Format = "table",
) -> None:
    """List held orders with their reasons."""
    check_format(format, ("table", "json"))
    settings = _state(ctx).settings()
    check_shop(settings, shop)

    async def work(store: Store) -> list[dict[str, str]]:
        async with store.read() as tx:
            held = await tx.held_orders(shop)
        return [
            {
                "shop": h.shop,
                "platform_order_id": h.platform_order_id,
                "reason": h.reason,
                "detail": h.detail,
                "modified": h.modified.isoformat(),
            }
            for h in held
        ]

    rows = execute(ctx, with_store(settings, work))
    if format == "json":
        out.print_json(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("shop", "order", "reason", "detail", "modified")
    for row in rows:
        table.add_row(
            row["shop"], row["platform_order_id"], row["reason"], row["detail"], row["modified"]
        )
    out.print(table if rows else "no held orders")


@orders_app.command("release")
def orders_release(
    ctx: typer.Context,
    shop: Annotated[str, typer.Argument(help="Shop code.")],
    order_id: Annotated[str, typer.Argument(help="The platform's order id.")],
) -> None:
    """Release a held order after its cause is fixed; it is routed on the next pass."""
    settings = _state(ctx).settings()

    async def work(store: Store) -> bool:
        async with store.transaction() as tx:
            return await tx.release_order(shop, order_id)

    if not execute(ctx, with_store(settings, work)):
        fail(f"order {order_id} of shop {shop} is not held (see `ecomhub orders held`)")
    out.print(f"released {shop} {order_id}")


@orders_app.command("export")
def orders_export(
    ctx: typer.Context,
    shop: Annotated[str | None, typer.Option(help="Only this shop code.")] = None,
    format: Annotated[str, typer.Option("--format", help="jsonl")] = "jsonl",
) -> None:
    """Print the canonical orders, one JSON object a line."""
    check_format(format, ("jsonl",))
    settings = _state(ctx).settings()
    check_shop(settings, shop)

    async def work(store: Store) -> int:
        count = 0
        async with store.read() as tx:
            async for stored in tx.iter_orders(shop):
                sys.stdout.write(json.dumps(stored.export(), ensure_ascii=False) + "\n")
                count += 1
        sys.stdout.flush()
        return count

    count = execute(ctx, with_store(settings, work))
    err.print(f"exported {count} orders")


@catalog_app.command("import")
def catalog_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV of master SKUs or of mappings.")],
) -> None:
    """Load master SKUs (sku,name,barcode,weight_kg[,bundle_of]) or mappings (platform_sku,sku)."""
    if not file.is_file():
        fail(f"{file}: no such file", code=2)
    settings = _state(ctx).settings()

    async def work(store: Store) -> Any:
        try:
            return await import_catalog(store, settings, file)
        except CatalogFileError as exc:
            raise HubError(str(exc)) from None

    result = execute(ctx, with_store(settings, work))
    for problem in result.errors:
        err.print(f"skipped {problem}")
    out.print(
        f"imported {len(result.skus)} master SKUs, {len(result.mappings)} mappings"
        + (f"; {len(result.errors)} lines skipped" if result.errors else "")
        + (f"; {result.requeued} held orders reviewed again" if result.requeued else "")
    )


# --- reconciliation and status -------------------------------------------------------------


@reconcile_app.command("logistics")
def reconcile_logistics(
    ctx: typer.Context,
    carrier: Annotated[str, typer.Option(help="Carrier code.")],
    bill: Annotated[Path, typer.Option(help="Bill file (CSV or XLSX).")],
    format: ReportFormat = "table",
) -> None:
    """Check a courier's freight bill against shipments and the rate card (stored; importing
    the same file again prints the stored report)."""
    _report_format(format)
    settings = _state(ctx).settings()

    async def work(store: Store) -> reconcile.BillResult | Exception:
        try:
            return await reconcile.reconcile_bill(settings, store, carrier, bill)
        except (reconcile.BillFileError, reconcile.UsageError) as exc:
            return exc  # bad usage: exit 2 (execute() would make it 1)

    result = execute(ctx, with_store(settings, work))
    if isinstance(result, Exception):
        fail(str(result), code=2)
    if result.replayed:
        err.print(f"{bill.name} was imported before: the stored report {result.report.id}")
    print_report(result.report, format)


@reconcile_app.command("inventory")
def reconcile_inventory(
    ctx: typer.Context,
    warehouse: Annotated[str, typer.Option(help="Warehouse code.")],
    format: ReportFormat = "table",
) -> None:
    """Check a WMS stock snapshot against the ledger (the report is stored)."""
    _report_format(format)
    settings = _state(ctx).settings()

    async def work(store: Store) -> ReconciliationReport | Exception:
        try:
            return await reconcile.reconcile_inventory(settings, store, warehouse, wms_for)
        except reconcile.UsageError as exc:
            return exc

    result = execute(ctx, with_store(settings, work))
    if isinstance(result, Exception):
        fail(str(result), code=2)
    print_report(result, format)


def _report_format(format: str) -> None:
    check_format(format, ("json", "csv", "table"))


def print_report(report: ReconciliationReport, format: str) -> None:
    """A reconciliation report on stdout: JSON (DESIGN.md shape), CSV rows (totals on
    stderr), or a table with the totals under it."""
    document = reconcile.report_json(report)
    if format == "json":
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    key = "waybill" if report.kind.value == "logistics" else "sku"
    columns = ["kind", key, "expected", "actual", "difference", "detail"]
    totals = ", ".join(
        f"{name} {value}" for name, value in document["totals"].items() if name != "by_kind"
    )
    if format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in document["rows"]:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        err.print(f"report {report.id}: {totals}")
        return
    table = Table(*columns, title=f"{report.kind.value} report {report.id}: {report.subject}")
    for row in document["rows"]:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    out.print(table if document["rows"] else f"no differences ({report.kind.value})")
    by_kind = ", ".join(f"{k} {n}" for k, n in document["totals"]["by_kind"].items() if n)
    out.print(f"totals: {totals}" + (f"\nby kind: {by_kind}" if by_kind else ""))


@app.command()
def status(ctx: typer.Context, format: Format = "table") -> None:
    """Shops, cursors, last runs, outbox depth, exceptions."""
    check_format(format, ("table", "json"))
    settings = _state(ctx).settings()
    report = execute(ctx, with_store(settings, lambda store: collect_status(settings, store)))
    if format == "json":
        out.print_json(json.dumps(report, ensure_ascii=False))
        return
    shops = Table("shop", "platform", "cursor", "lag", "orders", "held", "errors", "last run")
    for s in report["shops"]:
        last = s["last_run"]
        shops.add_row(
            s["code"],
            s["platform"],
            s["cursor"] or "-",
            f"{s['lag_seconds']}s" if s["lag_seconds"] is not None else "-",
            str(s["orders"]),
            str(s["held"]),
            str(s["errors"]),
            f"{last['status']} at {last['started_at']}" if last else "never",
        )
        if s["auth_failed_at"]:
            shops.add_row("", "", f"AUTH FAILED {s['auth_failed_at']}: {s['auth_message']}")
    out.print(shops)
    warehouses = Table("warehouse", "outbox pending", "dead letters")
    for w in report["warehouses"]:
        warehouses.add_row(w["code"], str(w["outbox_pending"]), str(w["dead_letters"]))
    out.print(warehouses)
    ledger = Table("stock ledger", "SKUs", "on hand", "as of")
    for w in report["stock"]["ledger"]:
        ledger.add_row(w["warehouse"], str(w["skus"]), str(w["on_hand"]), w["as_of"] or "-")
    out.print(ledger if report["stock"]["ledger"] else "stock ledger: no warehouse read yet")
    channels = Table("channel stock", "listings", "mapped", "pushed", "last push", "pending pushes")
    for c in report["stock"]["channels"]:
        channels.add_row(
            c["shop"],
            str(c["listings"]),
            str(c["mapped"]),
            str(c["pushed"]),
            c["last_push"] or "never",
            str(c["pending_pushes"]),
        )
    out.print(channels)
    erp = report.get("erp")
    if erp:
        last = erp["last_poll"]
        out.print(
            f"ERP ({erp['kind']}): purchase orders waiting for the WMS "
            f"{erp['purchase_orders_waiting_for_wms']}, waiting for goods "
            f"{erp['purchase_orders_waiting_for_goods']}, received "
            f"{erp['purchase_orders_received']}; receipts pending {erp['receipts_pending']}, "
            f"sales documents pending {erp['sales_outbounds_pending']}; dead letters "
            f"{erp['dead_letters']}; last poll "
            + (f"{last['status']} at {last['started_at']}" if last else "never")
        )
    out.print(f"held orders: {report['held_orders']}  database: {report['database']}")


def cli() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    cli()
