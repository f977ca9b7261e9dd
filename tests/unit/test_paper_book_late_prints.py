"""The paper broker's books and prices from before an order: a bar that began
before it, a print Polygon reported late, a price from before the broker."""

from __future__ import annotations

import pytest

from services.paper_broker.domain.book import OrderSpec
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.unit.paper_books import D, book


def test_a_bar_that_began_before_an_order_was_placed_fills_it_only_at_its_close() -> None:
    """A bar closes after it began: its open, high and low may be prices from
    before an order placed meanwhile, which that order never had. Such a bar
    is only its close to the order (its last trade); the next bar is whole."""
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D("99.5"), ts_ns=10))
    b.on_market(MarketUpdate.trade("AAPL", D(101), ts_ns=30))
    # Placed at market time 30, with AAPL at 101: neither fills nor triggers.
    buy, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100)))
    stop, _ = b.submit("A", OrderSpec("AAPL", "sell", D(1), "stop", stop_price=D(100)))
    # The bar of [0, 100): its 99.5 (open, low) was at 10, before the orders.
    before = MarketUpdate.bar("AAPL", D("99.5"), D(101), D("99.5"), D("100.5"), 100, 0)
    assert b.on_market(before) == []
    assert [o.status for o in b.orders("A")] == ["new", "new"]
    assert b.last_price("AAPL") == D("100.5")
    # A bar of [100, 200), wholly after them: the buy at its open, the stop
    # triggered by its low and filled at the stop.
    after = MarketUpdate.bar("AAPL", D("100.2"), D("100.4"), D("99.8"), D(100), 200, 100)
    fills = [(u.order.id, u.price) for u in b.on_market(after) if u.event == "fill"]
    assert fills == [(buy.id, D(100)), (stop.id, D(100))]
    # One placed during a bar, whose close crosses its limit, fills at the close.
    late, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D("99.9")))
    crossing = MarketUpdate.bar("AAPL", D(100), D(100), D("99.0"), D("99.7"), 300, 150)
    [fill] = b.on_market(crossing)
    assert (fill.order.id, fill.price) == (late.id, D("99.7"))


def test_with_bars_only_the_bar_forming_when_an_order_is_placed_is_only_its_close() -> None:
    """With bars only (no trades), an order's market time is the end of the
    last bar, which is when the next one begins: that bar was forming when
    the order came (the order came after the last bar ended), so its open,
    high and low may be from before the order. It is only its close to the
    order, as a bar that began earlier is; the one after it is whole. Until
    this its start, equal to the order's market time, did not count as
    before it, and a limit placed mid-bar filled at an open or low printed
    before it was placed (a stop was triggered by one)."""
    b = book()
    minute = 60_000_000_000
    b.on_market(MarketUpdate.bar("AAPL", D(101), D(101), D(101), D(101), minute, 0))
    buy, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100)))
    stop, _ = b.submit("A", OrderSpec("AAPL", "sell", D(1), "stop", stop_price=D(100)))
    assert buy.placed_at_market_ns == stop.placed_at_market_ns == minute
    # Forming when they were placed: its 99 (low) may be from before them.
    forming = MarketUpdate.bar("AAPL", D(101), D(101), D(99), D("100.5"), 2 * minute, minute)
    assert b.on_market(forming) == []
    assert [(o.status, o.triggered) for o in b.orders("A")] == [("new", False), ("new", False)]
    # The next bar began after them: whole.
    whole = MarketUpdate.bar(
        "AAPL", D("100.4"), D("100.4"), D("99.8"), D(100), 3 * minute, 2 * minute
    )
    fills = [(u.order.id, u.price) for u in b.on_market(whole) if u.event == "fill"]
    assert fills == [(buy.id, D(100)), (stop.id, D(100))]


def test_a_print_stamped_before_a_limit_order_was_placed_does_not_fill_it() -> None:
    """A trade Polygon reported late, stamped before a limit order was placed
    (or a bar that ended before it), is a price the order never had: it
    fills nothing, as a bar's low from before the order does not. A late
    trade stamped after the order was placed was a price it had: it fills."""
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(101), ts_ns=30))
    # Placed at market time 30, with AAPL at 101: it rests.
    buy, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100)))
    assert b.on_market(MarketUpdate.trade("AAPL", D(99), ts_ns=10)) == []  # reported late
    assert b.on_market(MarketUpdate.bar("AAPL", D(98), D(98), D(98), D(98), 20, 0)) == []
    assert [o.status for o in b.orders("A")] == ["new"]
    b.on_market(MarketUpdate.trade("AAPL", D(102), ts_ns=50))
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D("99.5"), ts_ns=40))  # late, after it
    assert (fill.order.id, fill.price) == (buy.id, D("99.5"))
    # A sell limit the same way.
    sell, _ = b.submit("A", OrderSpec("AAPL", "sell", D(1), "limit", limit_price=D(103)))
    assert b.on_market(MarketUpdate.trade("AAPL", D(104), ts_ns=45)) == []
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D(104), ts_ns=60))
    assert (fill.order.id, fill.price) == (sell.id, D(104))
    # A stop-limit triggered when placed rests as a limit: the same.
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=30))
    spec = OrderSpec("IBM", "buy", D(1), "stop_limit", limit_price=D("100.5"), stop_price=D(100))
    stop, _ = b.submit("A", spec)
    assert (stop.status, stop.triggered) == ("new", True)
    assert b.on_market(MarketUpdate.trade("IBM", D(100), ts_ns=10)) == []  # reported late
    [fill] = b.on_market(MarketUpdate.trade("IBM", D(100), ts_ns=40))
    assert (fill.order.id, fill.price) == (stop.id, D(100))


def test_a_print_stamped_before_a_stop_order_was_placed_does_not_trigger_it() -> None:
    """A late trade stamped before a stop was placed (or a bar that ended
    before it) does not trigger it: it was no price the order had, and a
    plain stop it triggered filled at that price. One stamped after does."""
    b = book()
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=30))
    # Placed at market time 30, with IBM at 101: neither is triggered.
    stop, _ = b.submit("A", OrderSpec("IBM", "sell", D(1), "stop", stop_price=D(100)))
    spec = OrderSpec("IBM", "sell", D(1), "stop_limit", limit_price=D("99.5"), stop_price=D(100))
    stop_limit, _ = b.submit("A", spec)
    assert b.on_market(MarketUpdate.trade("IBM", D(95), ts_ns=10)) == []  # reported late
    assert b.on_market(MarketUpdate.bar("IBM", D(96), D(96), D(95), D(95), 20, 0)) == []
    assert [(o.status, o.triggered) for o in b.orders("A")] == [("new", False), ("new", False)]
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=50))
    updates = b.on_market(MarketUpdate.trade("IBM", D(99), ts_ns=40))  # late, after them
    assert [(u.event, u.order.id, u.price) for u in updates] == [
        ("fill", stop.id, D(101)),  # the newest print: a triggered stop is a market order
        ("fill", stop_limit.id, D(101)),  # its limit, 99.5, checked against the newest
    ]


def test_a_stop_a_late_print_triggers_fills_at_the_newest_print_as_its_rest_does() -> None:
    """A triggered stop is a market order: it fills at the newest print by
    the market's time. A trade (or bar) reported late, stamped after the stop
    was placed but before the newest print, triggers it (a price it had), and
    the stop fills at the newest print, slipped, as the rest of a stop
    already triggered does. Until this the part filled on triggering took the
    late print's price (a bar's: the stop or its open), the rest the newest."""
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(1), slippage_bps=D(10)))
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=30))
    # Placed at market time 30, with IBM at 101: neither is triggered.
    sell, _ = b.submit("A", OrderSpec("IBM", "sell", D(2), "stop", stop_price=D(100)))
    buy, _ = b.submit("A", OrderSpec("IBM", "buy", D(1), "stop", stop_price=D(103)))
    assert b.on_market(MarketUpdate.trade("IBM", D(102), ts_ns=50)) == []
    updates = b.on_market(MarketUpdate.trade("IBM", D(99), ts_ns=40))  # late, after them
    assert [(u.event, u.order.id, u.price) for u in updates] == [
        ("partial_fill", sell.id, D("101.898")),  # 102 less 10 bps, not 99 less 10 bps
    ]
    # A late bar of [35, 45), wholly after the orders: its high triggers the
    # buy stop (at 103 it filled at 103.103), its low the sell's rest.
    updates = b.on_market(MarketUpdate.bar("IBM", D(100), D(104), D(98), D(100), 45, 35))
    assert [(u.event, u.order.id, u.price) for u in updates] == [
        ("fill", sell.id, D("101.898")),
        ("fill", buy.id, D("102.102")),
    ]
    assert b.last_price("IBM") == D(102)


def test_a_market_order_fills_at_the_newest_print_not_a_late_older_one() -> None:
    """Polygon reports some trades late, after newer ones: a trade stamped
    before the newest print is not the market's price. A market order placed
    after it fills at the newest print by the market's time, a marketable
    limit is checked against that, and the symbol's last price is that."""
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(101), ts_ns=30))
    b.on_market(MarketUpdate.trade("AAPL", D(95), ts_ns=10))  # reported late
    assert b.last_price("AAPL") == D(101)
    _, updates = b.submit("A", OrderSpec("AAPL", "buy", D(1)))
    assert [(u.event, u.price) for u in updates] == [("new", None), ("fill", D(101))]
    # A buy limit at 100 is not marketable at 101: it rests.
    limit, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100)))
    assert limit.status == "new"
    # A print at the newest's time, arriving after it, is the newest.
    b.on_market(MarketUpdate.trade("AAPL", D(102), ts_ns=30))
    assert b.last_price("AAPL") == D(102)


def test_the_rest_of_a_market_order_fills_at_the_newest_print_not_a_late_older_one() -> None:
    """A market order larger than one fill fills a part at each price; a
    trade reported late, stamped before the newest print, fills its part at
    the newest print, not at its own. The same for a market order waiting
    for a price when the prices stored before the broker started come."""
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(1)))
    b.on_market(MarketUpdate.trade("AAPL", D(101), ts_ns=30))
    _, updates = b.submit("A", OrderSpec("AAPL", "buy", D(3)))
    updates += b.on_market(MarketUpdate.trade("AAPL", D(95), ts_ns=10))  # reported late
    updates += b.on_market(MarketUpdate.trade("AAPL", D(102), ts_ns=40))
    fills = [u.price for u in updates if u.execution_id is not None]
    assert fills == [D(101), D(101), D(102)]
    # Placed before any price: it waits, then fills a part at each stored one.
    _, updates = b.submit("A", OrderSpec("MSFT", "sell", D(2)))
    updates += b.set_last("MSFT", D(50), ts_ns=30)
    updates += b.set_last("MSFT", D(45), ts_ns=20)  # an older subject's last message
    assert [u.price for u in updates if u.execution_id is not None] == [D(50), D(50)]
    # A triggered stop fills as a market order: its rest at the newest print too.
    b.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=10))
    _, updates = b.submit("A", OrderSpec("IBM", "sell", D(2), "stop", stop_price=D(100)))
    updates += b.on_market(MarketUpdate.trade("IBM", D(99), ts_ns=30))
    updates += b.on_market(MarketUpdate.trade("IBM", D(104), ts_ns=20))  # reported late
    assert [u.price for u in updates if u.execution_id is not None] == [D(99), D(99)]


def test_a_price_from_before_the_broker_is_taken_with_its_time_only() -> None:
    """set_last takes a price's market time, no default: with 0 for a time
    left out, a price given after a print with a real time was older than
    it by the market's time, and silently never became the last price."""
    b = book()
    b.set_last("AAPL", D(100), ts_ns=30)
    with pytest.raises(TypeError):
        b.set_last("AAPL", D(101))  # type: ignore[call-arg]
    assert b.last_price("AAPL") == D(100)
    b.set_last("AAPL", D(101), ts_ns=40)
    assert b.last_price("AAPL") == D(101)
