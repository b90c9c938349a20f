"""The admin API under `/admin`: trigger pulls and backfills, list runs, dead letters and held
orders, replay and release them, read the status and the stored reconciliation reports.

Every route needs `Authorization: Bearer <server.admin_token>` (compared in constant time); without
a configured token the admin API is off and answers 401 to everything. Triggers never run sync work
inside the request: they ask the daemon (`sync.control.HubControl`) and answer 202 at once.
Free-text fields (run messages, last errors, hold details) pass the log redactor on the way out,
so a secret that slipped into one never leaves in an answer.
"""

import hmac
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from config import Settings
from config.logging import Redactor
from models.clock import parse_cli_time
from models.domain import ReconciliationReport, ReportKind
from models.store import Store
from sync.control import HubControl
from sync.reconcile import report_rows
from sync.status import collect_status

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="`server.admin_token` of the hub's config.",
)


def _time(value: Any) -> Any:
    if isinstance(value, str):
        return parse_cli_time(value)  # its ValueError names both accepted forms
    if isinstance(value, datetime):
        return value
    raise ValueError("a time is a string: 2026-11-20T08:00:00+08:00 or '2026-11-20 08:00:00'")


CliTime = Annotated[
    datetime,
    BeforeValidator(_time),
    WithJsonSchema(
        {
            "type": "string",
            "description": "ISO 8601, or `yyyy-MM-dd HH:mm:ss` in China Standard Time",
            "examples": ["2026-11-20T08:00:00+08:00", "2026-11-20 08:00:00"],
        }
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackfillRequest(_Request):
    since: CliTime
    until: CliTime | None = None
    """Default: now (the puller stops at now − the platform's lag anyway)."""

    @model_validator(mode="after")
    def _ordered(self) -> "BackfillRequest":
        if self.until is not None and self.until <= self.since:
            raise ValueError("until must be later than since")
        return self


class ReplayRequest(_Request):
    ids: list[int] | None = Field(default=None, min_length=1)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> "ReplayRequest":
        if (self.ids is None) == (not self.all):
            raise ValueError('give either "ids": [..] or "all": true')
        return self


class Triggered(BaseModel):
    shop: str
    action: Literal["pull", "backfill"]
    since: datetime | None = None
    until: datetime | None = None
    detail: str


class RunError(BaseModel):
    source: str
    key: str
    reason: str
    created_at: datetime | None


class Run(BaseModel):
    id: int | None
    job: str
    shop: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    windows: int
    pages: int
    orders_seen: int
    orders_written: int
    errors: int
    """How many records the run skipped; `error_records` lists the first of them."""
    message: str
    error_records: list[RunError]


class DeadLetter(BaseModel):
    id: int
    kind: str
    target: str
    idempotency_key: str
    attempts: int
    last_error: str
    ambiguous: bool
    created_at: datetime | None


class Replayed(BaseModel):
    replayed: list[int]
    not_dead_letters: list[int]
    """Ids named in the request that are not dead letters (unknown, pending or done)."""


class HeldOrder(BaseModel):
    shop: str
    platform_order_id: str
    reason: str
    detail: str
    modified: datetime


class Released(BaseModel):
    shop: str
    platform_order_id: str
    detail: str


class ReportSummary(BaseModel):
    id: int
    kind: str
    """`logistics` (a freight bill) or `inventory` (a WMS snapshot)."""
    subject: str
    """The carrier or the warehouse code."""
    bill_id: int | None
    created_at: datetime | None
    row_count: int
    totals: dict[str, Any]

    @classmethod
    def of(cls, report: ReconciliationReport) -> "ReportSummary":
        return cls(
            id=report.id or 0,
            kind=report.kind.value,
            subject=report.subject,
            bill_id=report.bill_id,
            created_at=report.created_at,
            row_count=report.row_count,
            totals=report.totals,
        )


class Report(ReportSummary):
    rows: list[dict[str, str | None]]


def admin_router(settings: Settings, store: Store, control: HubControl) -> APIRouter:
    redactor = Redactor(settings.secret_values())

    def clean(text: str) -> str:
        return str(redactor.scrub(text))

    async def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        """401 unless the request carries the configured admin token."""
        token = settings.server.admin_token
        expected = token.get_secret_value() if token is not None else ""
        if not expected:
            raise _unauthorized("the admin API is disabled until server.admin_token is set")
        if credentials is None:
            raise _unauthorized("missing bearer token (Authorization: Bearer <admin token>)")
        if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise _unauthorized("wrong admin token")

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    def known_shop(shop: str) -> str:
        if shop not in {s.code for s in settings.shops}:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shop {shop!r} in the config")
        return shop

    @router.post("/shops/{shop}/pull", status_code=status.HTTP_202_ACCEPTED)
    async def trigger_pull(shop: str) -> Triggered:
        """Pull the shop's orders now (joins a pull that is already due or running)."""
        control.request_pull(known_shop(shop))
        return Triggered(shop=shop, action="pull", detail="the pull runs on the daemon now")

    @router.post("/shops/{shop}/backfill", status_code=status.HTTP_202_ACCEPTED)
    async def trigger_backfill(shop: str, body: BackfillRequest) -> Triggered:
        """Re-read the shop's orders modified in [since, until) on a backfill cursor (the live
        cursor does not move)."""
        known_shop(shop)
        until = body.until or store.clock.now()
        if until <= body.since:
            raise HTTPException(422, "since must be in the past when until is not given")
        control.request_backfill(shop, body.since, until)
        return Triggered(
            shop=shop,
            action="backfill",
            since=body.since,
            until=until,
            detail="the backfill runs on the daemon; see /admin/runs",
        )

    @router.get("/runs")
    async def list_runs(
        shop: str | None = None,
        job: Annotated[str | None, Query(description="pull, backfill, …")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
        errors_per_run: Annotated[int, Query(ge=0, le=200)] = 20,
    ) -> list[Run]:
        """Recent runs, newest first, with their figures and the records they skipped."""
        if shop is not None:
            known_shop(shop)
        async with store.read() as tx:
            runs = await tx.runs(job=job, shop=shop, limit=limit)
            ids = [r.id for r in runs if r.id is not None]
            skipped = await tx.run_errors(ids, errors_per_run) if errors_per_run else {}
        return [
            Run(
                id=r.id,
                job=r.job,
                shop=r.shop,
                status=r.status.value,
                started_at=r.started_at,
                finished_at=r.finished_at,
                windows=r.windows,
                pages=r.pages,
                orders_seen=r.orders_seen,
                orders_written=r.orders_written,
                errors=r.errors,
                message=clean(r.message),
                error_records=[
                    RunError(
                        source=e.source,
                        key=clean(e.key),
                        reason=clean(e.reason),
                        created_at=e.created_at,
                    )
                    for e in skipped.get(r.id or 0, [])
                ],
            )
            for r in runs
        ]

    @router.get("/outbox/dead")
    async def list_dead_letters(
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[DeadLetter]:
        """Messages that gave up, oldest first, with their last error."""
        async with store.read() as tx:
            dead = await tx.dead_letters(limit)
        return [
            DeadLetter(
                id=m.id or 0,
                kind=m.kind,
                target=m.target,
                idempotency_key=m.idempotency_key,
                attempts=m.attempts,
                last_error=clean(m.last_error),
                ambiguous=m.ambiguous,
                created_at=m.created_at,
            )
            for m in dead
        ]

    @router.post("/outbox/replay")
    async def replay_dead_letters(body: ReplayRequest) -> Replayed:
        """Send dead letters again (`ids`, or `all`); the handler still asks the target first
        if an earlier attempt may have arrived. 404 when none of the named ids is a dead letter."""
        async with store.transaction() as tx:
            replayed = await tx.replay_dead(None if body.all else body.ids)
        missing = sorted(set(body.ids or ()) - set(replayed))
        if body.ids and not replayed:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"not dead letters: {missing}")
        if replayed:
            control.wake_dispatcher()
        return Replayed(replayed=replayed, not_dead_letters=missing)

    @router.get("/orders/held")
    async def list_held_orders(shop: str | None = None) -> list[HeldOrder]:
        """Orders review held, with the reason an operator can act on."""
        if shop is not None:
            known_shop(shop)
        async with store.read() as tx:
            held = await tx.held_orders(shop)
        return [
            HeldOrder(
                shop=h.shop,
                platform_order_id=h.platform_order_id,
                reason=h.reason,
                detail=clean(h.detail),
                modified=h.modified,
            )
            for h in held
        ]

    @router.post("/orders/{shop}/{order_id}/release")
    async def release_held_order(shop: str, order_id: str) -> Released:
        """Release a held order after its cause is fixed; the daemon's next routing pass routes
        it (as after `ecomhub orders release`)."""
        known_shop(shop)
        async with store.transaction() as tx:
            stored = await tx.get_order(shop, order_id)
            released = stored is not None and await tx.release_order(shop, order_id)
        if stored is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"no order {order_id!r} of shop {shop!r} in the store"
            )
        if not released:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"order {order_id!r} of shop {shop!r} is not held "
                f"(it is {stored.review_state.value}; see /admin/orders/held)",
            )
        control.request_route()
        return Released(shop=shop, platform_order_id=order_id, detail="released; routing it now")

    @router.get("/reconciliation/reports")
    async def list_reconciliation_reports(
        kind: Annotated[ReportKind | None, Query(description="logistics or inventory")] = None,
        subject: Annotated[str | None, Query(description="carrier or warehouse code")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[ReportSummary]:
        """Stored reconciliation reports, newest first, with their totals (rows: see one)."""
        async with store.read() as tx:
            reports = await tx.reports(kind, subject, limit)
        return [ReportSummary.of(r) for r in reports]

    @router.get("/reconciliation/reports/{report_id}")
    async def get_reconciliation_report(report_id: int) -> Report:
        """One report with every row (`kind`, `waybill` or `sku`, `expected`, `actual`,
        `difference` as exact decimal strings, `detail`) and its totals."""
        async with store.read() as tx:
            report = await tx.report(report_id)
        if report is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no reconciliation report {report_id}")
        summary = ReportSummary.of(report)
        rows = [{**row, "detail": clean(row["detail"])} for row in report_rows(report)]
        return Report(**summary.model_dump(), rows=rows)

    @router.get("/status")
    async def hub_status() -> dict[str, Any]:
        """Shops, cursors, last runs, outbox depth, held orders (as `ecomhub status`)."""
        report: dict[str, Any] = redactor.scrub(await collect_status(settings, store))
        return report

    return router


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )
