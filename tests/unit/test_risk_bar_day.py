"""A bar's trading day is that of its window, not of its end.

A bar's ``ts_event`` is the end of its window (marketdata stamps it so: the
bar happened when its window closed), and the window's end is the first
instant that is no longer in it. The 1-minute bar of 03:59-04:00 New York
ends at the day start, but every trade in it, its close too, printed in the
trading day before.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import (
    BAR_LENGTH,
    DAY_START,
    LIMITS,
    NEXT_DAY,
    D,
    S,
    bar,
    fill,
    last_bar,
    start,
    trade,
)
from tests.unit.risk_live_gates import MS, lagged_store, same
from tests.unit.risk_timelines import fold

DAY = dt.date(2026, 3, 10)


def _holding() -> RiskState:
    """Day D: 100 AAPL bought at 100, marked at 100 (acct's limit: 1,000)."""
    return evolve(start(), fill(uuid.uuid4(), 100, 100))


@pytest.mark.parametrize("interval", sorted(BAR_LENGTH))
def test_the_last_bar_of_the_day_neither_rolls_the_day_nor_counts_in_the_next(
    interval: str,
) -> None:
    """The bar of D's last minute (or second), the first event after it,
    marks D: AAPL's close of D is 89 (D's P&L -1,100, D's breaker owed). It
    used to roll the day (its end is 04:00) and be the new day's price: the
    new day began marked at 89, and its own breaker was owed for D's move."""
    state = evolve(_holding(), last_bar(interval, 89, DAY_START + 2 * S))
    assert state.day == DAY
    mark = state.mark("AAPL")
    assert mark is not None
    assert mark.price == D(89)
    assert [(o.kind, o.day) for o in state.obligations] == [("daily_loss", DAY)]
    # The new day's first print measures from D's close, 89.
    state = evolve(state, trade("AAPL", 90, DAY_START + 3 * S))
    assert state.day == NEXT_DAY
    assert state.day_pnl("acct") == D(100)


@pytest.mark.parametrize("interval", sorted(BAR_LENGTH))
def test_the_last_bar_of_the_day_after_the_roll_does_not_mark_the_new_day(
    interval: str,
) -> None:
    """The new day began (a print of MSFT at 04:00:00.001) before D's last
    bar of AAPL reached the gate: AAPL keeps its mark, the new day's P&L its
    0. It used to be taken as the new day's price: day P&L -1,100, and the
    new day's breaker owed for D's last minute."""
    state = evolve(_holding(), trade("MSFT", 50, DAY_START + MS))
    assert state.day == NEXT_DAY
    after = evolve(state, last_bar(interval, 89, DAY_START + 2 * S))
    assert after.day == NEXT_DAY
    assert after.mark("AAPL") == state.mark("AAPL")
    assert after.day_pnl("acct") == 0
    assert after.obligations == ()


def test_a_bar_of_the_new_day_marks_it() -> None:
    """The first bar of the new day (04:00-04:01) rolls the day and marks."""
    first = bar("AAPL", 95, DAY_START + 60 * S, published=DAY_START + 61 * S)
    state = evolve(_holding(), first)
    assert state.day == NEXT_DAY
    mark = state.mark("AAPL")
    assert mark is not None
    assert mark.price == D(95)
    assert state.day_pnl("acct") == D(-500)


@pytest.mark.parametrize("lag_ms", [-20, 0, 3000])
@pytest.mark.parametrize("bar_first", [True, False], ids=["bar first", "bar after the roll"])
async def test_the_live_gate_and_the_fold_agree_on_the_last_bar(
    lag_ms: int, bar_first: bool
) -> None:
    """The real gate, live, handles D's last bar around the first print of
    the new day; its reactions land in the stream one message late. The
    fold of that store ends where the gate did."""
    before = [trade("AAPL", 100), trade("MSFT", 50), fill(uuid.uuid4(), 100, 100)]
    last = last_bar("1m", 89, DAY_START + 2 * S)
    roll = trade("MSFT", 51, DAY_START + MS)
    later = trade("AAPL", 95, DAY_START + 5 * S)
    stream = [last, roll, later] if bar_first else [roll, last, later]
    gate, store = await lagged_store(before, stream, DAY_START - S, lag_ms)
    folded = fold(RiskState.initial(LIMITS), store)
    assert same(gate.state, folded) == []
    assert folded.day == NEXT_DAY
    # D's close was 89 when the bar came first; else the new day kept 100.
    assert folded.loss_tripped.get("acct") == (DAY if bar_first else None)
    assert folded.day_pnl("acct") == (D(600) if bar_first else D(-500))
