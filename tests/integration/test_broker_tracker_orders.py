"""The gateway's order tracker (services/broker_gateway/domain/tracker.py):
an order's life besides its fills.

Pure and synchronous (no NATS, no broker): it lives here with the other
broker tests. Rejections and withdrawals, causation (what a settled order
keeps of its commands, orders nobody here placed), the rebuild from
recorded events, and the net positions the positions check compares.
"""

from __future__ import annotations

import gc
import uuid

from libs.contract.envelope import CauseRef, Event
from libs.contract.events import CancelOrder, CancelOrderPayload, OrderCanceled, OrderRejected
from services.broker_gateway.domain.model import BrokerPosition, OrderUpdate
from services.broker_gateway.domain.tracker import TrackedOrder, position_differences
from tests.integration.tracker_inputs import (
    ACCOUNT,
    CLOCK,
    D,
    command,
    fill_update,
    fills_of,
    order,
    submitted,
    tracker,
)


def test_rejections() -> None:
    t = tracker()
    cmd = command()
    assert t.plan_submit(cmd)
    [rejected] = t.refused(cmd.payload.order_id, "asset HALT is not tradable", "42210000")
    assert isinstance(rejected, OrderRejected)
    assert rejected.causation_id == cmd.id
    assert t.refused(cmd.payload.order_id, "again", None) == []
    assert not t.plan_submit(cmd)  # rejected is final: never sent again
    other = command()
    t.plan_submit(other)
    [late] = t.on_update(OrderUpdate("rejected", order(other, status="rejected"), 3, reason="x"))
    assert isinstance(late, OrderRejected)


def test_rebuild_from_recorded_events_gives_the_same_tracker() -> None:
    live = tracker()
    cmd1, cmd2 = command(), command("MSFT", "sell", "5", "s2")
    recorded: list[Event] = [cmd1, cmd2]
    recorded += submitted(live, cmd1)
    recorded += live.on_update(
        fill_update(order(cmd1, "4", "100", "partially_filled"), "4", "100", "a")
    )
    recorded += submitted(live, cmd2)
    rebuilt = tracker()
    for e in recorded:
        rebuilt.evolve(e)  # type: ignore[arg-type]
    assert rebuilt.positions == live.positions == {("s1", "AAPL"): D(4)}
    assert [(o.order_id, o.filled, o.accepted) for o in rebuilt.unsettled()] == [
        (o.order_id, o.filled, o.accepted) for o in live.unsettled()
    ]
    # What was published before a restart is not published after it.
    assert (
        rebuilt.on_update(fill_update(order(cmd1, "4", "100", "partially_filled"), "4", "100", "a"))
        == []
    )
    assert not rebuilt.plan_submit(cmd1)
    # Events of other accounts are not this tracker's business.
    elsewhere = cmd1.model_copy(
        update={
            "payload": cmd1.payload.model_copy(
                update={"account": "other", "order_id": uuid.uuid4()}
            )
        }
    )
    rebuilt.evolve(elsewhere)
    assert len(rebuilt.orders) == 2


def causes(o: TrackedOrder) -> tuple[object, object]:
    return o.cause, o.cancel_cause


def test_a_settled_order_keeps_only_its_causes_ids() -> None:
    """A done order holds no command (the tracker keeps every order for good),
    and what still happens to it is caused as before."""
    t = tracker()
    cmd = command()
    recorded: list[Event] = [cmd, *submitted(t, cmd)]
    recorded += t.on_update(
        fill_update(order(cmd, "4", "100", "partially_filled"), "4", "100", "x1")
    )
    tracked = t.get(cmd.payload.order_id)
    assert tracked is not None
    assert tracked.cause is cmd  # working: the command itself
    cancel = CancelOrder.create(
        CancelOrderPayload(order_id=cmd.payload.order_id, account=ACCOUNT), source="r", clock=CLOCK
    )
    t.evolve(cancel)
    [canceled] = t.on_update(OrderUpdate("canceled", order(cmd, "4", "100", "canceled"), 7))
    assert canceled.causation_id == cancel.id
    assert causes(tracked) == (
        CauseRef(cmd.id, cmd.correlation_id, "SubmitOrder"),
        CauseRef(cancel.id, cancel.correlation_id, "CancelOrder"),
    )
    assert not [o for o in gc.get_referents(tracked) if isinstance(o, Event)]
    # A fill the broker reports after the cancel is still the command's.
    [late] = t.on_update(fill_update(order(cmd, "6", "100", "canceled"), "2", "100", "x2"))
    assert (late.causation_id, late.correlation_id) == (cmd.id, cmd.correlation_id)
    assert fills_of([late]) == [("2", "100", "6", "4", "s1")]
    # The command redelivered: recognised, never sent again, cause unchanged.
    assert not t.plan_submit(cmd)
    assert isinstance(tracked.cause, CauseRef)
    # A tracker rebuilt from the recorded events holds the same.
    rebuilt = tracker()
    for e in [*recorded, cancel, canceled, late]:
        rebuilt.evolve(e)  # type: ignore[arg-type]
    again = rebuilt.get(cmd.payload.order_id)
    assert again is not None
    assert (again.cause, again.filled) == (tracked.cause, D(6))


def test_orders_nobody_here_placed_are_roots() -> None:
    t = tracker()
    theirs = order(None, "2", "10", "filled", broker_id="manual-1", qty="2", client_id="by-hand")
    events = t.on_update(fill_update(theirs, "2", "10", "m1"))
    assert [e.type for e in events] == ["OrderAccepted", "FillReceived"]
    assert all(e.causation_id is None and e.correlation_id == e.id for e in events)
    assert t.positions == {(None, "AAPL"): D(2)}


def test_an_order_canceled_before_it_was_sent_is_withdrawn_once() -> None:
    t = tracker()
    cmd = command()
    cancel = CancelOrder.create(
        CancelOrderPayload(order_id=cmd.payload.order_id, account=ACCOUNT), source="r", clock=CLOCK
    )
    # A redelivery after a crash: the store has the command and its cancel,
    # the command comes back first.
    t.evolve(cmd)
    t.evolve(cancel)
    assert not t.plan_submit(cmd)
    assert t.cancel_pending(cmd.payload.order_id)
    [withdrawn] = t.withdrawn(cmd.payload.order_id)
    assert isinstance(withdrawn, OrderCanceled)
    assert withdrawn.causation_id == cancel.id
    assert withdrawn.payload.broker_order_id is None
    assert t.withdrawn(cmd.payload.order_id) == []
    assert not t.cancel_pending(cmd.payload.order_id)
    # An accepted order is not withdrawn: it is canceled at the broker.
    other = command()
    submitted(t, other)
    t.evolve(
        CancelOrder.create(
            CancelOrderPayload(order_id=other.payload.order_id, account=ACCOUNT),
            source="r",
            clock=CLOCK,
        )
    )
    assert not t.cancel_pending(other.payload.order_id)


def test_an_order_that_ended_is_not_accepted_after_it() -> None:
    """The submit's answer can bring the venue's rejection (or a cancel can
    end the order) before the stream's ``new`` is taken in: that late ``new``,
    and a reconciliation that finds the order, publish nothing more."""
    t = tracker()
    cmd = command("LULD", qty="1")
    assert t.plan_submit(cmd)
    t.request(cmd.payload.order_id)
    [rejected] = t.submitted(cmd.payload.order_id, order(cmd, status="rejected"))
    assert isinstance(rejected, OrderRejected)
    assert t.on_update(OrderUpdate("accepted", order(cmd), 1)) == []
    assert t.reconcile(order(cmd), None) == []
    withdrawn = command()
    assert t.plan_submit(withdrawn)
    t.evolve(
        CancelOrder.create(
            CancelOrderPayload(order_id=withdrawn.payload.order_id, account=ACCOUNT, reason="r"),
            source="r",
            clock=CLOCK,
        )
    )
    assert t.cancel_pending(withdrawn.payload.order_id)
    [canceled] = t.withdrawn(withdrawn.payload.order_id)
    assert isinstance(canceled, OrderCanceled)
    assert t.on_update(OrderUpdate("accepted", order(withdrawn, broker_id="b-2"), 2)) == []
    assert not t.get(withdrawn.payload.order_id).accepted  # type: ignore[union-attr]


def test_net_positions_and_their_differences_from_the_broker_s() -> None:
    """What the positions check compares: the account's net quantity per
    symbol over every strategy (and none), from the fills published, against
    the broker's positions. Equal nets are no difference, whatever the split
    between strategies; a symbol only one side holds is one; a flat symbol
    is none on either side."""
    t = tracker()
    a, b = command(strategy="s1", qty="10"), command(strategy="s2", side="sell", qty="4")
    for cmd, broker_id in ((a, "b-1"), (b, "b-2")):
        submitted(t, cmd)
        filled = order(cmd, str(cmd.payload.quantity), "100", "filled", broker_id=broker_id)
        t.on_update(fill_update(filled, str(cmd.payload.quantity), "100", f"x-{broker_id}"))
    flat = command(symbol="MSFT", qty="3")
    submitted(t, flat)
    t.on_update(fill_update(order(flat, "3", "50", "filled", broker_id="b-3"), "3", "50", "x-3"))
    out = command(symbol="MSFT", side="sell", qty="3")
    submitted(t, out)
    t.on_update(fill_update(order(out, "3", "51", "filled", broker_id="b-4"), "3", "51", "x-4"))
    assert t.position("AAPL", "s1") == 10
    assert t.position("AAPL", "s2") == -4
    assert t.net_positions() == {"AAPL": D(6)}

    def held(**quantities: str) -> list[BrokerPosition]:
        return [BrokerPosition(s, D(q), D(100)) for s, q in quantities.items()]

    assert position_differences(t.net_positions(), held(AAPL="6")) == ()
    assert position_differences(t.net_positions(), held(AAPL="6", MSFT="0")) == ()
    found = position_differences(t.net_positions(), held(AAPL="5", TSLA="-2"))
    assert [(d.symbol, d.broker_quantity, d.recorded_quantity) for d in found] == [
        ("AAPL", D(5), D(6)),
        ("TSLA", D(-2), D(0)),
    ]
    missing = position_differences(t.net_positions(), [])
    assert [(d.symbol, d.broker_quantity, d.recorded_quantity) for d in missing] == [
        ("AAPL", D(0), D(6))
    ]
