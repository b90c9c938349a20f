"""The hub's ASGI app: callbacks, webhooks, admin, health and metrics (served by `ecomhub run`)."""

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from api.admin import admin_router
from api.kuaidi100 import kuaidi100_router
from api.metrics import metrics_router
from api.qimen import qimen_router
from api.webhooks import webhooks_router
from config import Settings
from models.store import Store
from sync.control import HubControl
from sync.metrics import HubMetrics


def create_app(
    settings: Settings,
    store: Store,
    *,
    control: HubControl | None = None,
    metrics: HubMetrics | None = None,
    on_write: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; without `control` (tests of the callbacks alone) there are no admin or webhook
    routes, since both need a running daemon to hand their work to."""
    metrics = metrics or HubMetrics()
    if on_write is None and control is not None:
        on_write = control.wake_dispatcher
    app = FastAPI(
        title="ecomhub",
        version="0.1.0",
        description="Webhook receivers, WMS callbacks, admin API, health and metrics of the hub.",
    )
    app.include_router(qimen_router(settings, store, on_write=on_write))
    app.include_router(kuaidi100_router(settings, store, metrics=metrics))
    app.include_router(metrics_router(settings, store, metrics))
    if control is not None:
        app.include_router(admin_router(settings, store, control))
        app.include_router(webhooks_router(settings, store, control, metrics=metrics))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (for liveness probes and the container HEALTHCHECK)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Ready for work: the store answers, its schema is current, the scheduler runs."""
        problems = []
        try:
            current, head = await store.migration_state()
            if current != head:
                problems.append(f"database at migration {current or 'none'}, code needs {head}")
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        if control is None or not control.running:
            problems.append("scheduler not running")
        if problems:
            return JSONResponse({"status": "unready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
