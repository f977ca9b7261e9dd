"""Ids the gate remembers per day (``DayIds``) in a fold of the store and
live, across two trading-day starts.

Found by ``test_risk_crash_cut`` (seed 28, settlements) and not fixed: a
fold can forget an id the live gate remembers, which ``DayIds``' docstring
says it never does.
"""

from __future__ import annotations

import pytest

from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import S, apply, intent, start, trade

MS = S // 1000
#: 04:00 New York on 2026-03-11 and 2026-03-12.
DAY_START = 1_773_154_800 * S + 17 * 3600 * S
DAY = 24 * 3600 * S


@pytest.mark.xfail(
    strict=True,
    reason="DayIds: a gate decision filed a day late in a fold makes an empty day not empty",
)
def test_a_fold_remembers_every_decided_intent_the_live_gate_does() -> None:
    """Day D: two intents decided, the second at 03:59:59.998, its decision
    landing in the stream after D + 1's first print. D + 1 has no intents;
    D + 2 begins. Live, D + 1 added no ids, so D's stay remembered (Friday's
    on Monday). In the fold the late decision is D + 1's only id: at D + 2's
    start it replaces D's, and the first intent is forgotten. A copy of it
    (a publisher's retry past the duplicate window) would be decided again
    by a gate rebuilt from the store, and not by the live one."""
    first = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START - 2 * MS)
    roll = trade("MSFT", 51, DAY_START + MS)
    next_roll = trade("MSFT", 52, DAY_START + DAY + MS)

    live: RiskState = start()
    first_decided = decide(evolve(live, first), first, first.ts_event).events
    live = apply(live, first, *first_decided)
    late_decided = decide(evolve(live, late), late, late.ts_event + MS).events
    live = apply(live, late, *late_decided, roll, next_roll)
    folded = apply(start(), first, *first_decided, late, roll, *late_decided, next_roll)
    assert folded.day == live.day

    assert first.id in live.decided
    copy = evolve(live, first)
    assert first.id not in copy.pending_intents
    assert first.id in folded.decided
