"""The admin API over ASGI: bearer auth on every route, each route's answers and errors, and no
secret in any answer."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.admin import admin_router
from config import Settings
from models.clock import FixedClock
from models.domain import HoldReason, OutboxMessage, ReviewState, RunStatus, SyncError, SyncRun
from models.store import Store
from sync.orders import OrderPuller
from sync.status import collect_status
from tests.factories import SECRETS, make_order, make_settings
from tests.fakes import FakeMarketplace, RecordingControl

TOKEN = SECRETS["admin_token"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHOP = "tmall-flagship"


def build_app(settings: Settings, store: Store, control: RecordingControl) -> FastAPI:
    app = FastAPI()
    app.include_router(admin_router(settings, store, control))
    return app


@pytest.fixture
def control() -> RecordingControl:
    return RecordingControl()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def client(
    settings: Settings, store: Store, control: RecordingControl
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(settings, store, control))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


@pytest.fixture
async def sqlite_store(sqlite_url: str, clock: FixedClock) -> AsyncIterator[Store]:
    store = Store.open(sqlite_url, clock)
    yield store
    await store.close()


@pytest.fixture
async def api(
    settings: Settings, sqlite_store: Store, control: RecordingControl
) -> AsyncIterator[httpx.AsyncClient]:
    """For what does not depend on the database backend (auth, validation, triggers)."""
    transport = httpx.ASGITransport(app=build_app(settings, sqlite_store, control))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


# (method, route template, a concrete path, a valid body)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("POST", "/admin/shops/{shop}/pull", f"/admin/shops/{SHOP}/pull", None),
    (
        "POST",
        "/admin/shops/{shop}/backfill",
        f"/admin/shops/{SHOP}/backfill",
        {"since": "2026-11-19 00:00:00", "until": "2026-11-19 12:00:00"},
    ),
    ("GET", "/admin/runs", "/admin/runs", None),
    ("GET", "/admin/outbox/dead", "/admin/outbox/dead", None),
    ("POST", "/admin/outbox/replay", "/admin/outbox/replay", {"all": True}),
    ("GET", "/admin/orders/held", "/admin/orders/held", None),
    (
        "POST",
        "/admin/orders/{shop}/{order_id}/release",
        f"/admin/orders/{SHOP}/1001/release",
        None,
    ),
    ("GET", "/admin/status", "/admin/status", None),
    ("GET", "/admin/reconciliation/reports", "/admin/reconciliation/reports", None),
    (
        "GET",
        "/admin/reconciliation/reports/{report_id}",
        "/admin/reconciliation/reports/1",
        None,
    ),
]
ROUTE_IDS = [f"{method} {template}" for method, template, _, _ in ROUTES]


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


# --- authentication ----------------------------------------------------------------------------


async def test_the_auth_tests_cover_every_admin_route(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    served = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path.startswith("/admin")
        for method in operations
    }
    assert served == {(method, template) for method, template, _, _ in ROUTES}


BAD_CREDENTIALS = {
    "no token": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "token prefix": {"Authorization": f"Bearer {TOKEN}x"},
    "not bearer": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer"},
    "lower-case scheme, wrong token": {"Authorization": "bearer nope"},
}


@pytest.mark.parametrize(("method", "template", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_refuses_a_missing_or_wrong_token(
    api: httpx.AsyncClient,
    control: RecordingControl,
    sqlite_store: Store,
    method: str,
    template: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    await hold(sqlite_store, "1001")
    for case, headers in BAD_CREDENTIALS.items():
        response = await call(api, method, path, body, headers)
        assert response.status_code == 401, case
        assert response.headers["WWW-Authenticate"] == "Bearer", case
        assert "token" in response.json()["detail"], case
    assert control.calls == 0
    stored = await sqlite_store.get_order(SHOP, "1001")
    assert stored is not None and stored.review_state == ReviewState.HELD


async def test_auth_comes_before_body_validation(
    api: httpx.AsyncClient, control: RecordingControl
) -> None:
    response = await call(api, "POST", f"/admin/shops/{SHOP}/backfill", {"since": "garbage"})
    assert response.status_code == 401
    assert control.calls == 0


@pytest.mark.parametrize(("method", "template", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_without_a_configured_token_admin_is_disabled(
    sqlite_store: Store,
    control: RecordingControl,
    method: str,
    template: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    settings = make_settings(server={})
    assert settings.server.admin_token is None
    transport = httpx.ASGITransport(app=build_app(settings, sqlite_store, control))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            response = await call(client, method, path, body, headers)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "disabled until server.admin_token is set" in response.json()["detail"]
    assert control.calls == 0


async def test_openapi_shows_the_bearer_scheme_on_every_admin_route(
    api: httpx.AsyncClient,
) -> None:
    spec = (await api.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["AdminToken"]["type"] == "http"
    assert schemes["AdminToken"]["scheme"] == "bearer"
    for method, template, _, _ in ROUTES:
        operation = spec["paths"][template][method.lower()]
        assert operation["security"] == [{"AdminToken": []}], template


# --- triggers ----------------------------------------------------------------------------------


async def test_pull_is_handed_to_the_daemon(
    api: httpx.AsyncClient, control: RecordingControl
) -> None:
    response = await call(api, "POST", f"/admin/shops/{SHOP}/pull", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["shop"] == SHOP and response.json()["action"] == "pull"
    assert control.pulls == [SHOP]


async def test_pull_of_an_unknown_shop_is_404(
    api: httpx.AsyncClient, control: RecordingControl
) -> None:
    response = await call(api, "POST", "/admin/shops/nope/pull", headers=AUTH)
    assert response.status_code == 404
    assert "no shop 'nope'" in response.json()["detail"]
    assert control.calls == 0


@pytest.mark.parametrize(
    ("since", "until"),
    [
        pytest.param("2026-11-19 08:00:00", "2026-11-19 20:00:00", id="cst"),
        pytest.param("2026-11-19T08:00:00+08:00", "2026-11-19T12:00:00Z", id="iso"),
    ],
)
async def test_backfill_takes_iso_or_cst_times(
    api: httpx.AsyncClient, control: RecordingControl, since: str, until: str
) -> None:
    body = {"since": since, "until": until}
    response = await call(api, "POST", f"/admin/shops/{SHOP}/backfill", body, AUTH)
    assert response.status_code == 202
    assert control.backfills == [
        (SHOP, datetime(2026, 11, 19, 0, 0, tzinfo=UTC), datetime(2026, 11, 19, 12, 0, tzinfo=UTC))
    ]
    assert response.json()["since"] == "2026-11-19T00:00:00Z"


async def test_backfill_until_defaults_to_now(
    api: httpx.AsyncClient, control: RecordingControl, clock: FixedClock
) -> None:
    body = {"since": "2026-11-19T00:00:00+00:00"}
    response = await call(api, "POST", f"/admin/shops/{SHOP}/backfill", body, AUTH)
    assert response.status_code == 202
    assert control.backfills == [(SHOP, datetime(2026, 11, 19, tzinfo=UTC), clock.now())]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"since": "2026-11-19 12:00:00", "until": "2026-11-19 12:00:00"}, "later than since"),
        ({"since": "2026-11-19 12:00:00", "until": "2026-11-19 08:00:00"}, "later than since"),
        ({"since": "yesterday"}, "not a time"),
        ({"since": 1700000000}, "a time is a string"),
        ({"until": "2026-11-19 08:00:00"}, "Field required"),
        ({"since": "2026-11-19 08:00:00", "extra": 1}, "Extra inputs"),
        ({"since": "2026-12-01 08:00:00"}, "since must be in the past"),
    ],
)
async def test_backfill_refuses_a_bad_range_with_422(
    api: httpx.AsyncClient, control: RecordingControl, body: dict[str, Any], message: str
) -> None:
    response = await call(api, "POST", f"/admin/shops/{SHOP}/backfill", body, AUTH)
    assert response.status_code == 422
    assert message in json.dumps(response.json())
    assert control.calls == 0


async def test_backfill_of_an_unknown_shop_is_404(
    api: httpx.AsyncClient, control: RecordingControl
) -> None:
    body = {"since": "2026-11-19 08:00:00", "until": "2026-11-19 09:00:00"}
    response = await call(api, "POST", "/admin/shops/nope/backfill", body, AUTH)
    assert response.status_code == 404
    assert control.calls == 0


# --- runs --------------------------------------------------------------------------------------


async def finished_run(
    store: Store, clock: FixedClock, shop: str, errors: list[str], message: str = ""
) -> int:
    async with store.transaction() as tx:
        run_id = await tx.start_run("pull", shop)
        await tx.record_errors(
            [SyncError(source=shop, key=key, reason=f"bad {key}", raw="{}") for key in errors],
            run_id=run_id,
        )
        await tx.finish_run(
            SyncRun(
                id=run_id,
                job="pull",
                shop=shop,
                started_at=clock.now(),
                status=RunStatus.PARTIAL if errors else RunStatus.OK,
                windows=2,
                pages=3,
                orders_seen=10,
                orders_written=10 - len(errors),
                errors=len(errors),
                message=message,
            )
        )
    return run_id


async def test_runs_list_figures_and_their_own_errors(
    client: httpx.AsyncClient, store: Store, clock: FixedClock
) -> None:
    first = await finished_run(store, clock, SHOP, ["A", "B"])
    second = await finished_run(store, clock, "jd-store", [])
    third = await finished_run(store, clock, SHOP, ["C"], message="window failed")

    response = await call(client, "GET", "/admin/runs", headers=AUTH)
    assert response.status_code == 200
    runs = response.json()
    assert [r["id"] for r in runs] == [third, second, first]  # newest first
    by_id = {r["id"]: r for r in runs}
    assert [e["key"] for e in by_id[first]["error_records"]] == ["A", "B"]
    assert by_id[first]["error_records"][0]["reason"] == "bad A"
    assert by_id[second]["error_records"] == []
    assert by_id[third]["message"] == "window failed"
    assert {k: by_id[first][k] for k in ("status", "orders_seen", "orders_written", "errors")} == {
        "status": "partial",
        "orders_seen": 10,
        "orders_written": 8,
        "errors": 2,
    }
    assert "raw" not in by_id[first]["error_records"][0]  # raw records may carry buyer data

    response = await call(
        client, "GET", f"/admin/runs?shop={SHOP}&limit=1&errors_per_run=1", headers=AUTH
    )
    assert [(r["id"], len(r["error_records"])) for r in response.json()] == [(third, 1)]
    response = await call(client, "GET", f"/admin/runs?shop={SHOP}&errors_per_run=1", headers=AUTH)
    assert [[e["key"] for e in r["error_records"]] for r in response.json()] == [["C"], ["A"]]


async def test_runs_show_what_a_real_pull_skipped(
    client: httpx.AsyncClient, store: Store, clock: FixedClock, settings: Settings
) -> None:
    market = FakeMarketplace(clock=clock)
    market.put(make_order("2001", modified_minutes=0).model_copy(update={"modified": clock.now()}))
    market.malformed.append(
        (clock.now() - timedelta(minutes=40), SyncError(source=SHOP, key="BAD1", reason="no tid"))
    )
    clock.advance(timedelta(minutes=5))  # past the lag, so the order is in the window
    run = await OrderPuller(store, settings, settings.shop(SHOP), market, clock=clock).pull()
    assert run.errors == 1

    response = await call(client, "GET", f"/admin/runs?shop={SHOP}", headers=AUTH)
    [listed] = response.json()
    assert listed["id"] == run.id and listed["orders_written"] == 1
    assert [(e["key"], e["reason"]) for e in listed["error_records"]] == [("BAD1", "no tid")]


@pytest.mark.parametrize(
    ("query", "status"),
    [("shop=nope", 404), ("limit=0", 422), ("limit=501", 422), ("errors_per_run=-1", 422)],
)
async def test_runs_refuse_bad_queries(api: httpx.AsyncClient, query: str, status: int) -> None:
    response = await call(api, "GET", f"/admin/runs?{query}", headers=AUTH)
    assert response.status_code == status


# --- dead letters ------------------------------------------------------------------------------


async def dead_letters(store: Store, *keys: str, error: str = "refused: no such SKU") -> list[int]:
    async with store.transaction() as tx:
        await tx.enqueue(
            [OutboxMessage(kind="wms.create", target="WH-EAST", idempotency_key=k) for k in keys]
        )
        claimed = await tx.claim_outbox("test", 100, timedelta(minutes=1))
        for message in claimed:
            assert message.id is not None
            await tx.retry_outbox(message.id, "test", error, None, ambiguous=False)
    return [m.id for m in claimed if m.id is not None]


async def test_dead_letters_are_listed_with_their_last_error(
    client: httpx.AsyncClient, store: Store
) -> None:
    ids = await dead_letters(store, "DO-1", "DO-2")
    response = await call(client, "GET", "/admin/outbox/dead", headers=AUTH)
    assert response.status_code == 200
    listed = response.json()
    assert [d["id"] for d in listed] == ids
    assert listed[0]["idempotency_key"] == "DO-1"
    assert listed[0]["last_error"] == "refused: no such SKU"
    assert listed[0]["attempts"] == 1 and listed[0]["target"] == "WH-EAST"
    assert (await call(client, "GET", "/admin/outbox/dead?limit=1", headers=AUTH)).json()[0][
        "id"
    ] == ids[0]


async def test_replay_by_id_revives_them_and_wakes_the_dispatcher(
    client: httpx.AsyncClient, store: Store, control: RecordingControl
) -> None:
    first, second = await dead_letters(store, "DO-1", "DO-2")
    response = await call(client, "POST", "/admin/outbox/replay", {"ids": [first, 999]}, AUTH)
    assert response.status_code == 200
    assert response.json() == {"replayed": [first], "not_dead_letters": [999]}
    assert control.wakes == 1
    async with store.transaction() as tx:
        assert [m.id for m in await tx.dead_letters()] == [second]
        revived = await tx.outbox_message(first)
    assert revived is not None and revived.status.value == "pending"


async def test_replay_all(
    client: httpx.AsyncClient, store: Store, control: RecordingControl
) -> None:
    ids = await dead_letters(store, "DO-1", "DO-2")
    response = await call(client, "POST", "/admin/outbox/replay", {"all": True}, AUTH)
    assert response.json() == {"replayed": ids, "not_dead_letters": []}
    assert control.wakes == 1
    response = await call(client, "POST", "/admin/outbox/replay", {"all": True}, AUTH)
    assert response.status_code == 200 and response.json()["replayed"] == []
    assert control.wakes == 1  # nothing revived, nothing to wake for


async def test_replay_of_ids_that_are_not_dead_is_404(
    client: httpx.AsyncClient, control: RecordingControl
) -> None:
    response = await call(client, "POST", "/admin/outbox/replay", {"ids": [41, 42]}, AUTH)
    assert response.status_code == 404
    assert "not dead letters: [41, 42]" in response.json()["detail"]
    assert control.wakes == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"ids": [1], "all": True}, {"ids": []}, {"all": False}, {"ids": ["x"]}, {"every": True}],
)
async def test_replay_needs_ids_or_all(
    api: httpx.AsyncClient, control: RecordingControl, body: dict[str, Any]
) -> None:
    response = await call(api, "POST", "/admin/outbox/replay", body, AUTH)
    assert response.status_code == 422
    assert control.calls == 0


# --- held orders -------------------------------------------------------------------------------


async def hold(store: Store, order_id: str, shop: str = SHOP, detail: str = "remark") -> None:
    async with store.transaction() as tx:
        await tx.upsert_orders([make_order(order_id, shop=shop)])
        await tx.set_review(shop, order_id, ReviewState.HELD, HoldReason.BUYER_REMARK, detail)


async def test_held_orders_are_listed_with_their_reason(
    client: httpx.AsyncClient, store: Store
) -> None:
    await hold(store, "1001", detail="buyer asks for gift wrap")
    await hold(store, "2001", shop="jd-store")
    response = await call(client, "GET", "/admin/orders/held", headers=AUTH)
    assert response.status_code == 200
    listed = response.json()
    assert [(h["shop"], h["platform_order_id"]) for h in listed] == [
        ("jd-store", "2001"),
        (SHOP, "1001"),
    ]
    assert listed[1]["reason"] == "buyer_remark"
    assert listed[1]["detail"] == "buyer asks for gift wrap"
    only = await call(client, "GET", "/admin/orders/held?shop=jd-store", headers=AUTH)
    assert [h["platform_order_id"] for h in only.json()] == ["2001"]
    unknown = await call(client, "GET", "/admin/orders/held?shop=nope", headers=AUTH)
    assert unknown.status_code == 404


async def test_release_marks_the_order_released_once(
    client: httpx.AsyncClient, store: Store
) -> None:
    await hold(store, "1001")
    response = await call(client, "POST", f"/admin/orders/{SHOP}/1001/release", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["platform_order_id"] == "1001"
    stored = await store.get_order(SHOP, "1001")
    assert stored is not None and stored.review_state == ReviewState.RELEASED
    async with store.transaction() as tx:
        assert [o.platform_order_id for _, o in await tx.orders_to_route()] == ["1001"]

    again = await call(client, "POST", f"/admin/orders/{SHOP}/1001/release", headers=AUTH)
    assert again.status_code == 404
    assert "is not held (it is released" in again.json()["detail"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"/admin/orders/{SHOP}/9999/release", "no order '9999'"),
        ("/admin/orders/nope/1001/release", "no shop 'nope'"),
    ],
)
async def test_release_of_an_unknown_order_is_404(
    client: httpx.AsyncClient, store: Store, path: str, message: str
) -> None:
    await hold(store, "1001")
    response = await call(client, "POST", path, headers=AUTH)
    assert response.status_code == 404
    assert message in response.json()["detail"]


# --- status and secrets ------------------------------------------------------------------------


async def test_status_is_the_status_report(
    client: httpx.AsyncClient, store: Store, settings: Settings, clock: FixedClock
) -> None:
    await hold(store, "1001")
    await finished_run(store, clock, SHOP, ["A"])
    await dead_letters(store, "DO-1")
    response = await call(client, "GET", "/admin/status", headers=AUTH)
    assert response.status_code == 200
    expected = json.loads(json.dumps(await collect_status(settings, store)))
    assert response.json() == expected
    assert response.json()["held_orders"] == 1


async def test_no_secret_in_any_answer(
    client: httpx.AsyncClient, store: Store, clock: FixedClock
) -> None:
    # Secrets that slipped into stored free text (a careless error message) must not leave.
    await dead_letters(
        store, "DO-1", error=f"HTTP 400 for ?sign=ABCDEF&app_secret={SECRETS['wms_secret']}"
    )
    await hold(store, "1001", detail=f"remark quoting {SECRETS['tmall_secret']}")
    await finished_run(store, clock, SHOP, ["A"], message=f"token {SECRETS['tmall_token']}")
    async with store.transaction() as tx:
        await tx.flag_auth_failure("jd-store", f"invalid access_token={SECRETS['jd_token']}")
        await tx.record_errors([SyncError(source=SHOP, key="K", reason=SECRETS["jd_secret"])])

    bodies = []
    for method, _, path, body in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, AUTH):
            bodies.append((await call(client, method, path, body, headers)).text)
    for extra in (
        "/admin/shops/nope/pull",
        "/admin/orders/nope/1/release",
        "/admin/outbox/replay",
    ):
        bodies.append((await call(client, "POST", extra, {"ids": [999]}, AUTH)).text)
    bodies.append((await call(client, "GET", "/openapi.json")).text)

    seen = "\n".join(bodies)
    assert "**redacted**" in seen  # the stored secrets were there to leak, and were scrubbed
    assert "ABCDEF" not in seen
    for name, secret in SECRETS.items():
        assert secret not in seen, name
