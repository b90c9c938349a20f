"""Routing: which warehouse ships an order, or how it is split, or why it cannot ship yet.

Policy (DESIGN.md, "Review and route"):
1. Candidates are ordered by whether they serve the receiver's province, then by `priority`
   (lower first), then by code, so the choice is deterministic.
2. The first candidate that can fill every line from its available stock (on hand − reserved)
   ships the whole order. A warehouse whose stock the hub has never read counts as able to fill
   (it is routed by region and priority alone; the caller logs that).
3. Otherwise, when the shop allows splitting, the order is split greedily in candidate order; each
   warehouse takes what it has of what is still missing. Delivery-order codes are
   `<shop>-<order id>-1`, `-2`, …
4. If the order still cannot be filled (or may not be split), it is held `no_stock`.

This module only decides; the caller reserves the stock and writes the outbox messages.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from config import WarehouseConfig


@dataclass(frozen=True)
class RouteLine:
    """One shippable line: the order line number and the master SKU/qty it ships as."""

    order_line_no: int
    sku: str
    qty: int


@dataclass(frozen=True)
class Assignment:
    warehouse: str
    lines: tuple[RouteLine, ...]


@dataclass(frozen=True)
class Route:
    assignments: tuple[Assignment, ...]
    """Empty when the order cannot be routed (`reason` says why)."""
    reason: str = ""
    unknown_stock: tuple[str, ...] = ()
    """Warehouses routed to without a stock reading."""

    @property
    def routed(self) -> bool:
        return bool(self.assignments)


def candidates(warehouses: Sequence[WarehouseConfig], province: str) -> list[WarehouseConfig]:
    return sorted(warehouses, key=lambda w: (province not in w.provinces, w.priority, w.code))


def route(
    lines: Sequence[RouteLine],
    province: str,
    warehouses: Sequence[WarehouseConfig],
    available: Mapping[str, Mapping[str, int]],
    *,
    allow_split: bool,
) -> Route:
    """Decide a route. `available[warehouse][sku]` is on hand − reserved; a warehouse missing
    from `available` has never been read."""
    if not warehouses:
        return Route((), reason="no warehouses configured")
    needed: dict[str, int] = {}
    for line in lines:
        needed[line.sku] = needed.get(line.sku, 0) + line.qty
    ordered = candidates(warehouses, province)
    for warehouse in ordered:
        stock = available.get(warehouse.code)
        if stock is None or all(stock.get(sku, 0) >= qty for sku, qty in needed.items()):
            unknown = (warehouse.code,) if stock is None else ()
            return Route((Assignment(warehouse.code, tuple(lines)),), unknown_stock=unknown)
    if not allow_split:
        return Route((), reason="no single warehouse has every line in stock")
    return _split(lines, ordered, available)


def _split(
    lines: Sequence[RouteLine],
    ordered: Sequence[WarehouseConfig],
    available: Mapping[str, Mapping[str, int]],
) -> Route:
    missing = [line.qty for line in lines]
    assignments: list[Assignment] = []
    for warehouse in ordered:
        stock = dict(available.get(warehouse.code, {}))
        taken: list[RouteLine] = []
        for index, line in enumerate(lines):
            take = min(missing[index], stock.get(line.sku, 0))
            if take > 0:
                taken.append(RouteLine(line.order_line_no, line.sku, take))
                stock[line.sku] -= take
                missing[index] -= take
        if taken:
            assignments.append(Assignment(warehouse.code, tuple(taken)))
        if not any(missing):
            return Route(tuple(assignments))
    return Route((), reason="the warehouses together do not have every line in stock")
