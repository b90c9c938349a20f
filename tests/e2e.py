"""Shared pieces of the end-to-end tests: the hub's config for a sandbox, the catalog, the
exactly-once checks, and `HubProcess` (an `ecomhub run` subprocess)."""

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import httpx

from config import Settings, load_settings
from models.db import create_engine, upgrade
from models.domain import DeliveryState, OutboxStatus
from models.store import DocumentState, PurchaseState, Store
from sandbox.k3cloud import RECEIPT, SALES_OUTBOUND
from sandbox.qimen import ENTRY_CONFIRM
from sandbox.server import Sandbox
from sync.catalog import import_catalog
from sync.erp import ERP_KINDS
from sync.orders import LIVE_STREAM

MAIN = Path(__file__).resolve().parent.parent / "main.py"


def write_hub_config(
    sb: Sandbox, path: Path, database_url: str, port: int = 1, extra: str = ""
) -> Path:
    path.write_text(sb.hub_config_toml(database_url, "127.0.0.1", port) + extra, encoding="utf-8")
    return path


def hub_settings(sb: Sandbox, tmp_path: Path, database_url: str, port: int = 1) -> Settings:
    """The sandbox's config for the hub; the callback URL is the sandbox's `hub_url`."""
    path = write_hub_config(sb, tmp_path / "ecomhub.toml", database_url, port)
    return load_settings(path, environ={})


def write_catalog(sb: Sandbox, path: Path) -> Path:
    path.write_text(
        "sku,name,barcode,weight_kg\n"
        + "".join(f"{c},{n},{b},{w}\n" for c, n, b, w in sb.world.catalog()),
        encoding="utf-8",
    )
    return path


# An after-sales delivery order shipped before its cancel reached the WMS: it has a shipment,
# a ship confirm and a sales document like any shipped one.
SHIPPED_STATES = {DeliveryState.SHIPPED.value, DeliveryState.AFTER_SALES.value}


async def diagnose(hub: Store, sb: Sandbox) -> str:
    async with hub.read() as tx:
        messages = await tx.outbox_messages()
        states = Counter(
            d["state"] for s in [x async for x in tx.iter_orders()] for d in s.delivery_orders
        )
        erp = await tx.erp_summary()
    outbox = Counter((m.kind, m.status.value) for m in messages)
    errors = {m.last_error for m in messages if m.last_error}
    wms = Counter(c.status for c in sb.qimen.creates)
    return (
        f"deliveries {dict(states)}; outbox {dict(outbox)}; errors {sorted(errors)[:3]}; "
        f"wms {dict(wms)}; callbacks pending {len(sb.qimen.pending_callbacks)}; "
        f"erp purchase orders {erp.purchase_orders}, receipts {erp.receipts}, "
        f"sales documents {erp.sales_outbounds}; dead letters "
        + "; ".join(
            f"{m.idempotency_key} after {m.attempts} attempts"
            f"{' (ambiguous)' if m.ambiguous else ''}: {m.last_error}"
            for m in messages
            if m.status == OutboxStatus.DEAD
        )
    )


async def everything_settled(hub: Store) -> bool:
    """Every delivery order reached an end (shipped, cancelled, after-sales), every message is
    done, and every shipped one had its waybill confirmed. Channel stock pushes are left out:
    they are a stream that never ends while the warehouses' stock moves (ERP receipts, the
    WMS's own adjustments), and a transient failure leaves one pending at almost any moment."""
    async with hub.read() as tx:
        messages = [m for m in await tx.outbox_messages() if m.kind != "platform.stock"]
        deliveries = [d for s in [x async for x in tx.iter_orders()] for d in s.delivery_orders]
    shipped = [d for d in deliveries if d["state"] in SHIPPED_STATES]
    ships = [m for m in messages if m.kind == "platform.ship"]
    open_states = {"pending", "created", "cancel_pending"}
    return (
        bool(deliveries)
        and not any(d["state"] in open_states for d in deliveries)
        and len(ships) == len(shipped)
        and all(m.status in (OutboxStatus.DONE, OutboxStatus.SUPERSEDED) for m in messages)
    )


async def everything_confirmed(hub: Store) -> bool:
    """`everything_settled`, and every delivery order shipped (a world with no refunds)."""
    async with hub.read() as tx:
        deliveries = [d for s in [x async for x in tx.iter_orders()] for d in s.delivery_orders]
    return await everything_settled(hub) and all(
        d["state"] == DeliveryState.SHIPPED.value for d in deliveries
    )


async def check_exactly_once(sb: Sandbox, hub: Store) -> None:
    """Each delivery order was created in the WMS once; each waybill reached its marketplace
    once and is the one the WMS gave; each order closed before it shipped was cancelled."""
    async with hub.read() as tx:
        stored = [s async for s in tx.iter_orders()]
        shipments = {
            d["code"]: await tx.shipments_of(d["code"]) for s in stored for d in s.delivery_orders
        }
    created = Counter(c.code for c in sb.qimen.creates)
    # A delivery order cancelled before its create was sent never reaches the WMS (the cancel
    # supersedes the create); every other one must be there.
    codes = [
        d["code"]
        for s in stored
        for d in s.delivery_orders
        if d["state"] != DeliveryState.CANCELLED.value or d["code"] in created
    ]
    assert set(created) == set(codes), (
        f"in the WMS, not in the hub: {sorted(set(created) - set(codes))[:5]}; "
        f"in the hub, never created: {sorted(set(codes) - set(created))[:5]}"
    )
    assert set(created.values()) == {1}, "a delivery order was created twice in the WMS"
    # The marketplace must record each waybill once. A repeat it refuses ("already shipped", or
    # "not shippable" for an order closed meanwhile) changes nothing there; the hub asks before
    # re-sending, but a platform whose reads lag (JD's search) can still draw one after a kill.
    confirmations = Counter(
        (r.get("tid") or r.get("orderId"), r.get("out_sid") or r.get("logiNo"))
        for r in [*sb.top.shipments, *sb.jd.shipments]
        if r.get("outcome") == "shipped"
    )
    assert not confirmations or set(confirmations.values()) == {1}, (
        "a marketplace recorded a waybill twice"
    )
    wms_orders = {c.code: c for c in sb.qimen.creates}
    for s in stored:
        if not s.delivery_orders:
            continue
        truth = sb.world.order(s.order.shop, int(s.order.platform_order_id))
        waybills = {w.waybill for d in s.delivery_orders for w in shipments[d["code"]]}
        if truth.waybill:
            assert truth.waybill in waybills, "the marketplace shows a waybill the WMS never gave"
        if truth.status in ("TRADE_CLOSED", "TRADE_CANCELED"):
            for d in s.delivery_orders:
                wms = wms_orders.get(d["code"])
                if wms is None:  # cancelled before its create was sent
                    assert d["state"] == DeliveryState.CANCELLED.value, d
                    continue
                assert wms.status in ("CANCELED", "DELIVERED") or d["state"] == "after_sales", (
                    f"{d['code']}: the order was closed but the WMS still has it as {wms.status}"
                )


async def prepared_hub(
    sb: Sandbox, tmp_path: Path, database_url: str, port: int, *, migrate: bool = True
) -> Path:
    """Config on disk, schema migrated, catalog imported: what an operator does before `run`.
    (`migrate=False` for a database copied from the migrated template: Alembic's context is
    process-global, so migrations must not run side by side.)"""
    config = write_hub_config(sb, tmp_path / "ecomhub.toml", database_url, port)
    if migrate:
        engine = create_engine(database_url)
        await upgrade(engine)
        await engine.dispose()
    store = Store.open(database_url)
    try:
        await import_catalog(
            store, load_settings(config, environ={}), write_catalog(sb, tmp_path / "c.csv")
        )
    finally:
        await store.close()
    return config


async def poll(predicate: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Until `predicate()` holds (True) or `within` seconds pass (False)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def caught_up(store: Store, settings: Settings, moment: datetime) -> bool:
    """Has every shop's live cursor passed `moment` (everything modified before it is pulled)?"""
    async with store.read() as tx:
        cursors = [await tx.get_cursor(s.code, LIVE_STREAM) for s in settings.shops]
    return all(c is not None and c.position >= moment for c in cursors)


class HubProcess:
    """`ecomhub run` in a subprocess, its output in a log file (appended across restarts)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        # The test run's own ECOMHUB_* knobs (ECOMHUB_REQUIRE_POSTGRES …) are not hub config.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ECOMHUB_")}
        self.env = {**inherited, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(MAIN),
                "--config",
                str(self.config),
                "run",
                stdout=out,
                stderr=out,
                env=self.env,
            )

    async def wait_ready(self, url: str, within: float = 30.0) -> None:
        """Until `/readyz` answers 200 (fails early if the process died)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient(timeout=2.0) as client:
            while loop.time() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"the hub exited {self.proc.returncode}:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"the hub was not ready within {within}s:\n{self.tail()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL: no drain, no release: the next process must cope."""
        self.signal(signal.SIGKILL)
        await self.wait()

    async def wait(self, within: float = 60.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    async def stop(self, within: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait(within)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# --- ERP ---------------------------------------------------------------------------------------


def _erp_purchase_orders(sb: Sandbox) -> set[str]:
    """The sandbox ERP's purchase orders a poll must pick up: audited, and open (or closed by
    the hub's own receipts — the seeded closed ones have received nothing)."""
    return {
        p.number
        for p in sb.k3cloud.purchase_orders
        if p.document_status == "C"
        and (p.close_status == "A" or any(e.stock_in_qty for e in p.entries))
    }


async def _shipped_codes(hub: Store) -> dict[str, str]:
    """Delivery orders that left the warehouse: code → warehouse. An after-sales one shipped
    before its cancel reached the WMS; its goods left all the same, so it has a sales document."""
    async with hub.read() as tx:
        return {
            d["code"]: d["warehouse"]
            async for s in tx.iter_orders()
            for d in s.delivery_orders
            if d["state"] in SHIPPED_STATES
        }


async def erp_settled(sb: Sandbox, hub: Store) -> bool:
    """Every purchase order the ERP holds reached the hub, was received in full and has its
    receipts in the ERP; every shipped delivery order has its sales document in the ERP."""
    wanted = _erp_purchase_orders(sb)
    shipped = await _shipped_codes(hub)
    async with hub.read() as tx:
        known = await tx.known_purchase_orders(sorted(wanted))
        summary = await tx.erp_summary()
        messages = [m for m in await tx.outbox_messages() if m.kind in ERP_KINDS]
    return (
        known == wanted
        and set(summary.purchase_orders) <= {PurchaseState.RECEIVED.value}
        and set(summary.receipts) <= {DocumentState.SAVED.value}
        and set(summary.sales_outbounds) <= {DocumentState.SAVED.value}
        and summary.sales_outbounds.get(DocumentState.SAVED.value, 0) == len(shipped)
        and not any(c.method == ENTRY_CONFIRM for c in sb.qimen.pending_callbacks)
        and all(m.status == OutboxStatus.DONE for m in messages)
    )


async def check_erp_exactly_once(sb: Sandbox, hub: Store) -> None:
    """No ERP-flow document twice, none missing: each purchase order became one inbound notice
    in the WMS; each WMS receipt one STK_InStock linked to the order's lines, adding up to what
    arrived; each shipped delivery order one SAL_OUTSTOCK with what the WMS shipped."""
    wanted = _erp_purchase_orders(sb)
    notices = Counter(e.code for e in sb.qimen.entry_creates)
    assert set(notices) == wanted, (
        f"notices for unknown orders {sorted(set(notices) - wanted)[:5]}, "
        f"orders never notified {sorted(wanted - set(notices))[:5]}"
    )
    assert not notices or set(notices.values()) == {1}, (
        f"an inbound notice was sent twice: {notices}"
    )
    receipts = sb.k3cloud.documents_of(RECEIPT)
    receipt_numbers = Counter(d.number for d in receipts)
    assert not receipt_numbers or set(receipt_numbers.values()) == {1}, (
        "a receipt was saved twice in the ERP"
    )
    hub_receipts: set[str] = set()
    async with hub.read() as tx:
        for number in sorted(wanted):
            order = await tx.purchase_order(number)
            assert order is not None
            mine = await tx.receipts_of(number)
            hub_receipts.update(r.number for r in mine)
            entry = next(e for e in sb.qimen.entry_creates if e.code == number)
            assert len(mine) == len(entry.receipts), (
                f"{number}: {len(entry.receipts)} WMS receipts, {len(mine)} in the hub"
            )
            erp_order = next(p for p in sb.k3cloud.purchase_orders if p.number == number)
            for line in erp_order.entries:
                wms_line = next(x for x in entry.lines if x.line_no == str(line.entry_id))
                in_erp = sum(
                    e["qty"]
                    for d in receipts
                    for e in d.entries
                    if e["link"] == [erp_order.fid, line.entry_id]
                )
                hub_line = next(x for x in order.lines if x.entry_id == str(line.entry_id))
                assert in_erp == wms_line.actual_qty == line.stock_in_qty == hub_line.received, (
                    f"{number}/{line.entry_id}: the WMS received {wms_line.actual_qty}, "
                    f"the ERP has {in_erp} ({line.stock_in_qty} written back), "
                    f"the hub {hub_line.received}"
                )
    assert set(receipt_numbers) == hub_receipts, "a receipt is missing from the ERP"
    sales = Counter(d.number for d in sb.k3cloud.documents_of(SALES_OUTBOUND))
    shipped = await _shipped_codes(hub)
    assert set(sales) == set(shipped), (
        f"sales documents for unshipped orders {sorted(set(sales) - set(shipped))[:5]}, "
        f"shipped orders without one {sorted(set(shipped) - set(sales))[:5]}"
    )
    assert not sales or set(sales.values()) == {1}, "a sales document was saved twice"
    for document in sb.k3cloud.documents_of(SALES_OUTBOUND):
        wms = sb.qimen.order(shipped[document.number], document.number)
        assert wms is not None
        expected: Counter[str] = Counter()
        for shipped_line in wms.lines:
            expected[shipped_line.item_code] += shipped_line.actual_qty
        got: Counter[str] = Counter()
        for row in document.entries:
            got[row["material"]] += row["qty"]
        assert got == expected, f"{document.number}: shipped {expected}, the ERP has {got}"
