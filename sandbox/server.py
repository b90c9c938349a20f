"""One loopback HTTP server hosting every simulator, started and stopped in-process.

```python
async with Sandbox(seed=7, profile="calm", rate=2.0) as sandbox:
    shop = sandbox.shops[0]          # code, platform, api_url, app_key, app_secret, …
    toml = sandbox.hub_config_toml("sqlite:///demo.db", "127.0.0.1", 8780)
```

Routes: TOP `POST /router/rest`, JD `GET|POST /routerjson`, Qimen `POST /router/qimen/service`,
Kuaidi100 `POST /poll` and `POST /poll/query.do`, K3Cloud `POST /k3cloud/<Service>.common.kdsvc`,
and `GET /_sandbox/state` (what every simulator received, as JSON). Credentials, stock, orders and
purchase orders all derive from `seed`.
"""

import asyncio
import contextlib
import json
import math
import random
from collections import Counter
from collections.abc import Generator
from dataclasses import asdict, dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.faults import PROFILES, FaultInjector, FaultProfile
from sandbox.gateway import ShopCredentials
from sandbox.jd import JdSim
from sandbox.k3cloud import K3CloudSim, K3Credentials
from sandbox.kuaidi100 import Kuaidi100Sim
from sandbox.qimen import QimenWms, WarehouseSpec
from sandbox.signing import TOP_SIGN_METHODS
from sandbox.top import TopSim
from sandbox.world import Platform, World


@dataclass(frozen=True)
class Carrier:
    code: str
    """Qimen `logisticsCode` / TOP `company_code`."""
    name: str
    jd_id: int
    """JD `logiCoprId`."""
    kuaidi100_code: str


CARRIERS = (
    Carrier("SF", "顺丰速运", 467, "shunfeng"),
    Carrier("ZTO", "中通快递", 1499, "zhongtong"),
    Carrier("YTO", "圆通速递", 463, "yuantong"),
    Carrier("STO", "申通快递", 470, "shentong"),
    Carrier("YUNDA", "韵达快递", 1327, "yunda"),
    Carrier("EMS", "EMS", 465, "ems"),
)

# (code, provinces served in the short form routing uses, default carrier, carriers); together the
# first two cover every province the world ships to.
WAREHOUSE_TEMPLATES = (
    (
        "WH-EAST",
        ["上海", "江苏", "浙江", "安徽", "福建", "江西", "山东", "广东", "广西", "海南", "湖北", "湖南", "河南"],
        "ZTO",
        ["ZTO", "SF", "YTO"],
    ),
    (
        "WH-NORTH",
        ["北京", "天津", "河北", "山西", "内蒙古", "辽宁", "吉林", "黑龙江", "陕西", "甘肃", "青海", "宁夏",
         "新疆", "四川", "重庆", "贵州", "云南", "西藏"],
        "SF",
        ["SF", "ZTO"],
    ),
    ("WH-SOUTH", ["广东", "广西", "海南", "福建", "云南", "贵州"], "YTO", ["YTO", "SF", "ZTO"]),
)  # fmt: skip


@dataclass(frozen=True)
class ShopInfo:
    """A simulated shop as the hub's `[[shops]]` entry needs it."""

    code: str
    platform: Platform
    api_url: str
    app_key: str
    app_secret: str
    access_token: str
    sign_method: str


@dataclass(frozen=True)
class WarehouseInfo:
    """A simulated warehouse as the hub's `[[warehouses]]` entry needs it."""

    code: str
    api_url: str
    app_key: str
    app_secret: str
    customer_id: str
    provinces: list[str]
    priority: int
    default_carrier: str
    carriers: list[str]


@dataclass(frozen=True)
class ErpInfo:
    """The simulated K3Cloud data center as the hub's `[erp]` section needs it."""

    api_url: str
    acct_id: str
    username: str
    app_id: str
    app_secret: str
    lcid: int
    org_number: str


ERP_ORG = "100"
SUPPLIERS = ("VEN00001", "VEN00002", "VEN00003", "VEN00004")


def customer_number(shop: str) -> str:
    """The ERP customer number the sandbox gives a shop's sales documents."""
    return f"CUST-{shop.upper()}"


def stock_number(warehouse: str) -> str:
    """The ERP stock number the sandbox gives a warehouse."""
    return f"CK-{warehouse}"


@dataclass(frozen=True)
class Kuaidi100Info:
    customer: str
    key: str
    salt: str
    api_url: str


def resolve_profile(profile: str | FaultProfile) -> FaultProfile:
    if isinstance(profile, FaultProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown fault profile {profile!r}; choose from {sorted(PROFILES)}"
        ) from None


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the host process decides what SIGINT means."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Sandbox:
    """Every simulator on one uvicorn server on loopback (port 0 = any free port).

    `hub_url` is where the WMS and courier simulators send callbacks; it may be set after
    construction, before or after `start()`. `rate` is live orders (and order changes) per second
    across all shops, 0 for none. Credentials are deterministic per `seed`; `base_url` and every
    `api_url` are known once started.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        profile: str | FaultProfile = "calm",
        rate: float = 0.0,
        backlog: int = 200,
        backlog_days: float = 2.0,
        hub_url: str | None = None,
        tmall_shops: int = 1,
        jd_shops: int = 1,
        warehouses: int = 2,
        host: str = "127.0.0.1",
        port: int = 0,
        epoch: datetime | None = None,
        ship_delay: float = 2.0,
        push_delay: float = 5.0,
        purchase_orders: int = 4,
        purchase_every: float | None = None,
    ) -> None:
        self.seed = seed
        self.profile = resolve_profile(profile)
        self.rate = rate
        self.backlog_days = backlog_days
        self.hub_url = hub_url
        self.host = host
        self.port = port
        self._server: _EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._live_task: asyncio.Task[None] | None = None
        self._live_rng = random.Random(f"live:{seed}")
        creds = random.Random(f"credentials:{seed}")
        self._injectors: list[FaultInjector] = []

        shops: list[tuple[str, Platform]] = [
            ("tmall-flagship" if i == 0 else f"tmall-{i + 1}", "tmall") for i in range(tmall_shops)
        ] + [("jd-flagship" if i == 0 else f"jd-{i + 1}", "jd") for i in range(jd_shops)]
        self.world = World(seed, epoch=epoch, shops=shops)
        self.world.generate_backlog(backlog, backlog_days)
        self.credentials = [
            _shop_credentials(code, platform, i, creds) for i, (code, platform) in enumerate(shops)
        ]
        self.admin_token = f"sandbox-admin-{creds.getrandbits(96):024x}"

        self.top = TopSim(
            self.world,
            [c for c in self.credentials if c.platform == "tmall"],
            self._injector(1),
            seed,
        )
        self.jd = JdSim(
            self.world,
            [c for c in self.credentials if c.platform == "jd"],
            self._injector(2),
            seed,
        )
        self.warehouse_specs = [_warehouse_spec(i, self.world, creds) for i in range(warehouses)]
        self.qimen = QimenWms(
            self.warehouse_specs,
            self._injector(3),
            ship_delay,
            lambda: self.hub_url,
        )
        self.kuaidi100_customer = f"{creds.getrandbits(64):016X}"
        self.kuaidi100_key = "".join(
            creds.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", k=16)
        )
        self.kuaidi100_salt = f"{creds.getrandbits(64):016x}"
        self.kuaidi100 = Kuaidi100Sim(
            self.kuaidi100_customer,
            self.kuaidi100_key,
            self._injector(4),
            push_delay,
        )
        # Its own credential dice, so adding the ERP shifted no other simulator's credentials.
        erp_creds = random.Random(f"k3cloud-credentials:{seed}")
        self.erp_credentials = K3Credentials(
            acct_id=f"{erp_creds.getrandbits(48):012x}",
            username="ecomhub",
            app_id=f"{erp_creds.randrange(10**5, 10**6)}_{erp_creds.getrandbits(64):016x}",
            app_secret=f"{erp_creds.getrandbits(128):032x}",
        )
        self.k3cloud = K3CloudSim(
            self.erp_credentials,
            self._injector(5),
            org=ERP_ORG,
            materials=[code for code, *_ in self.world.catalog()],
            stocks=[stock_number(spec.code) for spec in self.warehouse_specs],
            customers=[customer_number(code) for code, _ in shops],
            suppliers=SUPPLIERS,
            purchase_every=purchase_every,
        )
        self.k3cloud.seed_purchase_orders(purchase_orders)
        routes: list[BaseRoute] = [
            *self.top.routes(),
            *self.jd.routes(),
            *self.qimen.routes(),
            *self.kuaidi100.routes(),
            *self.k3cloud.routes(),
            Route("/_sandbox/state", self._state_endpoint, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = _EmbeddedServer(config)
        self._serve_task = asyncio.create_task(server.serve(), name="sandbox-http")
        while not server.started:
            if self._serve_task.done():  # e.g. the port is taken: uvicorn gave up
                self._serve_task.result()
                raise RuntimeError(f"sandbox server did not start on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        self._server = server
        self.port = server.servers[0].sockets[0].getsockname()[1]
        await self.qimen.start()
        await self.kuaidi100.start()
        await self.k3cloud.start()
        if self.rate > 0:
            self._live_task = asyncio.create_task(self._live(), name="sandbox-live-orders")

    async def stop_live(self) -> None:
        """Stop generating live orders: the world holds still (a test then compares the truth)."""
        if self._live_task is not None:
            task, self._live_task = self._live_task, None
            task.cancel()
            await asyncio.wait([task])  # lets a cancel of the caller through, unlike `await task`
            if not task.cancelled() and (crash := task.exception()) is not None:
                raise crash

    async def stop(self) -> None:
        try:
            await self.stop_live()  # re-raises a crash of the live generator, after cleanup
        finally:
            await self._stop_servers()

    async def _stop_servers(self) -> None:
        await self.k3cloud.stop()
        await self.kuaidi100.stop()
        await self.qimen.stop()
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            await self._serve_task
        self._server = None
        self._serve_task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _live(self) -> None:
        while True:
            # Poisson arrivals: exponential gaps with mean 1/rate.
            await asyncio.sleep(self._live_rng.expovariate(self.rate))
            self.world.step()

    def set_faults(self, profile: str | FaultProfile) -> None:
        """Switch every simulator to another fault profile, e.g. to turn one knob on in a test."""
        self.profile = resolve_profile(profile)
        for injector in self._injectors:
            injector.profile = self.profile

    def _injector(self, index: int) -> FaultInjector:
        # One seeded injector per simulator, so one simulator's calls do not shift another's dice.
        injector = FaultInjector(self.profile, self.seed * 10 + index)
        self._injectors.append(injector)
        return injector

    # --- what a hub needs -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not started; its port is not known yet")
        return f"http://{self.host}:{self.port}"

    @property
    def shops(self) -> list[ShopInfo]:
        paths = {"tmall": self.top.path, "jd": self.jd.path}
        return [
            ShopInfo(
                code=c.code,
                platform=c.platform,
                api_url=self.base_url + paths[c.platform],
                app_key=c.app_key,
                app_secret=c.app_secret,
                access_token=c.access_token,
                sign_method=c.sign_method,
            )
            for c in self.credentials
        ]

    def shop(self, code: str) -> ShopInfo:
        return next(s for s in self.shops if s.code == code)

    @property
    def warehouses(self) -> list[WarehouseInfo]:
        return [
            WarehouseInfo(
                code=spec.code,
                api_url=self.base_url + "/router/qimen/service",
                app_key=spec.app_key,
                app_secret=spec.app_secret,
                customer_id=spec.customer_id,
                provinces=list(_template(index)[1]),
                priority=index + 1,
                default_carrier=_template(index)[2],
                carriers=list(spec.carriers),
            )
            for index, spec in enumerate(self.warehouse_specs)
        ]

    @property
    def carriers(self) -> list[Carrier]:
        return list(CARRIERS)

    @property
    def kuaidi100_info(self) -> Kuaidi100Info:
        return Kuaidi100Info(
            customer=self.kuaidi100_customer,
            key=self.kuaidi100_key,
            salt=self.kuaidi100_salt,
            api_url=self.base_url,
        )

    @property
    def erp_info(self) -> ErpInfo:
        c = self.erp_credentials
        return ErpInfo(
            api_url=self.base_url + "/k3cloud/",
            acct_id=c.acct_id,
            username=c.username,
            app_id=c.app_id,
            app_secret=c.app_secret,
            lcid=c.lcid,
            org_number=ERP_ORG,
        )

    def hub_config_toml(self, database_url: str, hub_host: str, hub_port: int) -> str:
        """A complete `ecomhub.toml` (DESIGN.md shape) pointing the hub at this sandbox."""
        lag = max(5, math.ceil(self.profile.visibility_latency) + 2)
        lookback_hours = math.ceil(self.backlog_days * 24) + 1
        out = [
            f"# ecomhub.toml for the sandbox at {self.base_url} (seed {self.seed})",
            f"database_url = {_q(database_url)}",
            "",
            "[server]",
            f"host = {_q(hub_host)}",
            f"port = {hub_port}",
            f"admin_token = {_q(self.admin_token)}",
            "",
            "[daemon]  # the sandbox answers in milliseconds: keep the loops short",
            'route_interval = "2s"',
            'stock_interval = "30s"',
            'tmc_interval = "2s"',
            'lease_ttl = "10s"',
            'grace_period = "5s"',
        ]
        for shop in self.shops:
            out += [
                "",
                "[[shops]]",
                f"code = {_q(shop.code)}",
                f"platform = {_q(shop.platform)}",
                f"api_url = {_q(shop.api_url)}",
                f"app_key = {_q(shop.app_key)}",
                f"app_secret = {_q(shop.app_secret)}",
                f"access_token = {_q(shop.access_token)}",
                f"sign_method = {_q(shop.sign_method)}",
                'poll_interval = "5s"',
                f'initial_lookback = "{lookback_hours}h"  # covers the generated backlog',
                f'lag = "{lag}s"  # the sandbox shows changes within seconds, not minutes',
                f"customer_number = {_q(customer_number(shop.code))}",
            ]
        for wh in self.warehouses:
            out += [
                "",
                "[[warehouses]]",
                f"code = {_q(wh.code)}",
                'wms = "qimen"',
                f"api_url = {_q(wh.api_url)}",
                f"app_key = {_q(wh.app_key)}",
                f"app_secret = {_q(wh.app_secret)}",
                f"customer_id = {_q(wh.customer_id)}",
                f"provinces = [{', '.join(_q(p) for p in wh.provinces)}]",
                f"priority = {wh.priority}",
                f"default_carrier = {_q(wh.default_carrier)}",
                f"stock_number = {_q(stock_number(wh.code))}",
                "",
                "[warehouses.sender]",
                f"name = {_q(wh.code + ' 发货仓')}",
                'mobile = "13800000000"',
                f"province = {_q(wh.provinces[0] if wh.provinces else '浙江')}",
                'city = "杭州市"',
                f"detail = {_q(wh.code + ' 物流园 1 号')}",
            ]
        for carrier in self.carriers:
            out += [
                "",
                "[[carriers]]",
                f"code = {_q(carrier.code)}",
                f"name = {_q(carrier.name)}",
                f"jd_id = {carrier.jd_id}",
                f"kuaidi100_code = {_q(carrier.kuaidi100_code)}",
            ]
        k100 = self.kuaidi100_info
        out += [
            "",
            "[kuaidi100]",
            f"customer = {_q(k100.customer)}",
            f"key = {_q(k100.key)}",
            f"salt = {_q(k100.salt)}",
            f"api_url = {_q(k100.api_url)}",
        ]
        erp = self.erp_info
        out += [
            "",
            "[erp]",
            'kind = "k3cloud"',
            f"api_url = {_q(erp.api_url)}",
            f"acct_id = {_q(erp.acct_id)}",
            f"username = {_q(erp.username)}",
            f"app_id = {_q(erp.app_id)}",
            f"app_secret = {_q(erp.app_secret)}",
            f"lcid = {erp.lcid}",
            f"org_number = {_q(erp.org_number)}",
            'poll_interval = "5s"',
        ]
        if self.warehouses:
            out.append(f"inbound_warehouse = {_q(self.warehouses[0].code)}")
        return "\n".join(out) + "\n"

    # --- inspection -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What every simulator received, plus the world's order counts (JSON-ready)."""
        statuses: dict[str, Counter[str]] = {}
        for order in self.world.orders():
            statuses.setdefault(order.shop, Counter())[order.status] += 1
        return {
            "seed": self.seed,
            "profile": asdict(self.profile),
            "hub_url": self.hub_url,
            "world": {
                "epoch": str(self.world.epoch),
                "orders": {shop: dict(counts) for shop, counts in statuses.items()},
                "changes": len(self.world.changes),
            },
            "top": self.top.snapshot(),
            "jd": self.jd.snapshot(),
            "qimen": self.qimen.snapshot(),
            "kuaidi100": self.kuaidi100.snapshot(),
            "k3cloud": self.k3cloud.snapshot(),
        }

    async def _state_endpoint(self, request: Request) -> Response:
        body = json.dumps(self.state(), ensure_ascii=False, default=str)
        return Response(body, media_type="application/json")


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _template(index: int) -> tuple[str, list[str], str, list[str]]:
    if index < len(WAREHOUSE_TEMPLATES):
        return WAREHOUSE_TEMPLATES[index]
    return (f"WH-{index + 1}", [], "ZTO", ["ZTO", "SF"])  # serves anywhere, lowest priority


def _shop_credentials(
    code: str, platform: Platform, index: int, rng: random.Random
) -> ShopCredentials:
    if platform == "tmall":
        return ShopCredentials(
            code=code,
            platform=platform,
            app_key=str(rng.randrange(10**7, 10**8)),
            app_secret=f"{rng.getrandbits(128):032x}",
            access_token=f"6100{rng.getrandbits(224):056x}",
            # Spread the three TOP sign methods over the shops so a hub exercises them all.
            sign_method=TOP_SIGN_METHODS[index % len(TOP_SIGN_METHODS)],
        )
    return ShopCredentials(
        code=code,
        platform=platform,
        app_key=f"{rng.getrandbits(128):032X}",
        app_secret=f"{rng.getrandbits(128):032x}",
        access_token=f"{rng.getrandbits(128):032x}",
        sign_method="md5",
    )


def _warehouse_spec(index: int, world: World, rng: random.Random) -> WarehouseSpec:
    code, _, _, carriers = _template(index)
    # Every catalogue item is known to every warehouse; about one in eight is out of stock.
    stock = {
        merchant_code: 0 if rng.random() < 0.12 else rng.randint(5, 300)
        for merchant_code, *_ in world.catalog()
    }
    return WarehouseSpec(
        code=code,
        app_key=str(rng.randrange(10**7, 10**8)),
        app_secret=f"{rng.getrandbits(128):032x}",
        customer_id=f"ECOMHUB-OWNER-{index + 1:02d}",
        stock=stock,
        carriers=carriers,
    )
