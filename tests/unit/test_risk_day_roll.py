"""Prices across the trading-day start (04:00 New York).

A price stamped in a trading day that has ended marks nothing: the day
rolled from the last mark before it (the new day's basis), and a late print
of the old day would move the new day's unrealized P&L by a move that
belongs to the old one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    TradePayload,
    TradePrinted,
)
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import T0, At, D, S, fill, start, trade

MS = S // 1000
#: 04:00 New York on 2026-03-11: trading day 2026-03-11 starts.
DAY_START = T0 + 17 * 3600 * S
DAY = dt.date(2026, 3, 10)
NEXT_DAY = dt.date(2026, 3, 11)


def _holding() -> RiskState:
    """Day D: 100 AAPL bought at 100, marked at 100 (acct's limit: 1,000)."""
    return evolve(start(), fill(uuid.uuid4(), 100, 100))


def _late_trade(ts_event: int, ts_init: int) -> Event:
    payload = TradePayload(symbol="AAPL", price=D(89), size=D(1), feed="demo")
    return TradePrinted.create(payload, source="test", clock=At(ts_init), ts_event=ts_event)


def _late_bar(ts_event: int, ts_init: int) -> Event:
    payload = BarPayload(
        symbol="AAPL",
        interval="1m",
        open=D(89),
        high=D(89),
        low=D(89),
        close=D(89),
        volume=D(1),
        start_ns=ts_event - 60 * S,
        end_ns=ts_event,
        feed="demo",
    )
    return BarClosed.create(payload, source="test", clock=At(ts_init), ts_event=ts_event)


def _late_mark(ts_event: int, ts_init: int) -> Event:
    payload = MarkPayload(
        symbol="AAPL", price=D(89), bid_price=D("88.99"), ask_price=D("89.01"), feed="demo"
    )
    return MarkUpdated.create(payload, source="test", clock=At(ts_init), ts_event=ts_event)


def _late_fill(ts_event: int, ts_init: int) -> Event:
    """1 more AAPL bought at 89 in the last second of day D: booked in D + 1
    (the day the gate is in), its price no mark of D + 1."""
    payload = FillPayload(
        order_id=uuid.uuid4(),
        account="acct",
        broker_order_id="b",
        fill_id=uuid.uuid4().hex,
        symbol="AAPL",
        side="buy",
        quantity=D(1),
        price=D(89),
        cumulative_quantity=D(1),
        leaves_quantity=D(0),
        status="complete",
    )
    return FillReceived.create(payload, source="test", clock=At(ts_init), ts_event=ts_event)


LATE: dict[str, Callable[[int, int], Event]] = {
    "trade": _late_trade,
    "bar": _late_bar,
    "mark": _late_mark,
    "fill": _late_fill,
}


@pytest.mark.parametrize("kind", sorted(LATE))
@pytest.mark.parametrize(
    "published_ms", [-1000, 2000], ids=["published on time", "published after the start"]
)
def test_a_price_of_the_day_gone_does_not_mark_the_new_day(kind: str, published_ms: int) -> None:
    """A price of AAPL stamped a second before the day start reaches the gate
    after the first event of the new day (a slow feed, or one published late).
    It used to take the mark: day P&L -1,100 on a day on which AAPL had not
    traded, and the new day's breaker tripped (flatten, halt) for the old
    day's move."""
    state = _holding()
    state = evolve(state, trade("MSFT", 50, DAY_START + MS))
    assert state.day == NEXT_DAY
    before = state.day_pnl("acct")
    assert before == 0
    late = LATE[kind](DAY_START - S, DAY_START + published_ms * MS)
    after = evolve(state, late)
    assert after.day == NEXT_DAY
    assert after.mark("AAPL") == state.mark("AAPL")
    # The fill is booked (101 held), at its cost: 1 x (100 - 89) above the mark.
    expected = D(11) if kind == "fill" else D(0)
    assert after.day_pnl("acct").quantize(D("0.01")) == expected
    assert after.obligations == ()
    # The new day's own prices mark as before.
    later = evolve(after, trade("AAPL", 95, DAY_START + 2 * S))
    mark = later.mark("AAPL")
    assert mark is not None
    assert mark.price == D(95)


def test_a_late_price_of_the_same_day_still_marks() -> None:
    """Only an ended day's prices are dropped: one of today, older than the
    mark it would replace, already changed nothing; one newer marks."""
    state = evolve(_holding(), trade("MSFT", 50, DAY_START + 2 * S))
    state = evolve(state, _late_trade(DAY_START + S, DAY_START + 3 * S))
    mark = state.mark("AAPL")
    assert mark is not None
    assert (mark.price, mark.ts_ns) == (D(89), DAY_START + S)
