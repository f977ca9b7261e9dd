"""When the option settlements are read (services/broker_gateway/settlement.py)
while the broker has not listed one: every 5 minutes at most the first day
after the contract's expiry, hourly after it, and a week on not at all but
after a connection, the settlement said (an error, a gauge, /health)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import Settlements
from tests.unit.gateway_settlement_inputs import (
    CALL,
    SOURCE,
    D,
    Published,
    activity,
    opened,
    tracker,
)

EXPIRES_NS = parse_option(CALL).expires_at_ns
MINUTE_NS, DAY_NS = 60 * 1_000_000_000, 24 * 3600 * 1_000_000_000


class Clock:
    """The wall clock, as far past the expiry as a test sets it."""

    def __init__(self) -> None:
        self.ns = EXPIRES_NS

    def now_ns(self) -> int:
        return self.ns


class Broker:
    """A connected broker that lists, at every read, the exercise of s1's
    call and never its ``OPTRD`` (``listed``), or nothing at all."""

    connected = True

    def __init__(self, listed: list[BrokerActivity]) -> None:
        self.listed = listed
        self.reads: list[int] = []
        self.clock: Clock | None = None

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        assert self.clock is not None
        self.reads.append(self.clock.ns)
        return list(self.listed)


def holding_a_call(account: str, clock: Clock) -> OrderTracker:
    """s1 holds 1 call (one fill published)."""
    return tracker(opened([("s1", CALL, "1")], account), account, clock)


EXERCISE = activity("a1", "OPEXC", CALL, "-1")


@pytest.mark.parametrize(
    ("listed", "said"),
    [
        ([EXERCISE], "100 SPY shares at 600 of the exercised O:SPY261211C00600000 (activity a1)"),
        ([], "O:SPY261211C00600000 held (s1 +1) expired at the close of 2026-12-11"),
    ],
    ids=["shares-never-listed", "contract-never-settled"],
)
async def test_a_settlement_the_broker_never_lists_is_read_less_often_then_given_up_and_said(
    listed: list[BrokerActivity], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """s1's call is exercised and the broker lists the exercise but never its
    ``OPTRD``; or it lists nothing for the call s1 holds past its expiry.
    The settlement task looks every second for 9 days (driven here a
    minute at a time). Before, it read every 5 minutes for as long as it
    was owed (the shares 8 days, until the read's week no longer reached
    the exercise, then nothing said; the contract for ever): 288 reads a
    day. Now at most that the first day after the expiry, hourly from the
    second (24 a day), none from the eighth: the settlement is given up,
    said once as an error naming it, counted in the gauge and in /health's
    ``settlements_unsettled``."""
    account = f"reads-{uuid.uuid4().hex[:8]}"
    clock = Clock()
    broker = Broker(listed)
    broker.clock = clock
    t = holding_a_call(account, clock)
    worker = SimpleNamespace(
        account=account, port=broker, tracker=t, outbox=Published(), clock=clock, source=SOURCE
    )
    reads = Settlements(worker)
    with caplog.at_level(logging.ERROR):
        for minute in range(9 * 24 * 60):
            clock.ns = EXPIRES_NS + minute * MINUTE_NS
            await reads._read_if_due(minute == 0, minute * 60.0)
    per_day = [0] * 9
    for ns in broker.reads:
        per_day[(ns - EXPIRES_NS) // DAY_NS] += 1
    assert 250 <= per_day[0] <= 300, per_day
    assert per_day[2:7] == [24] * 5, per_day
    assert per_day[7:] == [0, 0], per_day
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert said in errors[0]
    assert account in errors[0]
    assert len(reads.given_up) == 1
    assert said in reads.given_up[0]
    gauge = REGISTRY.get_sample_value("tradebus_broker_settlements_unsettled", {"account": account})
    assert gauge == 1


async def test_a_settlement_given_up_and_listed_after_a_connection_is_booked_and_unsaid() -> None:
    """Given up (the shares not listed a week on), the exercise's shares
    are listed at last: the read after a connection books them to s1, and
    the settlement is no longer said."""
    account = f"reads-{uuid.uuid4().hex[:8]}"
    clock = Clock()
    broker = Broker([EXERCISE])
    broker.clock = clock
    t = holding_a_call(account, clock)
    worker = SimpleNamespace(
        account=account, port=broker, tracker=t, outbox=Published(), clock=clock, source=SOURCE
    )
    reads = Settlements(worker)
    await reads._read_if_due(True, 0.0)
    clock.ns = EXPIRES_NS + 7 * DAY_NS + MINUTE_NS
    await reads._read_if_due(False, 7 * 86400.0 + 60)
    assert len(reads.given_up) == 1
    broker.listed = [EXERCISE, BrokerActivity("a2", "OPTRD", "SPY", D(100), D(600))]
    await reads._read_if_due(True, 7 * 86400.0 + 120)
    assert t.position("SPY", "s1") == D(100)
    assert reads.given_up == []
    gauge = REGISTRY.get_sample_value("tradebus_broker_settlements_unsettled", {"account": account})
    assert gauge == 0
