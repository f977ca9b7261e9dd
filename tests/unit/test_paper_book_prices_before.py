"""Prices from before the feed connected (``PaperBook.set_last``).

At start-up (and at a reconnection) the feed brings each symbol's stored
prices first: they set the last price and fill what was waiting for a price
at the market, but fill or trigger no limit or stop (they may predate it).
"""

from __future__ import annotations

from decimal import Decimal

from services.paper_broker.domain.book import OrderSpec, TradeUpdate
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.unit.paper_books import book

D = Decimal


def fills(updates: list[TradeUpdate]) -> list[tuple[str, Decimal | None, Decimal | None]]:
    return [(u.order.order_type, u.qty, u.price) for u in updates if u.execution_id is not None]


def test_the_rest_of_a_triggered_stop_fills_at_a_price_from_before_like_a_market_order() -> None:
    """A triggered stop is a market order: the rest of one larger than a
    fill, journaled and restored before any price, fills at the first stored
    price as a market order's rest does. Until this only the market order's
    did, and the stop's waited for a live print."""
    cap = FillModelConfig(max_fill_quantity=D(1))
    before = book(fill_model=cap)
    before.on_market(MarketUpdate.trade("IBM", D(101), ts_ns=10))
    journal = before.submit("A", OrderSpec("IBM", "sell", D(2), "stop", stop_price=D(100)))[1]
    journal += before.submit("A", OrderSpec("IBM", "sell", D(3)))[1]
    journal += before.on_market(MarketUpdate.trade("IBM", D(99), ts_ns=20))
    assert sorted(fills(journal)) == [
        ("market", D(1), D(99)),
        ("market", D(1), D(101)),
        ("stop", D(1), D(99)),
    ]
    after = book(fill_model=cap)  # restarted: the journal, no price yet
    for update in journal:
        after.apply(update)
    assert after.last_price("IBM") is None
    taken = after.set_last("IBM", D(98), ts_ns=30)
    assert sorted(fills(taken)) == [("market", D(1), D(98)), ("stop", D(1), D(98))]
    assert [o.status for o in after.orders("A", "all")] == ["filled", "filled"]


def test_a_price_from_before_triggers_no_stop_and_fills_no_triggered_stop_limit() -> None:
    """A stop not yet triggered, and a triggered stop-limit (a limit from
    then on), are neither triggered nor filled by a price that may predate
    them."""
    b = book()
    for symbol in ("IBM", "MSFT"):
        b.on_market(MarketUpdate.trade(symbol, D(101), ts_ns=10))
    b.submit("A", OrderSpec("IBM", "sell", D(1), "stop", stop_price=D(100)))
    spec = OrderSpec("MSFT", "sell", D(1), "stop_limit", stop_price=D(100), limit_price=D(99))
    b.submit("A", spec)
    b.on_market(MarketUpdate.trade("MSFT", D(98), ts_ns=20))  # triggers it; 98 < 99: it rests
    assert b.set_last("IBM", D(95), ts_ns=30) == []
    assert b.set_last("MSFT", D(105), ts_ns=30) == []
    assert [(o.status, o.triggered) for o in b.orders("A", "all")] == [
        ("new", False),
        ("new", True),
    ]
