"""The hub's one clock. Everything that asks "what time is it" gets a `Clock` through its constructor,
so tests can fix time; nothing else in the hub reads the system time (ruff bans it elsewhere)."""

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol

CST = timezone(timedelta(hours=8), "CST")
"""China Standard Time: the marketplaces' and Qimen's wall clock."""


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock that only moves when told to."""

    current: datetime = field(default_factory=lambda: datetime(2026, 11, 20, tzinfo=UTC))

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


def monotonic() -> float:
    return time.monotonic()


def parse_cli_time(value: str) -> datetime:
    """ISO 8601 (`2026-11-20T08:00:00+08:00`) or `yyyy-MM-dd HH:mm:ss`; no offset means CST."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (use 2026-11-20T08:00:00+08:00 or '2026-11-20 08:00:00')"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CST)
    return parsed.astimezone(UTC)
