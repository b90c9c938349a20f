"""Configuration: the typed settings tree and its loader. Imports nothing else of ecomhub."""

from config.durations import Duration, format_duration, parse_duration
from config.loader import ConfigError, default_config_path, load_settings
from config.settings import (
    PLATFORM_DEFAULTS,
    CarrierConfig,
    DaemonConfig,
    ErpConfig,
    Kuaidi100Config,
    RateCardRow,
    SenderConfig,
    ServerConfig,
    Settings,
    ShopConfig,
    WarehouseConfig,
)

__all__ = [
    "PLATFORM_DEFAULTS",
    "CarrierConfig",
    "ConfigError",
    "DaemonConfig",
    "Duration",
    "ErpConfig",
    "Kuaidi100Config",
    "RateCardRow",
    "SenderConfig",
    "ServerConfig",
    "Settings",
    "ShopConfig",
    "WarehouseConfig",
    "default_config_path",
    "format_duration",
    "load_settings",
    "parse_duration",
]
