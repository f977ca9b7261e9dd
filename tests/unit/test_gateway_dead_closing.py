"""A close-all's order that its answer lists as already ended with nothing
filled (a "dead" one, left out of the flatten's closing orders: see
``Closing.flatten_done``; its position is published as left open, see
test_gateway_dead_closing_open.py), brought by the broker's stream after
the flatten has ended: its events are the flatten's, as they are when the
stream brings them while it runs. Its end still in flight when the answer
was read can come so; a fill cannot (ended is final, see
test_gateway_dead_closing_restart.py), and its test is of a safeguard."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event, WallClock
from libs.contract.events import (
    FillPayload,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
)
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerOrder,
    CloseRefused,
    OrderStatus,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
CLOCK = WallClock()


def holding() -> OrderTracker:
    """s1 holds 5 AAPL (one fill recorded)."""
    t = OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)
    t.evolve(
        FillReceived.create(
            FillPayload(
                order_id=uuid.uuid4(),
                account=ACCOUNT,
                broker_order_id="b-0",
                fill_id="f-0",
                symbol="AAPL",
                side="buy",
                quantity=D(5),
                price=D(100),
                cumulative_quantity=D(5),
                leaves_quantity=D(0),
                status="complete",
                strategy="s1",
            ),
            source=SOURCE,
            clock=CLOCK,
        )
    )
    return t


def closing(status: OrderStatus, filled: int = 0) -> BrokerOrder:
    return BrokerOrder("c-aapl", "close-aapl", "AAPL", "sell", D(5), D(filled), None, status)


def flattened_with_a_dead_order(t: OrderTracker, status: OrderStatus) -> FlattenAccount:
    """A flatten whose close-all answers the AAPL closing order as ``status``
    with nothing filled; the stream has not brought it yet."""
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    t.flatten_started(flatten)
    # As the worker passes it: its position left open (Flattening._left_open).
    [(symbol, why)] = t.left_open([closing(status)]).items()
    refused = [CloseRefused(symbol, why, entry=0)]
    assert [e.type for e in t.flatten_done([closing(status)], refused)] == ["OrderRejected"]
    t.flatten_ended()
    assert t.find(closing(status)) is None, "left out (1d5cbc6)"
    return flatten


def caused_by(events: list[Event], flatten: FlattenAccount) -> None:
    assert events
    for e in events:
        assert (e.type, e.causation_id, e.correlation_id) == (
            e.type,
            flatten.id,
            flatten.correlation_id,
        )


def test_a_fill_of_a_dead_closing_order_after_the_flatten_is_the_flattens() -> None:
    """A safeguard, for a case that cannot happen at Alpaca or the paper
    broker: the close-all's answer said the AAPL closing order had expired
    with nothing filled, and after the flatten ended the stream brings a
    fill of it. Expired is final (test_gateway_dead_closing_restart.py), so
    no such fill comes; a broker that sent one all the same would have it
    taken in as an order nobody placed (its OrderAccepted and FillReceived
    with no cause, the fill booked to no strategy and s1 left holding the 5
    sold). The dead order is remembered with its flatten, so such events
    are caused by the flatten and the fill is booked to s1."""
    t = holding()
    flatten = flattened_with_a_dead_order(t, "expired")
    order = closing("filled", filled=5)
    fill = BrokerFill("c-aapl", "close-aapl", "AAPL", "sell", D(5), D(99), D(5), D(0), 1, "x-1")
    events = t.on_update(OrderUpdate("fill", order, 1, fill))
    assert [e.type for e in events] == ["OrderAccepted", "FillReceived"]
    caused_by(events, flatten)
    fills = [e for e in events if isinstance(e, FillReceived)]
    assert [(f.payload.strategy, f.payload.quantity) for f in fills] == [("s1", D(5))]
    assert t.position("AAPL", "s1") == 0
    assert t.position("AAPL", None) == 0


@pytest.mark.parametrize("status", ["canceled", "rejected"])
def test_the_end_of_a_dead_closing_order_after_the_flatten_is_the_flattens(
    status: OrderStatus,
) -> None:
    """The stream's own news of such an order (its end, after the flatten
    ended) is the flatten's too, as it is while the flatten runs."""
    t = holding()
    flatten = flattened_with_a_dead_order(t, status)
    if status == "canceled":
        update = OrderUpdate("canceled", closing(status), 1, reason="no")
    else:
        update = OrderUpdate("rejected", closing(status), 1, reason="no")
    events = t.on_update(update)
    caused_by(events, flatten)
    assert t.position("AAPL", "s1") == D(5)


def test_an_order_nobody_placed_after_the_flatten_is_still_nobodys() -> None:
    """An order the answer did not list stays an order nobody here placed:
    a root, its fills booked to no strategy."""
    t = holding()
    flattened_with_a_dead_order(t, "expired")
    other = BrokerOrder("h-1", "by-hand", "AAPL", "sell", D(1), D(0), None, "accepted")
    [accepted] = t.on_update(OrderUpdate("accepted", other, 1))
    assert accepted.causation_id is None
