"""Standard Webhooks (https://www.standardwebhooks.com): signing, verification, and the order-event
payload a self-built mall sends to `POST /webhooks/orders/{shop}`.

Wire contract (Standard Webhooks 1.0, symmetric scheme):
- headers `webhook-id` (the delivery id, the same on every retry of one event), `webhook-timestamp`
  (unix seconds of this attempt) and `webhook-signature`: a space-separated list of
  `v1,<base64 HMAC-SHA256>`, any of which may match (so a sender can rotate its secret);
- the signed content is `"{webhook-id}.{webhook-timestamp}.{raw body}"`;
- the secret is written `whsec_<base64>`; the HMAC key is the base64-decoded part;
- an attempt whose timestamp is more than 5 minutes from the receiver's clock, either way, is
  refused (replays of old deliveries); signatures compare in constant time.

The payload (the hub's choice, docs/decisions.md): a thin event, `{"type": "order.<event>",
"timestamp": "<ISO 8601 with offset>", "data": {"order_id": "<the mall's order id>"}}`. It is only
a hint: the hub fetches the order itself.

`sign_webhook` is the sender's side, for tests, benchmarks and mall integrators.
"""

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
TOLERANCE = timedelta(minutes=5)
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

Reason = Literal[
    "missing headers", "bad timestamp", "bad signature", "stale timestamp", "future timestamp"
]


class WebhookRejected(Exception):
    """A delivery that failed verification; `reason` is safe to log and to answer with."""

    def __init__(self, reason: Reason) -> None:
        self.reason: Reason = reason
        super().__init__(reason)


def webhook_key(secret: str | SecretStr) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional). Raises `ValueError`
    for a secret that is not base64 or is empty."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    encoded = value.strip().removeprefix(SECRET_PREFIX)
    try:
        # Tolerate missing padding, as the reference libraries do.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a whsec_<base64> secret") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def _signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign_webhook(
    secret: str | SecretStr, webhook_id: str, timestamp: int | datetime, body: bytes | str
) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery of `body` (sent byte for byte)."""
    seconds = str(int(timestamp.timestamp()) if isinstance(timestamp, datetime) else timestamp)
    raw = body.encode() if isinstance(body, str) else body
    digest = _signature(webhook_key(secret), webhook_id, seconds, raw)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": seconds,
        "webhook-signature": f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}",
    }


def verify_webhook(
    secret: str | SecretStr,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    tolerance: timedelta = TOLERANCE,
) -> str:
    """Check one delivery; returns its `webhook-id`. Raises `WebhookRejected` with the reason.

    The signature is checked before the timestamp's age, so an unsigned caller learns nothing
    about the receiver's clock. `headers` may use any case."""
    lowered = {k.lower(): v for k, v in headers.items()}
    webhook_id, stamp, signatures = (lowered.get(name, "").strip() for name in HEADERS)
    if not (webhook_id and stamp and signatures):
        raise WebhookRejected("missing headers")
    if not (stamp.isascii() and stamp.isdigit()):
        raise WebhookRejected("bad timestamp")
    expected = _signature(webhook_key(secret), webhook_id, stamp, body)
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise WebhookRejected("bad signature")
    sent = int(stamp)
    if sent < (now - tolerance).timestamp():
        raise WebhookRejected("stale timestamp")
    if sent > (now + tolerance).timestamp():
        raise WebhookRejected("future timestamp")
    return webhook_id


def _v1_signatures(header: str) -> list[bytes]:
    """The decodable `v1` signatures of a `webhook-signature` header (others are ignored)."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


# --- the order-event payload -----------------------------------------------------------------


class MalformedEvent(ValueError):
    """A verified delivery whose body is not an order event; its text is the reason."""


class OrderEventData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", coerce_numbers_to_str=True)

    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[^\s\x00-\x1f]+$")
    """The mall's own order id: the hub's `platform_order_id`."""


class OrderEvent(BaseModel):
    """`{"type": "order.<event>", "timestamp": "…", "data": {"order_id": "…"}}`; extra keys are
    allowed and ignored (a sender may send a fuller payload)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(pattern=r"^order\.[a-z][a-z0-9_]*$")
    """`order.created`, `order.paid`, `order.updated`, `order.cancelled`, `order.refunded` …:
    every order event is the same hint."""
    timestamp: AwareDatetime
    """When the event happened (not when it was delivered)."""
    data: OrderEventData


def parse_order_event(body: bytes) -> OrderEvent:
    """Read a verified body; raises `MalformedEvent` naming the first problem."""
    try:
        return OrderEvent.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise MalformedEvent(f"{where}: {first['msg']}") from None
