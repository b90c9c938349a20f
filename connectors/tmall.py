"""Tmall / Taobao over TOP: orders in, waybills and stock out.

Wire contract (`specs/platforms.md` §1, `specs/decisions.md` "Tmall / Taobao TOP"): POST form to
the shop's `api_url` with system and business parameters in the body, `v=2.0`, `format=json`, no
`simplify` (full `<api>_response` envelopes, double-wrapped lists), signed by `TopSigner` with the
shop's `sign_method`.

| canonical        | TOP method                                                                  |
|------------------|-----------------------------------------------------------------------------|
| `search_orders`  | `taobao.trades.sold.increment.get` (`start_modified`/`end_modified` CST,     |
|                  | `page_no`, `page_size`, no `use_has_next` so `total_results` comes back)     |
| `get_order`      | `taobao.trade.fullinfo.get` (`isv.trade-not-exist` → None)                   |
| `ship`           | `taobao.logistics.offline.send` (`tid`, `out_sid`, `company_code`; `sub_tid` |
|                  | + `is_split` for a partial shipment). Code 15 `…:B04` → fullinfo: shipped →  |
|                  | `already_shipped`, else `RejectedError`.                                     |
| `listings`       | `taobao.items.onsale.get` (paged) + `taobao.item.seller.get` (field `sku`)  |
| `update_stock`   | `taobao.skus.quantity.update` (≤ 20 `skuId:qty` per call, `type=1`) for SKUs,|
|                  | `taobao.item.quantity.update` (`type=1`) for items without SKUs              |

Errors (decisions.md): code 7 / any `accesscontrol.*` → `RateLimited` with the ban seconds of
`sub_msg`; code 10 (Service Currently Unavailable: nothing was done) → transient, retried even on
a write; `isp.*` → transient, ambiguous on a write; `isv.trade-service-rejection` → `RateLimited`
for the 3 minutes its message names; codes 25/26/27 and `session-expired` → `AuthError`; other
`isv.*` and anything else → `RejectedError` with sub_code and message. Codes 4/5/6/8 (user/session/partner/frequency call limits, platforms.md §1.3) are also
treated as rate limits, with backoff since they carry no ban time.

Choices: ship and stock writes are not idempotent at the transport (an ambiguous failure goes to
the outbox, whose re-send lands on the B04 check or rewrites the same absolute quantity). A stock
batch the platform rejects is reported in `StockResult.failed`; transport and auth failures raise.

TMC (`MessageSource`; decisions.md: the hub polls rather than holding TOP's WebSocket):
`consume_messages` is `taobao.tmc.messages.consume` (`group_name`, `quantity` clamped to TOP's
10–200) → `messages.tmc_message[]`; `confirm_messages` is `taobao.tmc.messages.confirm`
(`s_message_ids` / `f_message_ids`, comma-separated, ≤ 200 ids of each per call).
`taobao_trade_*` and `taobao_refund_*` messages carry the trade's `tid` in `content` (a JSON
string) and become order hints; other topics (items …) are messages about no order. A message
whose content cannot be read becomes a `PlatformMessage` with a `problem`, never an exception.
TMC is per app: shops that share one `app_key` need a consumer group each (TOP binds sellers to
groups with `taobao.tmc.group.add`), or one shop's consumer takes the other's messages.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

import httpx

from config.settings import ShopConfig
from connectors.base import (
    Listing,
    OrderPage,
    PlatformMessage,
    ShipRequest,
    ShipResult,
    StockResult,
    StockUpdate,
)
from connectors.errors import RejectedError
from connectors.http import Fault, RetryPolicy, Sleep, Timeouts
from connectors.top_family import (
    Dialect,
    ErrorRule,
    ErrorTable,
    NumberedPages,
    TopFamilyClient,
    as_int,
    cst_text,
    json_text,
    parse_cst,
    parse_money,
    text,
    unwrap_list,
)
from models.clock import Clock, SystemClock
from models.domain import (
    Address,
    Order,
    OrderLine,
    OrderStatus,
    Platform,
    RefundState,
    SyncError,
    normalize_province,
)

TOP_ERRORS = ErrorTable(
    rules=(
        ErrorRule(Fault.AUTH, sub_code_prefix="session-expired"),
        ErrorRule(Fault.RATE_LIMITED, codes=frozenset({"7"})),
        ErrorRule(Fault.RATE_LIMITED, sub_code_prefix="accesscontrol."),
        ErrorRule(Fault.RATE_LIMITED, codes=frozenset({"4", "5", "6", "8"})),
        ErrorRule(Fault.TRANSIENT, codes=frozenset({"10"})),
        ErrorRule(Fault.AUTH, codes=frozenset({"25", "26", "27"})),
        ErrorRule(Fault.MAYBE_DONE, sub_code_prefix="isp."),
        # "超时请求过多，请将查询时间间隔缩短,3分钟后再查询！": a throttle, not a refusal.
        ErrorRule(Fault.RATE_LIMITED, sub_code_prefix="isv.trade-service-rejection"),
        ErrorRule(Fault.REJECTED, sub_code_prefix="isv."),
    ),
    default=Fault.REJECTED,
)

TOP = Dialect(
    platform="tmall",
    token_param="session",
    errors=TOP_ERRORS,
    response_suffix="_response",
    strip_prefix="taobao.",
    fixed={"v": "2.0", "format": "json"},
)

TRADE_STATUS: dict[str, OrderStatus] = {
    "WAIT_BUYER_PAY": OrderStatus.WAIT_PAY,
    "TRADE_NO_CREATE_PAY": OrderStatus.WAIT_PAY,
    "PAY_PENDING": OrderStatus.WAIT_PAY,
    "WAIT_PRE_AUTH_CONFIRM": OrderStatus.WAIT_PAY,
    "WAIT_SELLER_SEND_GOODS": OrderStatus.PAID,
    "PAID_FORBID_CONSIGN": OrderStatus.PAUSED,
    "SELLER_CONSIGNED_PART": OrderStatus.PARTLY_SHIPPED,
    "WAIT_BUYER_CONFIRM_GOODS": OrderStatus.SHIPPED,
    "TRADE_BUYER_SIGNED": OrderStatus.SHIPPED,
    "TRADE_FINISHED": OrderStatus.FINISHED,
    "TRADE_CLOSED": OrderStatus.CANCELLED,
    "TRADE_CLOSED_BY_TAOBAO": OrderStatus.CLOSED,
}

REFUND_STATUS: dict[str, RefundState] = {
    "NO_REFUND": RefundState.NONE,
    "WAIT_SELLER_AGREE": RefundState.REQUESTED,
    "WAIT_BUYER_RETURN_GOODS": RefundState.REQUESTED,
    "WAIT_SELLER_CONFIRM_GOODS": RefundState.REQUESTED,
    "SELLER_REFUSE_BUYER": RefundState.REFUSED,
    "CLOSED": RefundState.CLOSED,
    "SUCCESS": RefundState.SUCCESS,
}

SHIPPED_STATUSES = frozenset({"WAIT_BUYER_CONFIRM_GOODS", "TRADE_BUYER_SIGNED", "TRADE_FINISHED"})
"""A trade (or line) in one of these has been consigned."""

TRADE_FIELDS = (
    "tid,tid_str,status,type,created,modified,pay_time,consign_time,end_time,"
    "total_fee,discount_fee,post_fee,payment,buyer_nick,buyer_message,seller_memo,"
    "receiver_name,receiver_mobile,receiver_phone,receiver_state,receiver_city,"
    "receiver_district,receiver_town,receiver_address,oaid,orders"
)


class MalformedOrder(ValueError):
    """A trade that cannot become a canonical order; its text is the reason."""


def to_order(raw: Mapping[str, Any], *, shop: str) -> Order:
    """One TOP trade (`trades.trade[]` / fullinfo `trade`) → canonical `Order`.

    Raises `MalformedOrder` (missing tid, unknown status, unreadable time or money …)."""
    try:
        tid = text(raw.get("tid_str")) or text(raw.get("tid"))
        if not tid:
            raise MalformedOrder("missing tid")
        status_text = text(raw.get("status"))
        if status_text not in TRADE_STATUS:
            raise MalformedOrder(f"unknown trade status {status_text!r}")
        lines = tuple(_to_line(o) for o in unwrap_list(raw.get("orders"), "order"))
        return Order(
            platform=Platform.TMALL,
            shop=shop,
            platform_order_id=tid,
            status=TRADE_STATUS[status_text],
            platform_status=status_text,
            buyer_nick=text(raw.get("buyer_nick")),
            receiver=_receiver(raw),
            total=parse_money(raw.get("total_fee"), "total_fee"),
            payment=parse_money(raw.get("payment"), "payment"),
            post_fee=parse_money(raw.get("post_fee"), "post_fee"),
            discount=parse_money(raw.get("discount_fee"), "discount_fee"),
            created=parse_cst(raw.get("created")),
            paid_at=parse_cst(raw["pay_time"]) if text(raw.get("pay_time")) else None,
            modified=parse_cst(raw.get("modified")),
            buyer_remark=text(raw.get("buyer_message")),
            seller_remark=text(raw.get("seller_memo")),
            lines=lines,
        )
    except MalformedOrder:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # pydantic's ValidationError is a ValueError too.
        raise MalformedOrder(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def _to_line(raw: object) -> OrderLine:
    if not isinstance(raw, Mapping):
        raise MalformedOrder("order line is not an object")
    oid = text(raw.get("oid_str")) or text(raw.get("oid"))
    if not oid:
        raise MalformedOrder("order line without oid")
    refund_text = text(raw.get("refund_status")) or "NO_REFUND"
    if refund_text not in REFUND_STATUS:
        raise MalformedOrder(f"line {oid}: unknown refund_status {refund_text!r}")
    return OrderLine(
        line_id=oid,
        platform_item_id=text(raw.get("num_iid")),
        platform_sku_id=text(raw.get("sku_id")),
        # decisions.md: a line of an item with SKUs maps by its SKU's code only (the item's
        # code would map every SKU of the item to one product); an item without SKUs by its own.
        merchant_code=(
            text(raw.get("outer_sku_id")) if text(raw.get("sku_id")) else text(raw.get("outer_iid"))
        ),
        title=text(raw.get("title")),
        qty=as_int(raw.get("num"), f"line {oid} num"),
        price=parse_money(raw.get("price"), f"line {oid} price"),
        payment=parse_money(raw.get("payment"), f"line {oid} payment"),
        refund_state=REFUND_STATUS[refund_text],
        platform_status=text(raw.get("status")),
    )


def _receiver(raw: Mapping[str, Any]) -> Address | None:
    address = Address(
        name=text(raw.get("receiver_name")),
        mobile=text(raw.get("receiver_mobile")),
        phone=text(raw.get("receiver_phone")),
        province=normalize_province(text(raw.get("receiver_state"))),
        city=text(raw.get("receiver_city")),
        district=text(raw.get("receiver_district")),
        town=text(raw.get("receiver_town")),
        detail=text(raw.get("receiver_address")),
        oaid=text(raw.get("oaid")),
    )
    return None if address == Address() else address


ORDER_TOPIC_PREFIXES = ("taobao_trade_", "taobao_refund_")
"""TMC topics whose `content` names a trade (`tid`): each is a hint to re-read that order."""


def to_message(raw: object, *, shop: str) -> PlatformMessage:
    """One TMC message (`messages.tmc_message[]`) → `PlatformMessage`; never raises.

    `content` is a JSON string (`{"tid": …, "oid": …, "status": …}` for trade topics); a trade or
    refund message without a readable numeric `tid` gets a `problem`."""
    if not isinstance(raw, Mapping):
        return PlatformMessage("", "", shop, problem="message is not an object")
    message_id, topic = text(raw.get("id")), text(raw.get("topic"))
    try:
        published: datetime | None = parse_cst(raw.get("pub_time"))
    except ValueError:
        published = None
    message = PlatformMessage(message_id, topic, shop, published=published)
    if not message_id:
        return replace(message, problem="message has no id")
    if not topic.startswith(ORDER_TOPIC_PREFIXES):
        return message
    content = raw.get("content")
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            return replace(message, problem="content is not JSON")
    if not isinstance(content, Mapping):
        return replace(message, problem="content is not an object")
    tid = text(content.get("tid"))
    if not tid.isdigit():
        return replace(message, problem=f"content has no usable tid: {tid!r}")
    return replace(message, platform_order_id=tid)


class TmallMarketplace:
    """A Tmall/Taobao shop over TOP (see the module docstring for the wire contract)."""

    platform: str = "tmall"
    page_size: int = 100
    search_method: ClassVar[str] = "taobao.trades.sold.increment.get"
    get_method: ClassVar[str] = "taobao.trade.fullinfo.get"
    ship_method: ClassVar[str] = "taobao.logistics.offline.send"
    onsale_method: ClassVar[str] = "taobao.items.onsale.get"
    item_method: ClassVar[str] = "taobao.item.seller.get"
    skus_stock_method: ClassVar[str] = "taobao.skus.quantity.update"
    item_stock_method: ClassVar[str] = "taobao.item.quantity.update"
    trade_fields: ClassVar[str] = TRADE_FIELDS
    listing_page_size: ClassVar[int] = 200
    sku_batch: ClassVar[int] = 20
    already_shipped_sub_code: ClassVar[str] = "isv.logistics-offline-service-error:B04"
    missing_trade_sub_code: ClassVar[str] = "isv.trade-not-exist"
    consume_method: ClassVar[str] = "taobao.tmc.messages.consume"
    confirm_method: ClassVar[str] = "taobao.tmc.messages.confirm"
    tmc_min_batch: ClassVar[int] = 10
    tmc_max_batch: ClassVar[int] = 200

    def __init__(
        self,
        shop: ShopConfig,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.shop = shop
        self.client = TopFamilyClient(
            shop,
            TOP,
            clock=clock or SystemClock(),
            policy=policy,
            transport=transport,
            sleep=sleep,
            timeouts=timeouts,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    # --- orders ---------------------------------------------------------------------------

    def to_order(self, raw: Mapping[str, Any]) -> Order:
        return to_order(raw, shop=self.shop.code)

    async def search_orders(
        self, start: datetime, end: datetime, page: int, page_size: int
    ) -> OrderPage:
        body = await self.client.call(
            self.search_method,
            {
                "fields": self.trade_fields,
                "start_modified": cst_text(start),
                "end_modified": cst_text(end),
                "page_no": page,
                "page_size": page_size,
            },
            idempotent=True,
        )
        try:
            total = as_int(body.get("total_results", 0), "total_results")
        except ValueError as exc:
            raise self.client.fail(self.search_method, Fault.BAD_PAYLOAD, str(exc)) from None
        orders: list[Order] = []
        errors: list[SyncError] = []
        for raw in unwrap_list(body.get("trades"), "trade"):
            if not isinstance(raw, Mapping):
                errors.append(self._error(raw, "", "trade is not an object"))
                continue
            try:
                orders.append(self.to_order(raw))
            except MalformedOrder as exc:
                key = text(raw.get("tid_str")) or text(raw.get("tid"))
                errors.append(self._error(raw, key, str(exc)))
        return OrderPage(tuple(orders), tuple(errors), total, page, page_size)

    def _error(self, raw: object, key: str, reason: str) -> SyncError:
        return SyncError(source=self.shop.code, key=key, reason=reason, raw=json_text(raw))

    async def _fullinfo(self, tid: str, fields: str | None = None) -> Mapping[str, Any] | None:
        try:
            body = await self.client.call(
                self.get_method,
                # Without include_oaid a fullinfo answer may lack the oaid the WMS needs, and a
                # hinted fetch would overwrite the pulled version that has it.
                {"fields": fields or self.trade_fields, "tid": tid, "include_oaid": "true"},
                idempotent=True,
            )
        except RejectedError as exc:
            if exc.sub_code == self.missing_trade_sub_code:
                return None
            raise
        trade = body.get("trade")
        if not isinstance(trade, Mapping):
            raise self.client.fail(self.get_method, Fault.BAD_PAYLOAD, "answer lacks trade")
        return trade

    async def get_order(
        self, platform_order_id: str, *, modified_hint: datetime | None = None
    ) -> Order | None:
        trade = await self._fullinfo(platform_order_id)
        if trade is None:
            return None
        try:
            return self.to_order(trade)
        except MalformedOrder as exc:
            raise self.client.fail(
                self.get_method, Fault.BAD_PAYLOAD, f"malformed trade: {exc}"
            ) from None

    # --- shipping -------------------------------------------------------------------------

    async def ship(self, request: ShipRequest) -> ShipResult:
        params: dict[str, Any] = {
            "tid": request.platform_order_id,
            "out_sid": request.waybill,
            "company_code": request.carrier_code,
        }
        if request.line_ids:
            # `is_split` is a number on the wire (0 default, 1 = split), not a boolean.
            oids = ",".join(dict.fromkeys(request.line_ids))  # bundle lines repeat an oid
            params.update(sub_tid=oids, is_split="1")
        try:
            body = await self.client.call(self.ship_method, params, idempotent=False)
        except RejectedError as exc:
            if exc.sub_code != self.already_shipped_sub_code:
                raise
            if await self.shows_shipped(request):
                return ShipResult(already_shipped=True)
            raise
        shipping = body.get("shipping")
        if not isinstance(shipping, Mapping) or shipping.get("is_success") not in (True, "true"):
            raise self.client.fail(
                self.ship_method, Fault.REJECTED, "shipping.is_success is not true"
            )
        return ShipResult()

    async def shows_shipped(self, request: ShipRequest) -> bool:
        trade = await self._fullinfo(request.platform_order_id, "tid,status,orders")
        if trade is None:
            return False
        if not request.line_ids:
            return text(trade.get("status")) in SHIPPED_STATUSES
        lines = {
            text(o.get("oid_str")) or text(o.get("oid")): text(o.get("status"))
            for o in unwrap_list(trade.get("orders"), "order")
            if isinstance(o, Mapping)
        }
        return all(lines.get(line_id) in SHIPPED_STATUSES for line_id in request.line_ids)

    # --- listings and stock ---------------------------------------------------------------

    async def listings(self) -> Sequence[Listing]:
        item_ids: list[str] = []
        pages = NumberedPages(self.listing_page_size)
        while True:
            body = await self.client.call(
                self.onsale_method,
                {
                    "fields": "num_iid,title,outer_id,num",
                    "page_no": pages.page,
                    "page_size": self.listing_page_size,
                },
                idempotent=True,
            )
            ids = [text(i.get("num_iid")) for i in unwrap_list(body.get("items"), "item")]
            item_ids.extend(i for i in ids if i)
            try:
                total = as_int(body.get("total_results", 0), "total_results")
                more = pages.advance(total, ids)
            except ValueError as exc:
                raise self.client.fail(self.onsale_method, Fault.BAD_PAYLOAD, str(exc)) from None
            if not more:
                break
        found: list[Listing] = []
        for num_iid in dict.fromkeys(item_ids):
            found.extend(await self._item_listings(num_iid))
        return found

    async def _item_listings(self, num_iid: str) -> list[Listing]:
        body = await self.client.call(
            self.item_method,
            {"fields": "num_iid,outer_id,num,sku", "num_iid": num_iid},
            idempotent=True,
        )
        item = body.get("item")
        if not isinstance(item, Mapping):
            raise self.client.fail(self.item_method, Fault.BAD_PAYLOAD, "answer lacks item")
        skus = [s for s in unwrap_list(item.get("skus"), "sku") if isinstance(s, Mapping)]
        if not skus:
            return [
                Listing(
                    shop=self.shop.code,
                    item_id=num_iid,
                    sku_id="",
                    merchant_code=text(item.get("outer_id")) or text(item.get("outer_iid")),
                    quantity=_maybe_int(item.get("num")),
                )
            ]
        return [
            Listing(
                shop=self.shop.code,
                item_id=num_iid,
                sku_id=text(sku.get("sku_id")),
                merchant_code=text(sku.get("outer_id")),
                quantity=_maybe_int(sku.get("quantity")),
            )
            for sku in skus
        ]

    async def update_stock(self, updates: Sequence[StockUpdate]) -> StockResult:
        done: list[StockUpdate] = []
        failed: list[tuple[StockUpdate, str]] = []
        by_item: dict[str, list[StockUpdate]] = {}
        for update in updates:
            if update.quantity < 0:
                failed.append((update, "negative quantity"))
            else:
                by_item.setdefault(update.listing.item_id, []).append(update)
        for num_iid, item_updates in by_item.items():
            with_sku = [u for u in item_updates if u.listing.sku_id]
            for start in range(0, len(with_sku), self.sku_batch):
                batch = with_sku[start : start + self.sku_batch]
                pairs = ";".join(f"{u.listing.sku_id}:{u.quantity}" for u in batch)
                params = {"num_iid": num_iid, "skuid_quantities": pairs, "type": 1}
                await self._write(self.skus_stock_method, params, batch, done, failed)
            for update in (u for u in item_updates if not u.listing.sku_id):
                params = {"num_iid": num_iid, "quantity": update.quantity, "type": 1}
                await self._write(self.item_stock_method, params, [update], done, failed)
        return StockResult(done=tuple(done), failed=tuple(failed))

    async def _write(
        self,
        method: str,
        params: Mapping[str, Any],
        batch: list[StockUpdate],
        done: list[StockUpdate],
        failed: list[tuple[StockUpdate, str]],
    ) -> None:
        try:
            await self.client.call(method, params, idempotent=False)
        except RejectedError as exc:
            failed.extend((u, str(exc)) for u in batch)
        else:
            done.extend(batch)

    # --- TMC messages ---------------------------------------------------------------------

    async def consume_messages(self, group: str, quantity: int) -> list[PlatformMessage]:
        quantity = max(self.tmc_min_batch, min(self.tmc_max_batch, quantity))
        body = await self.client.call(
            self.consume_method, {"group_name": group, "quantity": quantity}, idempotent=True
        )
        raw_messages = unwrap_list(body.get("messages"), "tmc_message")
        return [to_message(raw, shop=self.shop.code) for raw in raw_messages]

    async def confirm_messages(
        self, group: str, ok_ids: Sequence[str], failed_ids: Sequence[str]
    ) -> None:
        # Confirming twice is harmless (TOP forgets a confirmed id), so the call is retried.
        # `s_message_ids` is required: failed ids ride along with confirmed ones, and a batch
        # with none confirmed is not confirmed at all (TOP delivers unconfirmed ones again).
        size = self.tmc_max_batch
        for start in range(0, len(ok_ids), size):
            params = {
                "group_name": group,
                "s_message_ids": ",".join(ok_ids[start : start + size]),
                "f_message_ids": ",".join(failed_ids[start : start + size]) or None,
            }
            body = await self.client.call(self.confirm_method, params, idempotent=True)
            if body.get("is_success") not in (True, "true"):
                raise self.client.fail(
                    self.confirm_method, Fault.REJECTED, "is_success is not true"
                )


def _maybe_int(value: object) -> int | None:
    try:
        return as_int(value, "quantity")
    except ValueError:
        return None
