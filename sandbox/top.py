"""Taobao / Tmall TOP router simulator (`POST /router/rest`), see `specs/platforms.md` §1.

Answers in the full (non-simplified) JSON envelope `<api>_response`, errors as `error_response`
with HTTP 200 and an int `code`. System parameters may come in the query string (the official SDK
puts them there) or in the form body; all are signed. Admission and faults live in
`sandbox.gateway`; this module holds the methods and the wire shapes.
"""

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.faults import FaultInjector
from sandbox.gateway import (
    ApiError,
    ErrorKey,
    Gateway,
    HttpFault,
    Pager,
    Rules,
    ShopCredentials,
    WindowQuery,
    int_param,
    read_params,
    required,
    window_params,
)
from sandbox.signing import TOP_SIGN_METHODS
from sandbox.world import (
    AlreadyShipped,
    Listing,
    OrderLine,
    OrderState,
    World,
    WorldError,
    cst_text,
    money,
)

# key → (code, msg, sub_code, sub_msg); `{param}`, `{detail}`, `{retry_after}` are filled in.
TOP_ERRORS: dict[ErrorKey, tuple[int, str, str, str]] = {
    "rate_limited": (
        7,
        "App Call Limited",
        "accesscontrol.limited-by-app-access-count",
        "This ban will last for {retry_after} more seconds",
    ),
    "transient": (
        15,
        "Remote service error",
        "isp.top-remote-service-unavailable",
        "服务暂时不可用",
    ),
    "business": (15, "Remote service error", "{param}", "{detail}"),
    "missing_method": (21, "Missing Method", "isv.missing-method", "缺少method参数"),
    "invalid_method": (22, "Invalid Method", "isv.invalid-method", "不存在的方法名 {detail}"),
    "invalid_format": (23, "Invalid Format", "isv.invalid-format", "{detail}"),
    "missing_signature": (24, "Missing Signature", "isv.missing-signature", "缺少sign参数"),
    "invalid_signature": (25, "Invalid Signature", "isv.invalid-signature", "签名无效 {detail}"),
    "missing_session": (26, "Missing Session", "isv.missing-session", "缺少session参数"),
    "invalid_session": (27, "Invalid Session", "invalid-sessionkey", "SessionKey非法"),
    "missing_app_key": (28, "Missing App Key", "isv.missing-app-key", "缺少app_key参数"),
    "invalid_app_key": (29, "Invalid App Key", "isv.invalid-app-key", "app_key不存在"),
    "missing_timestamp": (30, "Missing Timestamp", "isv.missing-timestamp", "缺少timestamp参数"),
    "invalid_timestamp": (31, "Invalid Timestamp", "isv.invalid-timestamp", "{detail}"),
    "missing_version": (32, "Missing Version", "isv.missing-version", "缺少v参数"),
    "invalid_version": (33, "Invalid Version", "isv.invalid-version", "v必须为2.0"),
    "missing_param": (
        40,
        "Missing Required Arguments",
        "isv.missing-parameter:{param}",
        "缺少必选参数 {param}",
    ),
    "invalid_param": (41, "Invalid Arguments", "isv.invalid-parameter:{param}", "{detail}"),
}

TRADE_STATUS_GROUPS = {
    "ALL_WAIT_PAY": frozenset({"WAIT_BUYER_PAY", "TRADE_NO_CREATE_PAY"}),
    "ALL_CLOSED": frozenset({"TRADE_CLOSED", "TRADE_CLOSED_BY_TAOBAO"}),
}
COMPANY_CODES = frozenset({"SF", "ZTO", "YTO", "STO", "YUNDA", "EMS", "POST", "JD", "HTKY", "DBL"})
B04 = "isv.logistics-offline-service-error:B04"
B60 = "isv.logistics-offline-service-error:B60"

Handler = Callable[[ShopCredentials, Mapping[str, str]], dict[str, Any]]


def response_key(method: str) -> str:
    """`taobao.trades.sold.increment.get` → `trades_sold_increment_get_response`."""
    return method.removeprefix("taobao.").replace(".", "_") + "_response"


def _fields(params: Mapping[str, str]) -> set[str]:
    return {f.strip() for f in required(params, "fields").split(",") if f.strip()}


def _pick(full: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    return {k: v for k, v in full.items() if k in fields}


@dataclass
class TmcMessage:
    id: int
    topic: str
    pub_time: str
    pub_app_key: str
    user_id: int
    user_nick: str
    content: str


@dataclass
class _TmcGroup:
    """One consumer group's queue: unconfirmed messages come back after `redeliver_after`."""

    cursor: int
    pending: dict[int, TmcMessage] = field(default_factory=dict)
    delivered_at: dict[int, float] = field(default_factory=dict)


class TopSim:
    """The TOP router of every simulated Tmall/Taobao shop (one `app_key` per shop).

    Inspection: `shipments` (every `logistics.offline.send` received, with its outcome),
    `stock_updates` (every quantity written, in arrival order), `gateway.calls` (outcome counts),
    `pager.drifts` (orders moved by paging drift), `snapshot()` for all of it as JSON.
    """

    path = "/router/rest"

    def __init__(
        self, world: World, shops: list[ShopCredentials], faults: FaultInjector, seed: int
    ) -> None:
        self.world = world
        self.faults = faults
        self.handlers = self._handlers()
        self.gateway = Gateway(
            rules=Rules(
                session_param="session", sign_methods=TOP_SIGN_METHODS, require_json_format=True
            ),
            shops={shop.app_key: shop for shop in shops},
            methods=frozenset(self.handlers),
            faults=faults,
            clock=world.clock,
        )
        self.pager = Pager(world, faults, seed)
        self.shipments: list[dict[str, Any]] = []
        self.stock_updates: list[dict[str, Any]] = []
        self.tmc_redeliver_after = 10.0
        """Seconds before a consumed but unconfirmed TMC message is delivered again."""
        self._tmc: dict[tuple[str, str], _TmcGroup] = {}
        self._tmc_start = len(world.changes)  # shops are "permitted" from now on: no backlog flood
        self._next_message_id = 7_000_000_000 + seed % 1000 * 10**6
        self._rng = random.Random(seed)

    def _handlers(self) -> dict[str, Handler]:
        return {
            "taobao.trades.sold.increment.get": self.trades_sold_increment_get,
            "taobao.trade.fullinfo.get": self.trade_fullinfo_get,
            "taobao.logistics.offline.send": self.logistics_offline_send,
            "taobao.skus.quantity.update": self.skus_quantity_update,
            "taobao.item.quantity.update": self.item_quantity_update,
            "taobao.items.onsale.get": self.items_onsale_get,
            "taobao.item.seller.get": self.item_seller_get,
            "taobao.tmc.messages.consume": self.tmc_messages_consume,
            "taobao.tmc.messages.confirm": self.tmc_messages_confirm,
        }

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self.endpoint, methods=["POST", "GET"])]

    async def endpoint(self, request: Request) -> Response:
        params = await read_params(request)
        try:
            shop = await self.gateway.admit(params)
            method = params["method"]
            body = self.handlers[method](shop, params)
            return JSONResponse({response_key(method): {**body, "request_id": self._request_id()}})
        except HttpFault as exc:
            return Response(
                "Bad Gateway" if exc.status == 502 else "Service Unavailable", exc.status
            )
        except ApiError as exc:
            return JSONResponse(self.error_body(exc))

    def error_body(self, exc: ApiError) -> dict[str, Any]:
        code, msg, sub_code, sub_msg = TOP_ERRORS[exc.key]
        values = {"param": exc.param, "detail": exc.detail, "retry_after": exc.retry_after}
        return {
            "error_response": {
                "code": code,
                "msg": msg,
                "sub_code": sub_code.format(**values),
                "sub_msg": sub_msg.format(**values).strip(),
                "request_id": self._request_id(),
            }
        }

    def _request_id(self) -> str:
        return f"{self._rng.getrandbits(52):x}"

    # --- trades ---------------------------------------------------------------------------

    def trades_sold_increment_get(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        fields = _fields(params)
        start, end = window_params(params, "start_modified", "end_modified")
        page_no = int_param(params, "page_no", 1, 1)
        page_size = int_param(params, "page_size", 40, 1, 100)
        status = params.get("status", "")
        statuses = TRADE_STATUS_GROUPS.get(status, frozenset({status})) if status else None
        query = WindowQuery(shop.code, start, end, statuses=statuses)
        rows, total = self.pager.page(query, page_no, page_size)
        body: dict[str, Any] = {}
        if params.get("use_has_next") == "true":
            body["has_next"] = page_no * page_size < total
        else:
            body["total_results"] = total
        trades = [self.trade(state, fields) for state in rows]
        # A page with no trades omits `trades` or sends it empty: the real API does both.
        if trades or self._rng.random() < 0.5:
            body["trades"] = {"trade": trades}
        return body

    def trade_fullinfo_get(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        fields = _fields(params)
        state = self._own_trade(shop, int_param(params, "tid"))
        return {"trade": self.trade(state, fields)}

    def _own_trade(self, shop: ShopCredentials, tid: int) -> OrderState:
        try:
            return self.world.order(shop.code, tid)
        except WorldError:
            raise ApiError("business", "isv.trade-not-exist", f"交易{tid}不存在") from None

    def trade(self, state: OrderState, fields: set[str]) -> dict[str, Any]:
        """A trade as TOP renders it, cut to the requested `fields` (`orders` = all line fields)."""
        full = _trade_dict(state)
        picked = _pick(full, fields | ({"tid_str"} if "tid" in fields else set()))
        line_fields = {f.removeprefix("orders.") for f in fields if f.startswith("orders.")}
        if "orders" in fields:
            picked["orders"] = full["orders"]
        elif line_fields:
            picked["orders"] = {"order": [_pick(o, line_fields) for o in full["orders"]["order"]]}
        return picked

    # --- shipping -------------------------------------------------------------------------

    def logistics_offline_send(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        tid = int_param(params, "tid")
        out_sid = required(params, "out_sid")
        company_code = required(params, "company_code")
        if params.get("is_split", "0") not in ("0", "1"):  # a Number on the wire
            raise ApiError("invalid_param", "is_split", "is_split须为数字0或1")
        record: dict[str, Any] = {
            "shop": shop.code,
            "tid": str(tid),
            "out_sid": out_sid,
            "company_code": company_code,
            "received_at": cst_text(self.world.clock()),
        }
        self.shipments.append(record)
        if company_code not in COMPANY_CODES:
            record["outcome"] = "unknown company"
            raise ApiError("invalid_param", "company_code", f"物流公司编码{company_code}不存在")
        try:
            self.world.order(shop.code, tid)
        except WorldError:
            record["outcome"] = "unknown trade"
            raise ApiError("business", "isv.trade-not-exist", f"交易{tid}不存在") from None
        try:
            self.world.ship(shop.code, tid, company_code, out_sid)
        except AlreadyShipped:
            record["outcome"] = "B04"
            raise ApiError("business", B04, "该订单已经发货，不能重复发货") from None
        except WorldError:
            record["outcome"] = "B60"
            raise ApiError("business", B60, "交易状态不允许发货") from None
        record["outcome"] = "shipped"
        return {"shipping": {"is_success": True}}

    # --- stock ----------------------------------------------------------------------------

    def _item(self, shop: ShopCredentials, num_iid: int) -> list[Listing]:
        listings = [li for li in self.world.shops[shop.code].listings if li.item_id == num_iid]
        if not listings:
            raise ApiError("business", "isv.item-not-exist", f"商品{num_iid}不存在")
        return listings

    def _write_stock(self, listing: Listing, quantity: int, full: bool, method: str) -> None:
        value = quantity if full else max(0, listing.quantity + quantity)
        self.world.set_stock(listing, value, method)
        self.stock_updates.append(
            {
                "shop": listing.shop,
                "num_iid": str(listing.item_id),
                "sku_id": "" if listing.sku_id is None else str(listing.sku_id),
                "outer_id": listing.merchant_code,
                "quantity": value,
                "method": method,
            }
        )

    def skus_quantity_update(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        method = "taobao.skus.quantity.update"
        listings = self._item(shop, int_param(params, "num_iid"))
        full = int_param(params, "type", 1, 1, 2) == 1
        name = "skuid_quantities" if params.get("skuid_quantities") else "outerid_quantities"
        raw = params.get(name, "")
        if not raw:
            raise ApiError("missing_param", "skuid_quantities")
        pairs = [p for p in raw.split(";") if p]
        if len(pairs) > 20:
            raise ApiError("invalid_param", name, "at most 20 sku:quantity pairs")
        updates: list[tuple[Listing, int]] = []
        for pair in pairs:
            key, _, qty_text = pair.partition(":")
            listing = next(
                (
                    li
                    for li in listings
                    if (str(li.sku_id) if name == "skuid_quantities" else li.merchant_code) == key
                ),
                None,
            )
            try:
                qty = int(qty_text)
            except ValueError:
                raise ApiError("invalid_param", name, f"bad pair {pair}") from None
            if listing is None or listing.sku_id is None:
                raise ApiError("invalid_param", name, f"sku {key} is not a sku of this item")
            if full and qty < 0:
                raise ApiError("invalid_param", name, "full quantity must not be negative")
            updates.append((listing, qty))
        for listing, qty in updates:
            self._write_stock(listing, qty, full, method)
        return {"item": self._item_stock(listings, [li for li, _ in updates])}

    def item_quantity_update(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        method = "taobao.item.quantity.update"
        listings = self._item(shop, int_param(params, "num_iid"))
        quantity = int_param(params, "quantity", low=-(2**31))
        full = int_param(params, "type", 1, 1, 2) == 1
        if full and quantity < 0:
            raise ApiError("invalid_param", "quantity", "full quantity must not be negative")
        sku_id, outer_id = params.get("sku_id", ""), params.get("outer_id", "")
        if sku_id:  # sku_id wins over outer_id
            target = [li for li in listings if str(li.sku_id) == sku_id]
        elif outer_id:
            target = [li for li in listings if li.merchant_code == outer_id]
        else:
            target = [li for li in listings if li.sku_id is None]
        if len(target) != 1:
            param = "sku_id" if sku_id or listings[0].sku_id is not None else "outer_id"
            raise ApiError("invalid_param", param, "no such sku of this item")
        self._write_stock(target[0], quantity, full, method)
        return {"item": self._item_stock(listings, target)}

    def _item_stock(self, listings: list[Listing], changed: list[Listing]) -> dict[str, Any]:
        now = cst_text(self.world.clock())
        item: dict[str, Any] = {
            "num_iid": listings[0].item_id,
            "num": sum(li.quantity for li in listings),
            "modified": now,
        }
        skus = [
            {"sku_id": li.sku_id, "quantity": li.quantity, "modified": now}
            for li in changed
            if li.sku_id is not None
        ]
        if skus:
            item["skus"] = {"sku": skus}
        return item

    # --- listings -------------------------------------------------------------------------

    def _items(self, shop: ShopCredentials) -> dict[int, list[Listing]]:
        items: dict[int, list[Listing]] = {}
        for listing in self.world.shops[shop.code].listings:
            items.setdefault(listing.item_id, []).append(listing)
        return items

    def items_onsale_get(self, shop: ShopCredentials, params: Mapping[str, str]) -> dict[str, Any]:
        fields = _fields(params)
        page_no = int_param(params, "page_no", 1, 1)
        page_size = int_param(params, "page_size", 40, 1, 200)
        items = sorted(self._items(shop).items())
        page = items[(page_no - 1) * page_size : page_no * page_size]
        body: dict[str, Any] = {"total_results": len(items)}
        if page:
            body["items"] = {"item": [_pick(_item_dict(listings), fields) for _, listings in page]}
        return body

    def item_seller_get(self, shop: ShopCredentials, params: Mapping[str, str]) -> dict[str, Any]:
        fields = _fields(params)
        listings = self._item(shop, int_param(params, "num_iid"))
        full = _item_dict(listings)
        item = _pick(full, fields)
        if "sku" in fields and "skus" in full:
            item["skus"] = full["skus"]
        return {"item": item}

    # --- TMC ------------------------------------------------------------------------------

    def _group(self, shop: ShopCredentials, params: Mapping[str, str]) -> _TmcGroup:
        key = (shop.app_key, params.get("group_name") or "default")
        if key not in self._tmc:
            self._tmc[key] = _TmcGroup(cursor=self._tmc_start)
        return self._tmc[key]

    def _publish(self, shop: ShopCredentials, group: _TmcGroup) -> None:
        changes = self.world.changes
        for change in changes[group.cursor :]:
            if change.shop != shop.code:
                continue
            state = change.state
            content: dict[str, Any] = {
                "tid": state.order_id,
                "oid": state.lines[0].line_id,
                "status": state.status,
                "payment": money(state.payment),
                "buyer_nick": state.buyer_nick,
                "seller_nick": shop.code,
                "type": "fixed",
            }
            self._next_message_id += 1
            group.pending[self._next_message_id] = TmcMessage(
                id=self._next_message_id,
                topic=f"taobao_trade_{change.topic}",
                pub_time=cst_text(state.modified),
                pub_app_key="12497914",
                user_id=_seller_id(shop),
                user_nick=shop.code,
                content=json.dumps(content, ensure_ascii=False),
            )
        group.cursor = len(changes)

    def tmc_messages_consume(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        quantity = int_param(params, "quantity", 100, 10, 200)
        group = self._group(shop, params)
        self._publish(shop, group)
        now = time.monotonic()
        batch: list[TmcMessage] = []
        for message_id, message in group.pending.items():
            sent = group.delivered_at.get(message_id)
            if sent is None or now - sent >= self.tmc_redeliver_after:
                batch.append(message)
                group.delivered_at[message_id] = now
            if len(batch) >= quantity:
                break
        if not batch:
            return {}
        return {"messages": {"tmc_message": [asdict(m) for m in batch]}}

    def tmc_messages_confirm(
        self, shop: ShopCredentials, params: Mapping[str, str]
    ) -> dict[str, Any]:
        group = self._group(shop, params)
        ok = [i for i in params.get("s_message_ids", "").split(",") if i.strip()]
        failed = [i for i in params.get("f_message_ids", "").split(",") if i.strip()]
        if not ok and not failed:
            raise ApiError("missing_param", "s_message_ids")
        for text in ok:
            group.pending.pop(int(text), None)
            group.delivered_at.pop(int(text), None)
        for text in failed:  # failed ones come back on the next consume
            group.delivered_at.pop(int(text), None)
        return {"is_success": True}

    def tmc_pending(self) -> int:
        return sum(len(group.pending) for group in self._tmc.values())

    # --- inspection -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "shops": sorted(shop.code for shop in self.gateway.shops.values()),
            "calls": dict(self.gateway.calls),
            "shipments": list(self.shipments),
            "stock_updates": list(self.stock_updates),
            "drifts": [asdict(d) for d in self.pager.drifts],
            "tmc_pending": self.tmc_pending(),
        }


def _seller_id(shop: ShopCredentials) -> int:
    return int(hashlib.md5(shop.code.encode()).hexdigest()[:8], 16)


def _line_status(state: OrderState, line: OrderLine) -> str:
    return "TRADE_CLOSED" if line.refunded else state.status


def _order_dict(state: OrderState, line: OrderLine) -> dict[str, Any]:
    order: dict[str, Any] = {
        "oid": line.line_id,
        "oid_str": str(line.line_id),
        "num_iid": line.item_id,
        "title": line.title,
        "num": line.qty,
        "price": money(line.price),
        "total_fee": money(line.total_fee),
        "discount_fee": money(line.discount),
        "adjust_fee": "0.00",
        "payment": money(line.payment),
        "status": _line_status(state, line),
        "refund_status": line.refund_status,
    }
    if line.sku_id is None:
        order["outer_iid"] = line.merchant_code
    else:
        order["sku_id"] = str(line.sku_id)
        order["outer_sku_id"] = line.merchant_code
        order["sku_properties_name"] = line.properties
    if state.consign_time is not None:
        order["consign_time"] = cst_text(state.consign_time)
        order["logistics_company"] = state.company_code
        order["invoice_no"] = state.waybill
    return order


def _trade_dict(state: OrderState) -> dict[str, Any]:
    receiver = state.receiver
    trade: dict[str, Any] = {
        "tid": state.order_id,
        "tid_str": str(state.order_id),
        "status": state.status,
        "type": "fixed",
        "shipping_type": "express",
        "created": cst_text(state.created),
        "modified": cst_text(state.modified),
        "num": sum(line.qty for line in state.lines),
        "total_fee": money(state.total_fee),
        "discount_fee": money(state.discount),
        "post_fee": money(state.post_fee),
        "payment": money(state.payment),
        "buyer_nick": state.buyer_nick,
        "seller_nick": state.shop,
        "receiver_name": receiver.name,
        "receiver_mobile": receiver.mobile,
        "receiver_state": receiver.province,
        "receiver_city": receiver.city,
        "receiver_district": receiver.district,
        "receiver_address": receiver.address,
        "receiver_zip": receiver.zip,
        "oaid": hashlib.md5(f"oaid:{state.order_id}".encode()).hexdigest(),
        "orders": {"order": [_order_dict(state, line) for line in state.lines]},
    }
    # TOP leaves out what has no value rather than sending null.
    optional = {
        "pay_time": state.pay_time,
        "consign_time": state.consign_time,
        "end_time": state.end_time,
    }
    trade.update({k: cst_text(v) for k, v in optional.items() if v is not None})
    if state.buyer_message:
        trade["buyer_message"] = state.buyer_message
    if state.seller_memo:
        trade["seller_memo"] = state.seller_memo
    return trade


def _item_dict(listings: list[Listing]) -> dict[str, Any]:
    first = listings[0]
    item: dict[str, Any] = {
        "num_iid": first.item_id,
        "title": first.title,
        "num": sum(li.quantity for li in listings),
        "price": money(first.price),
        "approve_status": "onsale",
    }
    if first.sku_id is None:
        item["outer_id"] = first.merchant_code
    else:
        item["skus"] = {
            "sku": [
                {
                    "sku_id": li.sku_id,
                    "outer_id": li.merchant_code,
                    "quantity": li.quantity,
                    "price": money(li.price),
                    "properties_name": li.properties,
                }
                for li in listings
            ]
        }
    return item
