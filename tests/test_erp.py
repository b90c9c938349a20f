"""The ERP flows end to end against the sandbox (K3Cloud + Qimen over HTTP, the hub's callback
receiver on a loopback port): purchase orders → WMS inbound notices → partial and final receipts
→ STK_InStock documents linked to the orders; shipped delivery orders → one SAL_OUTSTOCK each,
even when the ERP's answers to saves are lost."""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.server import serve
from config import Settings, load_settings
from models.store import Store
from sandbox.faults import FaultProfile
from sandbox.k3cloud import RECEIPT
from sandbox.qimen import ENTRY_CONFIRM
from sandbox.server import Sandbox
from sync.catalog import import_catalog
from sync.erp import poll_erp
from sync.runtime import pull_shops, push_once, refresh_stock, route
from sync.status import collect_status
from tests.e2e import (
    check_erp_exactly_once,
    diagnose,
    erp_settled,
    everything_confirmed,
    write_catalog,
    write_hub_config,
)

pytestmark = pytest.mark.slow

FAST_RETRIES = {"ECOMHUB_DAEMON__RETRY_DELAYS": "200ms,500ms,1s"}


@contextlib.asynccontextmanager
async def hub(
    sb: Sandbox, tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[Settings, Store]]:
    """The hub's settings for the sandbox, its store, and its callback receiver on a free port."""
    config = write_hub_config(sb, tmp_path / "ecomhub.toml", database_url)
    settings = load_settings(config, environ=FAST_RETRIES)
    store = Store.open(database_url)
    try:
        async with serve(create_app(settings, store)) as port:
            sb.hub_url = f"http://127.0.0.1:{port}"
            await import_catalog(store, settings, write_catalog(sb, tmp_path / "catalog.csv"))
            yield settings, store
    finally:
        await store.close()


async def push_until(
    settings: Settings, store: Store, done: Callable[[], Awaitable[bool]], within: float = 20.0
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        await push_once(settings, store)
        if await done():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_purchase_orders_are_received_once_each_receipt_linked(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with Sandbox(seed=5, backlog=0, ship_delay=0.2, purchase_orders=3) as sb:
        sb.qimen.entry_split = 1.0  # every order of 2+ units arrives in a partial and a final part
        async with hub(sb, tmp_path, sqlite_url) as (settings, store):
            open_orders = [
                p
                for p in sb.k3cloud.purchase_orders
                if p.document_status == "C" and p.close_status == "A"
            ]
            poll = await poll_erp(store, settings)
            assert (poll.open, poll.new) == (3, 3)
            assert (await poll_erp(store, settings)).new == 0, "a purchase order was queued twice"

            async def received() -> bool:
                return await erp_settled(sb, store)

            assert await push_until(settings, store, received), await diagnose(store, sb)
            await check_erp_exactly_once(sb, store)

            numbers = {p.number for p in open_orders}
            assert {e.code for e in sb.qimen.entry_creates} == numbers
            receipts = sb.k3cloud.documents_of(RECEIPT)
            for order in open_orders:
                assert order.close_status == "B", f"{order.number} not fully received in the ERP"
                mine = [d for d in receipts if any(e["link"][0] == order.fid for e in d.entries)]
                entry = sb.qimen.entry_order(settings.warehouses[0].code, order.number)
                assert entry is not None
                assert len(mine) == len(entry.receipts) == 2  # partial + final
                for line in order.entries:
                    got = sum(
                        e["qty"] for d in mine for e in d.entries if e["link"][1] == line.entry_id
                    )
                    assert got == line.qty == line.stock_in_qty
            async with store.transaction() as tx:
                levels = {
                    level.sku: level.on_hand
                    for level in await tx.stock_levels(settings.warehouses[0].code)
                }
            arrived: Counter[str] = Counter()
            for order in open_orders:
                for line in order.entries:
                    arrived[line.material] += line.qty
            assert levels == dict(arrived), "the ledger did not gain exactly what arrived"
            status = (await collect_status(settings, store))["erp"]
            assert status["purchase_orders_received"] == 3
            assert status["receipts_saved"] == len(receipts)
            assert status["receipts_pending"] == status["dead_letters"] == 0

            # The WMS sends a confirm again (its answer was lost): nothing changes.
            confirm = next(c for c in sb.qimen.callbacks if c.method == ENTRY_CONFIRM)
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    f"{sb.hub_url}/qimen/{confirm.warehouse}",
                    params=sb.qimen.signed_query(confirm.warehouse, confirm.method, confirm.body),
                    content=confirm.body.encode(),
                    headers={"Content-Type": "text/xml;charset=utf-8"},
                )
            assert "<flag>success</flag>" in answer.text
            await push_once(settings, store)
            assert len(sb.k3cloud.documents_of(RECEIPT)) == len(receipts)
            async with store.transaction() as tx:
                again = {
                    level.sku: level.on_hand
                    for level in await tx.stock_levels(settings.warehouses[0].code)
                }
            assert again == levels


async def test_each_shipped_order_becomes_one_sales_outbound(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with Sandbox(
        seed=6, backlog=30, backlog_days=0.5, ship_delay=0.2, purchase_orders=0
    ) as sb:
        # Lose the answer of about a third of all creates and saves after they took effect.
        sb.set_faults(FaultProfile(ambiguous=0.35))
        sb.k3cloud.ambiguous_mode = "drop"
        sb.qimen.ambiguous_mode = "drop"
        async with hub(sb, tmp_path, sqlite_url) as (settings, store):
            await pull_shops(settings, store, settings.shops)
            await refresh_stock(settings, store)
            assert (await route(settings, store)).routed > 5

            async def done() -> bool:
                return await everything_confirmed(store) and await erp_settled(sb, store)

            assert await push_until(settings, store, done, within=25), await diagnose(store, sb)
            await check_erp_exactly_once(sb, store)
            assert ("Save", "drop") in sb.k3cloud.faults_served, "no save answer was lost"


async def test_a_save_whose_automatic_audit_failed_is_audited_not_saved_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    """K3Cloud saves an outbound and then refuses its audit (no ERP stock): the save answers
    failure, but the document exists. The hub asks, finds it unaudited, submits and audits it."""
    async with Sandbox(
        seed=7, backlog=12, backlog_days=0.5, ship_delay=0.2, purchase_orders=0
    ) as sb:
        sb.k3cloud.refuse_audits = 3
        async with hub(sb, tmp_path, sqlite_url) as (settings, store):
            await pull_shops(settings, store, settings.shops)
            await refresh_stock(settings, store)
            assert (await route(settings, store)).routed > 3

            async def done() -> bool:
                return await everything_confirmed(store) and await erp_settled(sb, store)

            assert await push_until(settings, store, done, within=25), await diagnose(store, sb)
            await check_erp_exactly_once(sb, store)
        assert sb.k3cloud.refuse_audits == 0
        assert {d.status for d in sb.k3cloud.documents} == {"C"}
        refused = [r for r in sb.k3cloud.rejected if r[0] == "Save"]
        assert len(refused) == 3
