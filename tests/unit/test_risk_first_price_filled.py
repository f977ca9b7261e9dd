"""A position carried into the day with no price and filled again (a
settlement, no price either) before the day gone's late close comes: the
close starts the carried part's day, the fills since count from their own
prices.

``first_price`` used to start a carried position from the late close only
while nothing had filled it since the roll: the fill mixed the carried cost
into one day basis with its own price, and the new day's P&L counted the
carried shares' move from their cost to that close, by the carried quantity
times (close - cost): a phantom loss when they fell before the day (the
breaker or the reduce-only level for it), a phantom gain hiding a real loss
when they rose. ``RiskState.unpriced_carried`` now keeps the carried
positions as the day began (``Carried``), and ``Position.from_close`` moves
the day P&L by what measuring them from the close changes.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.contract.events import TradePayload, TradePrinted
from services.risk_gate.adapters.checkpoint import decode, encode
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import DAY_START, LIMITS, T0, At, S, assigned, start, trade

MS = S // 1000


def _late_close(price: int) -> TradePrinted:
    """IBM's last print of D, stamped 03:59:59, reaching the gate 2 s into D + 1."""
    payload = TradePayload(symbol="IBM", price=Decimal(price), size=Decimal(1), feed="demo")
    return TradePrinted.create(
        payload, source="test", clock=At(DAY_START + 2 * S), ts_event=DAY_START - S
    )


def _carried() -> RiskState:
    """100 IBM assigned at 50 on D (no price of IBM), carried into D + 1 at that cost."""
    state = evolve(start(), assigned("IBM", 100, 50, T0 + S))
    return evolve(state, trade("MSFT", 50, DAY_START + MS))


def _carried_then_filled(strike: int, close: int) -> RiskState:
    """100 more assigned at ``strike`` on D + 1; then D's late close."""
    state = evolve(_carried(), assigned("IBM", 100, strike, DAY_START + S))
    return evolve(state, _late_close(close))


@pytest.mark.parametrize(("strike", "close", "day_pnl"), [(60, 58, -200), (44, 44, 0)])
def test_a_late_close_starts_the_carried_part_of_a_position_filled_since(
    strike: int, close: int, day_pnl: int
) -> None:
    """The 100 carried start D + 1 at D's close: nothing of theirs moved in
    D + 1 yet. The 100 assigned in D + 1 at ``strike`` are marked at the
    close: ``100 * (close - strike)``. It used to count the carried 100's
    move from 50 to the close too: +800 (+600 for -200) at 58; at 44, -600
    for 0, which put ``acct`` (reduce-only at a 600 loss) in reducing for a
    day in which nothing it holds has moved."""
    state = _carried_then_filled(strike, close)
    assert state.day_pnl("acct") == Decimal(day_pnl)
    sma = state.strategy_positions["sma", "acct", "IBM"]
    assert sma.day_pnl(Decimal(close), Decimal(1)) == Decimal(day_pnl)
    assert state.obligations == ()
    assert "IBM" not in state.unpriced_carried


@pytest.mark.parametrize(
    ("sold", "day_pnl"),
    # All 100 called away at 60: +200 from the close. 150 sold: the same,
    # and the 50 short since 60 marked at 58, +100. 40 sold: +80, the 60
    # left still at the close.
    [(100, 200), (150, 300), (40, 80)],
)
def test_a_late_close_starts_the_carried_part_of_a_position_sold_since(
    sold: int, day_pnl: int
) -> None:
    """The carried 100 (cost 50) partly or wholly sold at 60 on D + 1 (called
    away: a settlement) before D's late close, 58: what was sold counts
    from 58, not from 50 (+1,000 realized against the cost)."""
    state = evolve(_carried(), assigned("IBM", sold, 60, DAY_START + S, side="sell"))
    state = evolve(state, _late_close(58))
    assert state.day_pnl("acct") == Decimal(day_pnl)
    assert state.obligations == ()


def test_a_late_close_after_a_print_of_the_new_day_changes_nothing() -> None:
    """IBM printed on D + 1 (57) after the second assignment: the new day
    priced it, and D's close coming after is a price of a day gone for a
    symbol with a mark, which it leaves; the carried 100 stay measured from
    their cost, as for want of a close they are."""
    state = evolve(_carried(), assigned("IBM", 100, 60, DAY_START + S))
    state = evolve(state, trade("IBM", 57, DAY_START + 2 * S))
    assert "IBM" not in state.unpriced_carried
    priced = evolve(state, _late_close(58))
    assert priced == state
    assert state.day_pnl("acct") == Decimal(100 * 7 - 100 * 3)


def test_a_checkpoint_keeps_the_positions_carried_unpriced() -> None:
    """Written between the second assignment and the late close, a
    checkpoint starts the carried part from it as the gate that wrote it."""
    state = evolve(_carried(), assigned("IBM", 100, 60, DAY_START + S))
    assert set(state.unpriced_carried) == {"IBM"}
    restored = decode(encode(state), LIMITS)
    assert restored == state
    late = _late_close(58)
    assert evolve(restored, late) == evolve(state, late)
    assert evolve(restored, late).day_pnl("acct") == Decimal(-200)
