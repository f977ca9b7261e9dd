"""Cases found by a review of the risk-gate's decision logic: each failed
before its fix."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import ReasonCode, TradingResumeRequested
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RateLimit
from services.risk_gate.domain.react import react
from tests.unit.risk_evolve_inputs import (
    T0,
    D,
    S,
    apply,
    conn,
    fill,
    intent,
    op,
    settle,
    start,
    trade,
)


def test_a_reduce_owed_after_a_resume_survives_the_halt_a_fold_reaches_late() -> None:
    """Live: a lost connection halts the account; a print takes the loss past
    the reduce-only level (no reduce while halted); the operator resumes and
    the account reduces at once. In the stream the halt's reaction can land
    after the resume: the fold then owes [connection_lost, resume, reduce],
    and the halt dropped the reduce owed after the resume as moot. Its
    reaction then cleared nothing, today's reduce went unrecorded, and after
    a restart the operator's next resume was undone by the next print."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"))
    lost = conn("disconnected", t=T0 + S)
    print_ = trade("AAPL", 93, T0 + 2 * S)  # day P&L -700: past reduce-only (600)
    resume = op(TradingResumeRequested, "acct", T0 + 3 * S)
    live, halt = settle(evolve(state, lost), T0 + S)
    live = evolve(live, print_)
    live, resumed = settle(evolve(live, resume), T0 + 3 * S)
    assert [e.payload.state for e in resumed if e.type == "TradingStateChanged"] == [
        "active",
        "reducing",
    ]
    folded = apply(state, lost, print_, resume, *halt, *resumed)
    assert folded.obligations == live.obligations == ()
    assert folded.loss_reduced == live.loss_reduced
    assert folded == live
    # The operator resumes again: the day's reduce does not come back.
    again = op(TradingResumeRequested, "acct", T0 + 4 * S)
    later = trade("AAPL", 92, T0 + 5 * S)
    for s in (live, folded):
        s, _ = settle(evolve(s, again), T0 + 4 * S)
        assert s.scope_state("acct").state == "active"
        assert react(evolve(s, later), T0 + 5 * S) == []


@pytest.mark.parametrize(
    ("after_the_trip", "sell_passes"),
    [
        pytest.param([], True, id="still held"),
        pytest.param(
            [fill(uuid.uuid4(), 100, 88, side="sell", strategy="sma", t=T0 + 2 * S)],
            False,
            id="flattened",
        ),
    ],
)
def test_an_account_resumed_past_its_daily_loss_limit_reduces_as_one_past_its_reduce_level(
    after_the_trip: list[Event], sell_passes: bool
) -> None:
    """The breaker (1,000) tripped and halted the account; the operator
    resumes it the same day with the loss still past the reduce-only level
    (600), and past the limit too. The resume overrides the breaker, not the
    reduce-only level: the account reduces, as one resumed with a loss past
    the reduce-only level alone does. It went back to active with any order
    passing, and only a loss easing back under the limit put it in reducing:
    the larger loss was the freer one."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"))
    state = evolve(state, trade("AAPL", 88, T0 + S))  # day P&L -1,200
    state, out = settle(state, T0 + S)
    assert out[0].type == "BreakerTripped"
    state = apply(state, *after_the_trip)
    assert state.day_pnl("acct") == D(-1200)
    resume = op(TradingResumeRequested, "acct", T0 + 3 * S)
    state, out = settle(evolve(state, resume), T0 + 3 * S)
    assert [e.payload.state for e in out if e.type == "TradingStateChanged"] == [
        "active",
        "reducing",
    ]
    buy = intent(10, t=T0 + 4 * S)
    assert decide(evolve(state, buy), buy, T0 + 4 * S).reason is ReasonCode.REDUCE_ONLY
    sell = intent(10, "sell", t=T0 + 4 * S)
    verdict = decide(evolve(state, sell), sell, T0 + 4 * S).reason
    assert verdict is (ReasonCode.ACCEPTED if sell_passes else ReasonCode.REDUCE_ONLY)
    # Resumed again, the operator's word holds for the rest of the day.
    again = op(TradingResumeRequested, "acct", T0 + 5 * S)
    state, out = settle(evolve(state, again), T0 + 5 * S)
    assert [e.payload.state for e in out] == ["active"]
    state = evolve(state, trade("AAPL", 87, T0 + 6 * S))
    assert state.obligations == ()
    assert decide(evolve(state, buy), buy, T0 + 6 * S).accepted


def test_a_resume_landing_before_the_breaker_s_reaction_is_folded_as_the_gate_reacted() -> None:
    """Live, the breaker trips and halts the account, then the operator's
    resume puts it in reducing (the loss is past the limit). In the stream
    the resume can land ahead of the breaker's reaction: the fold must reach
    the same state, today's reduce recorded."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"))
    loss = trade("AAPL", 88, T0 + S)  # day P&L -1,200
    resume = op(TradingResumeRequested, "acct", T0 + 2 * S)
    live, tripped = settle(evolve(state, loss), T0 + S)
    live, resumed = settle(evolve(live, resume), T0 + 2 * S)
    assert live.scope_state("acct").state == "reducing"
    folded = apply(state, loss, resume, *tripped, *resumed)
    assert folded == live
    assert react(folded, T0 + 3 * S) == []


@pytest.mark.parametrize("per_seconds", [0.3, 2.01, 4.1, 8.2, 33.3, 1.15])
def test_a_rate_window_is_as_long_as_written(per_seconds: float) -> None:
    """``per_seconds`` is a float: 4.1 x 1e9 is 4,099,999,999.9999995, and
    int() cut the window to 4,099,999,999 ns, so an order 4.099999999 s after
    the last, still inside the window as written, was not counted."""
    written = Decimal(repr(per_seconds)) * 1_000_000_000
    assert RateLimit(max_orders=1, per_seconds=per_seconds).window_ns == written
