"""Exactly once in the risk-gate's fold: an event seen again later (the same
id, published again) leaves the state as it was, for every kind of event the
gate reads, at any distance. The store keeps such a copy as
``DuplicateSuppressed`` and a rebuild skips it; the live gate must agree.
"""

from __future__ import annotations

import random

import pytest

from services.risk_gate.domain.state import RiskState
from tests.unit.test_risk_checkpoint import TIMELINES, fold
from tests.unit.test_risk_evolve import LIMITS


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
