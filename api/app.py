"""The hub's ASGI app: callbacks, health (the daemon adds webhooks, admin and metrics)."""

from collections.abc import Callable

from fastapi import FastAPI

from api.qimen import qimen_router
from config import Settings
from models.store import Store


def create_app(
    settings: Settings, store: Store, *, on_write: Callable[[], None] | None = None
) -> FastAPI:
    app = FastAPI(title="ecomhub", version="0.1.0")
    app.include_router(qimen_router(settings, store, on_write=on_write))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
