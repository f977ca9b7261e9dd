"""The risk-gate's trading day: its reset, events stamped ahead of when they
were made, and option settlements published the next morning."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from libs.contract.events import (
    BreakerPayload,
    BreakerTripped,
    FillPayload,
    FillReceived,
    OrderIntentCreated,
    TradingResumeRequested,
)
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import Position, RiskState, trading_day
from tests.unit.risk_evolve_inputs import (
    LIMITS,
    T0,
    At,
    D,
    S,
    apply,
    ev,
    fill,
    intent,
    op,
    settle,
    start,
    trade,
)

# ------------------------------------------------------------ trading day


@pytest.mark.parametrize(
    ("utc", "day"),
    [
        ("2026-03-10T07:59:59+00:00", "2026-03-09"),  # 03:59:59 EDT
        ("2026-03-10T08:00:00+00:00", "2026-03-10"),  # 04:00 EDT
        ("2026-01-15T08:59:59+00:00", "2026-01-14"),  # 03:59:59 EST
        ("2026-01-15T09:00:00+00:00", "2026-01-15"),  # 04:00 EST
    ],
)
def test_trading_day_in_exchange_time(utc: str, day: str) -> None:
    ns = int(dt.datetime.fromisoformat(utc).timestamp()) * S
    assert trading_day(ns, LIMITS.trading_day) == dt.date.fromisoformat(day)


def test_new_trading_day_resets_day_pnl_and_rearms_the_breaker() -> None:
    state = start()
    state = evolve(state, fill(uuid.uuid4(), 10, 100))
    state = evolve(state, fill(uuid.uuid4(), 5, 90, side="sell"))
    state = evolve(state, trade("AAPL", 80, T0 + S))
    assert state.day_pnl("acct") == D(-50) + D(5) * D(-20)
    tripped = ev(BreakerTripped, BreakerPayload(account="acct", breaker="daily_loss"))
    state = evolve(state, tripped)
    assert state.loss_tripped["acct"] == dt.date(2026, 3, 10)
    # Next morning, 04:00 New York: a pre-market print at 82.
    next_day = T0 + 17 * 3600 * S
    state = evolve(state, trade("AAPL", 82, next_day))
    assert state.day == dt.date(2026, 3, 11)
    pos = state.positions[("acct", "AAPL")]
    assert pos.realized_day == 0
    assert pos.day_basis == D(80), "carried position measured from the last mark before the day"
    assert pos.avg_price == D(100)
    assert state.day_pnl("acct") == D(10)
    assert state.loss_tripped["acct"] != state.day


def test_position_new_day_when_flat_keeps_basis_at_cost() -> None:
    p = Position(quantity=D(0), realized_day=D(5))
    assert p.new_day(D(10)) == Position(realized_day=D(0))


#: 04:00 New York on 2026-03-11: the next trading day starts.
NEXT_DAY = T0 + 17 * 3600 * S


@pytest.mark.parametrize(
    ("kind", "recorded", "loss", "next_loss"),
    [
        pytest.param("daily_loss", "loss_tripped", 89, 78, id="breaker"),  # -1,100
        pytest.param("reduce", "loss_reduced", 93, 86, id="reduce-only"),  # -700
    ],
)
def test_a_loss_reacted_to_on_the_next_day_is_recorded_on_its_own_day(
    kind: str, recorded: str, loss: int, next_loss: int
) -> None:
    """A loss 0.1 s before the next trading day, reacted to after the day began
    (a print of the new day landed first, or the gate was down overnight): the
    breaker trips (or the account reduces) for the day of the loss, and the new
    day keeps its own breaker and reduce-only level."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100))
    state = evolve(state, trade("AAPL", loss, NEXT_DAY - S // 10))
    assert [o.kind for o in state.obligations] == [kind]
    state = evolve(state, trade("AAPL", loss, NEXT_DAY))
    assert state.day == dt.date(2026, 3, 11)
    state, out = settle(state, NEXT_DAY + S // 10)
    assert out
    assert getattr(state, recorded) == {"acct": dt.date(2026, 3, 10)}
    # The operator resumes; the new day's own loss trips (reduces) again.
    state, _ = settle(evolve(state, op(TradingResumeRequested, "acct", NEXT_DAY + 60 * S)))
    assert state.scope_state("acct").state == "active"
    state = evolve(state, trade("AAPL", next_loss, NEXT_DAY + 61 * S))
    assert [o.kind for o in state.obligations] == [kind]


def _intent_of_b(t: int) -> OrderIntentCreated:
    return intent(1, t=t, strategy="mr", account="b", symbol="MSFT")


def _fill_of_b(t: int) -> FillReceived:
    return fill(uuid.uuid4(), 1, 50, account="b", symbol="MSFT", strategy="mr", t=t)


@pytest.mark.parametrize(
    "make", [pytest.param(_intent_of_b, id="an intent"), pytest.param(_fill_of_b, id="a fill")]
)
@pytest.mark.parametrize(
    "ahead",
    [pytest.param(24 * 3600 * S, id="a day ahead"), pytest.param(17 * 3600 * S, id="17 h ahead")],
)
def test_an_event_stamped_a_day_ahead_of_when_it_was_made_does_not_roll_the_trading_day(
    make: Any, ahead: int
) -> None:
    """An intent or a fill (of another account) stamped a day ahead of its own
    ts_init (a bad clock: a broker's fill time, a publisher's bad stamp) rolled
    the whole gate to the next trading day: the day P&L of an account past its
    daily loss limit restarted at 0, its breaker re-armed, and the real next
    day rolled nothing at 04:00 (its P&L ran on from the bad roll, and a
    breaker tripped after it counted for that day). Such an event is on the
    day it was made, not the day it claims."""
    state = evolve(start(), fill(uuid.uuid4(), 20, 100))
    state = evolve(state, trade("AAPL", 50, T0 + S))
    state, _ = settle(state, T0 + 2 * S)
    assert state.scope_state("acct").state == "halted"
    assert state.day_pnl("acct") == D(-1000)
    made = make(T0 + 3 * S)
    bad = made.model_copy(update={"ts_event": made.ts_init + ahead})
    state = evolve(state, bad)
    assert state.day == dt.date(2026, 3, 10)
    assert state.day_pnl("acct") == D(-1000)
    assert state.loss_tripped["acct"] == state.day
    # The real next day starts at its own 04:00.
    state = evolve(state, trade("AAPL", 50, NEXT_DAY))
    assert state.day == dt.date(2026, 3, 11)
    assert state.day_pnl("acct") == 0
    assert state.loss_tripped["acct"] != state.day


@pytest.mark.parametrize(
    ("ts_init", "rolled"),
    [
        pytest.param(NEXT_DAY - S, True, id="made 1 s before the day, within the skew"),
        pytest.param(NEXT_DAY - 10 * S, False, id="made 10 s before the day"),
    ],
)
def test_an_event_a_little_ahead_of_its_publisher_s_clock_rolls_the_day_on_its_own_time(
    ts_init: int, rolled: bool
) -> None:
    """A broker's fill time just past the day's start, seen by a gateway whose
    clock is a little behind the broker's: the fill is the new day's. Further
    ahead than CLOCK_SKEW_NS (Event.market_ns) it is a bad stamp, on the day it was made."""
    state = evolve(start(), fill(uuid.uuid4(), 1, 100, t=NEXT_DAY - 60 * S))
    made = fill(uuid.uuid4(), 1, 100, t=ts_init)
    state = evolve(state, made.model_copy(update={"ts_event": NEXT_DAY + S}))
    assert state.day == (dt.date(2026, 3, 11) if rolled else dt.date(2026, 3, 10))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: trade("AAPL", 150, t), id="a trade"),
        pytest.param(lambda t: fill(uuid.uuid4(), 1, 150, account="b", t=t), id="a fill"),
    ],
)
def test_a_price_stamped_a_day_ahead_does_not_hold_the_mark_without_a_max_mark_age(
    make: Any,
) -> None:
    """With no max_mark_age_s (no price is ever too old, so none is dropped as
    stamped ahead), a print or a fill stamped a day ahead of when it was made
    held the gate's mark for a day, newest by its raw ts_event: every real
    price after it was "older", so a long position fallen from 100 to 30 was
    valued at 150 and no reduce-only or daily-loss breaker could trip. The
    mark's time is the event's market time (Event.market_ns), as the
    strategies' ledgers and tradebus positions take it."""
    state = evolve(start(), fill(uuid.uuid4(), 10, 100))
    made = make(T0 + S)
    state = evolve(state, made.model_copy(update={"ts_event": made.ts_init + 24 * 3600 * S}))
    state = evolve(state, trade("AAPL", 30, T0 + 10 * S))
    mark = state.mark("AAPL")
    assert mark is not None
    assert (mark.price, mark.ts_ns) == (D(30), T0 + 10 * S)
    assert state.day_pnl("acct") == D(-700)
    assert [o.kind for o in state.obligations] == ["reduce"]


# ------------------------------------------------------ option settlement

#: SPY 600 call expiring on T0's day (2026-03-10, 16:00 New York).
EXPIRING = "O:SPY260310C00600000"
#: 2026-03-11 09:30 New York: the next trading day.
NEXT_MORNING = T0 + (22 * 3600 + 1800) * S


def settled(
    symbol: str, side: str, quantity: int, price: str | int, outcome: str, *, leaves: int = 0
) -> FillReceived:
    """A settlement fill as the broker-gateway publishes it the next morning:
    stamped at the contract's expiry (16:00 New York, 2026-03-10)."""
    order_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}/{outcome}")
    return FillReceived.create(
        FillPayload(
            order_id=order_id,
            account="acct",
            broker_order_id="activity",
            fill_id=uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            price=D(price),
            cumulative_quantity=D(quantity),
            leaves_quantity=D(leaves),
            status="partial" if leaves else "complete",
            strategy="sma",
            settlement=outcome,
        ),
        source="test/broker-gateway",
        clock=At(NEXT_MORNING + S),
        ts_event=T0 + 5 * 3600 * S,
    )


def held_overnight(buy_price: str, close_price: str) -> RiskState:
    """sma bought 2 calls at ``buy_price`` on their expiry day; they last
    traded at ``close_price`` before the close, SPY at 610; the next day
    began (SPY at 611)."""
    state = evolve(start(), fill(uuid.uuid4(), 2, buy_price, symbol=EXPIRING, strategy="sma"))
    state = apply(state, trade(EXPIRING, close_price, T0 + 4 * 3600 * S))
    state = apply(state, trade("SPY", 610, T0 + 5 * 3600 * S - S))
    state = apply(state, trade("SPY", 611, NEXT_MORNING))
    assert state.day == dt.date(2026, 3, 11)
    return state


def test_an_exercise_published_the_next_morning_is_booked_in_that_day_and_trips_nothing() -> None:
    """Bought at 8, the calls closed at 10 (the day's P&L had +400 of
    them). Exercised overnight, published the next morning stamped at the
    expiry: booked in the day the gate is in (a day gone is never opened
    again), the contract measured from the day's basis (its last price, 10:
    -2,000 realized today) and the shares from the strike (+2,200 at 611),
    so today's P&L is SPY's move since the close (+200): nothing counted
    twice or lost. Neither leg is a price. And no daily-loss breaker (limit
    1,000) trips between the two legs: before, the contract's leg alone
    made the day -2,000, and the account was flattened and halted for a
    loss it never had. The gateway publishes an exercise's shares first, so
    between the legs the day shows a gain: here a print of another symbol
    the account holds comes between them, and still nothing trips."""
    state = held_overnight("8", "10")
    state = evolve(state, fill(uuid.uuid4(), 1, 100, symbol="AAPL", strategy="sma"))
    state = evolve(state, settled("SPY", "buy", 200, 600, "exercised"))
    assert state.day_pnl("acct") > 0  # the shares' gain, the contracts not yet gone
    state = apply(state, trade("AAPL", 100, NEXT_MORNING + 2 * S))
    state = evolve(state, settled(EXPIRING, "sell", 2, 0, "exercised"))
    assert state.day == dt.date(2026, 3, 11)
    call, spy = state.positions[("acct", EXPIRING)], state.positions[("acct", "SPY")]
    assert (call.quantity, call.realized_total, call.realized_day) == (D(0), D(-1600), D(-2000))
    assert (spy.quantity, spy.avg_price, spy.day_basis) == (D(200), D(600), D(600))
    assert state.marks["SPY"].price == D(611)
    assert state.marks[EXPIRING].price == D(10)
    assert state.day_pnl("acct") == D(200)
    assert state.obligations == ()


def test_an_exercise_s_last_leg_the_contracts_is_checked_against_the_breaker() -> None:
    """The calls closed at 10 with SPY at 610; SPY opened the next morning at
    601. The exercise's shares (first) are a gain of 200 at 601, and the
    contracts (last) lose the 2,000 they were valued at: the day is -1,800,
    past the 1,000 limit, and the breaker trips at that last leg. (Checked
    only at an expiry's or the shares' fill, it waited for the next print.)"""
    state = evolve(start(), fill(uuid.uuid4(), 2, "8", symbol=EXPIRING, strategy="sma"))
    state = apply(state, trade(EXPIRING, "10", T0 + 4 * 3600 * S))
    state = apply(state, trade("SPY", 610, T0 + 5 * 3600 * S - S))
    state = apply(state, trade("SPY", 601, NEXT_MORNING))
    state = evolve(state, settled("SPY", "buy", 200, 600, "exercised"))
    assert state.obligations == ()
    state = evolve(state, settled(EXPIRING, "sell", 2, 0, "exercised"))
    assert state.day_pnl("acct") == D(200) - D(2000)
    assert [o.kind for o in state.obligations] == ["daily_loss"]


def test_an_assignment_s_contracts_come_first_and_a_print_between_the_legs_trips_nothing() -> None:
    """sma sold 2 calls at 12, last at 10 before the close (SPY at 610):
    assigned overnight, it buys the 2 back at 0 (+2,000 on the day's basis)
    and sells 200 SPY at the strike (-2,200 at 611). The gateway publishes
    the contracts first, so between the legs the day shows the premium kept,
    never the shares' loss alone: a print of SPY (the account holds a share)
    between them trips no 1,000 breaker."""
    state = evolve(start(), fill(uuid.uuid4(), 2, 12, side="sell", symbol=EXPIRING, strategy="sma"))
    state = apply(state, trade(EXPIRING, 10, T0 + 4 * 3600 * S))
    state = apply(state, trade("SPY", 610, T0 + 5 * 3600 * S - S))
    state = evolve(state, fill(uuid.uuid4(), 1, 610, symbol="SPY", strategy="sma"))
    state = apply(state, trade("SPY", 611, NEXT_MORNING))
    state = evolve(state, settled(EXPIRING, "buy", 2, 0, "assigned"))
    assert state.day_pnl("acct") > 0
    state = apply(state, trade("SPY", 611, NEXT_MORNING + 2 * S))
    state = evolve(state, settled("SPY", "sell", 200, 600, "assigned"))
    assert state.positions[("acct", EXPIRING)].quantity == 0
    assert state.positions[("acct", "SPY")].quantity == D(-199)
    # The contracts +2,000 on their basis of 10; the share held closed at
    # 600 (-10 on its basis of 610); 199 short at 600 marked at 611 (-2,189).
    assert state.day_pnl("acct") == D(2000) - D(10) - D(2189)
    assert state.obligations == ()


def test_an_expiry_published_the_next_morning_is_a_loss_of_that_day() -> None:
    """Bought at 8, last at 6 before the close (-400 on the expiry day),
    expired worthless: the next day loses the 1,200 they were still valued
    at, a settlement whole in itself, and its breaker trips on it."""
    state = held_overnight("8", "6")
    state = evolve(state, settled(EXPIRING, "sell", 2, 0, "expired"))
    assert state.day_pnl("acct") == D(-1200)
    assert [o.kind for o in state.obligations] == ["daily_loss"]
