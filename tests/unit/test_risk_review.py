"""Cases found by a review of the risk-gate's decision logic: each failed
before its fix."""

from __future__ import annotations

import uuid

from libs.contract.events import TradingResumeRequested
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from tests.unit.test_risk_evolve import (
    T0,
    S,
    apply,
    conn,
    fill,
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
