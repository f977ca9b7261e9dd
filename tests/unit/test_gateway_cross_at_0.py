"""The net-0 cross of an expired contract (services/broker_gateway/domain/cross.py)
with no settlement listed: closed at 0 as expired, and said, since nothing
the gateway has tells whether it ended in the money."""

from __future__ import annotations

import logging

import pytest

from tests.unit.gateway_settlement_inputs import (
    ACCOUNT,
    CALL,
    activity,
    cross,
    opened,
    tracker,
)


def test_a_net_0_cross_closed_at_0_says_it_may_have_ended_in_the_money(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """s1 long 2 calls, s2 short 2: the broker held none, settles nothing
    and lists nothing. The cross closes both at 0 as expired: had SPY
    closed above 600, s1 would have exercised and s2 been assigned, and
    each strategy's P&L lacks the intrinsic value s2 owed s1. Nothing the
    gateway has says which (the strike prices the shares, not whether
    they are delivered). Before, nothing was said; now a warning names the
    contract, the strategies, the strike and what the booking may lack."""
    t = tracker(opened([("s1", CALL, "2"), ("s2", CALL, "-2")]))
    with caplog.at_level(logging.WARNING):
        events = cross(t, [], {})
    assert len(events) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    said = warnings[0]
    for part in (ACCOUNT, CALL, "s1 +2", "s2 -2", "600", "in the money"):
        assert part in said, (part, said)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cross(t, [], {}) == []
    assert not caplog.records, "said once, when crossed"


def test_a_cross_that_follows_the_brokers_settlement_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """s1 long 3, s2 short 1, and the broker's exercise of the net 2 listed:
    the cross follows it (exercised, shares at the strike), and there is
    nothing to warn of."""
    t = tracker(opened([("s1", CALL, "3"), ("s2", CALL, "-1")]))
    exercise = [activity("a1", "OPEXC", CALL, "-2")]
    with caplog.at_level(logging.WARNING):
        events = cross(t, exercise)
    assert events
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
