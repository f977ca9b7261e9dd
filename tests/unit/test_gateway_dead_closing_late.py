"""A flatten's closing order that its close-all's answer listed as working,
and that ends short of its quantity afterwards (the venue rejects it,
expires it, or it is canceled, with nothing or only part filled): the
position is still open at the broker, and that is said as it is at the
answer (test_gateway_dead_closing_open.py): an ``OrderRejected`` of the
position, its id derived from the flatten and the symbol, caused by the
flatten, "which is still open", naming the order and its end; the refused
positions counted, an error logged. Once: not again for the same end
brought twice, nor after a restart (the same id), nor when another closing
order of the flatten closes the symbol, nor when a later flatten canceled
it (that one closes the position again). The broker is a stand-in; the
clock is the test's."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any, cast

import pytest

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import FillPayload, FillReceived, FlattenAccount, FlattenAccountPayload
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerOrder,
    ClosedAll,
    OrderStatus,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import AccountWorker
from tests.unit.gateway_closing_inputs import closed_by, closing, holding, outcomes, streamed
from tests.unit.gateway_doubles import CLOCK, broker

D = Decimal


def refusals(events: list[Any]) -> list[Any]:
    """The refusals of positions among ``events`` (not the orders' own ends)."""
    return [e for e in events if e.type == "OrderRejected" and "still open" in e.payload.reason]


def said_open_late(
    events: list[Any], flatten: FlattenAccount, account: str, ended: str, oid: str = "c-1"
) -> Any:
    """One refusal of AAPL, the flatten's, its closing order ``oid`` ``ended``."""
    [refusal] = refusals(events)
    assert refusal.causation_id == flatten.id
    assert refusal.payload.order_id == derived_id("broker.close", account, flatten.id, "AAPL")
    assert refusal.id == derived_id("broker.reject", account, refusal.payload.order_id)
    assert "the AAPL position, which is still open" in refusal.payload.reason
    assert f"its closing order {oid} was {ended} filled" in refusal.payload.reason
    return refusal


async def answered(account: str, published: list[Any]) -> tuple[AccountWorker, FlattenAccount]:
    """A flatten whose close-all's answer lists the AAPL closing sell c-1
    working: ``flattened``."""
    w = holding(account)
    flatten = await closed_by(w, ClosedAll((closing("accepted"),)), published)
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 0}
    assert refusals(published) == []
    return w, flatten


@pytest.mark.parametrize(
    ("kind", "status"), [("canceled", "canceled"), ("expired", "expired"), ("rejected", "rejected")]
)
async def test_a_closing_order_that_ends_after_the_answer_leaves_its_position_open(
    kind: str, status: OrderStatus, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer listed c-1 as working and the flatten said ``flattened``.
    Then the venue ends it with nothing filled (a day order waiting for a
    price expires at the close, say): it was published as the order's end
    and nothing else, the broker holding the 10 AAPL. Now AAPL is published
    as left open, counted and logged as a refused position. (The flatten's
    outcome was counted when it ran and stays so: a counter takes nothing
    back.)"""
    account = f"late-{uuid.uuid4().hex[:8]}"
    published: list[Any] = []
    w, flatten = await answered(account, published)
    update = OrderUpdate(cast(Any, kind), closing(status), 5, reason="day order expired")
    with caplog.at_level(logging.ERROR):
        await streamed(w, [update], published)
    refusal = said_open_late(published, flatten, account, f"{status} with nothing")
    ends = [e for e in published if e.type in ("OrderCanceled", "OrderRejected") and e != refusal]
    assert len(ends) == 1
    assert ends[0].causation_id == flatten.id
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(str(flatten.id) in m and "AAPL" in m and "still open" in m for m in errors), errors
    assert w.tracker.position("AAPL", "s") == D(10)


async def test_an_expired_option_contracts_closing_order_ending_late_awaits_its_settlement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A closing order in an option contract past its expiry, expired by
    the broker after the answer: no order closes the position, the broker
    settles it, and no operator can clear that. Its refusal is published,
    but it is a warning, not counted as left open, as at the answer."""
    account = f"late-{uuid.uuid4().hex[:8]}"
    published: list[Any] = []
    w = holding(account)
    option = "O:SPY200117C00300000"
    flatten = await closed_by(w, ClosedAll((closing("accepted", symbol=option),)), published)
    with caplog.at_level(logging.WARNING):
        await streamed(w, [OrderUpdate("expired", closing("expired", symbol=option), 5)], published)
    [refusal] = refusals(published)
    assert refusal.causation_id == flatten.id
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 0}
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m for level, m in said if level == logging.ERROR] == []
    assert any("awaiting the broker's settlement" in m for level, m in said), said


async def test_a_closing_order_a_reconciliation_finds_ended_part_filled_leaves_the_rest_open() -> (
    None
):
    """The stream lost c-1's news; a reconciliation finds it canceled with
    4 of its 10 filled: the fill is published, then 6 AAPL are said open."""
    account = f"late-{uuid.uuid4().hex[:8]}"
    published: list[Any] = []
    w, flatten = await answered(account, published)
    ended = closing("canceled", filled=4)

    async def get_order(**ids: str | None) -> BrokerOrder | None:
        return ended if ids.get("broker_order_id") == "c-1" else None

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [BrokerFill("c-1", "close-c-1", "AAPL", "sell", D(4), D(101), D(4), D(6), 4)]

    w.port = broker(get_order=get_order, order_fills=order_fills)
    assert await w.reconcile()
    said_open_late(published, flatten, account, "canceled with 4 of 10")
    assert outcomes(account)["refused"] == 1
    assert w.tracker.position("AAPL", "s") == D(6)


# ------------------------------------------------------- the tracker alone


def fill_of_10(account: str) -> FillReceived:
    """s bought 10 AAPL at 100."""
    return FillReceived.create(
        FillPayload(
            order_id=uuid.uuid4(),
            account=account,
            broker_order_id="b-0",
            fill_id="f-0",
            symbol="AAPL",
            side="buy",
            quantity=D(10),
            price=D(100),
            cumulative_quantity=D(10),
            leaves_quantity=D(0),
            status="complete",
            strategy="s",
        ),
        source="test",
        clock=CLOCK,
    )


def flattened(*orders: BrokerOrder) -> tuple[OrderTracker, FlattenAccount, list[Event]]:
    """A tracker holding 10 AAPL, and a flatten whose close-all answered
    ``orders`` (working); the events recorded, in order."""
    t = OrderTracker("acct", clock=CLOCK, source="test")
    bought = fill_of_10("acct")
    t.evolve(bought)
    flatten = a_flatten()
    t.flatten_started(flatten)
    recorded: list[Event] = [bought, flatten, *t.flatten_done(orders)]
    t.flatten_ended()
    return t, flatten, recorded


def a_flatten() -> FlattenAccount:
    return FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )


def rebuilt(recorded: list[Event]) -> OrderTracker:
    t = OrderTracker("acct", clock=CLOCK, source="test")
    for event in recorded:
        t.evolve(cast(Any, event))
    return t


def test_the_same_end_twice_or_after_a_restart_is_said_once() -> None:
    """c-1's cancel comes from the stream and again from a reconciliation:
    one refusal. Rebuilt from what was recorded, a tracker that finds it
    canceled says nothing more; one rebuilt from what was recorded before
    the refusal (a crash before it was stored) says it again, under the
    same id (JetStream drops a copy), and its own cancel after it."""
    t, flatten, recorded = flattened(closing("accepted"))
    first = t.on_update(OrderUpdate("canceled", closing("canceled"), 5))
    refusal = said_open_late(first, flatten, "acct", "canceled with nothing")
    assert refusals(t.reconcile(closing("canceled"), None)) == []
    assert t.on_update(OrderUpdate("canceled", closing("canceled"), 6)) == []
    recorded += first
    assert rebuilt(recorded).reconcile(closing("canceled"), None) == []
    # The refusal leaves before the order's end: a crash between the two
    # leaves the order working in the store, and the restarted gateway's
    # reconciliation ends it, the refusal found made already.
    assert [e.type for e in first] == ["OrderRejected", "OrderCanceled"]
    cut = rebuilt(recorded[: len(recorded) - 1])
    assert [e.type for e in cut.reconcile(closing("canceled"), None)] == ["OrderCanceled"]
    before = rebuilt(recorded[: len(recorded) - 2])
    again = before.reconcile(closing("canceled"), None)
    assert [e.id for e in refusals(again)] == [refusal.id]


def test_not_while_another_closing_order_of_the_symbol_works_then_once() -> None:
    """Two closing orders of AAPL (an attempt's and the one after's): the
    first canceled while the second works leaves AAPL closing; the second
    canceled too leaves it open, said once, naming it."""
    t, flatten, _ = flattened(closing("accepted"), closing("accepted", oid="c-2"))
    assert refusals(t.on_update(OrderUpdate("canceled", closing("canceled"), 5))) == []
    second = t.on_update(OrderUpdate("canceled", closing("canceled", oid="c-2"), 6))
    said_open_late(second, flatten, "acct", "canceled with nothing", oid="c-2")


def test_not_when_another_closing_order_of_the_symbol_filled_whole() -> None:
    """c-2 filled the 10; c-1 canceled after closes nothing, AAPL is closed."""
    t, _, _ = flattened(closing("accepted"), closing("accepted", oid="c-2"))
    fill = BrokerFill("c-2", "close-c-2", "AAPL", "sell", D(10), D(101), D(10), D(0), 4)
    t.on_update(OrderUpdate("fill", closing("filled", filled=10, oid="c-2"), 4, fill))
    assert refusals(t.on_update(OrderUpdate("canceled", closing("canceled"), 5))) == []


def test_not_when_a_later_flatten_canceled_it() -> None:
    """A second flatten's cancel-all cancels c-1: that flatten closes AAPL
    again (its own close-all), and the first does not say it open."""
    t, _, _ = flattened(closing("accepted"))
    t.evolve(a_flatten())
    assert refusals(t.on_update(OrderUpdate("canceled", closing("canceled"), 5))) == []


def test_not_an_order_that_ends_before_the_answer() -> None:
    """Before the answer is read the refusal is the answer's (left_open):
    the end the stream brings then says nothing itself."""
    t = OrderTracker("acct", clock=CLOCK, source="test")
    t.evolve(fill_of_10("acct"))
    t.flatten_started(a_flatten())
    t.on_update(OrderUpdate("accepted", closing("accepted"), 1))
    assert refusals(t.on_update(OrderUpdate("canceled", closing("canceled"), 2))) == []
