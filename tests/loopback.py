"""Loopback plumbing of the simulator tests: serve an ASGI app, wait for a condition."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from api.server import serve


@asynccontextmanager
async def serve_url(app: Starlette) -> AsyncIterator[str]:
    """`app` on a free loopback port (through the hub's own `api.server.serve`); yields its URL."""
    async with serve(app, graceful_shutdown=2) as port:
        yield f"http://127.0.0.1:{port}"


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
