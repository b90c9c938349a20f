"""JD (JOS) over `routerjson`: orders in, waybills and stock out.

Wire contract (`specs/platforms.md` §2, `specs/decisions.md` "JD JOS"): POST form to the shop's
`api_url` with `method`, `app_key`, `access_token`, `timestamp` (CST), `v=2.0`, `sign_method=md5`,
`360buy_param_json` (the business parameters as one compact JSON string) and `sign` (the TOP md5
rule over all of them, `360buy_param_json` included; the shop's `sign_method` is ignored: JOS signs
md5 only). Answers are `<method with dots → _>_responce` (JD's spelling) with a string `code`;
errors are `error_response` with a string `code`; business failures are `success=false` inside
the method's result (`apiResult` for the order search).

| canonical        | JOS method                                                                  |
|------------------|-----------------------------------------------------------------------------|
| `search_orders`  | `jingdong.pop.order.search` (`start_date`, `end_date`, `dateType=0`, `page`, |
|                  | `page_size`, `sortType=1`, `order_state` = the states below,                 |
|                  | `optional_fields`) → `searchorderinfo_result.{orderTotal, orderInfoList}`    |
| `get_order`      | the same search over windows from now back to `modified_hint` (see below)    |
| `ship`           | `jingdong.pop.order.shipment` (`orderId`, `logiCoprId`, `logiNo`)            |
| `listings`       | `jingdong.sku.read.searchSkuList` (see below)                                |
| `update_stock`   | `jingdong.stock.write.updateSkuStock` (`skuId`, `stockNum` absolute), one    |
|                  | call per SKU                                                                 |

Errors: `error_response.code` "19" (token) and "12" (signature) → `AuthError`; a message naming a
call limit → `RateLimited` (JD publishes no code list; the simulator and the gateway in front of
JOS answer HTTP 503 + Retry-After, which the transport maps to `RateLimited`); HTTP 5xx and
`success=false` with a system error (busy / system error / retry later in the message) →
transient (ambiguous on a write); any other `success=false` or code → `RejectedError`.

Choices:
- `get_order`: the hub's JOS method set has no per-order read (`jingdong.pop.order.get` is not in
  decisions.md and the simulator does not serve it), so an order is re-read with the order search
  over windows of at most a day, newest first, from now back to `modified_hint` − 1 min (at most
  7 windows, 20 pages). Without a hint it returns None: the periodic pull finds the order.
- `ship` already-shipped check: after `success=false` (other than a system error) the order is
  read back the same way (from `modified_hint`, else the last day). It counts as shipped when it
  shows `WAIT_GOODS_RECEIVE_CONFIRM` with the same waybill (or no waybill in the answer), or
  `FINISHED_L` with the same waybill (the buyer confirmed before the re-send); otherwise
  `RejectedError` with JD's message.
- Lines: JD has no line id; `line_id` = `skuId` (`skuId-2`, `-3`… when a SKU repeats in one
  order); `payment` = `jdPrice` × `itemTotal` − the SKU's `couponDetailList` amounts.
- `listings`: JD ware listing is not in decisions.md. `jingdong.sku.read.searchSkuList` (the JOS
  SKU search used by public JOS integrations; `page.data[]` with `skuId`, `wareId`, `outerId`,
  `stockNum`; `page.totalItem`) lists every SKU of the shop with its merchant code in one paged
  call, which is exactly the shape stock sync needs (`updateSkuStock` is keyed by `skuId`).
  Parameters: `skuStatuValue="1,2"` (on and off the shelf), `field`, `pageNo`, `page_size=50`
  (its maximum). The simulator serves it (sandbox/README.md).
"""

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import httpx

from config.settings import ShopConfig
from connectors.base import (
    Listing,
    OrderPage,
    ShipRequest,
    ShipResult,
    StockResult,
    StockUpdate,
)
from connectors.errors import RejectedError
from connectors.http import Call, Fault, RetryPolicy, Sleep, Timeouts
from connectors.top_family import (
    Dialect,
    ErrorRule,
    ErrorTable,
    NumberedPages,
    TopFamilyClient,
    as_int,
    as_list,
    cst_text,
    json_text,
    parse_cst,
    parse_money,
    raise_error,
    text,
)
from models.clock import Clock, SystemClock
from models.domain import (
    Address,
    Order,
    OrderLine,
    OrderStatus,
    Platform,
    SyncError,
    normalize_province,
)

_SYSTEM_ERROR_WORDS = (
    "系统繁忙",
    "系统异常",
    "系统错误",
    "服务繁忙",
    "稍后重试",
    "system error",
    "system busy",
    "try again later",
    "retry later",
)
_RATE_LIMIT_WORDS = ("调用次数", "限流", "频率", "call limit", "rate limit", "too many")

JD_ERRORS = ErrorTable(
    rules=(
        ErrorRule(Fault.AUTH, codes=frozenset({"19"})),
        ErrorRule(Fault.AUTH, codes=frozenset({"12"})),
        ErrorRule(Fault.RATE_LIMITED, keywords=_RATE_LIMIT_WORDS),
        ErrorRule(Fault.MAYBE_DONE, keywords=_SYSTEM_ERROR_WORDS),
    ),
    default=Fault.REJECTED,
)


def _param_json(params: Mapping[str, Any]) -> dict[str, str]:
    return {
        "360buy_param_json": json.dumps(
            {k: v for k, v in params.items() if v is not None},
            ensure_ascii=False,
            separators=(",", ":"),
        )
    }


JOS = Dialect(
    platform="jd",
    token_param="access_token",
    errors=JD_ERRORS,
    response_suffix="_responce",
    fixed={"v": "2.0"},
    encode=_param_json,
)

ORDER_STATE: dict[str, OrderStatus] = {
    "WAIT_SELLER_STOCK_OUT": OrderStatus.PAID,
    "WAIT_GOODS_RECEIVE_CONFIRM": OrderStatus.SHIPPED,
    "FINISHED_L": OrderStatus.FINISHED,
    "TRADE_CANCELED": OrderStatus.CANCELLED,
    "LOCKED": OrderStatus.PAUSED,
    "POP_ORDER_PAUSE": OrderStatus.PAUSED,
    "PAUSE": OrderStatus.PAUSED,
}

SEARCH_STATES = (
    "WAIT_SELLER_STOCK_OUT",
    "WAIT_GOODS_RECEIVE_CONFIRM",
    "FINISHED_L",
    "TRADE_CANCELED",
    "LOCKED",
    "POP_ORDER_PAUSE",
)

ORDER_FIELDS = (
    "orderId,venderId,orderType,payType,orderTotalPrice,orderSellerPrice,orderPayment,"
    "freightPrice,sellerDiscount,orderState,orderStateRemark,orderRemark,orderStartTime,"
    "orderEndTime,paymentConfirmTime,modified,venderRemark,waybill,logisticsId,consigneeInfo,"
    "itemInfoList,couponDetailList"
)

_NO_TIME = ("", "0001-01-01 00:00:00")


class MalformedOrder(ValueError):
    """An order that cannot become a canonical order; its text is the reason."""


def to_order(raw: Mapping[str, Any], *, shop: str) -> Order:
    """One JD `orderInfoList[]` entry → canonical `Order`; raises `MalformedOrder`."""
    try:
        order_id = text(raw.get("orderId"))
        if not order_id:
            raise MalformedOrder("missing orderId")
        state = text(raw.get("orderState"))
        if state not in ORDER_STATE:
            raise MalformedOrder(f"unknown orderState {state!r}")
        coupons: dict[str, Decimal] = {}
        for coupon in as_list(raw.get("couponDetailList")):
            if isinstance(coupon, Mapping):
                sku = text(coupon.get("skuId"))
                amount = parse_money(coupon.get("couponPrice"), "couponPrice")
                coupons[sku] = coupons.get(sku, Decimal("0")) + amount
        lines: list[OrderLine] = []
        seen: dict[str, int] = {}
        for item in as_list(raw.get("itemInfoList")):
            line = _to_line(item, coupons)
            seen[line.line_id] = seen.get(line.line_id, 0) + 1
            if seen[line.line_id] > 1:
                line = line.model_copy(update={"line_id": f"{line.line_id}-{seen[line.line_id]}"})
            lines.append(line)
        paid = text(raw.get("paymentConfirmTime"))
        return Order(
            platform=Platform.JD,
            shop=shop,
            platform_order_id=order_id,
            status=ORDER_STATE[state],
            platform_status=state,
            receiver=_receiver(raw.get("consigneeInfo")),
            total=parse_money(raw.get("orderTotalPrice"), "orderTotalPrice"),
            payment=parse_money(raw.get("orderPayment"), "orderPayment"),
            post_fee=parse_money(raw.get("freightPrice"), "freightPrice"),
            discount=parse_money(raw.get("sellerDiscount"), "sellerDiscount"),
            created=parse_cst(raw.get("orderStartTime")),
            paid_at=None if paid in _NO_TIME else parse_cst(paid),
            modified=parse_cst(raw.get("modified")),
            buyer_remark=text(raw.get("orderRemark")),
            seller_remark=text(raw.get("venderRemark")),
            lines=tuple(lines),
        )
    except MalformedOrder:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise MalformedOrder(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def _to_line(raw: object, coupons: Mapping[str, Decimal]) -> OrderLine:
    if not isinstance(raw, Mapping):
        raise MalformedOrder("itemInfoList entry is not an object")
    sku = text(raw.get("skuId"))
    if not sku:
        raise MalformedOrder("item without skuId")
    qty = as_int(raw.get("itemTotal"), f"sku {sku} itemTotal")
    price = parse_money(raw.get("jdPrice"), f"sku {sku} jdPrice")
    return OrderLine(
        line_id=sku,
        platform_item_id=text(raw.get("wareId")),
        platform_sku_id=sku,
        merchant_code=text(raw.get("outerSkuId")),
        title=text(raw.get("skuName")),
        qty=qty,
        price=price,
        payment=price * qty - coupons.get(sku, Decimal("0")),
    )


def _receiver(raw: object) -> Address | None:
    if not isinstance(raw, Mapping):
        return None
    address = Address(
        name=text(raw.get("fullname")),
        mobile=text(raw.get("mobile")),
        phone=text(raw.get("telephone")),
        province=normalize_province(text(raw.get("province"))),
        city=text(raw.get("city")),
        district=text(raw.get("county")),
        town=text(raw.get("town")),
        detail=text(raw.get("fullAddress")),
    )
    return None if address == Address() else address


def succeeded(result_key: str | None = None) -> Callable[[dict[str, Any], Call], None]:
    """A check that the method's result (`inner[result_key]`, or `inner`) reports success.

    JOS reports business failures inside HTTP 200 as `success=false` (in `apiResult` for the
    order search); the failure is classified by `JD_ERRORS` like a gateway error."""

    def check(inner: dict[str, Any], call: Call) -> None:
        result = inner.get(result_key) if result_key else inner
        if not isinstance(result, Mapping):
            call.fail(Fault.BAD_PAYLOAD, f"answer lacks {result_key}")
        status = result.get("apiResult", result)
        if not isinstance(status, Mapping) or "success" not in status:
            call.fail(Fault.BAD_PAYLOAD, "answer lacks success")
        if status["success"] in (True, "true"):
            return
        messages = (text(status.get("chineseErrCode")), text(status.get("englishErrCode")))
        raise_error(
            call,
            JD_ERRORS,
            code=status.get("numberCode") or status.get("errorCode") or "",
            message=" ".join(m for m in messages if m),
        )

    return check


class JdMarketplace:
    """A JD POP shop over JOS (see the module docstring for the wire contract and choices)."""

    platform: str = "jd"
    page_size: int = 100
    search_method: ClassVar[str] = "jingdong.pop.order.search"
    ship_method: ClassVar[str] = "jingdong.pop.order.shipment"
    stock_method: ClassVar[str] = "jingdong.stock.write.updateSkuStock"
    sku_method: ClassVar[str] = "jingdong.sku.read.searchSkuList"
    order_states: ClassVar[tuple[str, ...]] = SEARCH_STATES
    order_fields: ClassVar[str] = ORDER_FIELDS
    sku_fields: ClassVar[str] = "skuId,wareId,outerId,stockNum,skuName,status"
    sku_statuses: ClassVar[str] = "1,2"
    sku_page_size: ClassVar[int] = 50
    """`searchSkuList` serves at most 50 SKUs a page (a public JOS SDK's docstring)."""
    max_window: ClassVar[timedelta] = timedelta(days=1)
    find_windows: ClassVar[int] = 7
    find_pages: ClassVar[int] = 20
    hint_margin: ClassVar[timedelta] = timedelta(minutes=1)
    shipped_states: ClassVar[frozenset[str]] = frozenset({"WAIT_GOODS_RECEIVE_CONFIRM"})
    received_states: ClassVar[frozenset[str]] = frozenset({"FINISHED_L"})

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
        self.clock = clock or SystemClock()
        self.client = TopFamilyClient(
            shop,
            JOS,
            clock=self.clock,
            policy=policy,
            transport=transport,
            sleep=sleep,
            timeouts=timeouts,
            sign_method="md5",
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    # --- orders ---------------------------------------------------------------------------

    def to_order(self, raw: Mapping[str, Any]) -> Order:
        return to_order(raw, shop=self.shop.code)

    async def _search(
        self, start: datetime, end: datetime, page: int, page_size: int
    ) -> tuple[int, list[Any]]:
        body = await self.client.call(
            self.search_method,
            {
                "start_date": cst_text(start),
                "end_date": cst_text(end),
                "order_state": ",".join(self.order_states),
                "optional_fields": self.order_fields,
                "page": str(page),
                "page_size": str(page_size),
                "sortType": 1,
                "dateType": 0,
            },
            idempotent=True,
            check=succeeded("searchorderinfo_result"),
        )
        result = body["searchorderinfo_result"]
        try:
            total = as_int(result.get("orderTotal", 0), "orderTotal")
        except ValueError as exc:
            raise self.client.fail(self.search_method, Fault.BAD_PAYLOAD, str(exc)) from None
        return total, as_list(result.get("orderInfoList"))

    async def search_orders(
        self, start: datetime, end: datetime, page: int, page_size: int
    ) -> OrderPage:
        total, raws = await self._search(start, end, page, page_size)
        orders: list[Order] = []
        errors: list[SyncError] = []
        for raw in raws:
            if not isinstance(raw, Mapping):
                errors.append(self._error(raw, "", "order is not an object"))
                continue
            try:
                orders.append(self.to_order(raw))
            except MalformedOrder as exc:
                errors.append(self._error(raw, text(raw.get("orderId")), str(exc)))
        return OrderPage(tuple(orders), tuple(errors), total, page, page_size)

    def _error(self, raw: object, key: str, reason: str) -> SyncError:
        return SyncError(source=self.shop.code, key=key, reason=reason, raw=json_text(raw))

    async def _find(self, order_id: str, since: datetime) -> Mapping[str, Any] | None:
        """The order's current raw entry, searching windows newest first back to `since`."""
        end = self.clock.now()
        pages_read = 0
        for _ in range(self.find_windows):
            if end <= since:
                break
            start = max(since, end - self.max_window)
            pages = NumberedPages(self.page_size)
            while pages_read < self.find_pages:
                total, raws = await self._search(start, end, pages.page, self.page_size)
                pages_read += 1
                entries = [r for r in raws if isinstance(r, Mapping)]
                ids = [text(r.get("orderId")) for r in entries]
                if order_id in ids:
                    return entries[ids.index(order_id)]
                try:
                    if not pages.advance(total, ids):
                        break
                except ValueError as exc:
                    raise self.client.fail(
                        self.search_method, Fault.BAD_PAYLOAD, str(exc)
                    ) from None
            end = start
        return None

    async def get_order(
        self, platform_order_id: str, *, modified_hint: datetime | None = None
    ) -> Order | None:
        if modified_hint is None:
            return None
        raw = await self._find(platform_order_id, modified_hint - self.hint_margin)
        if raw is None:
            return None
        try:
            return self.to_order(raw)
        except MalformedOrder as exc:
            raise self.client.fail(
                self.search_method, Fault.BAD_PAYLOAD, f"malformed order: {exc}"
            ) from None

    # --- shipping -------------------------------------------------------------------------

    async def ship(self, request: ShipRequest) -> ShipResult:
        if request.carrier_jd_id is None:
            raise self.client.fail(
                self.ship_method,
                Fault.REJECTED,
                f"carrier {request.carrier_code} has no JD logiCoprId (carriers.jd_id)",
            )
        try:
            await self.client.call(
                self.ship_method,
                {
                    "orderId": request.platform_order_id,
                    "logiCoprId": str(request.carrier_jd_id),
                    "logiNo": request.waybill,
                },
                idempotent=False,
                check=succeeded("sopjosshipment_result"),
            )
        except RejectedError:
            if await self.shows_shipped(request):
                return ShipResult(already_shipped=True)
            raise
        return ShipResult()

    async def shows_shipped(self, request: ShipRequest) -> bool:
        since = request.modified_hint or self.clock.now() - self.max_window
        raw = await self._find(request.platform_order_id, since - self.hint_margin)
        if raw is None:
            return False
        state = text(raw.get("orderState"))
        waybills = {w.strip() for w in text(raw.get("waybill")).replace(";", ",").split(",")}
        waybills.discard("")
        same = request.waybill in waybills
        # JD registers one waybill per order: a later parcel of a split order (its lines named
        # in the request) is done once the order shows shipped, whatever waybill it shows.
        same = same or bool(request.line_ids)
        if state in self.shipped_states:
            return same or not waybills
        return state in self.received_states and same

    # --- listings and stock ---------------------------------------------------------------

    async def listings(self) -> Sequence[Listing]:
        found: list[Listing] = []
        pages = NumberedPages(self.sku_page_size)
        while True:
            body = await self.client.call(
                self.sku_method,
                {
                    "skuStatuValue": self.sku_statuses,
                    "field": self.sku_fields,
                    "pageNo": pages.page,
                    "page_size": self.sku_page_size,
                },
                idempotent=True,
            )
            page = body.get("page")
            if not isinstance(page, Mapping):
                raise self.client.fail(self.sku_method, Fault.BAD_PAYLOAD, "answer lacks page")
            rows = [r for r in as_list(page.get("data")) if isinstance(r, Mapping)]
            found.extend(
                Listing(
                    shop=self.shop.code,
                    item_id=text(r.get("wareId")),
                    sku_id=text(r.get("skuId")),
                    merchant_code=text(r.get("outerId")),
                    quantity=_maybe_int(r.get("stockNum")),
                )
                for r in rows
                if text(r.get("skuId"))
            )
            try:
                total = as_int(page.get("totalItem", 0), "totalItem")
                more = pages.advance(total, [text(r.get("skuId")) for r in rows])
            except ValueError as exc:
                raise self.client.fail(self.sku_method, Fault.BAD_PAYLOAD, str(exc)) from None
            if not more:
                return found

    async def update_stock(self, updates: Sequence[StockUpdate]) -> StockResult:
        done: list[StockUpdate] = []
        failed: list[tuple[StockUpdate, str]] = []
        for update in updates:
            if not update.listing.sku_id:
                failed.append((update, "JD stock is set per skuId; the listing has none"))
                continue
            if update.quantity < 0:
                failed.append((update, "negative quantity"))
                continue
            try:
                await self.client.call(
                    self.stock_method,
                    {"skuId": update.listing.sku_id, "stockNum": update.quantity},
                    idempotent=False,
                    check=succeeded(),
                )
            except RejectedError as exc:
                failed.append((update, str(exc)))
            else:
                done.append(update)
        return StockResult(done=tuple(done), failed=tuple(failed))


def _maybe_int(value: object) -> int | None:
    try:
        return as_int(value, "stockNum")
    except ValueError:
        return None
