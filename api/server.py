"""Serving the hub's ASGI app with uvicorn inside the caller's event loop."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn._types import ASGIApplication


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The caller owns signals (the CLI, the daemon's lifecycle), not uvicorn."""
        yield


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApplication | FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    graceful_shutdown: int | None = None,
) -> AsyncIterator[int]:
    """Run an ASGI `app` until the block ends; yields the bound port (port 0 picks a free one).
    `graceful_shutdown` caps how long open connections may hold up the end of the block."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    config.timeout_graceful_shutdown = graceful_shutdown
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise RuntimeError(f"the HTTP server on {host}:{port} stopped at start")
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for configs that must name the port up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
