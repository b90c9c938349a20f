"""The event loop every command runs on: uvloop where it is installed (Linux and macOS), else
asyncio's own.

The hub is bound by per-message overhead on one core: callbacks in and HTTP calls out, each a
handful of event-loop turns and thread hand-offs (aiosqlite). uvloop runs those about a third
faster end to end (bench/fulfil.py: 16 → 26 orders/s with httptools beside it, which uvicorn
picks up by itself). Behaviour is the same on both loops; tests run on asyncio's.
"""

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        module = importlib.import_module("uvloop")
    except ImportError:  # Windows, or an install without it
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
    return factory


def run(work: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(work)` on the fastest loop available."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(work)
