"""The paper broker's price feed takes each print at its market time."""

from __future__ import annotations

from decimal import Decimal

from libs.contract.codec import encode
from libs.contract.envelope import CLOCK_SKEW_NS
from libs.contract.events import TradePayload, TradePrinted
from libs.strategy.testing import MINUTE_NS, At, bar
from services.paper_broker.adapters.market import to_update
from services.paper_broker.domain.book import OrderSpec
from tests.unit.paper_books import book

NOW = 1_700_000_000 * 10**9
HOURS_AHEAD = 3 * 3600 * 10**9


def trade(ts_event: int, ts_init: int) -> TradePrinted:
    payload = TradePayload(symbol="AAPL", price=Decimal(150), size=Decimal(1), feed="polygon")
    event = TradePrinted.create(payload, source="test/marketdata", clock=At(ts_event))
    return event.model_copy(update={"ts_init": ts_init})


def test_a_print_is_taken_at_its_own_time() -> None:
    update = to_update(encode(trade(NOW - 10**9, NOW)))
    assert update is not None
    assert update.ts_ns == NOW - 10**9
    b = bar("AAPL", 150, NOW - MINUTE_NS)
    update = to_update(encode(b))
    assert update is not None
    assert (update.start_ns, update.ts_ns) == (NOW - MINUTE_NS, NOW)


def test_a_print_stamped_hours_ahead_is_taken_no_later_than_just_after_it_was_made() -> None:
    """A trade stamped 3 h ahead by a bad clock was "after the close" to the
    book: it settled market-on-close orders at a mid-day price and stayed the
    session's newest print."""
    update = to_update(encode(trade(NOW + HOURS_AHEAD, NOW)))
    assert update is not None
    assert update.ts_ns == NOW + CLOCK_SKEW_NS
    ahead = bar("AAPL", 150, NOW + HOURS_AHEAD).model_copy(update={"ts_init": NOW})
    update = to_update(encode(ahead))
    assert update is not None
    assert (update.start_ns, update.ts_ns) == (NOW + CLOCK_SKEW_NS - MINUTE_NS, NOW + CLOCK_SKEW_NS)


def test_a_bar_stamped_ahead_is_only_its_close_to_an_order_placed_during_it() -> None:
    """The bar of the minute before NOW, made at NOW, stamped 3 h ahead by a
    bad clock: its low (99.5) may be from before a limit buy placed during
    that minute (AAPL at 101 then), which never had that price. Taken to
    begin when it was made (its end, clamped), it was a bar wholly after
    the order, and filled the buy at 100 on the low; the bar is moved back
    whole, so to that order it is only its close (100.5): nothing fills."""
    b = book()
    placed = to_update(encode(trade(NOW - 30 * 10**9, NOW - 30 * 10**9)))
    assert placed is not None
    b.on_market(placed)
    buy, _ = b.submit(
        "A",
        OrderSpec(
            "AAPL", "buy", Decimal(1), "limit", limit_price=Decimal(100), time_in_force="gtc"
        ),
    )
    minute = bar("AAPL", "100.5", NOW - MINUTE_NS + HOURS_AHEAD, low="99.5", open_=101, high=101)
    update = to_update(encode(minute.model_copy(update={"ts_init": NOW})))
    assert update is not None
    assert update.ts_ns == NOW + CLOCK_SKEW_NS
    assert update.ts_ns - update.start_ns == MINUTE_NS  # its length kept
    assert b.on_market(update) == []
    assert [o.status for o in b.orders("A")] == ["new"]
    assert buy.status == "new"
