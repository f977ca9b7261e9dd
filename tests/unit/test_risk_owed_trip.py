"""The daily-loss breaker across the trading-day start (04:00 New York).

A trip still owed for an earlier day (a fold of the store reaches the live
gate's reaction to it after later messages) does not stand in the way of
the new day's trip.
"""

from __future__ import annotations

import datetime as dt
import uuid

from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import T0, S, apply, fill, settle, start, trade
from tests.unit.risk_live_gates import same

MS = S // 1000
#: 04:00 New York on 2026-03-11: trading day 2026-03-11 starts.
DAY_START = T0 + 17 * 3600 * S
DAY = dt.date(2026, 3, 10)
NEXT_DAY = dt.date(2026, 3, 11)


def _holding() -> RiskState:
    """Day D: 100 AAPL bought at 100, marked at 100 (acct's limit: 1,000)."""
    return evolve(start(), fill(uuid.uuid4(), 100, 100))


def test_a_trip_owed_for_the_day_gone_does_not_skip_the_new_days() -> None:
    """Day D: a print takes acct past its loss limit; the live gate trips at
    once, but its reaction lands in the stream after the next day's first
    prints, the second of which takes the new day's P&L past the limit again.
    Live, D's trip was applied by then: the new day's loss owed a trip of
    its own. The fold reached it with D's trip still owed and skipped it
    ("a daily_loss is owed already"): a rebuild after a crash before the
    new day's reaction went out owed nothing, and the account, past its
    limit, was not flattened (until some later print)."""
    state = _holding()
    loss = trade("AAPL", 89, DAY_START - 10 * MS)  # day P&L -1,100 on D
    first = trade("AAPL", 90, DAY_START + 30 * MS)  # D + 1, basis 89: +100
    again = trade("AAPL", 78, DAY_START + 50 * MS)  # -1,100 on D + 1

    live = evolve(state, loss)
    live, tripped = settle(live, DAY_START - 5 * MS)
    assert live.loss_tripped["acct"] == DAY
    live = apply(live, first, again)
    assert [(o.kind, o.day) for o in live.obligations] == [("daily_loss", NEXT_DAY)]

    # The store: D's reaction landed after both prints; the gate stopped
    # before its reaction to the second went out.
    folded = apply(state, loss, first, again, *tripped)
    assert folded.obligations == live.obligations
    assert same(live, folded) == []

    # Restarted, the rebuild trips for D + 1 as the live gate did.
    live, live_out = settle(live, DAY_START + 60 * MS)
    folded, folded_out = settle(folded, DAY_START + 60 * MS)
    assert folded_out[0].type == "BreakerTripped"
    assert folded_out == live_out
    assert same(live, folded) == []
    assert folded.loss_tripped["acct"] == live.loss_tripped["acct"] == NEXT_DAY
    assert folded.obligations == live.obligations == ()


def test_both_days_trips_land_after_the_new_days_loss() -> None:
    """As above, with both reactions in the store: the fold ends where the
    live gate did, the breaker tripped for D + 1."""
    state = _holding()
    loss = trade("AAPL", 89, DAY_START - 10 * MS)
    first = trade("AAPL", 90, DAY_START + 30 * MS)
    again = trade("AAPL", 78, DAY_START + 50 * MS)
    live, tripped = settle(evolve(state, loss), DAY_START - 5 * MS)
    live, tripped_again = settle(apply(live, first, again), DAY_START + 55 * MS)
    assert tripped_again
    folded = apply(state, loss, first, again, *tripped, *tripped_again)
    assert same(live, folded) == []
    assert folded.loss_tripped["acct"] == NEXT_DAY
    assert folded.obligations == ()
