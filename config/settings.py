"""The typed settings tree: one model per section of `ecomhub.toml` (DESIGN.md, "Config").

Values come from three layers, later ones winning (`config.loader` merges them):
1. the TOML file;
2. environment variables `ECOMHUB_<FIELD>`, `__` between nesting levels; list entries are picked by
   index or by their `code` (`ECOMHUB_SHOPS__TMALL_FLAGSHIP__APP_SECRET`, with `-` written `_`);
3. `<field>_file` keys (in the file or the environment) naming a file whose content is the value,
   for secrets kept out of the config file.

Secrets are `SecretStr`: their `repr` and `str` show `**********`; use `.get_secret_value()` only
where the value goes on the wire.
"""

import base64
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.durations import Duration

Platform = Literal["tmall", "jd"]
SignMethod = Literal["md5", "hmac", "hmac-sha256"]


class PlatformDefaults(BaseModel):
    """Pull-window defaults of one platform (decisions.md); a shop may override each."""

    model_config = ConfigDict(frozen=True)

    lag: timedelta
    overlap: timedelta
    max_window: timedelta


PLATFORM_DEFAULTS: dict[str, PlatformDefaults] = {
    # TOP: an order modified at T may show up to ~2 min late; promotions have trailed by ~10 min.
    "tmall": PlatformDefaults(
        lag=timedelta(seconds=120), overlap=timedelta(minutes=10), max_window=timedelta(days=1)
    ),
    # JD: same ±10 min clock rule and 1-day window the hub keeps (decisions.md, JD JOS).
    "jd": PlatformDefaults(
        lag=timedelta(seconds=120), overlap=timedelta(minutes=10), max_window=timedelta(days=1)
    ),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535)
    public_url: AnyHttpUrl | None = None
    """How WMSs and couriers reach the callbacks; default http://host:port."""
    admin_token: SecretStr | None = None
    """Bearer token for /admin; without one the admin API refuses every call."""

    @property
    def callback_base(self) -> str:
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        return f"http://{self.host}:{self.port}"


class ShopConfig(_Section):
    code: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    platform: Platform
    api_url: AnyHttpUrl
    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    access_token: SecretStr
    poll_interval: Duration = timedelta(seconds=60)
    initial_lookback: Duration = timedelta(days=1)
    lag: Duration | None = None
    overlap: Duration | None = None
    max_window: Duration | None = None
    allow_split: bool = True
    token_expires_at: datetime | None = None
    safety_stock: int = Field(default=0, ge=0)
    stock_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    max_stock: int | None = Field(default=None, ge=0)
    """Never publish more than this many units of a listing."""
    zero_below: int | None = Field(default=None, ge=0)
    """Publish 0 when the computed sellable quantity is below this threshold."""
    sign_method: SignMethod = "md5"
    hold_on_remark: bool = False
    """Review: hold paid orders that carry a buyer remark."""
    hold_amount_above: Decimal | None = None
    """Review: hold paid orders whose payment is above this many yuan."""
    rate_limit_wait_cap: Duration = timedelta(minutes=5)
    """The longest the hub waits on a platform ban before giving up the pull for now."""
    customer_number: str | None = None
    """ERP customer number of this shop's sales documents."""
    tmc_group: str = Field(default="default", min_length=1, max_length=64)
    """Tmall: the TMC message group the `tmc:` job consumes (TOP's own default group unless the
    app has user groups, `taobao.tmc.group.add`)."""
    webhook_secret: SecretStr | None = None
    """Standard Webhooks secret (`whsec_<base64>`) of `POST /webhooks/orders/<code>`; without
    one the hub refuses this shop's webhooks."""

    @field_validator("token_expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give an offset, e.g. 2027-03-01T00:00:00+08:00")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            encoded = value.get_secret_value().strip().removeprefix("whsec_")
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except ValueError:
                key = b""
            if len(key) < 16:
                raise ValueError("give whsec_ followed by the base64 of at least 16 random bytes")
        return value

    @property
    def defaults(self) -> PlatformDefaults:
        return PLATFORM_DEFAULTS[self.platform]

    @property
    def effective_lag(self) -> timedelta:
        return self.lag if self.lag is not None else self.defaults.lag

    @property
    def effective_overlap(self) -> timedelta:
        return self.overlap if self.overlap is not None else self.defaults.overlap

    @property
    def effective_max_window(self) -> timedelta:
        if self.max_window is None:
            return self.defaults.max_window
        return min(self.max_window, self.defaults.max_window)


class SenderConfig(_Section):
    """The address a warehouse ships from (Qimen `senderInfo`; required by the spec)."""

    name: str = Field(min_length=1)
    mobile: str = Field(min_length=1)
    province: str = Field(min_length=1)
    city: str = Field(min_length=1)
    area: str = ""
    detail: str = Field(min_length=1)


class WarehouseConfig(_Section):
    code: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    wms: Literal["qimen"] = "qimen"
    api_url: AnyHttpUrl
    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    customer_id: str = Field(min_length=1)
    owner_code: str | None = None
    """Qimen `ownerCode` of order lines; defaults to `customer_id`."""
    provinces: list[str] = Field(default_factory=list)
    priority: int = 100
    default_carrier: str
    retry_codes: list[str] = Field(default_factory=lambda: ["SYSTEM_ERROR", "WMS_BUSY"])
    timeout: Duration = timedelta(seconds=10)
    stock_number: str | None = None
    """ERP stock (warehouse) number of this warehouse's documents."""
    sender: SenderConfig | None = None
    """Where parcels ship from; without it creates name the warehouse code as sender and leave
    the address to the WMS's own warehouse record (some WMSs reject that)."""

    @property
    def effective_owner_code(self) -> str:
        return self.owner_code or self.customer_id


class RateCardRow(_Section):
    province: str
    first_weight_kg: Decimal = Field(gt=0)
    first_fee: Decimal = Field(ge=0)
    step_kg: Decimal = Field(gt=0)
    step_fee: Decimal = Field(ge=0)


BillField = Literal["waybill", "ship_date", "origin_province", "dest_province", "weight", "amount"]


class CarrierConfig(_Section):
    code: str = Field(min_length=1)
    name: str | None = None
    jd_id: int | None = None
    kuaidi100_code: str | None = None
    """Kuaidi100 `company` name (e.g. shunfeng); defaults from a built-in table by code."""
    rate_card: Path | None = None
    rate_card_rows: tuple[RateCardRow, ...] = ()
    """Filled by the loader from `rate_card`; not written in the file."""
    fee_tolerance: Decimal = Decimal("0.01")
    weight_tolerance_kg: Decimal = Decimal("0.2")
    bill_columns: dict[BillField, str] = Field(default_factory=dict)


class Kuaidi100Config(_Section):
    customer: str
    key: SecretStr
    salt: SecretStr
    """Kuaidi100 signs its pushes with it; without one they are unsigned, which the hub refuses."""
    api_url: AnyHttpUrl = AnyHttpUrl("https://poll.kuaidi100.com")

    @field_validator("salt")
    @classmethod
    def _salt_given(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty: the hub accepts only signed tracking pushes")
        return value


class ErpConfig(_Section):
    kind: Literal["k3cloud"] = "k3cloud"
    api_url: AnyHttpUrl
    """The K3Cloud base, `https://<server>/k3cloud/`."""
    acct_id: str
    """The data center (账套) id."""
    username: str
    app_id: str
    app_secret: SecretStr
    lcid: int = 2052
    org_number: str
    """Number of the organisation that buys, sells and keeps stock in the hub's documents."""
    poll_interval: Duration = timedelta(minutes=5)
    inbound_warehouse: str | None = None
    """Warehouse code that receives purchase orders; default: the first `[[warehouses]]`."""
    timeout: Duration = timedelta(seconds=30)
    """Read timeout of one ERP call; a later answer to a save is ambiguous."""


class DaemonConfig(_Section):
    """How `ecomhub run` schedules its work (defaults suit production; tests shorten them)."""

    lease_ttl: Duration = timedelta(seconds=30)
    """How long a replica holds a job's lease without renewing it; a dead replica's jobs move
    to another one this long after it died."""
    claim_ttl: Duration = timedelta(seconds=60)
    """How long an outbox claim lasts; a dead replica's in-flight messages wait this long."""
    route_interval: Duration = timedelta(seconds=10)
    """Routing also runs after every pull and hint; this is the safety net."""
    stock_interval: Duration = timedelta(minutes=5)
    """How often every warehouse's stock is read into the ledger."""
    inventory_reconcile_interval: Duration = timedelta(hours=1)
    """How often each warehouse's WMS snapshot is reconciled with the ledger (a stored report;
    the first one runs one interval after start, once the ledger has been read)."""
    stock_sync_interval: Duration = timedelta(minutes=1)
    """How often channel stock is computed and changed values pushed (also after each reading)."""
    listing_refresh_interval: Duration = timedelta(hours=1)
    """How often each shop's listings are read again from the platform (`--full` always does)."""
    tmc_interval: Duration = timedelta(seconds=5)
    """How often TOP shops' TMC messages are consumed (each one a hint)."""
    dispatch_idle: Duration = timedelta(seconds=1)
    """The longest the dispatcher sleeps when nothing is due and nothing woke it."""
    grace_period: Duration = timedelta(seconds=20)
    """On SIGTERM: how long in-flight jobs get to finish before they are cancelled."""
    per_target: int = Field(default=4, ge=1)
    """Outbox messages in flight at once per warehouse or shop."""
    retry_delays: list[Duration] = Field(
        default_factory=lambda: [timedelta(seconds=n) for n in (2, 10, 30, 120, 600, 1800, 3600)],
        min_length=1,
    )
    """Outbox retry schedule: attempt n waits the n-th delay (the last one repeats). From the
    environment: a comma-separated list, `ECOMHUB_DAEMON__RETRY_DELAYS="1s,5s,30s"`."""
    retry_jitter: float = Field(default=0.2, ge=0.0, lt=1.0)
    """± this share of each delay, so retries of many messages spread out."""
    max_attempts: int = Field(default=10, ge=1)
    """Attempts before a message becomes a dead letter."""

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return (
            [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
        )


class Settings(BaseSettings):
    """The whole configuration. Build it with `config.load_settings`, not directly."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    database_url: str = "sqlite:///ecomhub.db"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    server: ServerConfig = Field(default_factory=ServerConfig)
    shops: list[ShopConfig] = Field(default_factory=list)
    warehouses: list[WarehouseConfig] = Field(default_factory=list)
    carriers: list[CarrierConfig] = Field(default_factory=list)
    kuaidi100: Kuaidi100Config | None = None
    erp: ErpConfig | None = None
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    config_path: Path | None = None
    """Where the file came from (set by the loader; relative paths are relative to it)."""

    @model_validator(mode="after")
    def _unique_codes(self) -> "Settings":
        sections: dict[str, list[str]] = {
            "shops": [s.code for s in self.shops],
            "warehouses": [w.code for w in self.warehouses],
            "carriers": [c.code for c in self.carriers],
        }
        for section, codes in sections.items():
            for index, code in enumerate(codes):
                if code in codes[:index]:
                    raise ValueError(f"{section}[{index}].code: duplicate code {code!r}")
        carriers = {c.code for c in self.carriers}
        for index, warehouse in enumerate(self.warehouses):
            if carriers and warehouse.default_carrier not in carriers:
                raise ValueError(
                    f"warehouses[{index}].default_carrier: {warehouse.default_carrier!r} is not "
                    f"one of the [[carriers]] codes {sorted(carriers)}"
                )
        return self

    @model_validator(mode="after")
    def _erp_numbers(self) -> "Settings":
        """With `[erp]`, every document the hub writes needs its ERP numbers."""
        if self.erp is None:
            return self
        for index, shop in enumerate(self.shops):
            if not shop.customer_number:
                raise ValueError(
                    f"shops[{index}].customer_number: required with [erp] (the ERP customer "
                    f"number of shop {shop.code!r}'s sales documents)"
                )
        for index, warehouse in enumerate(self.warehouses):
            if not warehouse.stock_number:
                raise ValueError(
                    f"warehouses[{index}].stock_number: required with [erp] (the ERP stock "
                    f"number of warehouse {warehouse.code!r})"
                )
        codes = [w.code for w in self.warehouses]
        inbound = self.erp.inbound_warehouse
        if inbound is not None and inbound not in codes:
            raise ValueError(
                f"erp.inbound_warehouse: {inbound!r} is not one of the [[warehouses]] codes {codes}"
            )
        return self

    @property
    def inbound_warehouse(self) -> str | None:
        """Where purchase orders are received: `erp.inbound_warehouse`, else the first warehouse."""
        if self.erp is not None and self.erp.inbound_warehouse:
            return self.erp.inbound_warehouse
        return self.warehouses[0].code if self.warehouses else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `config.loader` layers file, environment and secret files itself (pydantic-settings'
        # merge cannot address list entries such as one shop's secret); here only its result counts.
        return (init_settings,)

    def shop(self, code: str) -> ShopConfig:
        for shop in self.shops:
            if shop.code == code:
                return shop
        raise KeyError(code)

    def warehouse(self, code: str) -> WarehouseConfig:
        for warehouse in self.warehouses:
            if warehouse.code == code:
                return warehouse
        raise KeyError(code)

    def carrier(self, code: str) -> CarrierConfig:
        for carrier in self.carriers:
            if carrier.code == code:
                return carrier
        raise KeyError(code)

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redactor."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                if secret:
                    found.append(secret)
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, list | tuple):
                for item in value:
                    walk(item)

        walk(self)
        for shop in self.shops:  # access tokens are secrets even when short-lived
            found.append(shop.access_token.get_secret_value())
        return sorted({s for s in found if s}, key=len, reverse=True)
