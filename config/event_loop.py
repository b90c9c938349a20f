"""The event loop every command runs on: uvloop where it is installed (Linux and macOS), else
asyncio's own.

The hub is bound by per-message overhead on one core (callbacks in, HTTP calls out, event-loop
turns, aiosqlite thread hand-offs), which is what uvloop and httptools (picked up by uvicorn by
itself) make cheaper. Measured on bench/fulfil.py the gain was large once (16 → 26 orders/s) and
within noise on a quiet machine later (15–19 orders/s on either loop): see bench/README.md.
Behaviour is the same on both loops; the tests run on asyncio's, the subprocess e2e and crash
tests on uvloop.
"""

import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def use_fastest_loop() -> bool:
    """Make uvloop the event loop policy when it is installed; True if it is."""
    try:
        module = importlib.import_module("uvloop")
    except ImportError:  # Windows, or an install without it
        return False
    asyncio.set_event_loop_policy(module.EventLoopPolicy())
    return True


def run(work: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(work)` on the fastest loop available."""
    use_fastest_loop()
    return asyncio.run(work)
