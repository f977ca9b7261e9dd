"""The paper broker's books (services/paper_broker/domain/book.py): pure, table-tested."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.paper_broker.domain.book import (
    BookConfig,
    OrderSpec,
    PaperBook,
    Refused,
    TimeInForce,
    TradeUpdate,
    day_order_expiry_ns,
)
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from services.paper_broker.domain.model import DayOrderClose

D = Decimal


class Ticks:
    def __init__(self) -> None:
        self.t = 1_000

    def now_ns(self) -> int:
        self.t += 1
        return self.t


def book(**kwargs: object) -> PaperBook:
    counter = itertools.count(1)
    config = BookConfig(**kwargs)  # type: ignore[arg-type]
    return PaperBook(config, clock=Ticks(), ids=lambda: f"id-{next(counter)}")


def events(updates: list[TradeUpdate]) -> list[str]:
    return [u.event for u in updates]


def test_market_order_fills_at_once_and_books_the_position() -> None:
    b = book(fill_model=FillModelConfig(slippage_bps=D(10)))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    order, updates = b.submit("A", OrderSpec("AAPL", "buy", D(10), client_order_id="c1"))
    assert events(updates) == ["new", "fill"]
    assert order.status == "filled"
    assert order.filled_avg_price == D("200.2")
    fill = updates[1]
    assert (fill.qty, fill.price, fill.position_qty) == (D(10), D("200.2"), D(10))
    [pos] = b.positions("A")
    assert (pos.symbol, pos.qty, pos.avg_entry_price) == ("AAPL", D(10), D("200.2"))
    assert b.positions("B") == []


def test_a_client_order_id_used_before_is_refused_as_alpaca_does() -> None:
    """Alpaca answers a repeated client order id with 422 (40010001), not
    with the order: the paper broker does the same, and changes nothing."""
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    first, _ = b.submit("A", OrderSpec("AAPL", "buy", D(10), client_order_id="c1"))
    for spec in (
        OrderSpec("AAPL", "buy", D(10), client_order_id="c1"),  # the same order again
        OrderSpec("AAPL", "sell", D(10), client_order_id="c1"),  # another one
    ):
        with pytest.raises(Refused, match="client_order_id must be unique") as e:
            b.submit("A", spec)
        assert (e.value.status, e.value.code) == (422, 40010001)
    assert b.orders("A", "all") == [first]
    assert b.positions("A")[0].qty == D(10)
    # The same id in another account is another order.
    other, _ = b.submit("B", OrderSpec("AAPL", "buy", D(10), client_order_id="c1"))
    assert other.id != first.id


def test_large_order_fills_in_partial_fills_as_the_market_trades() -> None:
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(100)))
    b.on_market(MarketUpdate.trade("MSFT", D(400)))
    order, updates = b.submit("A", OrderSpec("MSFT", "sell", D(250)))
    assert events(updates) == ["new", "partial_fill"]
    assert order.status == "partially_filled"
    u1 = b.on_market(MarketUpdate.trade("MSFT", D(401)))
    u2 = b.on_market(MarketUpdate.trade("MSFT", D(402)))
    assert events(u1 + u2) == ["partial_fill", "fill"]
    assert [u.qty for u in updates[1:] + u1 + u2] == [D(100), D(100), D(50)]
    final = b.order("A", order.id)
    assert final is not None
    assert final.filled_qty == D(250)
    assert final.filled_avg_price == D("400.8")  # (400*100 + 401*100 + 402*50) / 250
    fills = b.fills("A", order.id)
    assert [(f.cum_qty, f.leaves_qty, f.type) for f in fills] == [
        (D(100), D(150), "partial_fill"),
        (D(200), D(50), "partial_fill"),
        (D(250), D(0), "fill"),
    ]
    assert b.positions("A")[0].qty == D(-250)
    # Other symbols do not move it.
    assert b.on_market(MarketUpdate.trade("AAPL", D(1))) == []


def test_limit_order_rests_then_fills_when_crossed_and_cancel_rules() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    order, updates = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(199)))
    assert events(updates) == ["new"]
    assert [o.id for o in b.orders("A")] == [order.id]
    assert b.on_market(MarketUpdate.trade("AAPL", D("199.5"))) == []
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D("198.9")))
    assert (fill.event, fill.price) == ("fill", D("198.9"))  # better than the limit
    assert b.orders("A") == []
    with pytest.raises(Refused, match="not cancelable") as e:
        b.cancel("A", order.id)
    assert e.value.status == 422
    with pytest.raises(Refused, match="not found") as e:
        b.cancel("A", "nope")
    assert e.value.status == 404


def test_cancel_all_and_close_all() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    b.on_market(MarketUpdate.trade("MSFT", D(20)))
    b.submit("A", OrderSpec("AAPL", "buy", D(3)))
    b.submit("A", OrderSpec("MSFT", "sell", D(2)))
    resting, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(5)))
    entries, canceled = b.cancel_all("A")
    assert [(u.event, u.order.id) for u in canceled] == [("canceled", resting.id)]
    assert [(e.order.id, e.order.status, e.refused) for e in entries] == [
        (resting.id, "canceled", None)
    ]
    closings, updates = b.close_all("A")
    orders = [c.order for c in closings if c.order is not None]
    assert sorted((o.symbol, o.side, o.qty, o.status) for o in orders) == [
        ("AAPL", "sell", D(3), "filled"),
        ("MSFT", "buy", D(2), "filled"),
    ]
    assert events(updates) == ["new", "fill", "new", "fill"]
    assert b.positions("A") == []


@pytest.mark.parametrize(
    ("spec", "status", "message"),
    [
        (OrderSpec("AAPL", "buy", D(0)), 422, "qty must be > 0"),
        (OrderSpec("AAPL", "buy", D(1), "limit"), 422, "limit_price is required"),
        (OrderSpec("AAPL", "buy", D(1), "stop"), 422, "stop_price is required"),
        (OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(-1)), 422, "limit_price must be"),
        (OrderSpec("AAPL", "buy", D(1), "stop", "opg", stop_price=D(1)), 422, "market and limit"),
        (OrderSpec("AAPL", "buy", D(1), client_order_id="x" * 49), 422, "at most 48"),
        (OrderSpec("HALT", "buy", D(1)), 422, "not tradable"),
        (OrderSpec("AAPL", "buy", D(1001)), 403, "maximum order quantity"),
    ],
)
def test_bad_orders_are_refused_and_never_created(
    spec: OrderSpec, status: int, message: str
) -> None:
    b = book(max_order_quantity=D(1000), untradable_symbols=frozenset({"HALT"}))
    with pytest.raises(Refused, match=message) as e:
        b.submit("A", spec)
    assert e.value.status == status
    assert b.orders("A", "all") == []


def test_an_option_order_for_part_of_a_contract_is_refused() -> None:
    """Options trade in whole contracts: a broker refuses 1.5 of one (422) and
    places nothing; 2.0 is two contracts, and shares may be fractional."""
    option = "O:SPY241220P00720000"
    b = book()
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    for qty in (D("1.5"), D("0.01"), D("2.000000000001")):
        with pytest.raises(Refused, match="whole number of contracts") as e:
            b.submit("A", OrderSpec(option, "buy", qty, asset_class="us_option"))
        assert (e.value.status, e.value.code) == (422, 42210000)
    assert b.orders("A", "all") == []
    whole, _ = b.submit("A", OrderSpec(option, "buy", D("2.0"), asset_class="us_option"))
    part, _ = b.submit("A", OrderSpec("AAPL", "buy", D("0.5")))
    assert (whole.status, part.status) == ("filled", "filled")
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D("0.5")), (option, D(2))]


def test_an_option_order_fills_in_whole_contracts_under_a_fractional_fill_cap() -> None:
    """A ``max_fill_quantity`` of 2.5 splits shares in 2.5s, but an option
    order in whole contracts (2, then 2, then 1): never part of a contract,
    which no account can hold. A cap under one contract fills one at a time."""
    option = "O:SPY241220P00720000"
    for cap, expected in ((D("2.5"), [D(2), D(2), D(1)]), (D("0.5"), [D(1)] * 5)):
        b = book(fill_model=FillModelConfig(max_fill_quantity=cap))
        b.on_market(MarketUpdate.trade(option, D("1.25")))
        order, updates = b.submit("A", OrderSpec(option, "buy", D(5), asset_class="us_option"))
        while order.status != "filled":
            updates += b.on_market(MarketUpdate.trade(option, D("1.25")))
            order = b.order("A", order.id) or order
        fills = [u.qty for u in updates if u.execution_id is not None]
        assert fills == expected, cap
    b = book(fill_model=FillModelConfig(max_fill_quantity=D("2.5")))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    _, updates = b.submit("A", OrderSpec("AAPL", "buy", D(5)))
    assert [u.qty for u in updates if u.execution_id is not None] == [D("2.5")]


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
        ("triggered", stop_limit.id, None),
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


def test_ioc_and_fok() -> None:
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(10)))
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    ioc, u = b.submit("A", OrderSpec("AAPL", "buy", D(25), time_in_force="ioc"))
    assert events(u) == ["new", "partial_fill", "canceled"]
    assert (ioc.status, ioc.filled_qty) == ("canceled", D(10))
    fok, u = b.submit("A", OrderSpec("AAPL", "buy", D(25), time_in_force="fok"))
    assert events(u) == ["new", "canceled"]
    assert fok.filled_qty == 0
    fok, u = b.submit("A", OrderSpec("AAPL", "buy", D(10), time_in_force="fok"))
    assert events(u) == ["new", "fill"]
    _, u = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", "ioc", limit_price=D(1)))
    assert events(u) == ["new", "canceled"]


@pytest.mark.parametrize(
    ("trades", "qty", "avg"),
    [
        ([("buy", 10, 100), ("buy", 10, 110)], 20, "105"),
        ([("buy", 10, 100), ("sell", 4, 120)], 6, "100"),  # reducing keeps the entry
        ([("buy", 10, 100), ("sell", 15, 120)], -5, "120"),  # flipped: entry is the flip
        ([("sell", 5, 50), ("sell", 5, 40)], -10, "45"),
    ],
)
def test_position_average_entry(trades: list[tuple[str, int, int]], qty: int, avg: str) -> None:
    b = book()
    for side, q, price in trades:
        b.on_market(MarketUpdate.trade("X", D(price)))
        b.submit("A", OrderSpec("X", side, D(q)))  # type: ignore[arg-type]
    [pos] = b.positions("A")
    assert (pos.qty, pos.avg_entry_price) == (D(qty), D(avg))


def test_prices_as_large_as_the_contract_carries_fill_without_an_error() -> None:
    """In the default 28-digit context, averaging a fill at 1e16 (to 12
    places) raised InvalidOperation after the book had changed: the update
    was never journaled or sent. The book's arithmetic has room for any
    38-digit amount the contract carries."""
    b = book(fill_model=FillModelConfig(slippage_bps=D(3)))
    b.on_market(MarketUpdate.trade("X", D("1e16")))
    b.submit("A", OrderSpec("X", "buy", D(1)))
    b.on_market(MarketUpdate.trade("X", D("3e16")))
    order, updates = b.submit("A", OrderSpec("X", "buy", D(3)))
    assert events(updates) == ["new", "fill"]
    assert order.filled_avg_price == D("30009000000000000")  # 3e16 + 3 bps, to the cent
    [pos] = b.positions("A")
    assert pos.qty == D(4)
    assert pos.avg_entry_price == D("25007500000000000")  # (1.0003e16 + 3 x 3.0009e16) / 4


def test_quantities_as_large_as_the_contract_carries_fill_exactly() -> None:
    """A quantity of more than 28 digits (the contract carries 38, 12 of them
    places) was rounded in the default decimal context: the order's fill
    came out short of its quantity, it stayed partially filled, and every
    later trade filled its last 1e-12 again, for ever, at the same rounded
    filled quantity."""
    qty = D("10000000000000000.000000000001")
    b = book(fill_model=FillModelConfig(max_fill_quantity=D("6000000000000000")))
    b.on_market(MarketUpdate.trade("X", D(5)))
    order, updates = b.submit("A", OrderSpec("X", "buy", qty))
    updates += b.on_market(MarketUpdate.trade("X", D(5)))
    assert events(updates) == ["new", "partial_fill", "fill"]
    assert [u.qty for u in updates[1:]] == [
        D("6000000000000000"),
        D("4000000000000000.000000000001"),
    ]
    final = b.order("A", order.id)
    assert final is not None
    assert (final.status, final.filled_qty, final.remaining) == ("filled", qty, D(0))
    assert updates[-1].position_qty == qty
    [pos] = b.positions("A")
    assert pos.qty == qty
    assert b.on_market(MarketUpdate.trade("X", D(5))) == []  # nothing left to fill
    b.submit("A", OrderSpec("X", "sell", qty))
    b.on_market(MarketUpdate.trade("X", D(5)))
    assert b.positions("A") == []


def test_a_sell_or_a_close_of_a_quantity_of_more_than_28_digits_is_booked_exactly() -> None:
    """Negating or taking the absolute value of a Decimal rounds it to the
    default context's 28 digits: a sell of 10000000000000000.000000000001
    (29 digits, the contract carries 38) took 10000000000000000.00000000000
    off the position and left 1E-12 of it for ever; a close-all ordered the
    rounded quantity (leaving the same), and the quantity available was the
    rounded one. Quantities are negated and made absolute exactly now."""
    qty = D("10000000000000000.000000000001")
    b = book()
    b.on_market(MarketUpdate.trade("X", D(5)))
    b.submit("A", OrderSpec("X", "buy", qty))
    _, updates = b.submit("A", OrderSpec("X", "sell", qty))
    assert (updates[-1].event, updates[-1].qty, updates[-1].position_qty) == ("fill", qty, D(0))
    assert b.positions("A") == []
    # Short, then a close-all: the closing order is for the whole position.
    b.submit("A", OrderSpec("X", "sell", qty))
    [pos] = b.positions("A")
    assert pos.qty == qty.copy_negate()  # -qty would round it
    assert b.qty_available("A", pos) == pos.qty
    [closing], _ = b.close_all("A")
    assert closing.order is not None
    assert (closing.order.qty, closing.order.status) == (qty, "filled")
    assert b.positions("A") == []


def test_an_amount_the_contract_cannot_carry_is_refused_and_breaks_nothing() -> None:
    """A quantity or price of 1e26 or more (the contract carries 38 digits,
    12 of them places) is refused (422). A quantity past the decimal
    context's exponent (1e1000000, a JSON number or string the wire takes)
    used to raise Overflow in the middle of the submit: the order was in the
    books (listed, never journaled, no answer sent), and every later price of
    its symbol raised again out of on_market, which ends the feed's task and
    the broker with it."""
    b = book()
    b.on_market(MarketUpdate.trade("X", D(5)))
    for spec in (
        OrderSpec("X", "buy", D("1e1000000")),
        OrderSpec("X", "buy", D("1e26")),
        OrderSpec("X", "sell", D(1), "limit", limit_price=D("1e1000000")),
        OrderSpec("X", "buy", D(1), "stop", stop_price=D("1e26")),
    ):
        with pytest.raises(Refused, match="must be less than 1e26") as e:
            b.submit("A", spec)
        assert e.value.status == 422
    assert b.orders("A", "all") == []
    assert b.on_market(MarketUpdate.trade("X", D(6))) == []
    largest = D("99999999999999999999999999.999999999999")  # 38 digits: taken
    order, _ = b.submit("A", OrderSpec("X", "buy", largest))
    assert (order.status, order.filled_qty) == ("filled", largest)


def test_replaying_the_updates_rebuilds_the_same_books() -> None:
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(3)))
    journal: list[TradeUpdate] = []
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    journal += b.submit("A", OrderSpec("AAPL", "buy", D(5), client_order_id="c1"))[1]
    journal += b.on_market(MarketUpdate.trade("AAPL", D(11)))
    journal += b.submit("A", OrderSpec("AAPL", "sell", D(1), "limit", limit_price=D(50)))[1]
    journal += b.submit("B", OrderSpec("MSFT", "sell", D(2)))[1]  # no price yet: rests
    copy = book()
    assert copy.apply_all(journal) == len(journal)
    for acct in ("A", "B"):
        assert copy.orders(acct, "all") == b.orders(acct, "all")
        assert copy.positions(acct) == b.positions(acct)
        assert copy.fills(acct) == b.fills(acct)
    assert copy.by_client_order_id("A", "c1") == b.by_client_order_id("A", "c1")
    # The replayed working orders are live: the next price fills them.
    [fill] = copy.on_market(MarketUpdate.trade("MSFT", D(7)))
    assert (fill.order.account, fill.event) == ("B", "fill")


def test_finished_orders_are_forgotten_open_ones_and_positions_kept() -> None:
    """What a journal's compaction does to the books (forget_finished), and
    its snapshot (state) restored into an empty book gives them back."""
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(3)))
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    done, _ = b.submit("A", OrderSpec("AAPL", "buy", D(3), client_order_id="done"))
    partly, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), client_order_id="partly"))
    resting, _ = b.submit("B", OrderSpec("AAPL", "sell", D(1), "limit", limit_price=D(50)))
    cutoff = b.clock.now_ns()
    late, _ = b.submit("B", OrderSpec("AAPL", "sell", D(2), client_order_id="late"))
    assert (done.status, partly.status, late.status) == ("filled", "partially_filled", "filled")

    assert b.forget_finished(cutoff) == 1
    assert b.order("A", done.id) is None
    assert b.by_client_order_id("A", "done") is None
    assert [f.order_id for f in b.fills("A")] == [partly.id], "its fills went with it"
    assert [o.id for o in b.orders("A")] == [partly.id]
    assert [o.id for o in b.orders("B", "all")] == [resting.id, late.id]
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D(6))]
    assert b.count_orders() == (3, 2)

    copy = book(fill_model=FillModelConfig(max_fill_quantity=D(3)))
    for entry in b.state():
        copy.restore(entry)
    for acct in ("A", "B"):
        assert copy.orders(acct, "all") == b.orders(acct, "all")
        assert copy.positions(acct) == b.positions(acct)
        assert copy.fills(acct) == b.fills(acct)
    # Restored working orders are live, in the order they came.
    fills = copy.on_market(MarketUpdate.trade("AAPL", D(60)))
    assert [(u.order.id, u.event) for u in fills] == [(partly.id, "fill"), (resting.id, "fill")]


def test_close_all_refuses_a_position_it_may_not_close_on_its_own() -> None:
    """A position whose closing order the broker refuses (above
    max_order_quantity, an untradable symbol) is one 403 entry of the 207;
    the orders canceled before it and the other positions' closings stand,
    and come with their updates. Until this the refusal escaped close_all:
    DELETE /v2/positions?cancel_orders=true answered 403 as a whole, its
    open orders were canceled in the books with no update sent or journaled
    (a restart brought them back; a journal compaction kept them canceled),
    and no other position was closed."""
    b = book(max_order_quantity=D(10))
    for symbol in ("AAPL", "MSFT"):
        b.on_market(MarketUpdate.trade(symbol, D(10)))
    for _ in range(2):
        b.submit("A", OrderSpec("AAPL", "buy", D(10)))  # 20: more than one order may close
    b.submit("A", OrderSpec("MSFT", "buy", D(3)))
    resting, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(1)))
    b.config = replace(b.config, untradable_symbols=frozenset({"MSFT"}))  # since

    closings, updates = b.close_all("A", cancel_orders=True)
    assert [(u.event, u.order.id) for u in updates] == [("canceled", resting.id)]
    got = {c.symbol: c.refused for c in closings}
    assert set(got) == {"AAPL", "MSFT"}
    aapl, msft = got["AAPL"], got["MSFT"]
    assert aapl is not None
    assert (aapl.status, aapl.code) == (403, 40310000)
    assert msft is not None
    assert (msft.status, "not tradable" in msft.message) == (422, True)
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D(20)), ("MSFT", D(3))]

    b.config = replace(b.config, untradable_symbols=frozenset())
    closings, updates = b.close_all("A")
    assert [(c.symbol, c.refused is None) for c in closings] == [("AAPL", False), ("MSFT", True)]
    assert [p.symbol for p in b.positions("A")] == ["AAPL"], "MSFT closed beside the refusal"


def test_halted_symbol_is_accepted_then_rejected() -> None:
    b = book(halted_symbols=frozenset({"LULD"}))
    b.on_market(MarketUpdate.trade("LULD", D(5)))
    order, updates = b.submit("A", OrderSpec("LULD", "buy", D(1), client_order_id="h1"))
    assert events(updates) == ["new", "rejected"]
    assert order.status == "rejected"
    assert b.orders("A") == []
    assert b.positions("A") == []
    assert b.on_market(MarketUpdate.trade("LULD", D(4))) == []


def test_the_rest_of_a_marketable_limit_fills_at_the_market_not_at_its_limit() -> None:
    """A limit order marketable at submission but larger than one fill: the
    rest fills at each trade's price (never worse than the limit), as a
    market order would, not at the limit."""
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(100)))
    b.on_market(MarketUpdate.trade("AAPL", D(100)))
    _, updates = b.submit("A", OrderSpec("AAPL", "buy", D(300), "limit", limit_price=D(110)))
    fills = [u for u in updates if u.execution_id is not None]
    fills += b.on_market(MarketUpdate.trade("AAPL", D(100)))
    fills += b.on_market(MarketUpdate.trade("AAPL", D(99)))
    assert [(str(u.qty), str(u.price)) for u in fills] == [
        ("100", "100"),
        ("100", "100"),
        ("100", "99"),
    ]
    sell = b.submit("A", OrderSpec("AAPL", "sell", D(150), "limit", limit_price=D(95)))[1]
    sold = [u for u in sell if u.execution_id is not None]
    sold += b.on_market(MarketUpdate.trade("AAPL", D(98)))
    assert [(str(u.qty), str(u.price)) for u in sold] == [("100", "99"), ("50", "98")]


def test_close_all_refuses_a_position_held_by_orders_unless_it_cancels_them() -> None:
    """Alpaca's close-all answers per position: one whose shares open orders
    hold is refused (403) unless ``cancel_orders``; a halted symbol's too."""
    b = book()
    for symbol, price in (("AAPL", 10), ("MSFT", 20), ("LULD", 5)):
        b.on_market(MarketUpdate.trade(symbol, D(price)))
        b.submit("A", OrderSpec(symbol, "buy", D(4)))
    b.submit("A", OrderSpec("AAPL", "sell", D(3), "limit", limit_price=D(50)))  # holds 3
    b.submit("A", OrderSpec("MSFT", "buy", D(1), "limit", limit_price=D(1)))  # holds none
    b.config = replace(b.config, halted_symbols=frozenset({"LULD"}))  # halted since
    closings, _ = b.close_all("A")
    got = {c.symbol: (c.order.status if c.order else None, c.refused) for c in closings}
    assert got["MSFT"] == ("filled", None)
    aapl, luld = got["AAPL"][1], got["LULD"][1]
    assert aapl is not None
    assert (aapl.status, aapl.code) == (403, 40310000)
    assert aapl.message == "insufficient qty available for order (requested: 4, available: 1)"
    assert luld is not None
    assert (luld.status, "halted" in luld.message) == (403, True)
    assert {p.symbol for p in b.positions("A")} == {"AAPL", "LULD"}

    closings, updates = b.close_all("A", cancel_orders=True)
    assert events(updates)[:2] == ["canceled", "canceled"]  # the limits, first
    assert [(c.symbol, c.refused is None) for c in closings] == [("AAPL", True), ("LULD", False)]
    assert [p.symbol for p in b.positions("A")] == ["LULD"]


# ------------------------------------------------------------- day orders


NY = ZoneInfo("America/New_York")


def ny_ns(text: str) -> int:
    """``2026-12-08 10:00`` New York time, in ns."""
    local = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return int(local.timestamp()) * 1_000_000_000


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


@pytest.mark.parametrize(
    ("placed", "expires"),
    [
        ("2026-12-08 10:00", "2026-12-08 16:00"),  # a Tuesday: its own close
        ("2026-12-08 15:59:59", "2026-12-08 16:00"),
        ("2026-12-08 16:00", "2026-12-09 16:00"),  # at the close: the next session's
        ("2026-12-08 20:30", "2026-12-09 16:00"),
        ("2026-12-11 17:00", "2026-12-14 16:00"),  # Friday evening: Monday's
        ("2026-12-12 11:00", "2026-12-14 16:00"),  # Saturday: Monday's
        ("2026-03-06 17:00", "2026-03-09 16:00"),  # Friday, across the spring clock change
    ],
)
def test_a_day_order_expires_at_the_close_of_the_session_it_was_placed_for(
    placed: str, expires: str
) -> None:
    assert day_order_expiry_ns(ny_ns(placed), dt.time(16, 0)) == ny_ns(expires)
    assert day_order_expiry_ns(ny_ns(placed), "close") == ny_ns(expires)


@pytest.mark.parametrize(
    ("placed", "expires"),
    [
        # 2025-11-28, the day after Thanksgiving: the NYSE closes at 13:00.
        ("2025-11-28 10:00", "2025-11-28 13:00"),
        ("2025-11-28 12:59:59", "2025-11-28 13:00"),
        ("2025-11-28 13:00", "2025-12-01 16:00"),  # at the early close: Monday's
        ("2025-11-28 15:00", "2025-12-01 16:00"),
        ("2025-11-27 11:00", "2025-11-28 13:00"),  # on Thanksgiving: the half day's
        ("2025-11-26 17:00", "2025-11-28 13:00"),  # the evening before: past the holiday
        ("2025-12-24 14:00", "2025-12-26 16:00"),  # Christmas Eve after 13:00: past Christmas
        ("2025-12-31 18:00", "2026-01-02 16:00"),  # past New Year's Day
        ("2025-04-17 16:30", "2025-04-21 16:00"),  # past Good Friday, a weekday
    ],
)
@pytest.mark.parametrize("close", ["close", dt.time(16, 0)])
def test_a_day_order_expires_at_the_exchange_s_close_on_half_days_and_skips_holidays(
    placed: str, expires: str, close: DayOrderClose
) -> None:
    """It lived until 16:00 on a half day, and a holiday counted as a
    session: an order placed the evening before Thanksgiving expired at
    16:00 on Thanksgiving, never having had a session to fill in."""
    assert day_order_expiry_ns(ny_ns(placed), close) == ny_ns(expires)


def test_a_configured_day_order_close_applies_unless_the_session_closes_earlier() -> None:
    at_15 = dt.time(15, 0)
    assert day_order_expiry_ns(ny_ns("2025-12-01 10:00"), at_15) == ny_ns("2025-12-01 15:00")
    assert day_order_expiry_ns(ny_ns("2025-12-01 15:00"), at_15) == ny_ns("2025-12-02 15:00")
    # On a half day the session's 13:00 close comes first.
    assert day_order_expiry_ns(ny_ns("2025-11-28 10:00"), at_15) == ny_ns("2025-11-28 13:00")


def test_working_day_orders_expire_at_the_close_and_no_later_price_fills_them() -> None:
    """A day limit order still working at 16:00 New York is ``expired``, as
    Alpaca expires it, and a price past its limit afterwards fills nothing;
    a gtc order lives on. Until this the paper broker never expired day
    orders: a shadow strategy's limit filled the next morning, and its order
    held the risk-gate's caps overnight."""
    clock = SetClock(ny_ns("2026-12-08 10:00"))
    counter = itertools.count(1)
    b = PaperBook(
        BookConfig(day_orders_expire_at=dt.time(16, 0)),
        clock=clock,
        ids=lambda: f"id-{next(counter)}",
    )
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    day, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(190)))
    gtc, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", "gtc", limit_price=D(190)))
    clock.ns = ny_ns("2026-12-08 15:59:59")
    assert b.expire_orders() == []
    clock.ns = ny_ns("2026-12-08 16:00")
    [expired] = b.expire_orders()
    assert (expired.event, expired.order.id, expired.order.status) == ("expired", day.id, "expired")
    assert not expired.order.is_open
    assert b.expire_orders() == []  # once
    clock.ns = ny_ns("2026-12-09 09:31")
    updates = b.on_market(MarketUpdate.trade("AAPL", D(180)))
    assert [(u.event, u.order.id) for u in updates] == [("fill", gtc.id)]
    assert [o.id for o in b.orders("A", "open")] == []
    assert b.order("A", day.id).status == "expired"  # type: ignore[union-attr]


def test_a_day_order_past_its_close_expires_before_a_price_can_fill_it() -> None:
    """No expiry ran at the close (no price came, the broker was down): the
    first price after it expires the order first, and fills nothing; a
    journal replayed into a new book does the same."""
    clock = SetClock(ny_ns("2026-12-08 10:00"))
    counter = itertools.count(1)
    config = BookConfig(day_orders_expire_at=dt.time(16, 0))
    b = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    day, journal = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(190)))
    clock.ns = ny_ns("2026-12-09 09:31")
    replayed = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    replayed.apply_all(journal)
    for books in (b, replayed):
        updates = books.on_market(MarketUpdate.trade("AAPL", D(180)))
        assert [(u.event, u.order.id) for u in updates] == [("expired", day.id)]
        assert books.positions("A") == []


def test_a_print_stamped_after_the_close_fills_no_order_that_expires_at_it() -> None:
    """The broker's clock a little behind the feed's: a print stamped after
    the close (an after-hours trade) comes while the clock still reads
    15:59:58. It expires the day order and the order in an option contract
    expiring then, before it is taken in, as the contract's position is
    settled before it (settle_expired); until this both filled at it, the
    option after its contract's settlement, opening a position in it. A
    print stamped at the close itself is still the session's: it fills."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11, 16:00
    clock = SetClock(ny_ns("2026-12-11 10:00"))
    counter = itertools.count(1)
    b = PaperBook(
        BookConfig(day_orders_expire_at="close"), clock=clock, ids=lambda: f"id-{next(counter)}"
    )
    b.on_market(MarketUpdate.trade("AAPL", D(200), ny_ns("2026-12-11 10:00")))
    b.on_market(MarketUpdate.trade(option, D("1.25"), ny_ns("2026-12-11 10:00")))
    day, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(190)))
    at_close, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(195)))
    spec = OrderSpec(option, "buy", D(2), "limit", "gtc", limit_price=D(1), asset_class="us_option")
    contract, _ = b.submit("A", spec)
    clock.ns = ny_ns("2026-12-11 15:59:58")
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D(195), ny_ns("2026-12-11 16:00")))
    assert (fill.event, fill.order.id) == ("fill", at_close.id)
    updates = b.on_market(MarketUpdate.trade("AAPL", D(180), ny_ns("2026-12-11 16:00:01")))
    assert [(u.event, u.order.id) for u in updates] == [
        ("expired", day.id),
        ("expired", contract.id),  # every order that ended at the close, whatever its symbol
    ]
    assert b.on_market(MarketUpdate.trade(option, D("0.5"), ny_ns("2026-12-11 16:00:01"))) == []
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D(5))]


def test_an_order_in_an_option_contract_past_its_expiry_is_refused() -> None:
    """Alpaca refuses an order in a contract that has expired (422), and the
    paper broker filled one, at the last price it had, as if it still
    traded. Until the close of its expiry day (16:00 New York) it trades;
    from then on nothing of it does, a close included, and the books stay
    as they were."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11
    clock = SetClock(ny_ns("2026-12-11 15:59:59"))
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    bought, _ = b.submit("A", OrderSpec(option, "buy", D(2), asset_class="us_option"))
    assert bought.status == "filled"
    for when in ("2026-12-11 16:00", "2026-12-14 10:00"):
        clock.ns = ny_ns(when)
        for side in ("buy", "sell"):
            with pytest.raises(Refused, match="expired at the close of 2026-12-11") as e:
                b.submit("A", OrderSpec(option, side, D(1), asset_class="us_option"))
            assert (e.value.status, e.value.code) == (422, 42210000)
    [closing], updates = b.close_all("A")
    assert closing.refused is not None
    assert closing.refused.status == 422
    assert updates == []
    assert [(o.id, o.status) for o in b.orders("A", "all")] == [(bought.id, "filled")]
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [(option, D(2))]
    with pytest.raises(Refused, match="not found: O:SPY261311P00600000 is not an option") as e:
        b.submit("A", OrderSpec("O:SPY261311P00600000", "buy", D(1), asset_class="us_option"))
    assert (e.value.status, e.value.code) == (422, 42210000)


@pytest.mark.parametrize(
    ("placed", "tif", "day_close"),
    [
        ("2026-12-09 10:00", "gtc", dt.time(16, 0)),  # a gtc order, two days before
        ("2026-12-11 10:00", "gtc", None),  # day orders never expire by config
        ("2026-12-11 10:00", "day", None),  # ... so a day order lived on as well
        ("2026-12-11 10:00", "day", dt.time(20, 0)),  # sessions close after the contract
    ],
)
def test_a_working_order_in_an_option_contract_expires_with_the_contract(
    placed: str, tif: TimeInForce, day_close: dt.time | None
) -> None:
    """An order still working at the close of its contract's expiry day
    (16:00 New York) is ``expired`` then, as a broker ends it: the contract
    no longer trades. It lived on and filled at a print after the expiry (a
    late print, a wrong feed), or a day later; a journal replayed into a new
    book expires it before any price, once."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11
    clock = SetClock(ny_ns(placed))
    counter = itertools.count(1)
    config = BookConfig(day_orders_expire_at=day_close)
    b = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    spec = OrderSpec(option, "buy", D(2), "limit", tif, limit_price=D(1), asset_class="us_option")
    order, journal = b.submit("A", spec)
    assert order.is_open
    clock.ns = ny_ns("2026-12-11 15:59:59")
    assert b.expire_orders() == []
    clock.ns = ny_ns("2026-12-11 16:00")
    [expired] = b.expire_orders()
    assert (expired.event, expired.order.id, expired.order.status) == (
        "expired",
        order.id,
        "expired",
    )
    assert b.expire_orders() == []  # once
    assert b.on_market(MarketUpdate.trade(option, D("0.5"))) == []
    assert b.positions("A") == []
    clock.ns = ny_ns("2026-12-14 09:31")
    replayed = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    replayed.apply_all(journal)
    updates = replayed.on_market(MarketUpdate.trade(option, D("0.5")))
    assert [(u.event, u.order.id) for u in updates] == [("expired", order.id)]
    assert replayed.positions("A") == []
    assert replayed.expire_orders() == []


def test_a_close_all_after_an_option_s_expiry_meets_no_position_in_it() -> None:
    """What a flatten meets after an option's expiry. Until the paper broker
    settled expired contracts, the position stayed for ever, and every
    close-all (DELETE /v2/positions, the gateway's flatten) refused it, 422,
    days later as at the close: each flatten of the account was
    ``incomplete`` until an operator edited the journal. Now the position is
    settled at the close (here out of the money: expired worthless), so the
    close-all closes the rest and meets nothing in the contract."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11
    clock = SetClock(ny_ns("2026-12-11 10:00"))
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    b.on_market(MarketUpdate.trade("SPY", D(610)))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    b.submit("A", OrderSpec(option, "buy", D(2), asset_class="us_option"))
    for when in ("2026-12-11 16:00", "2026-12-14 10:00"):
        clock.ns = ny_ns(when)
        b.settle_expired()
        b.submit("A", OrderSpec("AAPL", "buy", D(10)))
        closings, _ = b.close_all("A", cancel_orders=True)
        assert [(c.symbol, c.refused) for c in closings] == [("AAPL", None)]
        assert b.positions("A") == []
    assert [(a.activity_type, a.symbol, a.qty) for a in b.activities("A")] == [
        ("OPEXP", option, D(-2))
    ]
