"""Option settlements and orders in the contract: an activity (and a cross)
waits while an order may still fill, and no longer for an order the broker
forgot (404) once the contract has expired, found before or after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Any, cast

import pytest

from libs.contract.events import (
    OrderAccepted,
    OrderAcceptedPayload,
)
from libs.testing.wait import eventually
from services.broker_gateway import settlement
from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerOrder,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import AccountWorker
from services.broker_gateway.settlement import held_expired
from tests.unit.gateway_settlement_inputs import (
    ACCOUNT,
    CALL,
    CLOCK,
    PAST,
    SOURCE,
    D,
    PastClock,
    Published,
    activity,
    booked,
    buy_one_call,
    cross,
    filled,
    opened,
    settle,
    tracker,
)


def test_an_activity_of_a_contract_with_an_order_still_working_waits_for_it() -> None:
    """s1 holds 2 calls by the fills published and a buy of 1 more, placed
    before the close, whose fill is not published yet (the gateway away over
    the close). The broker exercises the 3. Split now, over s1's 2, the
    third went to no strategy with its 100 shares, and the late fill left s1
    +1 in the expired contract for ever. The activity (and its shares,
    listed before or after it) waits until no order in the contract may
    still fill; the next read books all 3 to s1."""
    t = tracker(opened([("s1", CALL, "2")]))
    working = buy_one_call(t)
    exercise = [
        activity("a2", "OPTRD", "SPY", "300", "600"),
        activity("a1", "OPEXC", CALL, "-3"),
    ]
    assert settle(t, exercise) == []
    assert settle(t, list(reversed(exercise))) == []
    t.evolve(filled(working))
    assert booked(settle(t, exercise)) == [
        ("SPY", "buy", "300", "600", "exercised", "s1"),
        (CALL, "sell", "3", "0", "exercised", "s1"),
    ]
    assert (t.position(CALL, "s1"), t.position("SPY", "s1")) == (D(0), D(300))


def forgotten_buy(t: OrderTracker) -> uuid.UUID:
    """s1's buy of 1 more call, acknowledged by the broker, which then
    answers it does not know it (404, ``unknown_at_broker``)."""
    order_id = buy_one_call(t).payload.order_id
    t.submitted(
        order_id, BrokerOrder("b-late", str(order_id), CALL, "buy", D(1), D(0), None, "accepted")
    )
    assert t.unsettled()[0].order_id == order_id, "it may still fill"
    t.unknown_at_broker(order_id)
    return order_id


def test_an_order_the_broker_forgot_holds_an_expired_contract_back_no_more() -> None:
    """s1 +3 and s2 -1 by the fills published, and a buy of 1 more by s1
    that the broker acknowledged and, asked after the close, no longer knows
    (404). Its outcome is unknown, so it stays unsettled (reconciliations ask
    for it and say so). But past the contract's expiry no order in it can
    fill any more (the broker ends them at the close): the net 2 the broker
    expired goes to s1 and the offsetting 1 is crossed. Before, the order
    counted as one that may still fill for ever: the contract stayed held,
    its settlement and cross waited, and the settlement task read the
    activities every 5 minutes."""
    t = OrderTracker(ACCOUNT, clock=PastClock(), source=SOURCE)
    for e in opened([("s1", CALL, "3"), ("s2", CALL, "-1")]):
        t.evolve(e)
    order_id = forgotten_buy(t)
    assert [u.order_id for u in t.unsettled()] == [order_id], "still reported"
    net = [activity("a1", "OPEXP", CALL, "-2")]
    assert booked(settle(t, net)) == [(CALL, "sell", "2", "0", "expired", "s1")]
    assert booked(cross(t, net, broker={})) == [
        (CALL, "buy", "1", "0", "expired", "s2"),
        (CALL, "sell", "1", "0", "expired", "s1"),
    ]
    assert held_expired(t, PAST) == []


def test_an_order_the_broker_forgot_before_the_expiry_may_still_fill() -> None:
    """The same 404 before the contract's expiry (by the tracker's clock):
    the order could still fill, and an activity of its contract waits."""
    t = tracker(opened([("s1", CALL, "2")]))
    forgotten_buy(t)
    assert settle(t, [activity("a1", "OPEXP", CALL, "-2")]) == []


def test_an_order_the_broker_forgot_and_the_stream_brings_again_may_still_fill() -> None:
    """s1's buy of 1 more call, acknowledged, then answered 404 (the broker
    lost it for a while), then brought again by the stream: the broker knows
    it, so it is not forgotten any more, and past the expiry its contract's
    settlement waits for it as for any order that may still fill. Only a
    reconciliation's answer cleared ``forgotten``: the stream's update left
    the order counted as one that could no longer fill, and the net 2 the
    broker expired went to s1 before that order's fill was published."""
    t = OrderTracker(ACCOUNT, clock=PastClock(), source=SOURCE)
    for e in opened([("s1", CALL, "2")]):
        t.evolve(e)
    order_id = forgotten_buy(t)
    order = BrokerOrder("b-late", str(order_id), CALL, "buy", D(1), D(0), None, "accepted")
    assert t.on_update(OrderUpdate("accepted", order, PAST)) == [], "acknowledged already"
    assert order_id not in t.forgotten
    assert settle(t, [activity("a1", "OPEXP", CALL, "-2")]) == []


class RestartedBroker:
    """A connected broker after a gateway's restart: it lists s1's contracts
    expired (the net 2) and no longer knows s1's late buy (404), which it
    answers only after the first read of the activities (the start-up's
    reconciliation took longer than that read: many orders, a rate limit)."""

    connected = True
    broker = "paper"

    def __init__(self) -> None:
        self.reads = 0
        self.read = asyncio.Event()
        self.asked: list[str | None] = []

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return True

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        self.reads += 1
        self.read.set()
        return [activity("a1", "OPEXP", CALL, "-2")]

    async def get_order(self, **ids: str | None) -> BrokerOrder | None:
        await self.read.wait()
        self.asked.append(ids.get("broker_order_id"))
        return None

    async def open_orders(self) -> list[BrokerOrder]:
        return []


async def test_after_a_restart_an_expired_contract_is_settled_once_its_order_is_found_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s1 +2 and an acknowledged buy of 1 more by s1, recorded; the gateway
    restarts past the expiry. Nothing recorded says the broker answered 404
    for the buy before, so the rebuilt tracker has forgotten nothing and the
    start-up's read of the activities leaves the expired contract waiting for
    the buy's fill. The start-up's reconciliation then gets the 404: the
    settlements are read again at once and s1's 2 are booked expired. They
    waited for the settlement task's backoff instead (up to READ_MAX_S, 5
    minutes; here TICK_S, made 60 s: the test fails before it)."""
    monkeypatch.setattr(settlement, "TICK_S", 60.0)
    t = OrderTracker(ACCOUNT, clock=PastClock(), source=SOURCE)
    for e in opened([("s1", CALL, "2")]):
        t.evolve(e)
    late = buy_one_call(t)
    accepted = OrderAcceptedPayload(
        order_id=late.payload.order_id, account=ACCOUNT, broker_order_id="b-late", symbol=CALL
    )
    t.evolve(OrderAccepted.create(accepted, source=SOURCE, clock=CLOCK, cause=late))
    assert not t.forgotten
    broker, outbox = RestartedBroker(), Published()

    async def dead_letter(msg: object, error: str) -> None:
        raise AssertionError(error)

    w = AccountWorker(
        ACCOUNT,
        cast(Any, broker),
        t,
        cast(Any, outbox),
        clock=PastClock(),
        source=SOURCE,
        max_submit_delay_s=30,
        ack_wait_s=1.0,
        dead_letter=dead_letter,
    )
    w.want_reconcile(everything=True)  # as the start-up's connected does
    tasks = [
        asyncio.create_task(w.settlements.run()),
        asyncio.create_task(w.run_reconciliations()),
    ]
    try:
        await eventually(lambda: t.position(CALL, "s1") == 0, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert broker.asked == ["b-late"]
    assert late.payload.order_id in t.forgotten
    assert booked(outbox.events) == [(CALL, "sell", "2", "0", "expired", "s1")]
    assert broker.reads == 2, "the start-up's read, and the one after the 404"
