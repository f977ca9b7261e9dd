"""A stop-limit order triggered by a print reported late is checked against
the market as it is now.

A trade Polygon reports late, stamped after the order was placed but before
the newest print, may trigger a stop (it was a price the order had). A plain
stop it triggers is a market order and fills at the newest print; a
stop-limit becomes a limit order, and whether that limit is marketable is
the newest print's question too, not the late one's: until this a buy
stop-limit triggered by a late 102 with its limit at 101 rested, with the
market at 99.5, and a sell one triggered by a late 99 with its limit at 99.5
rested with the market at 101.
"""

from __future__ import annotations

from services.paper_broker.domain.book import OrderSpec
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.unit.paper_books import D, book


def test_a_buy_stop_limit_a_late_print_triggers_fills_at_the_newest_print() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("IBM", D(99), ts_ns=30))
    spec = OrderSpec("IBM", "buy", D(1), "stop_limit", limit_price=D(101), stop_price=D(100))
    order, _ = b.submit("A", spec)
    assert (order.status, order.triggered) == ("new", False)
    assert b.on_market(MarketUpdate.trade("IBM", D("99.5"), ts_ns=50)) == []
    updates = b.on_market(MarketUpdate.trade("IBM", D(102), ts_ns=40))  # late, after it
    assert [(u.event, u.order.id, u.price) for u in updates] == [
        ("fill", order.id, D("99.5")),  # the market now, within the limit
    ]
    assert b.order("A", order.id).triggered  # type: ignore[union-attr]


def test_a_sell_stop_limit_a_late_print_triggers_fills_at_the_newest_print_slipped() -> None:
    b = book(fill_model=FillModelConfig(slippage_bps=D(10)))
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=30))
    spec = OrderSpec("IBM", "sell", D(1), "stop_limit", limit_price=D("99.5"), stop_price=D(100))
    order, _ = b.submit("A", spec)
    assert b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=50)) == []
    updates = b.on_market(MarketUpdate.trade("IBM", D(99), ts_ns=40))  # late, after it
    # As a marketable limit: 101 less 10 bps, never below its limit.
    assert [(u.event, u.order.id, u.price) for u in updates] == [
        ("fill", order.id, D("100.899")),
    ]


def test_a_stop_limit_a_late_bar_triggers_rests_if_the_newest_print_is_not_marketable() -> None:
    """A late bar, wholly after the order, reaches a sell stop at 100 with
    its limit at 100.5; the newest print, 100.2, is below the limit: it is
    triggered and rests as a limit, filled by a later print at it."""
    b = book()
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=30))
    spec = OrderSpec("IBM", "sell", D(1), "stop_limit", limit_price=D("100.5"), stop_price=D(100))
    order, _ = b.submit("A", spec)
    assert b.on_market(MarketUpdate.trade("IBM", D("100.2"), ts_ns=50)) == []
    late = MarketUpdate.bar("IBM", D(101), D(101), D(99), D("100.6"), 45, 35)
    updates = b.on_market(late)
    assert [(u.event, u.order.id, u.price) for u in updates] == [("triggered", order.id, None)]
    [fill] = b.on_market(MarketUpdate.trade("IBM", D("100.7"), ts_ns=60))
    assert (fill.order.id, fill.price) == (order.id, D("100.7"))
