"""Which connector serves which config value: `sync/` and `api/` build connectors only through here.

`MARKETPLACES` is keyed by `ShopConfig.platform`, `WMSES` and `WMS_CALLBACKS` by
`WarehouseConfig.wms`; a new marketplace or WMS is one module and one entry. Courier tracking has
one service (Kuaidi100, `[kuaidi100]`): `tracker_for` / `tracking_callbacks_for`. `ERPS` is keyed by
`ErpConfig.kind` (`[erp]`): `erp_for`.
"""

from typing import Protocol, TypeVar

import httpx

from config.settings import ErpConfig, Kuaidi100Config, Settings, ShopConfig, WarehouseConfig
from connectors.base import Erp, Marketplace, Tracker, TrackingCallbacks, Wms, WmsCallbacks
from connectors.http import RetryPolicy
from connectors.jd import JdMarketplace
from connectors.k3cloud import K3CloudErp
from connectors.kuaidi100 import Kuaidi100Callbacks, Kuaidi100Tracker
from connectors.qimen import QimenCallbacks, QimenWms
from connectors.tmall import TmallMarketplace
from models.clock import Clock, SystemClock

T = TypeVar("T")


class MarketplaceFactory(Protocol):
    def __call__(
        self,
        shop: ShopConfig,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Marketplace: ...


MARKETPLACES: dict[str, MarketplaceFactory] = {
    "tmall": TmallMarketplace,
    "jd": JdMarketplace,
}


def marketplace_for(
    shop: ShopConfig,
    *,
    clock: Clock | None = None,
    policy: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Marketplace:
    """A connector for `shop` (one instance per shop; close it with `aclose()`).

    `transport` replaces the network (tests, the sandbox); `policy` the transport retry policy."""
    try:
        factory = MARKETPLACES[shop.platform]
    except KeyError:
        raise ValueError(
            f"shops[{shop.code}].platform: no connector for {shop.platform!r} "
            f"(known: {', '.join(sorted(MARKETPLACES))})"
        ) from None
    return factory(shop, clock=clock or SystemClock(), policy=policy, transport=transport)


class WmsFactory(Protocol):
    def __call__(
        self,
        warehouse: WarehouseConfig,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Wms: ...


class WmsCallbacksFactory(Protocol):
    def __call__(self, warehouse: WarehouseConfig) -> WmsCallbacks: ...


WMSES: dict[str, WmsFactory] = {
    "qimen": QimenWms,
}

WMS_CALLBACKS: dict[str, WmsCallbacksFactory] = {
    "qimen": QimenCallbacks,
}


def _wms_entry(table: dict[str, T], warehouse: WarehouseConfig) -> T:
    try:
        return table[warehouse.wms]
    except KeyError:
        raise ValueError(
            f"warehouses[{warehouse.code}].wms: no connector for {warehouse.wms!r} "
            f"(known: {', '.join(sorted(table))})"
        ) from None


def wms_for(
    warehouse: WarehouseConfig,
    *,
    clock: Clock | None = None,
    policy: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Wms:
    """A connector for `warehouse` (one instance per warehouse; close it with `aclose()`).

    `transport` replaces the network (tests, the sandbox); `policy` the transport retry policy."""
    factory = _wms_entry(WMSES, warehouse)
    return factory(warehouse, clock=clock or SystemClock(), policy=policy, transport=transport)


def wms_callbacks_for(warehouse: WarehouseConfig) -> WmsCallbacks:
    """Verifies, reads and answers what `warehouse`'s WMS calls back with."""
    return _wms_entry(WMS_CALLBACKS, warehouse)(warehouse)


def _kuaidi100(settings: Settings) -> Kuaidi100Config:
    if settings.kuaidi100 is None:
        raise ValueError("kuaidi100: courier tracking is not configured (no [kuaidi100] section)")
    return settings.kuaidi100


def tracker_for(
    settings: Settings,
    *,
    policy: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Tracker:
    """The courier-tracking client of `[kuaidi100]` (close it with `aclose()`); the carriers'
    `kuaidi100_code` name the couriers. `ValueError` when tracking is not configured."""
    return Kuaidi100Tracker(
        _kuaidi100(settings), settings.carriers, policy=policy, transport=transport
    )


def tracking_callbacks_for(settings: Settings) -> TrackingCallbacks:
    """Verifies, reads and answers the tracking service's pushes."""
    return Kuaidi100Callbacks(_kuaidi100(settings))


class ErpFactory(Protocol):
    def __call__(
        self,
        config: ErpConfig,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Erp: ...


ERPS: dict[str, ErpFactory] = {
    "k3cloud": K3CloudErp,
}


def erp_for(
    config: ErpConfig,
    *,
    clock: Clock | None = None,
    policy: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Erp:
    """The ERP client of `[erp]` (close it with `aclose()`)."""
    try:
        factory = ERPS[config.kind]
    except KeyError:
        raise ValueError(
            f"erp.kind: no connector for {config.kind!r} (known: {', '.join(sorted(ERPS))})"
        ) from None
    return factory(config, clock=clock or SystemClock(), policy=policy, transport=transport)
