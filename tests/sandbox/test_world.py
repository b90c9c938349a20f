"""The world model: determinism, catalogue, the order mix and the lifecycle rules."""

from collections import Counter
from datetime import datetime, timedelta

import pytest

from sandbox.world import CST, AlreadyShipped, World, WorldError, to_cst

EPOCH = datetime(2026, 11, 20, 12, 0, 0, tzinfo=CST)


def make(seed: int = 1, count: int = 300) -> World:
    world = World(seed, epoch=EPOCH, clock=lambda: EPOCH)
    world.generate_backlog(count, days=3)
    return world


def fingerprint(world: World) -> list[dict[str, object]]:
    return [order.summary() for order in world.orders()]


def test_same_seed_and_epoch_give_the_same_world() -> None:
    a, b = make(1), make(1)
    assert fingerprint(a) == fingerprint(b)
    assert a.catalog() == b.catalog()
    assert [o.receiver for o in a.orders()] == [o.receiver for o in b.orders()]


def test_a_different_seed_gives_a_different_world() -> None:
    assert fingerprint(make(1)) != fingerprint(make(2))
    assert make(1).catalog() != make(2).catalog()


def test_catalogue_has_merchant_codes_barcodes_and_weights() -> None:
    catalog = make().catalog()
    assert len(catalog) >= 20
    assert catalog[0][0] == "SKU-0001"
    for code, name, barcode, weight in catalog:
        assert code.startswith("SKU-") and name
        digits = [int(c) for c in barcode]
        assert len(digits) == 13
        assert sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0  # EAN-13
        assert weight > 0


def test_shops_list_catalogue_items_plus_a_few_unknown_codes() -> None:
    world = make()
    known = {code for code, *_ in world.catalog()}
    for shop in world.shops.values():
        codes = [li.merchant_code for li in shop.listings]
        assert known <= set(codes)
        unknown = [c for c in codes if c not in known]
        assert 0 < len(unknown) <= len(codes) // 10
    tmall = world.shops["tmall-flagship"].listings
    assert any(li.sku_id is None for li in tmall), "some TOP items have no skus (outer_iid)"
    assert all(li.sku_id is not None for li in world.shops["jd-flagship"].listings)


def test_backlog_has_the_realistic_mix() -> None:
    world = make(count=400)
    top = Counter(o.status for o in world.orders("tmall-flagship"))
    jd = Counter(o.status for o in world.orders("jd-flagship"))
    for status in (
        "WAIT_BUYER_PAY",
        "TRADE_CLOSED_BY_TAOBAO",
        "WAIT_SELLER_SEND_GOODS",
        "WAIT_BUYER_CONFIRM_GOODS",
        "TRADE_CLOSED",
    ):
        assert top[status] > 0, status
    assert top["WAIT_SELLER_SEND_GOODS"] > len(world.orders("tmall-flagship")) / 2
    for status in ("WAIT_SELLER_STOCK_OUT", "WAIT_GOODS_RECEIVE_CONFIRM", "TRADE_CANCELED"):
        assert jd[status] > 0, status
    orders = world.orders()
    assert any(len(o.lines) > 1 for o in orders)
    assert any(o.buyer_message for o in orders)
    assert any(o.seller_memo for o in orders)
    assert any(o.shipped_by == "elsewhere" for o in orders)
    # refunded lines: before shipment in a still-open trade, and after shipment
    assert any(
        o.status == "WAIT_SELLER_SEND_GOODS" and any(li.refunded for li in o.lines) for o in orders
    )
    assert any(o.consign_time and any(li.refunded for li in o.lines) for o in orders)
    provinces = {o.receiver.province for o in orders}
    assert len(provinces) >= 20
    assert {"北京市", "浙江省"} <= provinces


def test_backlog_times_lie_in_the_past_days_and_modified_only_grows() -> None:
    world = make()
    for shop in world.shops:
        for versions in world.versions(shop):
            times = [v.modified for v in versions]
            assert times == sorted(times) and len(set(times)) == len(times)
            assert EPOCH - timedelta(days=3) <= versions[0].modified <= EPOCH
            assert versions[0].created <= versions[0].modified
            assert versions[-1].modified <= EPOCH
            assert all(t.microsecond == 0 and t.utcoffset() == timedelta(hours=8) for t in times)


def test_every_change_bumps_modified_even_in_the_same_second() -> None:
    world = World(3, epoch=EPOCH, clock=lambda: EPOCH)
    order = world.create_order("tmall-flagship", EPOCH)
    memo = world.set_memo("tmall-flagship", order.order_id, "x", EPOCH)
    assert memo.modified == EPOCH + timedelta(seconds=1)
    assert world.order("tmall-flagship", order.order_id) is memo
    assert [c.topic for c in world.changes] == ["TradeBuyerPay", "TradeMemoModified"]


def test_ship_records_the_waybill_and_refuses_a_second_ship() -> None:
    world = World(3, epoch=EPOCH, clock=lambda: EPOCH)
    order = world.create_order("tmall-flagship", EPOCH)
    shipped = world.ship("tmall-flagship", order.order_id, "SF", "SF123", EPOCH)
    assert shipped.status == "WAIT_BUYER_CONFIRM_GOODS"
    assert (shipped.company_code, shipped.waybill, shipped.shipped_by) == ("SF", "SF123", "hub")
    with pytest.raises(AlreadyShipped):
        world.ship("tmall-flagship", order.order_id, "SF", "SF124", EPOCH)
    jd = world.create_order("jd-flagship", EPOCH)
    assert (
        world.ship("jd-flagship", jd.order_id, "467", "JD1").status == "WAIT_GOODS_RECEIVE_CONFIRM"
    )


def test_closed_orders_cannot_be_shipped() -> None:
    world = World(3, epoch=EPOCH, clock=lambda: EPOCH)
    unpaid = world.create_order("tmall-flagship", EPOCH, paid=False)
    assert unpaid.status == "WAIT_BUYER_PAY" and unpaid.pay_time is None
    closed = world.close_unpaid("tmall-flagship", unpaid.order_id, EPOCH)
    assert closed.status == "TRADE_CLOSED_BY_TAOBAO"
    with pytest.raises(WorldError):
        world.ship("tmall-flagship", unpaid.order_id, "SF", "SF1")


def test_refunding_every_line_closes_the_trade() -> None:
    world = World(5, epoch=EPOCH, clock=lambda: EPOCH)
    order = world.create_order("tmall-flagship", EPOCH)
    for line in order.lines:
        state = world.refund_line("tmall-flagship", order.order_id, line.line_id, EPOCH)
    assert state.status == "TRADE_CLOSED"
    assert all(line.refund_status == "SUCCESS" for line in state.lines)
    jd = world.create_order("jd-flagship", EPOCH)
    assert (
        world.refund_line("jd-flagship", jd.order_id, jd.lines[0].line_id).status
        == "TRADE_CANCELED"
    )


def test_live_steps_create_and_advance_orders_at_the_clock() -> None:
    now = [EPOCH]
    world = World(9, epoch=EPOCH, clock=lambda: now[0])
    world.generate_backlog(20, days=1)
    before = len(world.changes)
    for _ in range(40):
        now[0] += timedelta(seconds=2)
        world.step()
    assert len(world.changes) == before + 40
    assert len(world.orders()) > 20
    assert max(o.modified for o in world.orders()) <= to_cst(now[0]) + timedelta(seconds=2)


def test_stock_updates_are_recorded_per_listing() -> None:
    world = World(3, epoch=EPOCH, clock=lambda: EPOCH)
    listing = world.shops["jd-flagship"].listings[0]
    world.set_stock(listing, 17, "test")
    assert listing.quantity == 17
    assert world.stock_updates[-1].merchant_code == listing.merchant_code
    assert world.stock_updates[-1].quantity == 17
