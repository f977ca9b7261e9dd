"""A print stamped at the very instant an order was placed (by the feed's
clock) is from before the order.

An order's market time is the newest print of its symbol when it was placed
(``placed_at_market_ns``): the order came after the broker had that print,
so another print stamped at the same time, reported after it, happened
before the order reached the market. It neither fills a limit nor triggers
a stop, as a print stamped earlier does not, and as a bar that began at that
time is only its close to the order. Until this it filled the order.
"""

from __future__ import annotations

from services.paper_broker.domain.book import OrderSpec
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.unit.paper_books import D, book


def test_a_trade_stamped_at_a_limit_order_s_market_time_does_not_fill_it() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(101), ts_ns=30))
    buy, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100)))
    sell, _ = b.submit("A", OrderSpec("AAPL", "sell", D(1), "limit", limit_price=D(102)))
    assert buy.placed_at_market_ns == sell.placed_at_market_ns == 30
    assert b.on_market(MarketUpdate.trade("AAPL", D(99), ts_ns=30)) == []
    assert b.on_market(MarketUpdate.trade("AAPL", D(103), ts_ns=30)) == []
    assert [o.status for o in b.orders("A")] == ["new", "new"]
    # A nanosecond later is after the order: it fills.
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D("99.5"), ts_ns=31))
    assert (fill.order.id, fill.price) == (buy.id, D("99.5"))


def test_a_trade_stamped_at_a_stop_order_s_market_time_does_not_trigger_it() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=30))
    stop, _ = b.submit("A", OrderSpec("IBM", "sell", D(1), "stop", stop_price=D(100)))
    spec = OrderSpec("IBM", "sell", D(1), "stop_limit", limit_price=D(99), stop_price=D(100))
    stop_limit, _ = b.submit("A", spec)
    assert b.on_market(MarketUpdate.trade("IBM", D(95), ts_ns=30)) == []
    assert [(o.status, o.triggered) for o in b.orders("A")] == [("new", False), ("new", False)]
    updates = b.on_market(MarketUpdate.trade("IBM", D("99.5"), ts_ns=31))
    assert [(u.event, u.order.id, u.price) for u in updates] == [
        ("fill", stop.id, D("99.5")),
        ("fill", stop_limit.id, D("99.5")),
    ]


def test_a_bar_that_ended_at_an_order_s_market_time_does_not_fill_it() -> None:
    """A bar ending at the order's market time ended before the order: not
    even its close, its last trade, is a price the order had."""
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(101), ts_ns=30))
    buy, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100)))
    assert b.on_market(MarketUpdate.bar("AAPL", D(99), D(99), D(99), D(99), 30, 0)) == []
    assert b.order("A", buy.id) == buy
