"""The settlement task (``Settlements.run``): read again while an exercise's
shares are owed, and again after a read that raises what it does not expect."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from types import SimpleNamespace

import pytest

from libs.testing.wait import eventually
from services.broker_gateway import settlement
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import (
    Settlements,
    owed_shares,
)
from tests.unit.gateway_settlement_inputs import (
    ACCOUNT,
    CALL,
    CLOCK,
    SOURCE,
    D,
    PastClock,
    Published,
    activity,
    booked,
    opened,
    tracker,
)


class ListingBroker:
    """A connected broker whose activities list the exercise of s1's call
    alone at the first read and its ``OPTRD`` too from the second on (the
    broker books the shares a moment after the contracts)."""

    connected = True

    def __init__(self) -> None:
        self.reads = 0

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return True

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        self.reads += 1
        listed = [activity("a1", "OPEXC", CALL, "-1")]
        if self.reads > 1:
            listed.append(activity("a2", "OPTRD", "SPY", "100", "600"))
        return listed


async def test_an_exercise_read_without_its_shares_is_read_again_until_they_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read lists s1's exercised call but not yet its ``OPTRD``: the
    contract is published alone, and the account holds no contract past its
    expiry. The connection holds; the shares are listed from the next read
    on. The settlement task reads again (backing off as for a contract not
    settled yet) and publishes the 100 shares to s1. Before, it read again
    only for a held contract past its expiry or after a connection: the
    shares waited for the next reconnection or restart, the positions check
    reporting the difference meanwhile."""
    monkeypatch.setattr(settlement, "TICK_S", 0.01)
    t = tracker(opened([("s1", CALL, "1")]))
    broker, outbox = ListingBroker(), Published()
    worker = SimpleNamespace(
        account=ACCOUNT, port=broker, tracker=t, outbox=outbox, clock=PastClock(), source=SOURCE
    )
    task = asyncio.create_task(Settlements(worker).run())
    try:
        await eventually(lambda: t.position("SPY", "s1") == D(100), timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert booked(outbox.events) == [
        (CALL, "sell", "1", "0", "exercised", "s1"),
        ("SPY", "buy", "100", "600", "exercised", "s1"),
    ]
    assert broker.reads >= 2
    # Owed while the read lists the exercise (or assignment) without its
    # trade, whichever is listed first; not for an expiry.
    exercise, trade = (
        activity("a1", "OPEXC", CALL, "-1"),
        activity("a2", "OPTRD", "SPY", "100", "600"),
    )
    assert owed_shares([exercise]) == [exercise]
    assert owed_shares([trade, exercise]) == []
    assert owed_shares([exercise, activity("a3", "OPTRD", "SPY", "100", "590")]) == [exercise]
    assert owed_shares([activity("a1", "OPEXP", CALL, "-1")]) == []


class BuggyBroker(ListingBroker):
    """A broker whose first read of the activities raises what the gateway
    does not expect (a bug's KeyError, say in the adapter); from the second
    on it lists s1's exercise and its shares."""

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        listed = await super().option_activities(after=after)
        if self.reads == 1:
            raise KeyError("a bug")
        return listed


async def test_a_settlement_read_that_raises_unexpectedly_is_tried_again_not_the_gateway(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """s1 holds a call past its expiry; the first read of the activities
    raises a KeyError. Settlements.run caught only BrokerError: the error
    ended the settlement task, so the account's event task and main's
    TaskGroup, the whole gateway, and the start-up's read after a restart
    met it again. It is now said with its traceback and counted as a
    reconciliation given up, and the read is tried again after its backoff:
    the second read books s1's exercise."""
    from prometheus_client import REGISTRY

    monkeypatch.setattr(settlement, "TICK_S", 0.01)
    account = f"buggy-{uuid.uuid4().hex[:8]}"
    t = OrderTracker(account, clock=CLOCK, source=SOURCE)
    for e in opened([("s1", CALL, "1")]):
        # An account of its own: the counter below is this test's alone.
        payload = e.payload.model_copy(update={"account": account})
        t.evolve(e.model_copy(update={"payload": payload}))
    broker, outbox = BuggyBroker(), Published()
    worker = SimpleNamespace(
        account=account, port=broker, tracker=t, outbox=outbox, clock=PastClock(), source=SOURCE
    )
    task = asyncio.create_task(Settlements(worker).run())
    try:
        with caplog.at_level(logging.WARNING):
            await eventually(lambda: t.position("SPY", "s1") == D(100) or task.done(), timeout=5)
            assert not task.done(), task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert broker.reads == 2
    assert booked(outbox.events) == [
        ("SPY", "buy", "100", "600", "exercised", "s1"),
        (CALL, "sell", "1", "0", "exercised", "s1"),
    ]
    assert "KeyError: 'a bug'" in caplog.text
    assert "Traceback" in caplog.text
    given_up = REGISTRY.get_sample_value(
        "tradebus_broker_reconciliations_given_up_total", {"account": account}
    )
    assert given_up == 1
