"""Ids the gate remembers per day (``DayIds``) in a fold of the store and
live, across two trading-day starts.

Found by ``test_risk_crash_cut`` (seed 28, settlements): a fold forgot an
id the live gate remembers, which ``DayIds``' docstring says it never does.
The gate's own events are now filed under the day they were made in
(``state.file_own``), live and folded alike.
"""

from __future__ import annotations

from services.risk_gate.adapters import checkpoint
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import S, apply, intent, start, trade

MS = S // 1000
#: 04:00 New York on 2026-03-11 and 2026-03-12.
DAY_START = 1_773_154_800 * S + 17 * 3600 * S
DAY = 24 * 3600 * S


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


def _remembered(state: RiskState) -> set[object]:
    return set(state.decided)


def test_a_late_decision_of_a_day_with_no_other_ids_joins_the_older_set() -> None:
    """Day D has one decided intent; D + 1's only intent comes at
    03:59:59.998 (of D + 2) and its decision lands after D + 2's first print.
    Live, D + 1's set is {it} and replaces D's at the roll; the fold files it
    with D's set instead. The fold keeps more, not less, and D + 2 stays a
    day with no ids in both."""
    earlier = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START + DAY - 2 * MS)
    prints = [trade("MSFT", 51 + n, DAY_START + n * DAY + MS) for n in range(4)]
    live = start()
    earlier_decided = decide(evolve(live, earlier), earlier, earlier.ts_event).events
    live = apply(live, earlier, *earlier_decided, prints[0])
    late_decided = decide(evolve(live, late), late, late.ts_event + MS).events
    folded = apply(live, late, prints[1], *late_decided, *prints[2:])
    live = apply(live, late, *late_decided, *prints[1:])

    assert folded.day == live.day
    assert _remembered(live) == {late.id}
    assert _remembered(folded) == {earlier.id, late.id}
    assert late.id not in evolve(folded, late).pending_intents


def test_a_late_decision_is_remembered_across_days_that_add_no_ids() -> None:
    """Three trading days of prints only after the late decision: the fold
    keeps D's ids as the live gate does (a weekend, a holiday)."""
    first = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START - 2 * MS)
    prints = [trade("MSFT", 51 + n, DAY_START + n * DAY + MS) for n in range(4)]
    live = start()
    first_decided = decide(evolve(live, first), first, first.ts_event).events
    live = apply(live, first, *first_decided)
    late_decided = decide(evolve(live, late), late, late.ts_event + MS).events
    folded = apply(live, late, prints[0], *late_decided, *prints[1:])
    live = apply(live, late, *late_decided, *prints)

    assert folded.day == live.day
    assert _remembered(live) == _remembered(folded) == {first.id, late.id}


def test_ids_filed_under_the_earlier_day_survive_a_checkpoint() -> None:
    """``add_earlier`` needs nothing new in a checkpoint: today and yesterday
    are stored as before, and the decoded state rolls as the folded one."""
    first = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START - 2 * MS)
    state = start()
    first_decided = decide(evolve(state, first), first, first.ts_event).events
    late_decided = decide(evolve(state, late), late, late.ts_event + MS).events
    roll = trade("MSFT", 51, DAY_START + MS)
    folded = apply(state, first, *first_decided, late, roll, *late_decided)
    assert not folded.decided.today

    restored = checkpoint.decode(checkpoint.encode(folded), folded.limits)
    assert restored.decided == folded.decided
    next_roll = trade("MSFT", 52, DAY_START + DAY + MS)
    assert evolve(restored, next_roll).decided == evolve(folded, next_roll).decided


def test_a_decision_made_after_the_day_start_before_its_first_message() -> None:
    """The intent comes at 03:59:59.998 and the gate's clock reads 04:00:00.001
    when it decides; the new day's first print (04:00:00.0005) reached the
    stream before the decision but the live gate had not folded it. Its own
    time says D + 1: live and folded, the decision is filed under D + 1 (live
    held ahead until the roll), so D + 1 is a day that added ids on both
    sides, and at D + 2's start both keep D + 1's set. Filed under the day it
    was applied in, it was D's live and D + 1's in the fold: the fold forgot
    D's other ids at D + 2's start, which the live gate kept."""
    first = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START - 2 * MS)
    roll = trade("MSFT", 51, DAY_START + MS // 2)
    next_roll = trade("MSFT", 52, DAY_START + DAY + MS)
    live = start()
    first_decided = decide(evolve(live, first), first, first.ts_event).events
    live = apply(live, first, *first_decided)
    late_decided = decide(evolve(live, late), late, DAY_START + MS).events
    folded = apply(live, late, roll, *late_decided, next_roll)
    live = apply(live, late, *late_decided, roll, next_roll)

    assert _remembered(live) <= _remembered(folded)
    assert live.decided == folded.decided
    assert _remembered(live) == {late.id}
