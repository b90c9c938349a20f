"""The ERP flows: purchase orders → WMS inbound notices → receipts back; sales outbound documents.

    ERP poll (audited, open POs)      → purchase order recorded + `wms.entry_create` (the WMS's
                                        inbound notice: entryOrderCode = the PO's number,
                                        orderLineNo = its entry ids)
    WMS `entryorder.confirm`          → once per (warehouse, outBizCode): the ledger gains what
                                        arrived, the PO's lines their received quantity, and
                                        `erp.receipt` saves one receipt linked to the PO's lines
    WMS final `deliveryorder.confirm` → `erp.sales_outbound` saves one sales outbound document
                                        (`record_sales_outbound`, called by the shipment path)

Exactly once. Every effect is an outbox message written with the state change that causes it.
Neither the WMS nor the ERP deduplicates creates, so a message that may have been sent before
(`maybe_sent`) first asks: `entryorder.query` for an inbound notice, `find_document` (the ERP's
bill query on the deterministic bill number) for a receipt or sales document; only "not there"
sends it again. A confirm is applied once per outBizCode, so a repeated confirm changes nothing;
a partial and a final confirm are two receipts whose quantities add up to what arrived.

Numbers: a receipt's bill number is `<PO number>-R<n>` (n counts the PO's receipts in arrival
order); a sales document's is the delivery-order code. The ERP numbers of the organisation,
stock, customer and supplier come from the config and the purchase order.
"""

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog

from config import Settings, WarehouseConfig
from connectors.base import (
    Erp,
    ErpDocument,
    ErpDocumentKind,
    InboundConfirm,
    InboundOrderLine,
    InboundOrderRequest,
    InboundWms,
    PurchaseReceipt,
    ReceiptLine,
    SalesOutbound,
    SalesOutboundLine,
    Wms,
    WmsOrderState,
)
from connectors.errors import (
    AmbiguousError,
    AuthError,
    BadPayload,
    ConnectorError,
    RateLimited,
    RejectedError,
    TransientError,
)
from connectors.registry import erp_for as registry_erp_for
from models.domain import HoldReason, OutboxMessage, RunStatus, SyncError, SyncRun
from models.store import (
    DocumentState,
    ErpPurchaseLine,
    ErpPurchaseOrder,
    ErpReceipt,
    ErpSalesOutbound,
    ErpSummary,
    PurchaseState,
    Store,
    Tx,
    from_fen,
)
from sync.errors import HubError
from sync.outbox import Handler, Record, maybe_sent

WMS_ENTRY_CREATE = "wms.entry_create"
ERP_RECEIPT = "erp.receipt"
ERP_SALES_OUTBOUND = "erp.sales_outbound"
ERP_KINDS = (WMS_ENTRY_CREATE, ERP_RECEIPT, ERP_SALES_OUTBOUND)
ERP_TARGET = "erp"
"""The outbox target of ERP documents (its concurrency limit and dead letters)."""
POLL_JOB = "erp"
"""The job name of purchase-order polls in `sync_runs`."""
SOUND = "ZP"
PURCHASE_INBOUND = "CGRK"

Observe = Callable[[str, str], None]
"""(operation, outcome): one ERP call ended `ok` or failed with an outcome of `outcome_of`."""

T = TypeVar("T")

log = structlog.get_logger("ecomhub.sync.erp")


def outcome_of(exc: ConnectorError) -> str:
    """The metric outcome of a failed call, by what the caller must do."""
    for kind, name in (
        (AmbiguousError, "ambiguous"),
        (RateLimited, "rate_limited"),
        (TransientError, "transient"),
        (AuthError, "auth"),
        (RejectedError, "rejected"),
        (BadPayload, "bad_payload"),
    ):
        if isinstance(exc, kind):
            return name
    return "error"


async def observed(operation: str, call: Awaitable[T], observe: Observe | None) -> T:
    try:
        result = await call
    except ConnectorError as exc:
        if observe is not None:
            observe(operation, outcome_of(exc))
        raise
    if observe is not None:
        observe(operation, "ok")
    return result


# --- purchase orders in ----------------------------------------------------------------------


@dataclass
class PurchasePoll:
    open: int = 0
    """Audited, open purchase orders the ERP reported."""
    new: int = 0
    """Seen for the first time: their inbound notices are in the outbox."""
    problems: int = 0
    """Orders the hub cannot use (recorded as sync errors with the reason)."""


def _entry_message(number: str, warehouse: str) -> OutboxMessage:
    return OutboxMessage(
        kind=WMS_ENTRY_CREATE,
        target=warehouse,
        idempotency_key=f"{WMS_ENTRY_CREATE}:{number}",
        payload={"purchase_order": number},
    )


async def poll_purchase_orders(
    store: Store,
    settings: Settings,
    erp: Erp,
    *,
    since: datetime | None = None,
    owner: str = "",
    observe: Observe | None = None,
) -> PurchasePoll:
    """Read the ERP's audited, open purchase orders; record each new one and queue its inbound
    notice to the receiving warehouse (one transaction). `since` limits the poll to orders
    approved at or after it. A purchase order seen before is never sent again."""
    warehouse = settings.inbound_warehouse
    if settings.erp is None or warehouse is None:
        raise HubError("the ERP poll needs an [erp] section and at least one [[warehouses]]")
    async with store.transaction() as tx:
        run_id = await tx.start_run(POLL_JOB, owner=owner)
    started = store.clock.now()
    poll = PurchasePoll()
    try:
        numbers = await observed(
            "open_purchase_orders", erp.open_purchase_order_numbers(since), observe
        )
        poll.open = len(numbers)
        async with store.read() as tx:
            known = await tx.known_purchase_orders(numbers)
        fresh = [n for n in numbers if n not in known]
        orders = (
            await observed("purchase_orders", erp.purchase_orders(fresh), observe) if fresh else []
        )
    except ConnectorError as exc:
        async with store.transaction() as tx:
            await tx.finish_run(
                SyncRun(
                    id=run_id,
                    job=POLL_JOB,
                    started_at=started,
                    status=RunStatus.FAILED,
                    message=str(exc),
                )
            )
        raise
    problems: list[SyncError] = []
    async with store.transaction() as tx:
        for order in orders:
            if order.problem or not order.lines:
                problems.append(
                    SyncError(
                        source=POLL_JOB,
                        key=order.number,
                        reason=order.problem or "a purchase order without lines",
                    )
                )
                continue
            recorded = ErpPurchaseOrder(
                number=order.number,
                erp_id=order.erp_id,
                warehouse=warehouse,
                supplier=order.supplier,
                purchase_org=order.purchase_org,
                approved_at=order.approved_at,
                lines=tuple(
                    ErpPurchaseLine(line.entry_id, line.sku, line.unit, line.qty, line.received)
                    for line in order.lines
                ),
            )
            if await tx.add_purchase_order(recorded):
                await tx.enqueue([_entry_message(order.number, warehouse)])
                poll.new += 1
        poll.problems = len(problems)
        await tx.record_errors(problems, run_id)
        await tx.finish_run(
            SyncRun(
                id=run_id,
                job=POLL_JOB,
                started_at=started,
                status=RunStatus.PARTIAL if problems else RunStatus.OK,
                orders_seen=poll.open,
                orders_written=poll.new,
                errors=poll.problems,
                message=f"{poll.open} open purchase orders, {poll.new} new",
            )
        )
    if poll.new or poll.problems:
        log.info("purchase orders polled", open=poll.open, new=poll.new, problems=poll.problems)
    return poll


# --- receipts back ---------------------------------------------------------------------------


def _receipt_lines(
    order: ErpPurchaseOrder, confirm: InboundConfirm
) -> tuple[list[tuple[str, str, int, str]], list[str]]:
    """The confirm's received quantities against the order's lines: by `orderLineNo` (the
    entry id the notice sent), else the first line of the same SKU. Returns (entry id, SKU,
    quantity, unit) per entry, and what could not be matched."""
    by_entry = {line.entry_id: line for line in order.lines}
    totals: dict[str, int] = {}
    unmatched: list[str] = []
    for line in confirm.lines:
        if line.received <= 0:
            continue
        entry = by_entry.get(line.line_no)
        if entry is None or entry.sku != line.sku:
            entry = next((e for e in order.lines if e.sku == line.sku), None)
        if entry is None:
            unmatched.append(f"{line.received} × {line.sku} (line {line.line_no or '?'})")
            continue
        totals[entry.entry_id] = totals.get(entry.entry_id, 0) + line.received
    lines = [
        (entry_id, by_entry[entry_id].sku, qty, by_entry[entry_id].unit)
        for entry_id, qty in totals.items()
    ]
    return lines, unmatched


async def apply_inbound(tx: Tx, settings: Settings, warehouse: str, confirm: InboundConfirm) -> str:
    """Store an `entryorder.confirm` once per (warehouse, outBizCode): sound stock into the
    ledger and, for a purchase order the hub sent (with `[erp]`), one receipt in the outbox."""
    arrived: dict[str, int] = {}
    for line in confirm.lines:
        if line.inventory_type == SOUND and line.received:
            arrived[line.sku] = arrived.get(line.sku, 0) + line.received
    applied = 0
    for sku, qty in arrived.items():
        applied += await tx.apply_stock_change(
            warehouse,
            confirm.out_biz_code,
            sku,
            qty,
            order_code=confirm.entry_order_code,
            order_type=PURCHASE_INBOUND,
        )
    if applied:
        await tx.requeue_held(HoldReason.NO_STOCK)  # orders waiting for stock may ship now
    order = await tx.purchase_order(confirm.entry_order_code)
    if settings.erp is None or order is None:
        return "inbound applied" if applied else "inbound repeated"
    if await tx.receipt_seen(warehouse, confirm.out_biz_code):
        return "inbound repeated"
    # The WMS received against the notice, so it has it: a create still being retried is done.
    await tx.settle_outbox(
        f"{WMS_ENTRY_CREATE}:{order.number}", "settled: the WMS confirmed a receipt"
    )
    lines, unmatched = _receipt_lines(order, confirm)
    if unmatched:
        await tx.record_errors(
            [
                SyncError(
                    source=POLL_JOB,
                    key=f"{order.number}/{confirm.out_biz_code}",
                    reason="received goods that are not on the purchase order (in stock, not "
                    "in the receipt): " + ", ".join(unmatched),
                )
            ]
        )
    state = PurchaseState.RECEIVED if confirm.final else PurchaseState.RECEIVING
    await tx.set_purchase_state(
        order.number,
        state,
        only_from=[PurchaseState.PENDING, PurchaseState.NOTIFIED, PurchaseState.RECEIVING],
    )
    if not lines:
        return "inbound applied; nothing to receive against the purchase order"
    number = f"{order.number}-R{len(await tx.receipts_of(order.number)) + 1}"
    await tx.add_receipt(
        ErpReceipt(
            number=number,
            purchase_order=order.number,
            warehouse=warehouse,
            out_biz_code=confirm.out_biz_code,
            final=confirm.final,
            lines=tuple(lines),
            received_at=tx.clock.now(),
        )
    )
    await tx.add_received(order.number, {entry_id: qty for entry_id, _, qty, _ in lines})
    await tx.enqueue(
        [
            OutboxMessage(
                kind=ERP_RECEIPT,
                target=ERP_TARGET,
                idempotency_key=f"{ERP_RECEIPT}:{number}",
                payload={"receipt": number},
            )
        ]
    )
    return f"inbound applied; receipt {number} queued"


# --- sales documents -------------------------------------------------------------------------


async def record_sales_outbound(
    tx: Tx,
    settings: Settings,
    *,
    code: str,
    shop: str,
    platform_order_id: str,
    warehouse: str,
    lines: Sequence[tuple[int, str, int, int]],
    shipped_at: datetime,
) -> bool:
    """After a delivery order's final shipment confirm: record its sales outbound document
    (what the WMS reported shipped, priced from the delivery order's `(order line, SKU, qty,
    price in fen)` lines) and queue its save. False without `[erp]`, or when it was recorded
    before."""
    if settings.erp is None:
        return False
    shipped = await tx.shipped_quantities(code)
    prices: dict[str, int] = {}
    for _, sku, _, price in lines:
        prices.setdefault(sku, price)
    document = tuple((sku, qty, prices.get(sku, 0)) for sku, qty in shipped.items() if qty > 0)
    if not document:
        return False
    added = await tx.add_sales_outbound(
        ErpSalesOutbound(
            number=code,
            shop=shop,
            platform_order_id=platform_order_id,
            warehouse=warehouse,
            lines=document,
            shipped_at=shipped_at,
        )
    )
    if added:
        await tx.enqueue(
            [
                OutboxMessage(
                    kind=ERP_SALES_OUTBOUND,
                    target=ERP_TARGET,
                    idempotency_key=f"{ERP_SALES_OUTBOUND}:{code}",
                    payload={"code": code},
                )
            ]
        )
    return added


# --- handlers --------------------------------------------------------------------------------


class ErpEffects:
    """The outbox handlers of the ERP flows (registered beside `sync.fulfilment.Effects`)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        wms_for: Callable[[WarehouseConfig], Wms],
        erp_for: Callable[[Settings], Erp] | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._wms_for = wms_for
        self._erp_for = erp_for or erp_of
        self.observe = observe
        self._wms: dict[str, Wms] = {}
        self._erp: Erp | None = None

    def handlers(self) -> Mapping[str, Handler]:
        return {
            WMS_ENTRY_CREATE: self.create_entry,
            ERP_RECEIPT: self.save_receipt,
            ERP_SALES_OUTBOUND: self.save_sales_outbound,
        }

    def erp(self) -> Erp:
        if self._erp is None:
            if self.settings.erp is None:
                raise RejectedError("the ERP is not configured (no [erp])")
            self._erp = self._erp_for(self.settings)
        return self._erp

    def inbound_wms(self, warehouse: str) -> InboundWms:
        if warehouse not in self._wms:
            self._wms[warehouse] = self._wms_for(self.settings.warehouse(warehouse))
        wms = self._wms[warehouse]
        if not isinstance(wms, InboundWms):
            raise RejectedError(f"the WMS of {warehouse} takes no inbound orders")
        return wms

    async def aclose(self) -> None:
        for wms in self._wms.values():
            await wms.aclose()
        if self._erp is not None:
            await self._erp.aclose()

    async def create_entry(self, message: OutboxMessage) -> Record | None:
        number = str(message.payload["purchase_order"])
        async with self.store.read() as tx:
            order = await tx.purchase_order(number)
        if order is None:
            raise RejectedError(f"purchase order {number} is not in the store")
        if order.state != PurchaseState.PENDING:
            return None  # a receipt arrived first: the WMS has it
        wms = self.inbound_wms(order.warehouse)
        if maybe_sent(message):
            status = await wms.query_entry_order(number)
            if status.state != WmsOrderState.NOT_FOUND:
                return _notified(number, status.wms_order_id)
        lines = tuple(
            InboundOrderLine(line.entry_id, line.sku, line.qty - line.received)
            for line in order.lines
            if line.qty > line.received
        )
        if not lines:

            async def received(tx: Tx) -> None:
                await tx.set_purchase_state(number, PurchaseState.RECEIVED)

            return received
        request = InboundOrderRequest(
            code=number,
            supplier=order.supplier,
            created=order.approved_at or self.store.clock.now(),
            lines=lines,
            remark=f"purchase order {number}",
        )
        return _notified(number, await wms.create_entry_order(request))

    async def _find(self, kind: ErpDocumentKind, number: str) -> ErpDocument | None:
        """The ERP's document of this number, audited: one saved whose automatic audit failed
        (an outbound the ERP had no stock for) is submitted and audited now; if the ERP still
        refuses, the message fails with its reason and a replay audits it again."""
        found = await observed(
            "find_document", self.erp().find_document(kind, number), self.observe
        )
        if found is not None and found.status not in ("", "C"):
            log.info(
                "the ERP holds the document unaudited: submitting and auditing it",
                number=number,
                status=found.status,
            )
            try:
                found = await observed(
                    "audit_document", self.erp().audit_document(kind, found), self.observe
                )
            except RejectedError as exc:
                # Usually ERP stock not there yet (a receipt still on its way): asked again on
                # the retry schedule, a dead letter only after the last attempt.
                raise TransientError(f"the ERP refuses to audit {number}: {exc}") from None
        return found

    async def _save(
        self, kind: ErpDocumentKind, number: str, save: Awaitable[ErpDocument], operation: str
    ) -> ErpDocument:
        """Save; a refused save may still have stored the document (saved, then its automatic
        audit failed), so the ERP is asked before the refusal stands."""
        try:
            return await observed(operation, save, self.observe)
        except RejectedError:
            found = await self._find(kind, number)
            if found is None:
                raise
            return found

    async def save_receipt(self, message: OutboxMessage) -> Record | None:
        number = str(message.payload["receipt"])
        async with self.store.read() as tx:
            receipt = await tx.receipt(number)
            order = await tx.purchase_order(receipt.purchase_order) if receipt else None
        if receipt is None or order is None:
            raise RejectedError(f"receipt {number} (or its purchase order) is not in the store")
        if receipt.state == DocumentState.SAVED:
            return None
        saved = await self._find(ErpDocumentKind.RECEIPT, number) if maybe_sent(message) else None
        if saved is None:
            document = PurchaseReceipt(
                number=number,
                purchase_order=order.number,
                purchase_order_id=order.erp_id,
                supplier=order.supplier,
                stock=self._stock_number(receipt.warehouse),
                received_at=receipt.received_at,
                lines=tuple(ReceiptLine(e, sku, qty, unit) for e, sku, qty, unit in receipt.lines),
                note=f"WMS {receipt.warehouse} receipt {receipt.out_biz_code}",
            )
            saved = await self._save(
                ErpDocumentKind.RECEIPT, number, self.erp().save_receipt(document), "save_receipt"
            )
        erp_id = saved.erp_id

        async def record(tx: Tx) -> None:
            await tx.set_receipt_saved(number, erp_id)

        return record

    async def save_sales_outbound(self, message: OutboxMessage) -> Record | None:
        code = str(message.payload["code"])
        async with self.store.read() as tx:
            stored = await tx.sales_outbound(code)
        if stored is None:
            raise RejectedError(f"sales document {code} is not in the store")
        if stored.state == DocumentState.SAVED:
            return None
        saved = (
            await self._find(ErpDocumentKind.SALES_OUTBOUND, code) if maybe_sent(message) else None
        )
        if saved is None:
            customer = self.settings.shop(stored.shop).customer_number
            if not customer:
                raise RejectedError(f"shops[{stored.shop}].customer_number is not set")
            document = SalesOutbound(
                number=code,
                customer=customer,
                stock=self._stock_number(stored.warehouse),
                shipped_at=stored.shipped_at,
                lines=tuple(
                    SalesOutboundLine(sku, qty, from_fen(price)) for sku, qty, price in stored.lines
                ),
                note=stored.platform_order_id,
            )
            saved = await self._save(
                ErpDocumentKind.SALES_OUTBOUND,
                code,
                self.erp().save_sales_outbound(document),
                "save_sales_outbound",
            )
        erp_id = saved.erp_id

        async def record(tx: Tx) -> None:
            await tx.set_sales_outbound_saved(code, erp_id)

        return record

    def _stock_number(self, warehouse: str) -> str:
        number = self.settings.warehouse(warehouse).stock_number
        if not number:
            raise RejectedError(f"warehouses[{warehouse}].stock_number is not set")
        return number


def _notified(number: str, wms_order_id: str) -> Record:
    """The WMS holds the inbound order of purchase order `number`."""

    async def record(tx: Tx) -> None:
        await tx.set_purchase_state(
            number,
            PurchaseState.NOTIFIED,
            only_from=[PurchaseState.PENDING],
            wms_order_id=wms_order_id,
        )

    return record


def erp_of(settings: Settings) -> Erp:
    """The ERP connector of `[erp]` (the registry's)."""
    if settings.erp is None:
        raise RejectedError("the ERP is not configured (no [erp])")
    return registry_erp_for(settings.erp)


async def poll_erp(
    store: Store,
    settings: Settings,
    *,
    since: datetime | None = None,
    erp_for: Callable[[Settings], Erp] = erp_of,
    owner: str = "",
    observe: Observe | None = None,
) -> PurchasePoll:
    """One purchase-order poll with a connector of its own (the CLI's `sync erp`)."""
    if settings.erp is None:
        raise HubError("the config has no [erp] section: there is no ERP to poll")
    erp = erp_for(settings)
    try:
        return await poll_purchase_orders(
            store, settings, erp, since=since, owner=owner, observe=observe
        )
    finally:
        await erp.aclose()


def erp_status(summary: ErpSummary) -> dict[str, int]:
    """Plain figures of `Tx.erp_summary()` for `status` and the admin API."""
    pos, receipts, sales = summary.purchase_orders, summary.receipts, summary.sales_outbounds
    return {
        "purchase_orders_waiting_for_wms": pos.get(PurchaseState.PENDING.value, 0),
        "purchase_orders_waiting_for_goods": pos.get(PurchaseState.NOTIFIED.value, 0)
        + pos.get(PurchaseState.RECEIVING.value, 0),
        "purchase_orders_received": pos.get(PurchaseState.RECEIVED.value, 0),
        "receipts_pending": receipts.get(DocumentState.PENDING.value, 0),
        "receipts_saved": receipts.get(DocumentState.SAVED.value, 0),
        "sales_outbounds_pending": sales.get(DocumentState.PENDING.value, 0),
        "sales_outbounds_saved": sales.get(DocumentState.SAVED.value, 0),
    }
