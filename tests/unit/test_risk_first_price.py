"""A late price of the day gone for a symbol the gate has no price of.

A price stamped in a trading day that has ended, reaching the gate after the
new day began, moves no mark (``test_risk_day_roll``). A symbol with no mark
at all takes it: it is the symbol's last price before the new day, what its
price band and a position carried into the day would be measured from had
it come on time. Without it, the symbol's orders were denied
``no_market_price`` until its first print of the new day.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    MarkPayload,
    MarkUpdated,
    ReasonCode,
    TradePayload,
    TradePrinted,
)
from services.risk_gate.adapters.checkpoint import decode, encode
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import (
    DAY_START,
    LIMITS,
    NEXT_DAY,
    T0,
    At,
    D,
    S,
    assigned,
    fill,
    intent,
    last_bar,
    start,
    trade,
)
from tests.unit.risk_live_gates import MS, lagged_store, same
from tests.unit.risk_timelines import fold

#: Published 2 s into the new day, after its first event.
LATE = DAY_START + 2 * S


def _trade(symbol: str, price: int) -> Event:
    payload = TradePayload(symbol=symbol, price=D(price), size=D(1), feed="demo")
    return TradePrinted.create(payload, source="test", clock=At(LATE), ts_event=DAY_START - S)


def _bar(symbol: str, price: int) -> Event:
    return last_bar("1m", price, LATE, symbol)


def _mark(symbol: str, price: int) -> Event:
    p = D(price)
    payload = MarkPayload(
        symbol=symbol, price=p, bid_price=p - D("0.01"), ask_price=p + D("0.01"), feed="demo"
    )
    return MarkUpdated.create(payload, source="test", clock=At(LATE), ts_event=DAY_START - S)


def _fill(symbol: str, price: int) -> Event:
    """``acct`` bought 1 at ``price`` in the last second of day D."""
    return fill(uuid.uuid4(), 1, price, symbol=symbol, t=LATE).model_copy(
        update={"ts_event": DAY_START - S}
    )


KINDS: dict[str, Callable[[str, int], Event]] = {
    "trade": _trade,
    "bar": _bar,
    "mark": _mark,
    "fill": _fill,
}


def _new_day() -> RiskState:
    """Day D: AAPL and MSFT priced, nothing of IBM; D + 1 began (MSFT at 04:00:00.001)."""
    state = evolve(start(), trade("MSFT", 50, DAY_START + MS))
    assert state.day == NEXT_DAY
    return state


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_late_price_of_the_day_gone_prices_a_symbol_that_has_none(kind: str) -> None:
    """IBM's last price of D reaches the gate after D + 1 began: IBM had no
    price at all, and takes it (at its own time). An order in IBM is then
    checked against it: a limit within the band is accepted, one outside it
    denied ``price_band``. It used to be dropped: every IBM order denied
    ``no_market_price`` until IBM's first print of D + 1."""
    state = _new_day()
    now = LATE + S
    buy = intent(10, t=now, symbol="IBM", order_type="limit", limit_price=D(100))
    assert decide(state, buy, now).reason is ReasonCode.NO_MARKET_PRICE
    state = evolve(state, KINDS[kind]("IBM", 100))
    assert state.day == NEXT_DAY
    mark = state.mark("IBM")
    assert mark is not None
    assert mark.price == D(100)
    assert mark.ts_ns == DAY_START - (0 if kind == "bar" else S)
    assert decide(state, buy, now).reason is ReasonCode.ACCEPTED
    far = intent(10, t=now, symbol="IBM", order_type="limit", limit_price=D(110))
    assert decide(state, far, now).reason is ReasonCode.PRICE_BAND
    assert state.obligations == ()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_late_price_of_the_day_gone_does_not_move_a_symbol_that_has_one(kind: str) -> None:
    """AAPL has a price (100, from D): the late one of D (89) leaves it, and
    the band is still measured from 100."""
    state = _new_day()
    before = state.mark("AAPL")
    state = evolve(state, KINDS[kind]("AAPL", 89))
    assert state.mark("AAPL") == before
    now = LATE + S
    at_100 = intent(10, t=now, order_type="limit", limit_price=D(100))
    assert decide(state, at_100, now).reason is ReasonCode.ACCEPTED


def _carried() -> RiskState:
    """Day D: acct assigned 100 IBM at 50 (a settlement: no price of IBM),
    carried into D + 1 at its cost, for want of a close."""
    state = evolve(start(), assigned("IBM", 100, 50, T0 + S))
    state = evolve(state, trade("MSFT", 50, DAY_START + MS))
    assert state.mark("IBM") is None
    return state


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_late_first_price_is_the_day_start_of_a_position_carried_without_one(
    kind: str,
) -> None:
    """100 IBM carried into D + 1 with no price: its day basis was its cost,
    50. IBM's late last price of D, 55, is the close the day should have
    started from: the day P&L is 0 (the fill's 1 share aside), not +500 of
    D's (and earlier) moves; D + 1's own print of 56 makes it +100."""
    state = evolve(_carried(), KINDS[kind]("IBM", 55))
    mark = state.mark("IBM")
    assert mark is not None
    assert mark.price == D(55)
    assert state.day_pnl("acct") == 0
    assert state.strategy_positions["sma", "acct", "IBM"].day_basis == D(55)
    state = evolve(state, trade("IBM", 56, DAY_START + 3 * S))
    assert state.day_pnl("acct") == (D(101) if kind == "fill" else D(100))


def test_a_late_price_starts_the_carried_part_of_a_position_filled_since() -> None:
    """IBM, carried without a price, was filled again in D + 1 (another
    settlement, no price either) before D's late price came: its basis mixes
    D + 1's fill with the carried cost. The late price starts the carried
    100 from 58 (0 today) and marks the 100 of D + 1 at it (-200); it used
    to leave the carried 100 measured from their cost (+800 more, +600 in
    all). More cases: test_risk_first_price_filled."""
    state = evolve(_carried(), assigned("IBM", 100, 60, DAY_START + S))
    assert state.positions["acct", "IBM"].day_basis == D(55)  # (50 + 60) / 2
    state = evolve(state, _trade("IBM", 58))
    assert state.day_pnl("acct") == D(-200)


@pytest.mark.parametrize("lag_ms", [-20, 0, 3000])
async def test_the_live_gate_and_the_fold_agree_on_a_late_first_price(lag_ms: int) -> None:
    """The real gate, live, takes IBM's late price of D after D + 1 began,
    with a position carried without a price and one symbol never priced;
    its reactions land in the stream one message late. The fold of that
    store ends where the gate did."""
    before = [
        trade("AAPL", 100),
        trade("MSFT", 50),
        assigned("IBM", 100, 50, T0 + S),
    ]
    stream = [
        trade("MSFT", 51, DAY_START + MS),
        _trade("IBM", 55),
        _mark("O:AAPL260320C00100000", 3),
        intent(10, t=LATE + S, symbol="IBM", order_type="limit", limit_price=D(55)),
        trade("IBM", 40, DAY_START + 3 * S),  # -1,500 on D + 1: the breaker
    ]
    gate, store = await lagged_store(before, stream, DAY_START - S, lag_ms)
    folded = fold(RiskState.initial(LIMITS), store)
    assert same(gate.state, folded) == []
    decisions = [e.payload.reason for e in store if e.type == "RiskDecisionMade"]
    assert decisions == [ReasonCode.ACCEPTED]
    assert folded.loss_tripped.get("acct") == NEXT_DAY
    mark = folded.mark("O:AAPL260320C00100000")
    assert mark is not None
    assert mark.price == Decimal(3)


def test_a_checkpoint_keeps_the_symbols_carried_unpriced() -> None:
    """A rebuild from a checkpoint written between the roll and the late
    price starts the carried position from it as the gate that wrote it would."""
    state = _carried()
    assert set(state.unpriced_carried) == {"IBM"}
    restored = decode(encode(state), LIMITS)
    assert restored.unpriced_carried == state.unpriced_carried
    late = _trade("IBM", 55)
    assert same(evolve(restored, late), evolve(state, late)) == []
    assert evolve(restored, late).day_pnl("acct") == 0
