"""The generic signed order webhook (`POST /webhooks/orders/{shop}`) on SQLite and PostgreSQL.

Every refused delivery must leave the store and the daemon untouched: the assertions check the
webhook inbox and the hints a recording `HubControl` received, not only the status code.
"""

import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from api.webhooks import MAX_BODY, webhooks_router
from config import Settings
from config.settings import ShopConfig
from connectors.webhooks import (
    OrderEvent,
    WebhookRejected,
    parse_order_event,
    sign_webhook,
    verify_webhook,
    webhook_key,
)
from models.clock import FixedClock
from models.store import Store, WebhookDelivery
from tests.fakes import RecordingControl

SECRET = "whsec_" + base64.b64encode(b"mall-one-webhook-key-0123456789ab").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"mall-two-webhook-key-9876543210zy").decode()
URL = "/webhooks/orders/mall-one"


def shop(code: str, secret: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "code": code,
        "platform": "tmall",
        "api_url": "http://127.0.0.1:1/router/rest",
        "app_key": f"{code}-key",
        "app_secret": f"{code}-app-secret",
        "access_token": f"{code}-token",
    }
    if secret is not None:
        found["webhook_secret"] = secret
    return found


SETTINGS = Settings.model_validate(
    {
        "shops": [
            shop("mall-one", SECRET),
            shop("mall-two", OTHER_SECRET),
            shop("no-secret", None),
        ]
    }
)


class RecordingMetrics:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    def webhook(self, source: str, outcome: str) -> None:
        self.outcomes.append((source, outcome))


def event(order_id: Any = "M20261120001", kind: str = "order.paid", **extra: Any) -> bytes:
    body = {"type": kind, "timestamp": "2026-11-20T15:59:58+08:00", "data": {"order_id": order_id}}
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


@pytest.fixture
def control() -> RecordingControl:
    return RecordingControl()


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
async def client(
    store: Store, control: RecordingControl, metrics: RecordingMetrics
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(webhooks_router(SETTINGS, store, control, metrics=metrics))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as http:
        yield http


async def deliveries(store: Store) -> list[WebhookDelivery]:
    async with store.transaction() as tx:
        return await tx.webhook_deliveries()


async def post(
    client: httpx.AsyncClient,
    body: bytes,
    clock: FixedClock,
    *,
    webhook_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    secret: str = SECRET,
    url: str = URL,
    skew: timedelta = timedelta(0),
) -> httpx.Response:
    headers = sign_webhook(secret, webhook_id, clock.now() + skew, body)
    return await client.post(url, content=body, headers=headers)


# --- accepted and duplicates ---------------------------------------------------------------


async def test_a_valid_delivery_is_stored_and_hinted_once(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    metrics: RecordingMetrics,
) -> None:
    body = event()
    response = await post(client, body, clock)
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    assert control.hints == [("mall-one", "M20261120001")]
    [stored] = await deliveries(store)
    assert (stored.source, stored.delivery_id, stored.status) == (
        "orders:mall-one",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "accepted",
    )
    assert stored.payload == body.decode() and stored.received_at == clock.now()
    assert metrics.outcomes == [("orders:mall-one", "accepted")]


async def test_a_repeated_id_is_a_duplicate_and_not_hinted_again(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    metrics: RecordingMetrics,
) -> None:
    assert (await post(client, event(), clock)).status_code == 202
    clock.advance(timedelta(minutes=3))
    # The sender's retry, or a replay re-signed with a fresh timestamp: same id, applied once.
    again = await post(client, event(), clock)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    replay = await post(client, event("OTHER-ORDER"), clock)
    assert (replay.status_code, replay.json()) == (200, {"status": "duplicate"})
    assert control.hints == [("mall-one", "M20261120001")]
    assert len(await deliveries(store)) == 1
    assert [o for _, o in metrics.outcomes] == ["accepted", "duplicate", "duplicate"]


async def test_the_same_id_from_two_shops_is_two_deliveries(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    assert (await post(client, event("A"), clock)).status_code == 202
    other = await post(
        client, event("B"), clock, secret=OTHER_SECRET, url="/webhooks/orders/mall-two"
    )
    assert other.status_code == 202
    assert control.hints == [("mall-one", "A"), ("mall-two", "B")]
    assert {d.source for d in await deliveries(store)} == {"orders:mall-one", "orders:mall-two"}


async def test_any_listed_signature_may_match(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    body = event()
    good = sign_webhook(SECRET, "msg_1", clock.now(), body)
    stale_key = sign_webhook(OTHER_SECRET, "msg_1", clock.now(), body)["webhook-signature"]
    headers = {
        **good,
        "webhook-signature": " ".join(
            [stale_key, good["webhook-signature"], "v1a,c2lnbmF0dXJl", "v2,x"]
        ),
    }
    response = await client.post(URL, content=body, headers=headers)
    assert response.status_code == 202
    assert control.hints == [("mall-one", "M20261120001")]


@pytest.mark.parametrize("skew", [timedelta(seconds=-299), timedelta(seconds=299)])
async def test_timestamps_within_five_minutes_are_accepted(
    client: httpx.AsyncClient, clock: FixedClock, control: RecordingControl, skew: timedelta
) -> None:
    assert (await post(client, event(), clock, skew=skew)).status_code == 202
    assert len(control.hints) == 1


async def test_a_numeric_order_id_is_read_as_text(
    client: httpx.AsyncClient, clock: FixedClock, control: RecordingControl
) -> None:
    assert (await post(client, event(20261120001), clock)).status_code == 202
    assert control.hints == [("mall-one", "20261120001")]


# --- refused before anything is stored -----------------------------------------------------


async def assert_untouched(store: Store, control: RecordingControl) -> None:
    assert await deliveries(store) == []
    assert control.hints == []


async def test_a_tampered_body_is_refused(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    headers = sign_webhook(SECRET, "msg_1", clock.now(), event())
    response = await client.post(URL, content=event("SOMEONE-ELSES"), headers=headers)
    assert (response.status_code, response.json()["detail"]) == (401, "bad signature")
    await assert_untouched(store, control)


@pytest.mark.parametrize(
    "signature",
    ["v1,AAAA", "v1,not base64!", "v2," + base64.b64encode(b"x" * 32).decode(), "garbage", ""],
)
async def test_a_bad_signature_is_refused(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    signature: str,
) -> None:
    headers = {
        **sign_webhook(SECRET, "msg_1", clock.now(), event()),
        "webhook-signature": signature,
    }
    response = await client.post(URL, content=event(), headers=headers)
    assert response.status_code == 401
    await assert_untouched(store, control)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_a_missing_header_is_refused(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    metrics: RecordingMetrics,
    missing: str,
) -> None:
    headers = sign_webhook(SECRET, "msg_1", clock.now(), event())
    del headers[missing]
    response = await client.post(URL, content=event(), headers=headers)
    assert (response.status_code, response.json()["detail"]) == (401, "missing headers")
    await assert_untouched(store, control)
    assert metrics.outcomes == [("orders:mall-one", "rejected")]


async def test_a_timestamp_that_is_not_unix_seconds_is_refused(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    headers = sign_webhook(SECRET, "msg_1", clock.now(), event())
    headers["webhook-timestamp"] = clock.now().isoformat()
    response = await client.post(URL, content=event(), headers=headers)
    assert (response.status_code, response.json()["detail"]) == (401, "bad timestamp")
    await assert_untouched(store, control)


@pytest.mark.parametrize(
    ("skew", "reason"),
    [
        (timedelta(seconds=-301), "stale timestamp"),
        (timedelta(days=-2), "stale timestamp"),
        (timedelta(seconds=301), "future timestamp"),
    ],
)
async def test_a_stale_or_future_timestamp_is_refused(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    skew: timedelta,
    reason: str,
) -> None:
    response = await post(client, event(), clock, skew=skew)
    assert (response.status_code, response.json()["detail"]) == (401, reason)
    await assert_untouched(store, control)


async def test_an_old_delivery_replayed_later_is_refused(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    body = event()
    captured = sign_webhook(SECRET, "msg_new", clock.now(), body)  # never delivered, captured
    clock.advance(timedelta(minutes=6))
    response = await client.post(URL, content=body, headers=captured)
    assert (response.status_code, response.json()["detail"]) == (401, "stale timestamp")
    await assert_untouched(store, control)


async def test_another_shops_secret_is_refused(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    response = await post(client, event(), clock, secret=OTHER_SECRET)
    assert (response.status_code, response.json()["detail"]) == (401, "bad signature")
    await assert_untouched(store, control)


async def test_a_shop_without_a_secret_refuses_webhooks(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    response = await post(client, event(), clock, url="/webhooks/orders/no-secret")
    assert response.status_code == 401
    await assert_untouched(store, control)


async def test_an_unknown_shop_is_404(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    metrics: RecordingMetrics,
) -> None:
    response = await post(client, event(), clock, url="/webhooks/orders/nobody")
    assert response.status_code == 404
    await assert_untouched(store, control)
    assert metrics.outcomes == [("orders:unknown-shop", "rejected")]


async def test_a_body_too_large_is_refused(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    body = event(padding="x" * MAX_BODY)
    response = await post(client, body, clock)
    assert response.status_code == 413
    await assert_untouched(store, control)


async def test_an_over_long_id_is_refused(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, control: RecordingControl
) -> None:
    response = await post(client, event(), clock, webhook_id="m" * 161)
    assert response.status_code == 400
    await assert_untouched(store, control)


# --- verified but unreadable ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "body"),
        (b"[]", "body"),
        (event(kind="product.updated"), "type"),
        (event(kind="order"), "type"),
        (event(order_id=""), "data.order_id"),
        (event(order_id="has space"), "data.order_id"),
        (event(order_id=None), "data.order_id"),
        (event(timestamp="2026-11-20 15:59:58"), "timestamp"),
        (json.dumps({"type": "order.paid", "timestamp": "2026-11-20T07:59:58Z"}).encode(), "data"),
    ],
)
async def test_an_unreadable_body_is_recorded_as_rejected_and_answered_400(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    metrics: RecordingMetrics,
    body: bytes,
    detail: str,
) -> None:
    response = await post(client, body, clock)
    assert response.status_code == 400
    assert response.json()["status"] == "rejected"
    assert response.json()["detail"].startswith(detail)
    [stored] = await deliveries(store)
    assert (stored.status, stored.payload) == ("rejected", body.decode())
    assert control.hints == []
    assert metrics.outcomes == [("orders:mall-one", "rejected")]


# --- failures inside the hub ---------------------------------------------------------------


async def test_a_failed_hint_stores_nothing_so_the_retry_is_applied(
    client: httpx.AsyncClient,
    store: Store,
    clock: FixedClock,
    control: RecordingControl,
    metrics: RecordingMetrics,
) -> None:
    control.fail_hints.add("M20261120001")
    response = await post(client, event(), clock)
    assert (response.status_code, response.json()) == (500, {"status": "error"})
    assert await deliveries(store) == []
    control.fail_hints.clear()
    retry = await post(client, event(), clock)
    assert retry.status_code == 202
    assert control.hints == [("mall-one", "M20261120001")]
    assert [o for _, o in metrics.outcomes] == ["error", "accepted"]


async def test_no_signature_or_secret_reaches_the_logs_or_answers(
    client: httpx.AsyncClient, clock: FixedClock
) -> None:
    body = event()
    good = sign_webhook(SECRET, "msg_1", clock.now(), body)
    bad = {**good, "webhook-signature": "v1," + base64.b64encode(b"y" * 32).decode()}
    with capture_logs() as logs:
        answers = [
            await client.post(URL, content=body, headers=bad),
            await client.post(URL, content=body, headers=good),
        ]
    text = json.dumps(logs, default=str) + "".join(a.text for a in answers)
    for secret in (SECRET, SECRET.removeprefix("whsec_"), good["webhook-signature"][3:]):
        assert secret not in text
    assert bad["webhook-signature"][3:] not in text


# --- the signing rules themselves ----------------------------------------------------------


def test_sign_webhook_matches_the_standard_webhooks_reference_vector() -> None:
    # From the Standard Webhooks reference libraries' tests.
    headers = sign_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_verify_takes_headers_in_any_case_and_a_secret_without_prefix(clock: FixedClock) -> None:
    body = event()
    headers = {k.upper(): v for k, v in sign_webhook(SECRET, "msg_9", clock.now(), body).items()}
    bare = SecretStr(SECRET.removeprefix("whsec_"))
    assert verify_webhook(bare, headers, body, now=clock.now()) == "msg_9"
    with pytest.raises(WebhookRejected):
        verify_webhook(bare, headers, body + b" ", now=clock.now())


def test_webhook_key_refuses_what_is_not_base64() -> None:
    assert webhook_key("whsec_" + base64.b64encode(b"k" * 24).decode().rstrip("=")) == b"k" * 24
    for bad in ("whsec_not base64!", "whsec_", ""):
        with pytest.raises(ValueError):
            webhook_key(bad)


def test_parse_order_event_ignores_extra_fields() -> None:
    parsed = parse_order_event(event(extra={"x": 1}))
    assert isinstance(parsed, OrderEvent)
    assert (parsed.type, parsed.data.order_id) == ("order.paid", "M20261120001")


@pytest.mark.parametrize("secret", ["not base64!", "whsec_" + base64.b64encode(b"short").decode()])
def test_the_config_refuses_a_bad_webhook_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="webhook_secret"):
        ShopConfig.model_validate(shop("mall-one", secret))


def test_the_webhook_secret_is_a_secret() -> None:
    assert SECRET in SETTINGS.secret_values()
    assert SECRET not in repr(SETTINGS.shop("mall-one"))
