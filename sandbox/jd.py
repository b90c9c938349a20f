"""JD open platform (JOS) router simulator (`/routerjson`), see `specs/platforms.md` §2.

Business parameters arrive as the JSON string `360buy_param_json`; the TOP md5 rule signs every
parameter, that string included. Answers use JD's own spelling `<method>_responce` with a string
`code`; gateway errors are `error_response` with a string `code`, `zh_desc` and `en_desc`. Bad
business parameters and transient failures are reported inside the method's result
(`apiResult.success=false` …), a rate limit as HTTP 503 with `Retry-After`.
"""

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict
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
from sandbox.world import (
    AlreadyShipped,
    Listing,
    OrderState,
    World,
    WorldError,
    cst_text,
    money,
)

# Gateway errors. JD publishes no code list: "12" and "19" are the codes seen in the wild
# (platforms.md §2.1); the others are the sandbox's own choice, documented in the README.
JD_ERRORS: dict[ErrorKey, tuple[str, str, str]] = {
    "missing_method": ("10", "缺少method参数", "missing method"),
    "invalid_method": ("10", "方法不存在", "invalid method"),
    "missing_app_key": ("14", "缺少app_key参数", "missing app_key"),
    "invalid_app_key": ("14", "无效的app_key", "invalid app_key"),
    "missing_timestamp": ("11", "缺少timestamp参数", "missing timestamp"),
    "invalid_timestamp": ("11", "时间戳错误，与服务器时间相差超过10分钟", "invalid timestamp"),
    "missing_version": ("20", "缺少版本参数", "missing version"),
    "invalid_version": ("20", "版本参数错误", "invalid version"),
    "invalid_format": ("22", "format只支持json", "invalid format"),
    "missing_signature": ("12", "缺少签名", "missing signature"),
    "invalid_signature": ("12", "签名无效", "invalid signature"),
    "missing_session": ("19", "缺少access_token参数", "missing access_token"),
    "invalid_session": ("19", "access_token无效或已过期", "access_token invalid or expired"),
}
# Failures reported inside the method's result: (numberCode, 中文, English).
SYSTEM_ERROR = (10000, "系统繁忙，请稍后重试", "system error, please retry later")
PARAM_ERROR = 10100
ALREADY_SHIPPED = (10400001, "订单已出库", "order already shipped")
NOT_SHIPPABLE = (10400002, "订单状态不允许出库", "order state does not allow shipment")
UNKNOWN_ORDER = (10400003, "订单不存在", "order does not exist")
UNKNOWN_SKU = (10500001, "sku不存在", "sku does not exist")

CARRIER_IDS = frozenset({467, 465, 463, 470, 1499, 1327, 2087})
STATE_REMARKS = {
    "WAIT_SELLER_STOCK_OUT": "等待出库",
    "WAIT_GOODS_RECEIVE_CONFIRM": "等待确认收货",
    "FINISHED_L": "完成",
    "TRADE_CANCELED": "(删除)库房取消",
    "LOCKED": "已锁定",
}

SEARCH = "jingdong.pop.order.search"
SHIPMENT = "jingdong.pop.order.shipment"
STOCK = "jingdong.stock.write.updateSkuStock"
SKU_SEARCH = "jingdong.sku.read.searchSkuList"
SKU_PAGE_MAX = 50
SKU_DEFAULT_FIELDS = frozenset({"skuId", "wareId", "outerId", "status", "jdPrice"})
SKU_ON_SHELF = 1  # `status`: 1 on the shelf, 2 off, 4 deleted; every simulated SKU is on

Handler = Callable[[ShopCredentials, Mapping[str, Any]], dict[str, Any]]


def response_key(method: str) -> str:
    """`jingdong.pop.order.search` → `jingdong_pop_order_search_responce` (JD's spelling)."""
    return method.replace(".", "_") + "_responce"


class Failure(Exception):
    """A method-level failure: success=false inside the method's own result."""

    def __init__(self, number_code: int, zh: str, en: str) -> None:
        super().__init__(en)
        self.number_code = number_code
        self.zh = zh
        self.en = en


class JdSim:
    """The JOS router of every simulated JD shop (one `app_key` per shop).

    Inspection: `shipments` (every `jingdong.pop.order.shipment` with its outcome),
    `stock_updates` (every `updateSkuStock`, in arrival order), `gateway.calls`, `snapshot()`.
    """

    path = "/routerjson"

    def __init__(
        self, world: World, shops: list[ShopCredentials], faults: FaultInjector, seed: int
    ) -> None:
        self.world = world
        self.faults = faults
        self.handlers: dict[str, Handler] = {
            SEARCH: self.order_search,
            SHIPMENT: self.order_shipment,
            STOCK: self.update_sku_stock,
            SKU_SEARCH: self.search_sku_list,
        }
        self.gateway = Gateway(
            rules=Rules(
                session_param="access_token", sign_methods=("md5",), require_json_format=False
            ),
            shops={shop.app_key: shop for shop in shops},
            methods=frozenset(self.handlers),
            faults=faults,
            clock=world.clock,
        )
        self.pager = Pager(world, faults, seed)
        self.shipments: list[dict[str, Any]] = []
        self.stock_updates: list[dict[str, Any]] = []
        self._rng = random.Random(seed)

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self.endpoint, methods=["GET", "POST"])]

    async def endpoint(self, request: Request) -> Response:
        params = await read_params(request)
        method = params.get("method", "")
        try:
            shop = await self.gateway.admit(params)
            try:
                business = _business_params(params)
                result = self.handlers[method](shop, business)
            except ApiError as exc:
                if exc.key == "transient":
                    raise
                raise Failure(
                    PARAM_ERROR, f"参数错误: {exc.param} {exc.detail}".strip(), str(exc)
                ) from None
        except HttpFault as exc:
            return Response(
                "Bad Gateway" if exc.status == 502 else "Service Unavailable", exc.status
            )
        except Failure as exc:
            result = _failure(method, exc)
        except ApiError as exc:
            if exc.key == "rate_limited":
                return Response(
                    "Service Unavailable: call limit",
                    503,
                    headers={"Retry-After": str(exc.retry_after)},
                )
            if exc.key == "transient":
                result = _failure(method, Failure(*SYSTEM_ERROR))
            else:
                return JSONResponse(self.error_body(exc))
        return JSONResponse({response_key(method): {"code": "0", **result}})

    @staticmethod
    def error_body(exc: ApiError) -> dict[str, Any]:
        code, zh, en = JD_ERRORS.get(exc.key, ("1", "系统错误", "system error"))
        return {"error_response": {"code": code, "zh_desc": zh, "en_desc": en}}

    # --- methods --------------------------------------------------------------------------

    def order_search(self, shop: ShopCredentials, params: Mapping[str, Any]) -> dict[str, Any]:
        start, end = window_params(params, "start_date", "end_date")
        page = int_param(params, "page", 1, 1)
        page_size = int_param(params, "page_size", 20, 1, 100)
        date_type = int_param(params, "dateType", 0, 0, 1)
        sort_type = int_param(params, "sortType", 0, 0, 1)
        states = {s for s in str(params.get("order_state", "")).split(",") if s}
        query = WindowQuery(
            shop.code,
            start,
            end,
            by_created=date_type == 1,
            statuses=frozenset(states) if states else None,
            descending=sort_type == 1,
        )
        rows, total = self.pager.page(query, page, page_size)
        wanted = {f for f in str(params.get("optional_fields", "")).split(",") if f}
        return {
            "searchorderinfo_result": {
                "apiResult": _api_result(True),
                "orderTotal": total,
                "orderInfoList": [_order_info(state, shop, wanted) for state in rows],
            }
        }

    def order_shipment(self, shop: ShopCredentials, params: Mapping[str, Any]) -> dict[str, Any]:
        order_id = int_param(params, "orderId")
        carrier = int_param(params, "logiCoprId")
        waybill = required(params, "logiNo")
        record: dict[str, Any] = {
            "shop": shop.code,
            "orderId": str(order_id),
            "logiCoprId": str(carrier),
            "logiNo": waybill,
            "received_at": cst_text(self.world.clock()),
        }
        self.shipments.append(record)
        try:
            if carrier not in CARRIER_IDS:
                raise Failure(PARAM_ERROR, f"承运商{carrier}不存在", "unknown logiCoprId")
            try:
                self.world.order(shop.code, order_id)
            except WorldError:
                raise Failure(*UNKNOWN_ORDER) from None
            try:
                self.world.ship(shop.code, order_id, str(carrier), waybill)
            except AlreadyShipped:
                raise Failure(*ALREADY_SHIPPED) from None
            except WorldError:
                raise Failure(*NOT_SHIPPABLE) from None
        except Failure as exc:
            record["outcome"] = exc.en
            raise
        record["outcome"] = "shipped"
        return {"sopjosshipment_result": _shipment_result(True)}

    def update_sku_stock(self, shop: ShopCredentials, params: Mapping[str, Any]) -> dict[str, Any]:
        sku_id = int_param(params, "skuId")
        quantity = int_param(params, "stockNum", low=0)
        listing = self.world.listing_by_sku(shop.code, sku_id)
        if listing is None:
            raise Failure(*UNKNOWN_SKU)
        self.world.set_stock(listing, quantity, STOCK)
        self.stock_updates.append(
            {
                "shop": shop.code,
                "skuId": str(sku_id),
                "outerSkuId": listing.merchant_code,
                "stockNum": quantity,
            }
        )
        return {"success": True}

    def search_sku_list(self, shop: ShopCredentials, params: Mapping[str, Any]) -> dict[str, Any]:
        """`jingdong.sku.read.searchSkuList`: the shop's SKUs by `skuId`, filtered by
        `skuStatuValue` (default "1,2"), `wareId` / `skuId` (comma lists), paged by `pageNo` and
        `page_size` (≤ 50); `field` picks the keys (`skuId` always comes back)."""
        statuses = _int_set(params, "skuStatuValue") or {1, 2}
        ware_ids = _int_set(params, "wareId")
        sku_ids = _int_set(params, "skuId")
        page = int_param(params, "pageNo", 1, 1)
        page_size = int_param(params, "page_size", 20, 1, SKU_PAGE_MAX)
        wanted = {f for f in str(params.get("field", "")).split(",") if f} or SKU_DEFAULT_FIELDS
        rows = sorted(
            (
                li
                for li in self.world.shops[shop.code].listings
                if li.sku_id is not None
                and SKU_ON_SHELF in statuses
                and (not ware_ids or li.item_id in ware_ids)
                and (not sku_ids or li.sku_id in sku_ids)
            ),
            key=lambda li: li.sku_id or 0,
        )
        chosen = rows[(page - 1) * page_size : page * page_size]
        return {
            "page": {
                "data": [_sku_info(li, wanted) for li in chosen],
                "pageNo": page,
                "pageSize": page_size,
                "totalItem": len(rows),
            }
        }

    # --- inspection -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "shops": sorted(shop.code for shop in self.gateway.shops.values()),
            "calls": dict(self.gateway.calls),
            "shipments": list(self.shipments),
            "stock_updates": list(self.stock_updates),
            "drifts": [asdict(d) for d in self.pager.drifts],
        }


def _business_params(params: Mapping[str, str]) -> dict[str, Any]:
    raw = params.get("360buy_param_json", "") or "{}"
    try:
        value = json.loads(raw)
    except ValueError:
        raise ApiError("invalid_param", "360buy_param_json", "not a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError("invalid_param", "360buy_param_json", "not a JSON object")
    return value


def _int_set(params: Mapping[str, Any], name: str) -> set[int]:
    raw = params.get(name)
    values = raw if isinstance(raw, list) else str(raw or "").split(",")
    try:
        return {int(str(v).strip()) for v in values if str(v).strip()}
    except ValueError:
        raise ApiError("invalid_param", name, f"{name} must list integers") from None


def _sku_info(listing: Listing, wanted: set[str] | frozenset[str]) -> dict[str, Any]:
    """One `searchSkuList` row: ids and counts as numbers, like the real answer."""
    info: dict[str, Any] = {
        "skuId": listing.sku_id,
        "wareId": listing.item_id,
        "outerId": listing.merchant_code,
        "status": SKU_ON_SHELF,
        "jdPrice": float(listing.price),
        "stockNum": listing.quantity,
        "skuName": f"{listing.title} {listing.properties.partition(':')[2]}".strip(),
        "wareTitle": listing.title,
    }
    return {k: v for k, v in info.items() if k in wanted or k == "skuId"}


def _api_result(success: bool, failure: Failure | None = None) -> dict[str, Any]:
    return {
        "success": success,
        "chineseErrCode": failure.zh if failure else "",
        "englishErrCode": failure.en if failure else "",
        "numberCode": failure.number_code if failure else 0,
    }


def _shipment_result(success: bool, failure: Failure | None = None) -> dict[str, Any]:
    return {
        "success": success,
        "chineseErrCode": failure.zh if failure else "",
        "englishErrCode": failure.en if failure else "",
        "errorCode": str(failure.number_code) if failure else "",
    }


def _failure(method: str, failure: Failure) -> dict[str, Any]:
    """The method's own result shape with success=false."""
    if method == SEARCH:
        return {
            "searchorderinfo_result": {
                "apiResult": _api_result(False, failure),
                "orderTotal": 0,
                "orderInfoList": [],
            }
        }
    if method == SHIPMENT:
        return {"sopjosshipment_result": _shipment_result(False, failure)}
    return {"success": False, **_api_result(False, failure)}


def _vender_id(shop: ShopCredentials) -> str:
    return str(sum(ord(c) for c in shop.code) * 1000 + 7)


def _order_info(state: OrderState, shop: ShopCredentials, wanted: set[str]) -> dict[str, Any]:
    receiver = state.receiver
    info: dict[str, Any] = {
        "orderId": state.id,
        "venderId": _vender_id(shop),
        "orderType": "22",
        "payType": "4",
        "orderTotalPrice": money(state.total_fee + state.post_fee),
        "orderSellerPrice": money(state.total_fee - state.discount),
        "orderPayment": money(state.payment),
        "freightPrice": money(state.post_fee),
        "sellerDiscount": money(state.discount),
        "orderState": state.status,
        "orderStateRemark": STATE_REMARKS.get(state.status, ""),
        "deliveryType": "任意时间",
        "invoiceInfo": "不需要开具发票",
        "orderRemark": state.buyer_message,
        "orderStartTime": cst_text(state.created),
        "orderEndTime": cst_text(state.end_time) if state.end_time else "0001-01-01 00:00:00",
        "paymentConfirmTime": cst_text(state.pay_time) if state.pay_time else "",
        "modified": cst_text(state.modified),
        "venderRemark": state.seller_memo,
        "waybill": state.waybill,
        "logisticsId": state.company_code,
        "consigneeInfo": {
            "fullname": receiver.name,
            "mobile": receiver.mobile,
            "telephone": "",
            "fullAddress": f"{receiver.province}{receiver.city}{receiver.district}{receiver.address}",
            "province": receiver.province,
            "city": receiver.city,
            "county": receiver.district,
            "town": "",
        },
        "itemInfoList": [
            {
                "skuId": str(line.sku_id),
                "outerSkuId": line.merchant_code,
                "wareId": str(line.item_id),
                "skuName": f"{line.title} {line.properties.partition(':')[2]}".strip(),
                "jdPrice": money(line.price),
                "itemTotal": str(line.qty),
                "giftPoint": "0",
                "productNo": "",
            }
            for line in state.lines
        ],
        "couponDetailList": [
            {"skuId": str(line.sku_id), "couponType": "30", "couponPrice": money(line.discount)}
            for line in state.lines
            if line.discount
        ],
    }
    if wanted:  # `optional_fields` names the fields to return; the id always comes back
        info = {k: v for k, v in info.items() if k in wanted or k == "orderId"}
    return info
