"""A flatten recovered after a restart (its close-all's answer lost: the
broker is asked for the closing orders it placed, the positions it holds and
the orders still open), whose closing order ends short of its quantity while
the recovery is asking: the stream brings its end (canceled, expired or
rejected, with nothing or part filled) during one of those calls.

Until this, an end brought after the recovery had worked out what its
closing orders leave open (during its ``open_orders`` call, or after its
``positions`` call) was said by nobody: not by the recovery, which had
counted the symbol as closing, nor as a late end (``Closing._ends_short``),
which leaves a flatten not yet done to its answer. The flatten said
``flattened`` while the broker still held the position. Now it is said as
at the answer: one ``OrderRejected`` of the position (its id derived from
the flatten and the symbol), the flatten ``incomplete``; once, also when the
end comes again or the flatten is delivered again after a restart. The
broker is a stand-in; the clock is the test's."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, cast

import pytest

from libs.contract.codec import derived_id
from libs.contract.events import FlattenAccount
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerPosition,
    OrderStatus,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
from tests.unit.gateway_closing_inputs import closing, holding, outcomes, recovered
from tests.unit.gateway_doubles import CLOCK, worker

D = Decimal
HELD = [BrokerPosition("AAPL", D(10), D(100))]


def refusals(events: list[Any]) -> list[Any]:
    """The refusals of positions among ``events`` (not the orders' own ends)."""
    return [e for e in events if e.type == "OrderRejected" and "still open" in e.payload.reason]


def said_open(
    published: list[Any], flatten: FlattenAccount, account: str, status: str, filled: str
) -> Any:
    """One refusal of AAPL, the flatten's, its closing order c-1 ended
    (``status``) with ``filled`` filled."""
    [refusal] = refusals(published)
    assert refusal.causation_id == flatten.id
    assert refusal.payload.order_id == derived_id("broker.close", account, flatten.id, "AAPL")
    assert "the AAPL position, which is still open" in refusal.payload.reason
    said = f"its closing order c-1 was {status} with {filled} filled"
    assert said in refusal.payload.reason, refusal.payload.reason
    return refusal


def ends(kind: str, status: OrderStatus, filled: int = 0) -> OrderUpdate:
    return OrderUpdate(cast(Any, kind), closing(status, filled=filled), 5, reason="ended")


@pytest.mark.parametrize("call", ["orders_created", "positions", "open_orders"])
@pytest.mark.parametrize(
    ("kind", "status"), [("canceled", "canceled"), ("expired", "expired"), ("rejected", "rejected")]
)
async def test_a_closing_order_that_ends_while_the_recovery_asks_leaves_its_position_open(
    call: str, kind: str, status: OrderStatus
) -> None:
    """The broker lists the AAPL closing order c-1 working (nothing filled)
    and holds the 10; while the recovery's ``call`` is under way, the
    stream brings c-1's end. AAPL is said open, the flatten is
    ``incomplete``, and the strategy still holds the 10."""
    account = f"rec-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    flatten = await recovered(
        w, [closing("accepted")], HELD, published, during={call: [ends(kind, status)]}
    )
    said_open(published, flatten, account, status, "nothing")
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}
    assert w.tracker.flattened(flatten.id)
    assert w.tracker.position("AAPL", "s") == D(10)


async def test_a_closing_order_that_fills_part_and_ends_during_open_orders_leaves_the_rest() -> (
    None
):
    """The stream brings 4 of c-1's 10 filled, then its cancel, while the
    recovery asks for the open orders: the fill is booked and 6 AAPL are
    said open."""
    account = f"rec-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    fill = BrokerFill("c-1", "close-c-1", "AAPL", "sell", D(4), D(101), D(4), D(6), 4)
    updates = [
        OrderUpdate("fill", closing("partially_filled", filled=4), 4, fill),
        ends("canceled", "canceled", filled=4),
    ]
    flatten = await recovered(
        w, [closing("accepted")], HELD, published, during={"open_orders": updates}
    )
    said_open(published, flatten, account, "canceled", "4 of 10")
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}
    assert w.tracker.position("AAPL", "s") == D(6)


@pytest.mark.parametrize("call", ["positions", "open_orders"])
async def test_a_closing_order_a_reconciliation_finds_ended_while_the_recovery_asks(
    call: str,
) -> None:
    """The stream lost c-1's news; a reconciliation (a reconnection's, say)
    that runs while the recovery's ``call`` is under way finds it expired
    with nothing filled: AAPL is said open, the flatten ``incomplete``."""
    account = f"rec-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    flatten = await recovered(
        w, [closing("accepted")], HELD, published, reconciled={call: [closing("expired")]}
    )
    said_open(published, flatten, account, "expired", "nothing")
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}
    assert w.tracker.position("AAPL", "s") == D(10)


async def test_the_refusal_is_made_once_across_a_repeat_of_the_end_and_a_restart() -> None:
    """c-1 canceled during ``open_orders``: one refusal. The same end brought
    again by the stream or a reconciliation says nothing more, nor does a
    copy of the flatten. A gateway restarted from what was recorded up to
    the flatten's own answer (a crash before it was stored) recovers the
    flatten again, finds c-1 canceled, and makes the refusal under the same
    id (JetStream drops a copy)."""
    account = f"rec-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    flatten = await recovered(
        w,
        [closing("accepted")],
        HELD,
        published,
        during={"open_orders": [ends("canceled", "canceled")]},
    )
    refusal = said_open(published, flatten, account, "canceled", "nothing")
    assert refusals(w.tracker.on_update(ends("canceled", "canceled"))) == []
    assert refusals(w.tracker.reconcile(closing("canceled"), None)) == []

    again: list[Any] = []
    await recovered(w, [closing("canceled")], HELD, again, flatten=flatten)
    assert again == [], "a copy is a repeat"
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}

    # Recorded up to c-1's end, not the flatten's answer.
    answer = next(i for i, e in enumerate(published) if e.type == "ClosingOrdersPlaced")
    assert [e.type for e in published[:answer]] == ["OrderAccepted", "OrderCanceled"]
    rebuilt = OrderTracker(account, clock=CLOCK, source="test")
    for e in [flatten, *published[:answer]]:
        rebuilt.evolve(e)
    assert not rebuilt.flattened(flatten.id)
    restarted = worker([0.0], [], account=account, tracker=rebuilt)
    after: list[Any] = []
    await recovered(restarted, [closing("canceled")], HELD, after, flatten=flatten)
    [made_again] = refusals(after)
    assert made_again.id == refusal.id
