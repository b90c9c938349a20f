"""Pieces the benchmarks share: timing the sandbox WMS's accepted creates, ample stock."""

import time
from typing import SupportsIndex

from sandbox.qimen import DeliveryOrder
from sandbox.server import Sandbox

AMPLE = 10**8


class TimedCreates(list[DeliveryOrder]):
    """`sb.qimen.creates` with the wall time of each append (the WMS accepted the create)."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: dict[str, float] = {}

    def append(self, order: DeliveryOrder, /) -> None:
        self.accepted.setdefault(order.code, time.time())
        super().append(order)

    def insert(self, index: SupportsIndex, order: DeliveryOrder, /) -> None:
        self.accepted.setdefault(order.code, time.time())
        super().insert(index, order)


def fill_stock(sb: Sandbox) -> None:
    """Ample stock of every item in every simulated warehouse (no order waits for stock)."""
    sb.qimen.fill_stock(AMPLE)
