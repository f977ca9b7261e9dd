"""Exactly once in the risk-gate's fold: an event seen again later (the same
id, published again) leaves the state as it was, for every kind of event the
gate reads, at any distance. The store keeps such a copy as
``DuplicateSuppressed`` and a rebuild skips it; the live gate must agree.
"""

from __future__ import annotations

import random

import pytest

from libs.contract.envelope import Event
from libs.contract.events import FillReceived, OrderIntentCreated, TradingResumeRequested
from services.risk_gate.domain.commands import order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import LIMITS, T0, S, conn, fill, intent, op, trade
from tests.unit.risk_live_gates import MS, deliver, live_gate, same
from tests.unit.risk_timelines import TIMELINES, fold


@pytest.mark.parametrize("seed", sorted(TIMELINES))
def test_a_later_copy_of_any_event_changes_nothing(seed: int) -> None:
    events = TIMELINES[seed]
    whole = fold(RiskState.initial(LIMITS), events)
    rng = random.Random(seed)
    kinds = set()
    for i, event in enumerate(events):
        later = rng.randint(i + 1, len(events))
        copied = [*events[:later], event, *events[later:]]
        assert fold(RiskState.initial(LIMITS), copied) == whole, (i, event.type, later - i)
        kinds.add(event.type)
    # Every kind the gate reads came up (guards the test itself).
    assert {"KillSwitchEngaged", "BreakerTripped", "FillReceived", "SubmitOrder"} <= kinds


DAY = 24 * 3600 * S
#: 11:00 New York on Friday 2026-03-13 (T0 is Tuesday 2026-03-10).
FRIDAY = T0 + 3 * DAY


def quiet_days(kind: str) -> tuple[list[Event], int]:
    """Quiet days between Friday's fills and the next trading day's copies,
    and how many days after Friday that one is: each event rolls the trading
    day (any event does) and none is a fill or an intent."""
    if kind == "weekend":
        return [op(TradingResumeRequested, "acct", t=FRIDAY + 2 * DAY)], 3
    return [
        conn("connected", t=FRIDAY + DAY),
        op(TradingResumeRequested, "acct", t=FRIDAY + 2 * DAY),
        op(TradingResumeRequested, "global", t=FRIDAY + 3 * DAY),  # a holiday Monday
    ], 4


QUIET = ["weekend", "weekend and a holiday"]


def _friday() -> tuple[list[Event], OrderIntentCreated, FillReceived]:
    """Friday: marks, an intent decided and ordered, and its fill."""
    i = intent(10, t=FRIDAY + S)
    events: list[Event] = [trade("AAPL", 100, FRIDAY), trade("MSFT", 50, FRIDAY), i]
    state = fold(RiskState.initial(LIMITS), events)
    events += decide(state, i, FRIDAY + S).events
    f = fill(order_id_for(i.id), 10, 100, t=FRIDAY + 2 * S)
    return [*events, f], i, f


@pytest.mark.parametrize("quiet", QUIET)
def test_a_copy_after_a_weekend_or_holiday_changes_nothing(quiet: str) -> None:
    """Friday's intent and fill, published again on the next trading day
    (past JetStream's duplicate window), after days whose only events are an
    operator's or a connection's: the fill is not counted, nor the intent
    held for a decision, again. Each quiet day rolls the trading day; when a
    roll dropped the older ids whatever the day had added, Friday's were gone
    by then (the fill counted twice, the intent pending again)."""
    events, i, f = _friday()
    quiet_events, days = quiet_days(quiet)
    events += [*quiet_events, trade("AAPL", 101, FRIDAY + days * DAY)]
    whole = fold(RiskState.initial(LIMITS), events)
    copied = fold(RiskState.initial(LIMITS), [*events, i, f])
    assert copied.account_position("acct", "AAPL") == 10
    assert copied.pending_intents == {}
    assert copied == whole


@pytest.mark.parametrize("quiet", QUIET)
async def test_the_live_gate_ignores_a_copy_after_a_weekend_as_the_store_does(quiet: str) -> None:
    """The live gate handles Friday, the quiet days and the copies on the
    next trading day: it publishes nothing for the copies, counts the fill
    once, and its state is the fold of the store, which keeps the copies as
    ``DuplicateSuppressed`` and never folds them."""
    friday, i, f = _friday()
    before = friday[:2]
    gate, clock, bus = await live_gate(before, FRIDAY)
    quiet_events, days = quiet_days(quiet)
    messages = [i, f, *quiet_events, trade("AAPL", 101, FRIDAY + days * DAY)]
    store = list(before)
    for event in messages:
        clock.ns = event.ts_event + 5 * MS
        await deliver(gate, event, len(store) + 1, 1)
        store.append(event)
        store += [e for batch in bus.batches for e in batch]
        bus.batches.clear()
    assert gate.state.account_position("acct", "AAPL") == 10
    seq = len(store)
    for copy in (i, f):
        seq += 1
        await deliver(gate, copy, seq, 1)
    assert bus.batches == []
    assert gate.state.account_position("acct", "AAPL") == 10
    assert same(gate.state, fold(RiskState.initial(LIMITS), store)) == []
