"""Connectors: one module per external system (transport, signing, errors, translation).

`sync/` uses the protocols of `connectors.base`, the error tree of `connectors.errors` and the
registry; nothing here decides business policy.
"""

from connectors.base import (
    Listing,
    Marketplace,
    OrderPage,
    ShipRequest,
    ShipResult,
    StockResult,
    StockUpdate,
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
from connectors.http import DEFAULT_POLICY, RetryPolicy, Timeouts
from connectors.jd import JdMarketplace
from connectors.registry import MARKETPLACES, marketplace_for
from connectors.tmall import TmallMarketplace
from connectors.top_family import top_sign

__all__ = [
    "DEFAULT_POLICY",
    "MARKETPLACES",
    "AmbiguousError",
    "AuthError",
    "BadPayload",
    "ConnectorError",
    "JdMarketplace",
    "Listing",
    "Marketplace",
    "OrderPage",
    "RateLimited",
    "RejectedError",
    "RetryPolicy",
    "ShipRequest",
    "ShipResult",
    "StockResult",
    "StockUpdate",
    "Timeouts",
    "TmallMarketplace",
    "TransientError",
    "marketplace_for",
    "top_sign",
]
