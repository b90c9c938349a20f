"""Routing decisions: region, priority, split, no-stock, unknown stock."""

from config import WarehouseConfig
from sync.routing import RouteLine, route


def wh(code: str, provinces: list[str], priority: int) -> WarehouseConfig:
    return WarehouseConfig.model_validate(
        {
            "code": code,
            "api_url": "http://127.0.0.1:1/router/qimen/service",
            "app_key": "k",
            "app_secret": "s",
            "customer_id": "O",
            "provinces": provinces,
            "priority": priority,
            "default_carrier": "SF",
        }
    )


EAST = wh("EAST", ["上海", "浙江"], 2)
NORTH = wh("NORTH", ["北京"], 1)
SOUTH = wh("SOUTH", ["广东"], 3)
ALL = [EAST, NORTH, SOUTH]
LINES = (RouteLine(1, "A", 2), RouteLine(2, "B", 1))


def test_prefers_the_warehouse_serving_the_province() -> None:
    stock = {w.code: {"A": 5, "B": 5} for w in ALL}
    result = route(LINES, "浙江", ALL, stock, allow_split=True)
    assert [a.warehouse for a in result.assignments] == ["EAST"]
    assert result.assignments[0].lines == LINES


def test_then_by_priority_when_no_region_matches() -> None:
    stock = {w.code: {"A": 5, "B": 5} for w in ALL}
    assert route(LINES, "四川", ALL, stock, allow_split=True).assignments[0].warehouse == "NORTH"


def test_skips_a_regional_warehouse_without_stock() -> None:
    stock = {"EAST": {"A": 1, "B": 5}, "NORTH": {"A": 5, "B": 5}, "SOUTH": {}}
    result = route(LINES, "浙江", ALL, stock, allow_split=True)
    assert [a.warehouse for a in result.assignments] == ["NORTH"]


def test_splits_in_preference_order() -> None:
    stock = {"EAST": {"A": 1}, "NORTH": {"B": 1}, "SOUTH": {"A": 5}}
    result = route(LINES, "浙江", ALL, stock, allow_split=True)
    assert [(a.warehouse, a.lines) for a in result.assignments] == [
        ("EAST", (RouteLine(1, "A", 1),)),
        ("NORTH", (RouteLine(2, "B", 1),)),
        ("SOUTH", (RouteLine(1, "A", 1),)),
    ]


def test_no_stock_anywhere_or_split_forbidden_is_not_routed() -> None:
    stock = {"EAST": {"A": 1}, "NORTH": {"B": 1}, "SOUTH": {"A": 1}}
    assert not route(LINES, "浙江", ALL, stock, allow_split=False).routed
    short = {"EAST": {"A": 1}, "NORTH": {"B": 1}, "SOUTH": {}}
    result = route(LINES, "浙江", ALL, short, allow_split=True)
    assert not result.routed and "do not have every line" in result.reason


def test_unknown_stock_routes_by_region_and_priority() -> None:
    stock = {"EAST": {}}  # NORTH and SOUTH were never read
    result = route(LINES, "浙江", ALL, stock, allow_split=True)
    assert [a.warehouse for a in result.assignments] == ["NORTH"]
    assert result.unknown_stock == ("NORTH",)


def test_same_sku_on_two_lines_is_checked_together() -> None:
    lines = (RouteLine(1, "A", 2), RouteLine(2, "A", 2))
    stock = {"EAST": {"A": 3}, "NORTH": {"A": 4}, "SOUTH": {}}
    assert route(lines, "浙江", ALL, stock, allow_split=False).assignments[0].warehouse == "NORTH"
