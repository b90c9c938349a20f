"""The simulated marketplaces' shared truth: catalogue, shops, listings, buyers and orders.

Everything random comes from one `random.Random(seed)` and every generated time from an explicit
`epoch`, so the same seed and epoch give the same world, order for order. The live generator
(`step`) uses the world's clock instead, so its orders arrive in real time.

Orders are immutable `OrderState` snapshots. Each change appends a new version with a `modified`
time strictly later than the previous one (CST, whole seconds), so a simulator can serve an older
version while the newest is not yet visible, and a test can compare the hub's store with
`World.orders()`, the newest version of each order.

Statuses are stored in each platform's own words (TOP `WAIT_SELLER_SEND_GOODS`, JD
`WAIT_SELLER_STOCK_OUT` …): the world knows which platform each shop belongs to.
"""

import bisect
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal

CST = timezone(timedelta(hours=8), "CST")
"""China Standard Time: the marketplaces' wall clock."""

Platform = Literal["tmall", "jd"]
MONEY = Decimal("0.01")


def to_cst(value: datetime) -> datetime:
    """`value` in CST, cut to whole seconds (the marketplaces' precision)."""
    return value.astimezone(CST).replace(microsecond=0)


def cst_text(value: datetime) -> str:
    return to_cst(value).strftime("%Y-%m-%d %H:%M:%S")


def money(value: Decimal) -> str:
    return str(value.quantize(MONEY))


def real_now() -> datetime:
    return datetime.now(CST)


# --- static vocabulary ----------------------------------------------------------------------

PRODUCTS = (
    ("保温杯", "500ml"),
    ("帆布包", "大号"),
    ("蓝牙耳机", "标准版"),
    ("数据线", "1m"),
    ("手机壳", "透明"),
    ("马克杯", "350ml"),
    ("笔记本", "A5"),
    ("折叠伞", "三折"),
    ("纯棉毛巾", "两条装"),
    ("拖鞋", "42码"),
    ("抱枕", "45cm"),
    ("护眼台灯", "充电款"),
    ("收纳盒", "三层"),
    ("运动水壶", "750ml"),
    ("纯棉T恤", "L码"),
    ("瑜伽垫", "8mm"),
)
COLOURS = ("黑色", "白色", "蓝色", "红色", "灰色")

# (province as the marketplaces write it, city, district); repeated entries weight the draw
# towards the east coast, where most parcels go.
ADDRESSES = (
    ("浙江省", "杭州市", "西湖区"),
    ("浙江省", "宁波市", "鄞州区"),
    ("江苏省", "南京市", "鼓楼区"),
    ("江苏省", "苏州市", "工业园区"),
    ("上海市", "上海市", "浦东新区"),
    ("上海市", "上海市", "徐汇区"),
    ("广东省", "广州市", "天河区"),
    ("广东省", "深圳市", "南山区"),
    ("北京市", "北京市", "朝阳区"),
    ("北京市", "北京市", "海淀区"),
    ("天津市", "天津市", "南开区"),
    ("河北省", "石家庄市", "长安区"),
    ("山东省", "青岛市", "市南区"),
    ("河南省", "郑州市", "金水区"),
    ("安徽省", "合肥市", "蜀山区"),
    ("福建省", "厦门市", "思明区"),
    ("江西省", "南昌市", "东湖区"),
    ("湖北省", "武汉市", "洪山区"),
    ("湖南省", "长沙市", "岳麓区"),
    ("四川省", "成都市", "武侯区"),
    ("重庆市", "重庆市", "渝中区"),
    ("陕西省", "西安市", "雁塔区"),
    ("辽宁省", "沈阳市", "和平区"),
    ("吉林省", "长春市", "朝阳区"),
    ("黑龙江省", "哈尔滨市", "南岗区"),
    ("山西省", "太原市", "小店区"),
    ("广西壮族自治区", "南宁市", "青秀区"),
    ("内蒙古自治区", "呼和浩特市", "新城区"),
    ("宁夏回族自治区", "银川市", "兴庆区"),
    ("新疆维吾尔自治区", "乌鲁木齐市", "天山区"),
    ("西藏自治区", "拉萨市", "城关区"),
    ("云南省", "昆明市", "五华区"),
    ("贵州省", "贵阳市", "南明区"),
    ("海南省", "海口市", "美兰区"),
    ("甘肃省", "兰州市", "城关区"),
    ("青海省", "西宁市", "城中区"),
)
STREETS = ("文一路", "中山路", "人民路", "解放路", "建设路", "学院路", "长江路", "和平路")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
REMARKS = (
    "请尽快发货",
    "不要放快递柜",
    "送人的，不要放发票",
    "周末送货",
    "请用顺丰",
    "包装结实一点",
)
MEMOS = ("已核对地址", "VIP客户", "赠品已备注", "优先发货")

CARRIERS_FOR_ELSEWHERE = (("SF", "467"), ("ZTO", "1499"), ("YTO", "463"))

STATUS: dict[Platform, dict[str, str]] = {
    # The lifecycle steps of the world, in each platform's own status words.
    "tmall": {
        "unpaid": "WAIT_BUYER_PAY",
        "paid": "WAIT_SELLER_SEND_GOODS",
        "shipped": "WAIT_BUYER_CONFIRM_GOODS",
        "finished": "TRADE_FINISHED",
        "closed_unpaid": "TRADE_CLOSED_BY_TAOBAO",
        "closed": "TRADE_CLOSED",
    },
    "jd": {
        "paid": "WAIT_SELLER_STOCK_OUT",
        "shipped": "WAIT_GOODS_RECEIVE_CONFIRM",
        "finished": "FINISHED_L",
        "locked": "LOCKED",
        "closed": "TRADE_CANCELED",
    },
}


class WorldError(Exception):
    """A change the world refuses (unknown order, order not in a shippable state …)."""


class AlreadyShipped(WorldError):
    """A ship request for an order that is already shipped."""


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """One master SKU of the merchant, identified by its merchant code (商家编码)."""

    merchant_code: str
    name: str
    barcode: str
    weight_kg: Decimal

    def as_tuple(self) -> tuple[str, str, str, Decimal]:
        return (self.merchant_code, self.name, self.barcode, self.weight_kg)


@dataclass
class Listing:
    """One sellable unit in a shop: a TOP sku (or an item without skus), a JD sku.

    `sku_id` is None for a TOP item without skus, whose merchant code is the item's `outer_iid`.
    `quantity` is the stock the shop shows; stock updates overwrite it.
    """

    shop: str
    item_id: int
    sku_id: int | None
    merchant_code: str
    title: str
    properties: str
    price: Decimal
    quantity: int


@dataclass(frozen=True)
class Receiver:
    name: str
    mobile: str
    province: str
    city: str
    district: str
    address: str
    zip: str


@dataclass(frozen=True)
class OrderLine:
    line_id: int
    item_id: int
    sku_id: int | None
    merchant_code: str
    title: str
    properties: str
    qty: int
    price: Decimal
    discount: Decimal
    refund_status: str = "NO_REFUND"

    @property
    def total_fee(self) -> Decimal:
        return self.price * self.qty

    @property
    def payment(self) -> Decimal:
        return self.total_fee - self.discount

    @property
    def refunded(self) -> bool:
        return self.refund_status == "SUCCESS"


@dataclass(frozen=True)
class OrderState:
    """One version of an order, as the marketplace holds it."""

    shop: str
    platform: Platform
    order_id: int
    status: str
    created: datetime
    modified: datetime
    pay_time: datetime | None
    consign_time: datetime | None
    end_time: datetime | None
    buyer_nick: str
    receiver: Receiver
    lines: tuple[OrderLine, ...]
    post_fee: Decimal
    buyer_message: str = ""
    seller_memo: str = ""
    company_code: str = ""
    """Carrier of the shipment: TOP `company_code`, JD `logiCoprId` (as text)."""
    waybill: str = ""
    shipped_by: Literal["", "hub", "elsewhere"] = ""

    @property
    def id(self) -> str:
        return str(self.order_id)

    @property
    def payment(self) -> Decimal:
        return sum((line.payment for line in self.lines), Decimal(0)) + self.post_fee

    @property
    def total_fee(self) -> Decimal:
        return sum((line.total_fee for line in self.lines), Decimal(0))

    @property
    def discount(self) -> Decimal:
        return sum((line.discount for line in self.lines), Decimal(0))

    def summary(self) -> dict[str, object]:
        """The wire-level facts a test compares with the hub's store."""
        return {
            "shop": self.shop,
            "id": self.id,
            "status": self.status,
            "modified": cst_text(self.modified),
            "waybill": self.waybill,
            "lines": [
                {
                    "line_id": str(line.line_id),
                    "merchant_code": line.merchant_code,
                    "qty": line.qty,
                    "refund_status": line.refund_status,
                }
                for line in self.lines
            ],
        }


@dataclass(frozen=True)
class Change:
    """One change of one order, in the order the world made them (the TMC feed reads these)."""

    seq: int
    shop: str
    order_id: int
    topic: str
    """TOP message topic suffix, e.g. `TradeBuyerPay` (JD ignores it)."""
    state: OrderState


@dataclass(frozen=True)
class StockUpdate:
    shop: str
    item_id: int
    sku_id: int | None
    merchant_code: str
    quantity: int
    method: str
    at: str


@dataclass
class Shop:
    code: str
    platform: Platform
    listings: list[Listing] = field(default_factory=list)


# --- the world ------------------------------------------------------------------------------


class World:
    """Deterministic model of shops, listings, buyers and orders with their lifecycle.

    `seed` drives every random choice, `epoch` anchors the generated backlog (default: the clock's
    current second), `clock` is what "now" means for live changes (default: the system clock, so
    that the hub's windows, computed from its own clock, meet the orders).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        epoch: datetime | None = None,
        clock: Callable[[], datetime] = real_now,
        shops: list[tuple[str, Platform]] | None = None,
        catalog_size: int | None = None,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.epoch = to_cst(epoch if epoch is not None else clock())
        self._rng = random.Random(seed)
        self._catalog = self._make_catalog(catalog_size)
        self.shops: dict[str, Shop] = {}
        self._versions: dict[tuple[str, int], list[OrderState]] = {}
        # Per shop, (modified, order id) of every version, kept sorted lazily: window queries
        # bisect it instead of scanning every order (200k-order benchmarks stay linear).
        self._by_modified: dict[str, list[tuple[datetime, int]]] = {}
        self._unsorted: set[str] = set()
        self.changes: list[Change] = []
        self.stock_updates: list[StockUpdate] = []
        self._next_tid = 3_800_000_000_000_000_000 + self._rng.randrange(10**12)
        self._next_jd = 230_000_000_000 + self._rng.randrange(10**8)
        self._next_line = 1
        for code, platform in shops or [("tmall-flagship", "tmall"), ("jd-flagship", "jd")]:
            self.add_shop(code, platform)

    # catalogue and shops

    def _make_catalog(self, size: int | None) -> list[CatalogEntry]:
        entries: list[CatalogEntry] = []
        for name, spec in PRODUCTS:
            for colour in self._rng.sample(COLOURS, self._rng.randint(1, 3)):
                number = len(entries) + 1
                entries.append(
                    CatalogEntry(
                        merchant_code=f"SKU-{number:04d}",
                        name=f"{name} {spec} {colour}",
                        barcode=_ean13(f"690{self._rng.randrange(10**9):09d}"),
                        weight_kg=Decimal(self._rng.randint(5, 250)) / 100,
                    )
                )
        return entries[:size] if size else entries

    def catalog(self) -> list[tuple[str, str, str, Decimal]]:
        """The master catalogue: (merchant_code, name, barcode, weight_kg) for `catalog import`."""
        return [entry.as_tuple() for entry in self._catalog]

    def catalog_entries(self) -> list[CatalogEntry]:
        return list(self._catalog)

    def add_shop(self, code: str, platform: Platform) -> Shop:
        shop = Shop(code, platform)
        self.shops[code] = shop
        item_base = (600_000_000_000 if platform == "tmall" else 10_000_000) + len(
            self.shops
        ) * 10**6
        sku_base = (5_000_000_000 if platform == "tmall" else 100_012_000_000) + len(
            self.shops
        ) * 10**6
        by_product: dict[str, list[CatalogEntry]] = {}
        for entry in self._catalog:
            by_product.setdefault(entry.name.rsplit(" ", 1)[0], []).append(entry)
        groups = [
            [(e.merchant_code, e.name, e.name.rsplit(" ", 1)[1]) for e in entries]
            for entries in by_product.values()
        ]
        # A small share of listings carry merchant codes the catalogue does not know.
        groups.append([(f"UNKNOWN-{len(self.shops)}01", "赠品 小样", "默认")])
        groups.append([(f"UNKNOWN-{len(self.shops)}02", "旧款 清仓", "蓝色")])
        for index, group in enumerate(groups):
            item_id = item_base + index + 1
            price = Decimal(self._rng.randrange(990, 29900, 100)) / 100
            # TOP items with one variant are often listed without skus (merchant code outer_iid).
            no_skus = platform == "tmall" and len(group) == 1 and self._rng.random() < 0.7
            for code_, name, colour in group:
                shop.listings.append(
                    Listing(
                        shop=code,
                        item_id=item_id,
                        sku_id=None if no_skus else sku_base + len(shop.listings) + 1,
                        merchant_code=code_,
                        title=name.rsplit(" ", 1)[0],
                        properties="" if no_skus else f"颜色分类:{colour}",
                        price=price,
                        quantity=self._rng.randint(0, 200),
                    )
                )
        return shop

    def listing(self, shop: str, item_id: int, sku_id: int | None = None) -> Listing | None:
        for listing in self.shops[shop].listings:
            if listing.item_id == item_id and (sku_id is None or listing.sku_id == sku_id):
                return listing
        return None

    def listing_by_sku(self, shop: str, sku_id: int) -> Listing | None:
        for listing in self.shops[shop].listings:
            if listing.sku_id == sku_id:
                return listing
        return None

    # reading

    def orders(self, shop: str | None = None) -> list[OrderState]:
        """The newest version of every order (of one shop), ordered by id: the truth."""
        return [
            versions[-1]
            for (code, _), versions in sorted(self._versions.items())
            if shop is None or code == shop
        ]

    def order(self, shop: str, order_id: int) -> OrderState:
        try:
            return self._versions[(shop, order_id)][-1]
        except KeyError:
            raise WorldError(f"no order {order_id} in shop {shop}") from None

    def touched(self, shop: str, start: datetime, end: datetime) -> list[list[OrderState]]:
        """Version histories of the orders with a version modified in [start, end]: the only
        orders whose visible version can fall in that window."""
        index = self._by_modified.get(shop, [])
        if shop in self._unsorted:
            index.sort()
            self._unsorted.discard(shop)
        low = bisect.bisect_left(index, (start, -1))
        high = bisect.bisect_right(index, (end, sys.maxsize))
        ids = sorted({order_id for _, order_id in index[low:high]})
        return [self._versions[(shop, order_id)] for order_id in ids]

    def versions(self, shop: str) -> Iterator[list[OrderState]]:
        """Every order's version history, oldest version first."""
        for (code, _), versions in self._versions.items():
            if code == shop:
                yield versions

    # changes

    def _record(self, state: OrderState, topic: str) -> OrderState:
        self._versions.setdefault((state.shop, state.order_id), []).append(state)
        index = self._by_modified.setdefault(state.shop, [])
        if index and index[-1][0] > state.modified:
            self._unsorted.add(state.shop)
        index.append((state.modified, state.order_id))
        self.changes.append(Change(len(self.changes) + 1, state.shop, state.order_id, topic, state))
        return state

    def _change(
        self, shop: str, order_id: int, at: datetime | None, topic: str, **fields: object
    ) -> OrderState:
        current = self.order(shop, order_id)
        when = to_cst(at if at is not None else self.clock())
        # Every change bumps `modified`, strictly: a hub comparing versions must see it as newer.
        modified = max(when, current.modified + timedelta(seconds=1))
        return self._record(replace(current, modified=modified, **fields), topic)  # type: ignore[arg-type]

    def _status(self, shop: str, step: str) -> str:
        # "" for a step the platform does not have (JD has no unpaid orders), which never matches.
        return STATUS[self.shops[shop].platform].get(step, "")

    def create_order(
        self, shop: str, at: datetime | None = None, *, paid: bool = True
    ) -> OrderState:
        """A new order of random lines and buyer; paid at `at` unless `paid` is False (TOP only)."""
        rng = self._rng
        when = to_cst(at if at is not None else self.clock())
        platform = self.shops[shop].platform
        if platform == "tmall":
            order_id = self._next_tid
            self._next_tid += rng.randrange(1, 10**6)
        else:
            order_id = self._next_jd
            self._next_jd += rng.randrange(1, 1000)
            paid = True  # JD's order search lists paid orders only; the world starts them there
        created = when - timedelta(seconds=rng.randrange(20, 600)) if paid else when
        province, city, district = rng.choice(ADDRESSES)
        name = rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, rng.randint(1, 2)))
        state = OrderState(
            shop=shop,
            platform=platform,
            order_id=order_id,
            status=self._status(shop, "paid" if paid else "unpaid"),
            created=created,
            modified=when,
            pay_time=when if paid else None,
            consign_time=None,
            end_time=None,
            buyer_nick=f"tb{rng.randrange(10**8):08d}"
            if platform == "tmall"
            else f"jd_{rng.randrange(10**8):08d}",
            receiver=Receiver(
                name=name,
                mobile=f"1{rng.choice('3578')}{rng.randrange(10**9):09d}",
                province=province,
                city=city,
                district=district,
                address=f"{rng.choice(STREETS)}{rng.randint(1, 999)}号{rng.randint(1, 30)}幢{rng.randint(101, 2808)}室",
                zip=f"{rng.randrange(100000, 860000)}",
            ),
            lines=self._lines(shop),
            post_fee=Decimal(rng.choice((0, 0, 0, 6, 10))),
            buyer_message=rng.choice(REMARKS) if rng.random() < 0.15 else "",
        )
        return self._record(state, "TradeBuyerPay" if paid else "TradeCreate")

    def _lines(self, shop: str) -> tuple[OrderLine, ...]:
        rng = self._rng
        listings = self.shops[shop].listings
        known = [li for li in listings if not li.merchant_code.startswith("UNKNOWN-")]
        unknown = [li for li in listings if li.merchant_code.startswith("UNKNOWN-")]
        count = rng.choices((1, 2, 3, 4), weights=(60, 25, 10, 5))[0]
        picked: list[Listing] = []
        for _ in range(count):
            pool = unknown if unknown and rng.random() < 0.03 else known
            choice = rng.choice(pool)
            if choice not in picked:
                picked.append(choice)
        lines = []
        for listing in picked:
            qty = rng.choices((1, 2, 3), weights=(80, 15, 5))[0]
            discount = (
                Decimal(rng.choice((0, 0, 0, 5, 10))).min(listing.price * qty / 2).quantize(MONEY)
            )
            lines.append(
                OrderLine(
                    line_id=self._line_id(shop),
                    item_id=listing.item_id,
                    sku_id=listing.sku_id,
                    merchant_code=listing.merchant_code,
                    title=listing.title,
                    properties=listing.properties,
                    qty=qty,
                    price=listing.price,
                    discount=discount,
                )
            )
        return tuple(lines)

    def _line_id(self, shop: str) -> int:
        self._next_line += 1
        if self.shops[shop].platform == "tmall":
            return 3_800_100_000_000_000_000 + self._next_line * 7
        return self._next_line

    def pay(self, shop: str, order_id: int, at: datetime | None = None) -> OrderState:
        current = self.order(shop, order_id)
        if current.status != self._status(shop, "unpaid"):
            raise WorldError(f"order {order_id} is not waiting for payment")
        when = to_cst(at if at is not None else self.clock())
        return self._change(
            shop, order_id, at, "TradeBuyerPay", status=self._status(shop, "paid"), pay_time=when
        )

    def close_unpaid(self, shop: str, order_id: int, at: datetime | None = None) -> OrderState:
        current = self.order(shop, order_id)
        if current.status != self._status(shop, "unpaid"):
            raise WorldError(f"order {order_id} is not waiting for payment")
        when = to_cst(at if at is not None else self.clock())
        return self._change(
            shop,
            order_id,
            at,
            "TradeClose",
            status=self._status(shop, "closed_unpaid"),
            end_time=when,
        )

    def refund_line(
        self, shop: str, order_id: int, line_id: int, at: datetime | None = None
    ) -> OrderState:
        """A refund of one line succeeds (before or after shipment).

        TOP: the line's `refund_status` becomes `SUCCESS`; when every line is refunded the trade
        becomes `TRADE_CLOSED`. JD has no line refunds: the whole order is cancelled
        (`TRADE_CANCELED`) if it was not shipped, and a refund after shipment leaves it as is.
        """
        current = self.order(shop, order_id)
        platform = self.shops[shop].platform
        if platform == "jd":
            if current.status == self._status(shop, "shipped"):
                return current
            return self.cancel(shop, order_id, at)
        if not any(line.line_id == line_id for line in current.lines):
            raise WorldError(f"order {order_id} has no line {line_id}")
        lines = tuple(
            replace(line, refund_status="SUCCESS") if line.line_id == line_id else line
            for line in current.lines
        )
        if lines == current.lines:
            return current  # already refunded: nothing changes, the version stays
        fields: dict[str, object] = {"lines": lines}
        topic = "TradePartlyRefund"
        if all(line.refunded for line in lines):
            fields["status"] = self._status(shop, "closed")
            fields["end_time"] = to_cst(at if at is not None else self.clock())
            topic = "TradeClose"
        return self._change(shop, order_id, at, topic, **fields)

    def lock(self, shop: str, order_id: int, at: datetime | None = None) -> OrderState:
        """JD: the buyer asked to cancel; the order is `LOCKED` until the seller decides."""
        return self._change(shop, order_id, at, "TradeChanged", status=self._status(shop, "locked"))

    def cancel(self, shop: str, order_id: int, at: datetime | None = None) -> OrderState:
        """The whole order is refunded before shipment (TOP `TRADE_CLOSED`, JD `TRADE_CANCELED`)."""
        current = self.order(shop, order_id)
        when = to_cst(at if at is not None else self.clock())
        lines = tuple(replace(line, refund_status="SUCCESS") for line in current.lines)
        if self.shops[shop].platform == "jd":
            lines = current.lines
        return self._change(
            shop,
            order_id,
            at,
            "TradeClose",
            status=self._status(shop, "closed"),
            end_time=when,
            lines=lines,
        )

    def ship(
        self,
        shop: str,
        order_id: int,
        company_code: str,
        waybill: str,
        at: datetime | None = None,
        *,
        by: Literal["hub", "elsewhere"] = "hub",
    ) -> OrderState:
        """The seller ships the order; a second ship raises `AlreadyShipped`."""
        current = self.order(shop, order_id)
        if current.consign_time is not None:
            raise AlreadyShipped(f"order {order_id} is already shipped")
        if current.status != self._status(shop, "paid"):
            raise WorldError(f"order {order_id} is {current.status}, it cannot be shipped")
        when = to_cst(at if at is not None else self.clock())
        return self._change(
            shop,
            order_id,
            at,
            "TradeSellerShip",
            status=self._status(shop, "shipped"),
            consign_time=max(when, current.modified + timedelta(seconds=1)),
            company_code=company_code,
            waybill=waybill,
            shipped_by=by,
        )

    def finish(self, shop: str, order_id: int, at: datetime | None = None) -> OrderState:
        when = to_cst(at if at is not None else self.clock())
        return self._change(
            shop, order_id, at, "TradeSuccess", status=self._status(shop, "finished"), end_time=when
        )

    def set_memo(
        self, shop: str, order_id: int, memo: str, at: datetime | None = None
    ) -> OrderState:
        """The seller edits the memo (TOP `seller_memo`, JD `venderRemark`): a content change."""
        return self._change(shop, order_id, at, "TradeMemoModified", seller_memo=memo)

    def set_stock(self, listing: Listing, quantity: int, method: str) -> None:
        listing.quantity = quantity
        self.stock_updates.append(
            StockUpdate(
                shop=listing.shop,
                item_id=listing.item_id,
                sku_id=listing.sku_id,
                merchant_code=listing.merchant_code,
                quantity=quantity,
                method=method,
                at=cst_text(self.clock()),
            )
        )

    # generators

    def generate_backlog(self, count: int, days: float) -> None:
        """`count` orders created over the `days` before the epoch, each with a realistic history.

        Lifecycle events that would fall after the epoch are left for the future, so the backlog
        holds unpaid, paid, refunded, closed and already-shipped orders side by side.
        """
        rng = self._rng
        codes = sorted(self.shops)
        span = int(days * 86400)
        starts = sorted(
            self.epoch - timedelta(seconds=rng.randrange(60, max(span, 61))) for _ in range(count)
        )
        for index, start in enumerate(starts):
            shop = codes[index % len(codes)]
            self._backlog_order(shop, start)

    def _backlog_order(self, shop: str, start: datetime) -> None:
        rng = self._rng
        epoch = self.epoch
        platform = self.shops[shop].platform
        unpaid = platform == "tmall" and rng.random() < 0.12
        order = self.create_order(shop, start, paid=not unpaid)
        oid = order.order_id
        t = start

        def later(low: int, high: int) -> datetime | None:
            nonlocal t
            t = t + timedelta(seconds=rng.randrange(low, high))
            return t if t <= epoch else None

        if unpaid:
            if epoch - start < timedelta(days=1) and rng.random() < 0.3:
                return  # still waiting for the buyer to pay (TOP closes it after a day)
            when = later(600, 3600)
            if when is not None:
                if rng.random() < 0.5:
                    self.close_unpaid(shop, oid, when)
                    return
                self.pay(shop, oid, when)
            else:
                return
        if rng.random() < 0.06 and (when := later(300, 7200)) is not None:
            self.set_memo(shop, oid, rng.choice(MEMOS), when)
        roll = rng.random()
        if roll < 0.10:
            if platform == "jd" and (when := later(60, 3600)) is not None:
                self.lock(shop, oid, when)
                if (when := later(60, 3600)) is not None:
                    self.cancel(shop, oid, when)
            elif (when := later(60, 3600)) is not None:
                self.refund_line(shop, oid, rng.choice(order.lines).line_id, when)
        elif roll < 0.22 and (when := later(1800, 86400)) is not None:
            company, jd_id = rng.choice(CARRIERS_FOR_ELSEWHERE)
            code = company if platform == "tmall" else jd_id
            self.ship(
                shop, oid, code, f"{company}{rng.randrange(10**11):011d}", when, by="elsewhere"
            )
            after = rng.random()
            if after < 0.25 and (when := later(3600, 86400)) is not None:
                self.refund_line(shop, oid, rng.choice(order.lines).line_id, when)
            elif after < 0.6 and (when := later(86400, 4 * 86400)) is not None:
                self.finish(shop, oid, when)

    def step(self, at: datetime | None = None) -> OrderState:
        """One live event at `at` (default now): mostly a new order, else a lifecycle step."""
        rng = self._rng
        codes = sorted(self.shops)
        shop = rng.choice(codes)
        if rng.random() < 0.75:
            paid = rng.random() < 0.85
            return self.create_order(shop, at, paid=paid)
        candidates = [
            versions[-1]
            for versions in self.versions(shop)
            if versions[-1].status
            in (
                self._status(shop, "paid"),
                STATUS["tmall"]["unpaid"],
                self._status(shop, "shipped"),
            )
        ]
        if not candidates:
            return self.create_order(shop, at)
        order = rng.choice(candidates[-50:])
        if order.status == STATUS["tmall"]["unpaid"]:
            if rng.random() < 0.7:
                return self.pay(shop, order.order_id, at)
            return self.close_unpaid(shop, order.order_id, at)
        if order.status == self._status(shop, "shipped"):
            return self.finish(shop, order.order_id, at)
        if rng.random() < 0.5:
            return self.refund_line(shop, order.order_id, rng.choice(order.lines).line_id, at)
        return self.set_memo(shop, order.order_id, rng.choice(MEMOS), at)


def _ean13(first12: str) -> str:
    digits = [int(c) for c in first12]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return first12 + str((10 - total % 10) % 10)
