"""Which connector serves which config value: `sync/` builds marketplaces only through here.

`MARKETPLACES` is keyed by `ShopConfig.platform`; a new marketplace is one module and one entry.
"""

from typing import Protocol

import httpx

from config.settings import ShopConfig
from connectors.base import Marketplace
from connectors.http import RetryPolicy
from connectors.jd import JdMarketplace
from connectors.tmall import TmallMarketplace
from models.clock import Clock, SystemClock


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
