"""Risk-state checkpoints: the codec, and the fold from a checkpoint being
exactly the fold from the start, over the store timelines of
``tests/unit/risk_timelines.py``.
"""

from __future__ import annotations

import importlib.metadata
import zlib

import pytest

from services.risk_gate.adapters.checkpoint import (
    CODE_DIGEST,
    FIELDS,
    FORMAT,
    decode,
    encode,
    field_names,
    limits_digest,
    risk_code_digest,
)
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import LIMITS
from tests.unit.risk_timelines import TIMELINES, fold


def test_the_timelines_reach_what_a_checkpoint_must_carry() -> None:
    """Guards the test below: its timelines do hold every kind of state."""
    seen: dict[str, bool] = {name: False for name in FIELDS}
    days = set()
    for events in TIMELINES.values():
        state = RiskState.initial(LIMITS)
        for e in events:
            state = evolve(state, e)
            for name in FIELDS:
                value = getattr(state, name)
                if name == "kill_switch":
                    seen[name] |= value.engaged
                elif name in ("decided", "fills_seen", "applied"):
                    seen[name] |= len(value.yesterday) > 0 and len(value.today) > 0
                elif name == "day":
                    days.add(value)
                    seen[name] = len(days - {None}) > 1
                else:
                    seen[name] |= bool(value)
    # Symbols carried into a day unpriced need a position no price ever
    # marked (a settlement's): test_risk_first_price round-trips one.
    seen["unpriced_carried"] = True
    assert [name for name, was in seen.items() if not was] == []


def test_every_state_field_is_in_the_checkpoint() -> None:
    assert set(FIELDS) == field_names()


def test_a_calendar_upgrade_ignores_the_old_checkpoints() -> None:
    """The digest names the installed exchange-calendars: a version that adds
    a holiday or an early close moves an option's expiry, so a state folded
    under another version is not used."""
    installed = importlib.metadata.version("exchange-calendars")
    assert risk_code_digest(installed) == CODE_DIGEST
    assert risk_code_digest("4.13.2") != risk_code_digest("4.13.3")
    assert risk_code_digest(None) != risk_code_digest(installed)


@pytest.mark.parametrize("seed", sorted(TIMELINES))
def test_folding_on_from_a_checkpoint_is_folding_from_the_start(seed: int) -> None:
    events = TIMELINES[seed]
    initial = RiskState.initial(LIMITS)
    full = fold(initial, events)
    state = initial
    for k, event in enumerate(events):
        # The checkpoint after the first k events, read back...
        restored = decode(encode(state), LIMITS)
        assert restored == state, f"round trip at {k}"
        # ...then the rest of the timeline folded on from it.
        assert fold(restored, events[k:]) == full, f"split at {k}"
        state = evolve(state, event)
    assert decode(encode(full), LIMITS) == full


def test_a_checkpoint_is_read_under_the_given_limits() -> None:
    state = fold(RiskState.initial(LIMITS), TIMELINES[8][:50])
    other = RiskLimits()
    restored = decode(encode(state), other)
    assert restored.limits is other
    assert limits_digest(other) != limits_digest(LIMITS)
    assert limits_digest(LIMITS) == limits_digest(RiskLimits.model_validate(LIMITS.model_dump()))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not zlib", "unreadable checkpoint: error"),
        (zlib.compress(b"[1, 2"), "unreadable checkpoint: JSONDecodeError"),
        (zlib.compress(b'{"format": 99, "state": {}}'), "format 99, expected"),
        (
            zlib.compress(f'{{"format": {FORMAT}, "state": {{}}}}'.encode()),
            "unreadable checkpoint: KeyError",
        ),
    ],
)
def test_an_unreadable_checkpoint_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(data, LIMITS)
