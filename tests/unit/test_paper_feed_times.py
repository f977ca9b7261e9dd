"""The paper broker's price feed takes each print at its market time."""

from __future__ import annotations

from decimal import Decimal

from libs.contract.codec import encode
from libs.contract.envelope import CLOCK_SKEW_NS
from libs.contract.events import TradePayload, TradePrinted
from libs.strategy.testing import MINUTE_NS, At, bar
from services.paper_broker.adapters.market import to_update

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
    assert (update.start_ns, update.ts_ns) == (NOW + CLOCK_SKEW_NS, NOW + CLOCK_SKEW_NS)
