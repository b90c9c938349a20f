"""`GET /metrics`: the hub's Prometheus metrics in the text exposition format.

The state gauges are read from the store on each scrape; a store that cannot be read still gives a
scrape (with `ecomhub_store_up 0`), so the counters keep flowing while the database is down.
"""

from fastapi import APIRouter, Response

from config import Settings
from models.store import Store
from sync.metrics import HubMetrics


def metrics_router(settings: Settings, store: Store, metrics: HubMetrics) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def scrape() -> Response:
        """Prometheus metrics (README, "Metrics", says what each one means)."""
        await metrics.refresh(settings, store)
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    return router
