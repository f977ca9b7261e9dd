"""The net-0 cross of an expired contract (services/broker_gateway/domain/cross.py)
with no settlement listed: closed at 0 as expired, and said, since nothing
the gateway has tells whether it ended in the money."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import WallClock
from libs.contract.events import FillPayload, FillReceived, Side
from libs.contract.options import parse_option
from services.broker_gateway.domain.cross import cross_events
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.tracker import OrderTracker

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
CALL = "O:SPY261211C00600000"  # SPY 600 call, expires Friday 2026-12-11
PAST = parse_option(CALL).expires_at_ns + 60 * 1_000_000_000
CLOCK = WallClock()


def holding(*positions: tuple[str, int]) -> OrderTracker:
    """A tracker whose strategies hold ``positions`` ((strategy, signed
    contracts)) of the call, one fill each."""
    t = OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)
    for i, (strategy, quantity) in enumerate(positions):
        side: Side = "buy" if quantity > 0 else "sell"
        t.evolve(
            FillReceived.create(
                FillPayload(
                    order_id=uuid.UUID(int=i + 1),
                    account=ACCOUNT,
                    broker_order_id=f"b-{i}",
                    fill_id=f"f-{i}",
                    symbol=CALL,
                    side=side,
                    quantity=D(abs(quantity)),
                    price=D("2.5"),
                    cumulative_quantity=D(abs(quantity)),
                    leaves_quantity=D(0),
                    status="complete",
                    strategy=strategy,
                ),
                source=SOURCE,
                clock=CLOCK,
            )
        )
    return t


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
    t = holding(("s1", 2), ("s2", -2))
    with caplog.at_level(logging.WARNING):
        events = cross_events(t, [], {}, now_ns=PAST)
    assert len(events) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    said = warnings[0]
    for part in (ACCOUNT, CALL, "s1 +2", "s2 -2", "600", "in the money"):
        assert part in said, (part, said)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cross_events(t, [], {}, now_ns=PAST) == []
    assert not caplog.records, "said once, when crossed"


def test_a_cross_that_follows_the_brokers_settlement_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """s1 long 3, s2 short 1, and the broker's exercise of the net 2 listed:
    the cross follows it (exercised, shares at the strike), and there is
    nothing to warn of."""
    t = holding(("s1", 3), ("s2", -1))
    exercise = [BrokerActivity("a1", "OPEXC", CALL, D(-2), None)]
    with caplog.at_level(logging.WARNING):
        events = cross_events(t, exercise, None, now_ns=PAST)
    assert events
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
