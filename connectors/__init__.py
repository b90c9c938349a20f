"""Connectors: one module per external system (transport, signing, errors, translation).

`sync/` uses the protocols of `connectors.base`, the error tree of `connectors.errors` and the
registry; nothing here decides business policy.
"""

from connectors.base import (
    Callback,
    CancelOutcome,
    DeliveryLine,
    DeliveryOrderRequest,
    InboundConfirm,
    InboundLine,
    Listing,
    Marketplace,
    OrderPage,
    ShipmentConfirm,
    ShipRequest,
    ShipResult,
    StockChange,
    StockResult,
    StockUpdate,
    Wms,
    WmsCallbacks,
    WmsOrderState,
    WmsOrderStatus,
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
from connectors.qimen import QimenCallbacks, QimenWms
from connectors.registry import (
    MARKETPLACES,
    WMS_CALLBACKS,
    WMSES,
    marketplace_for,
    wms_callbacks_for,
    wms_for,
)
from connectors.tmall import TmallMarketplace
from connectors.top_family import top_sign

__all__ = [
    "DEFAULT_POLICY",
    "MARKETPLACES",
    "WMSES",
    "WMS_CALLBACKS",
    "AmbiguousError",
    "AuthError",
    "BadPayload",
    "Callback",
    "CancelOutcome",
    "ConnectorError",
    "DeliveryLine",
    "DeliveryOrderRequest",
    "InboundConfirm",
    "InboundLine",
    "JdMarketplace",
    "Listing",
    "Marketplace",
    "OrderPage",
    "QimenCallbacks",
    "QimenWms",
    "RateLimited",
    "RejectedError",
    "RetryPolicy",
    "ShipRequest",
    "ShipResult",
    "ShipmentConfirm",
    "StockChange",
    "StockResult",
    "StockUpdate",
    "Timeouts",
    "TmallMarketplace",
    "TransientError",
    "Wms",
    "WmsCallbacks",
    "WmsOrderState",
    "WmsOrderStatus",
    "marketplace_for",
    "top_sign",
    "wms_callbacks_for",
    "wms_for",
]
