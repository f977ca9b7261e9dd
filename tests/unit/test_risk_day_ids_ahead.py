"""The gate's own events made (by its clock) on a trading day after the one
its state is in: the real gate and a fold of its store file their ids alike.

The gate decides on its clock, which can read 04:00:00.001 while its state
is still in the day before (the new day's first message, already in the
stream, not folded yet). Live, the decision is applied at once; in the store
it lands after that first message. Both now file its id under the day it was
made (``DayIds.ahead`` until the state reaches that day), so neither makes
the day before one that added ids where the other does not.
"""

from __future__ import annotations

import pytest

from libs.contract.envelope import Event
from services.risk_gate.adapters import checkpoint
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import DAY_START, LIMITS, S, apply, intent, start, trade
from tests.unit.risk_live_gates import deliver, live_gate, same
from tests.unit.risk_timelines import fold

MS = S // 1000
DAY = 24 * 3600 * S


@pytest.mark.parametrize("landing", [0, 1, 2], ids=["before", "after", "two-days-later"])
async def test_a_decision_made_on_the_next_day_is_filed_alike_live_and_folded(
    landing: int,
) -> None:
    """Day D: an intent decided in the evening; a second at 03:59:59.998,
    handled with the gate's clock at 04:00:00.001. The gate's answers land in
    the store ``landing`` messages later: before D + 1's first print, after
    it, or after D + 2's. Live and folded, the ids remembered are the same
    (the fold may keep more only when the answers land a day late)."""
    first = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START - 2 * MS)
    roll = trade("MSFT", 51, DAY_START + MS // 2)
    next_roll = trade("MSFT", 52, DAY_START + DAY + MS)
    before: list[Event] = [trade("AAPL", 100), trade("MSFT", 50)]
    gate, clock, bus = await live_gate(before, first.ts_event)
    store = list(before)
    await deliver(gate, first, len(store) + 1, 1)
    store += [first, *(e for batch in bus.batches for e in batch)]
    bus.batches.clear()

    in_flight: list[Event] = []
    for k, (event, now) in enumerate(
        [(late, DAY_START + MS), (roll, DAY_START + 2 * MS), (next_roll, DAY_START + DAY + MS)]
    ):
        clock.ns = now
        await deliver(gate, event, len(store) + 1, k + 2)
        store.append(event)
        in_flight += [e for batch in bus.batches for e in batch]
        bus.batches.clear()
        if k == landing:
            store += in_flight
            in_flight = []
    assert {e.type for e in store} >= {"RiskDecisionMade", "SubmitOrder"}
    folded = fold(RiskState.initial(LIMITS), store)

    assert gate.state.day is not None
    assert gate.state.day.isoformat() == "2026-03-12"
    assert [name for name in same(gate.state, folded) if name != "decided"] == []
    assert late.id in gate.state.decided
    if landing < 2:
        assert gate.state.decided == folded.decided
    else:  # filed a day late in the fold, under the day before: kept longer
        assert set(gate.state.decided) <= set(folded.decided)


def test_an_id_filed_ahead_joins_the_day_it_was_made_at_the_roll() -> None:
    """Before the state reaches the day the decision was made in, its id is
    remembered but belongs to no day of the state's yet; at that day's roll
    it is the new day's, whether the roll comes before or after it."""
    late = intent(10, t=DAY_START - 2 * MS)
    roll = trade("MSFT", 51, DAY_START + MS // 2)
    state = apply(start(), late)
    decided = decide(state, late, DAY_START + MS).events
    ahead = apply(state, *decided)
    assert late.id in ahead.decided
    assert late.id not in ahead.decided.today
    assert late.id not in ahead.decided.yesterday

    rolled_after = evolve(ahead, roll)
    rolled_before = apply(state, roll, *decided)
    assert rolled_after.decided == rolled_before.decided
    assert late.id in rolled_after.decided.today


def test_ids_filed_ahead_survive_a_checkpoint() -> None:
    late = intent(10, t=DAY_START - 2 * MS)
    state = apply(start(), late)
    ahead = apply(state, *decide(state, late, DAY_START + MS).events)
    assert late.id not in ahead.decided.today

    restored = checkpoint.decode(checkpoint.encode(ahead), ahead.limits)
    assert restored == ahead
    roll = trade("MSFT", 51, DAY_START + MS // 2)
    assert evolve(restored, roll).decided == evolve(ahead, roll).decided


def test_ids_made_on_a_day_the_state_skips_join_the_set_kept() -> None:
    """The state is in D (its last message an intent of D); the gate decides
    it on D + 1 (going live after hours), and the next message is D + 2's.
    The decision's day is one the state never enters: at the roll to D + 2
    its id joins the set kept, with D's, as in a fold that reaches it only
    after that roll (filed under the earlier day)."""
    first = intent(10, t=DAY_START - 5 * 3600 * S)
    late = intent(10, t=DAY_START - 2 * MS)
    roll = trade("MSFT", 51, DAY_START + DAY + MS)
    state = apply(start(), first)
    state = apply(state, *decide(state, first, first.ts_event).events, late)
    decided = decide(state, late, DAY_START + 3 * 3600 * S).events
    live = apply(state, *decided, roll)
    folded = apply(state, roll, *decided)

    assert live.decided == folded.decided
    assert set(live.decided) == set(live.decided.yesterday) == {first.id, late.id}
    assert not live.decided.ahead
