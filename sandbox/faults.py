"""Fault knobs shared by every simulator.

Each knob is a rate (0..1) or a bound, so a test can turn one fault on and observe it. A
`FaultInjector` draws from its own seeded RNG, so the same seed and the same request sequence give
the same faults. Profiles: `calm` (no faults; what the demo and the benchmarks use) and
`adversarial` (every fault on at a rate a robust client must survive).
"""

import random
from dataclasses import dataclass, field, replace
from typing import Literal

ProfileName = Literal["calm", "adversarial"]


@dataclass(frozen=True)
class FaultProfile:
    rate_limit: float = 0.0
    """Share of calls answered with the platform's rate-limit error."""
    ban_seconds: int = 1
    """Seconds named in a rate-limit answer (TOP `sub_msg` "This ban will last for N more seconds")."""
    transient: float = 0.0
    """Share answered with a transient error (TOP code 15 `isp.*`, JD system error)."""
    http_5xx: float = 0.0
    """Share answered with HTTP 502/503 and no envelope."""
    slow: float = 0.0
    """Share of calls delayed by `slow_seconds` before answering."""
    slow_seconds: float = 0.0
    visibility_latency: float = 0.0
    """An order modified at T shows up in queries only after T + up to this many seconds."""
    paging_drift: float = 0.0
    """Chance, per page served, that a not-yet-served order of the window is modified (moves)."""
    ambiguous: float = 0.0
    """WMS create/cancel: the change is recorded, then the connection drops or the answer is late."""
    ambiguous_delay: float = 12.0
    """Seconds a 'late answer' waits; longer than the hub's default 10 s WMS timeout."""
    duplicate_callbacks: float = 0.0
    """Share of callbacks (Qimen confirm, Kuaidi100 push) sent twice."""
    lost_session: float = 0.0
    """ERP: share of calls answered as if the session were lost."""

    def with_overrides(self, **knobs: float) -> "FaultProfile":
        return replace(self, **knobs)  # type: ignore[arg-type]


PROFILES: dict[str, FaultProfile] = {
    "calm": FaultProfile(),
    "adversarial": FaultProfile(
        rate_limit=0.03,
        ban_seconds=1,
        transient=0.05,
        http_5xx=0.03,
        slow=0.02,
        slow_seconds=0.3,
        visibility_latency=3.0,
        paging_drift=0.3,
        ambiguous=0.1,
        ambiguous_delay=2.0,
        duplicate_callbacks=0.2,
        lost_session=0.05,
    ),
}


@dataclass
class FaultInjector:
    """Seeded dice for one simulator. `roll(rate)` is True with probability `rate`."""

    profile: FaultProfile
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def uniform(self, low: float, high: float) -> float:
        return self._rng.uniform(low, high)

    def choice(self, options: list[int]) -> int:
        return self._rng.choice(options)
