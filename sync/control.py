"""What the HTTP surface may ask of the running daemon.

The admin API and the webhook receivers never run sync work inside a request: they ask the daemon
(`sync.daemon.Daemon` implements `HubControl`) and answer at once. The daemon does the work on its
scheduler, under the same leases as the periodic jobs, so a trigger never runs a shop's pull twice.
"""

from datetime import datetime
from typing import Protocol


class HubControl(Protocol):
    @property
    def running(self) -> bool:
        """The scheduler is up and taking work (for `/readyz`)."""
        ...

    def request_pull(self, shop: str) -> None:
        """Run the shop's order pull as soon as possible (coalesces with one already due)."""
        ...

    def request_backfill(self, shop: str, since: datetime, until: datetime) -> None:
        """Pull the shop's orders modified in [since, until) on the backfill cursor."""
        ...

    def hint(self, shop: str, platform_order_id: str) -> None:
        """A webhook or TMC message said this order changed: fetch it, review, route."""
        ...

    def request_route(self) -> None:
        """Route what is ready now (after a held order is released, say)."""
        ...

    def wake_dispatcher(self) -> None:
        """Outbox messages were written: send them now rather than at the next idle tick."""
        ...
