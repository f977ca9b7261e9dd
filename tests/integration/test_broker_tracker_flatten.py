"""The gateway's order tracker (services/broker_gateway/domain/tracker.py):
flattens.

Pure and synchronous (no NATS, no broker): it lives here with the other
broker tests. How a flatten's closing fills are booked to strategies, what
its close-all's and cancel-all's refusals publish, and when a flatten is
done, live or rebuilt, and let go.
"""

from __future__ import annotations

import uuid

import pytest

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import (
    ClosingOrdersPlaced,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    OrderAccepted,
    OrderCanceled,
    OrderRejected,
)
from services.broker_gateway.domain.model import (
    BrokerOrder,
    CancelRefused,
    CloseRefused,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
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


def test_flatten_books_closing_fills_to_the_strategies_it_closes() -> None:
    t = tracker()
    for cmd, price in (
        (command("AAPL", "buy", "10", "s1"), "100"),
        (command("AAPL", "buy", "5", "s2"), "101"),
        (command("MSFT", "sell", "3", "s3"), "50"),
    ):
        submitted(t, cmd)
        t.on_update(
            fill_update(
                order(cmd, str(cmd.payload.quantity), price, "filled"),
                str(cmd.payload.quantity),
                price,
                "f",
            )
        )
    assert t.positions == {("s1", "AAPL"): D(10), ("s2", "AAPL"): D(5), ("s3", "MSFT"): D(-3)}
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    t.flatten_started(flatten)
    # The broker closes each symbol with one order; here the AAPL one fills before
    # the close-all answers (the stream is faster), in two parts, and 2 more than we hold.
    aapl = order(
        None,
        "12",
        "99",
        "partially_filled",
        broker_id="c-aapl",
        symbol="AAPL",
        side="sell",
        qty="17",
        client_id="bx1",
    )
    first = t.on_update(fill_update(aapl, "12", "99", "e1"))
    assert [e.type for e in first] == ["OrderAccepted", "FillReceived", "FillReceived"]
    msft = order(None, broker_id="c-msft", symbol="MSFT", side="buy", qty="3", client_id="bx2")
    acks = t.flatten_done([aapl, msft])
    # MSFT's acceptance (AAPL's was already out), then what the risk-gate counts
    # open: what of each still works, past the fills published, and whose it is.
    assert [e.type for e in acks] == ["OrderAccepted", "ClosingOrdersPlaced"]
    placed = acks[-1]
    assert isinstance(placed, ClosingOrdersPlaced)
    assert (placed.id, placed.causation_id) == (
        derived_id("broker.closing", ACCOUNT, flatten.id),
        flatten.id,
    )
    assert [
        (o.symbol, o.side, o.quantity, o.leaves_quantity, o.strategy) for o in placed.payload.orders
    ] == [
        ("AAPL", "sell", D(17), D(5), None),  # 3 of s2's, 2 of nobody's
        ("MSFT", "buy", D(3), D(3), "s3"),
    ]
    assert [o.order_id for o in placed.payload.orders] == [
        t.find(aapl).order_id,  # type: ignore[union-attr]
        t.find(msft).order_id,  # type: ignore[union-attr]
    ]
    aapl_done = order(
        None,
        "17",
        "98.9",
        "filled",
        broker_id="c-aapl",
        symbol="AAPL",
        side="sell",
        qty="17",
        client_id="bx1",
    )
    rest = t.on_update(fill_update(aapl_done, "5", "98.6", "e2"))
    msft_done = order(
        None,
        "3",
        "51",
        "filled",
        broker_id="c-msft",
        symbol="MSFT",
        side="buy",
        qty="3",
        client_id="bx2",
    )
    cover = t.on_update(fill_update(msft_done, "3", "51", "e3"))
    closing = [e for e in first + rest + cover if isinstance(e, FillReceived)]
    assert fills_of(closing) == [
        ("10", "99", "10", "7", "s1"),
        ("2", "99", "12", "5", "s2"),
        ("3", "98.6", "15", "2", "s2"),
        ("2", "98.6", "17", "0", None),  # more than any strategy held: nobody's
        ("3", "51", "3", "0", "s3"),
    ]
    for e in [*first, *acks, *rest, *cover]:
        assert (e.causation_id, e.correlation_id) == (flatten.id, flatten.id)
    assert (
        t.positions[("s1", "AAPL")]
        == t.positions[("s2", "AAPL")]
        == t.positions[("s3", "MSFT")]
        == 0
    )
    # A rebuilt tracker knows the closing orders (their acks are caused by the flatten).
    rebuilt = tracker()
    for e in [flatten, *first, *acks, *rest, *cover]:
        rebuilt.evolve(e)  # type: ignore[arg-type]
    closing_orders = [o for o in rebuilt.orders.values() if o.closing]
    assert sorted(o.broker_order_id or "" for o in closing_orders) == ["c-aapl", "c-msft"]


def test_cancel_events_are_caused_by_the_flatten_that_canceled_them() -> None:
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="halt"), source="r", clock=CLOCK
    )
    t.flatten_started(flatten)
    [canceled] = t.on_update(OrderUpdate("canceled", order(cmd, status="canceled"), 4))
    assert isinstance(canceled, OrderCanceled)
    assert canceled.causation_id == flatten.id
    assert [e.type for e in t.flatten_done([])] == ["ClosingOrdersPlaced"]  # placed none


def test_a_flatten_is_done_once_live_or_rebuilt() -> None:
    """A flatten whose close-all answered is never run again: not a copy of
    it in the same process, nor one delivered again after a restart if its
    ClosingOrdersPlaced was recorded. A closing order's acceptance alone (the
    stream's, before a crash took the answer) does not make it done."""
    live = tracker()
    empty = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    assert not live.flattened(empty.id)
    live.flatten_started(empty)
    assert not live.flattened(empty.id)  # under way: a crash here must run it again
    # Nothing to close: its answer is recorded all the same, with no order.
    (answered,) = live.flatten_done([])
    assert isinstance(answered, ClosingOrdersPlaced)
    assert answered.payload.orders == ()
    assert answered.causation_id == empty.id
    live.flatten_ended()
    assert live.flattened(empty.id)

    closing = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    live.flatten_started(closing)
    done = live.flatten_done(
        [order(None, broker_id="c-1", client_id="close-1", symbol="AAPL", side="sell")]
    )
    live.flatten_ended()
    accepted, placed = done
    assert isinstance(accepted, OrderAccepted)
    assert isinstance(placed, ClosingOrdersPlaced)
    cut = tracker()
    for recorded in (empty, closing, accepted):
        cut.evolve(recorded)
    assert not cut.flattened(closing.id)
    assert [f.id for f in cut.unfinished_flattens()] == [empty.id, closing.id]
    rebuilt = tracker()
    for e in (empty, answered, closing, accepted, placed):
        rebuilt.evolve(e)
    assert rebuilt.flattened(closing.id)
    # The empty one's answer says it ran: it is not among the flattens a
    # crash may have cut, which hold unknown orders back at every start-up
    # until they come again (it never would).
    assert rebuilt.flattened(empty.id)
    assert rebuilt.unfinished_flattens() == []


@pytest.mark.parametrize("status", ["canceled", "rejected", "expired"])
def test_a_dead_order_in_a_close_all_answer_is_left_out_and_not_tracked(status: str) -> None:
    """The close-all's answer lists, beside the MSFT closing order, an AAPL
    one that had already ended with nothing filled. It is no closing order
    the flatten placed (left out of ClosingOrdersPlaced, nothing published),
    but the tracker took it in all the same, acknowledged by the broker and
    not ended: unsettled, so the next reconciliation asked the broker for it
    and published an OrderAccepted (and OrderCanceled, or OrderRejected) of
    an order that never traded, which a tracker rebuilt from the recorded
    events never knew of. It is now left out altogether."""
    live = tracker()
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    live.flatten_started(flatten)
    msft = order(None, broker_id="c-msft", client_id="close-msft", symbol="MSFT", side="sell")
    dead = order(None, status=status, broker_id="c-aapl", client_id="close-aapl", side="sell")
    done = live.flatten_done([dead, msft])
    live.flatten_ended()
    assert [e.type for e in done] == ["OrderAccepted", "ClosingOrdersPlaced"]
    placed = done[-1]
    assert isinstance(placed, ClosingOrdersPlaced)
    assert [o.symbol for o in placed.payload.orders] == ["MSFT"]
    assert live.find(dead) is None
    assert [t.broker_order_id for t in live.unsettled()] == ["c-msft"]
    rebuilt = tracker()
    for e in (flatten, *done):
        rebuilt.evolve(e)  # type: ignore[arg-type]
    assert sorted(live.orders) == sorted(rebuilt.orders)


def test_the_live_tracker_lets_a_flatten_go_once_no_consumer_can_bring_it_again() -> None:
    """The live tracker kept every flatten it handled, and whether it was
    done, for as long as the gateway ran (only a start-up's rebuild was
    bounded). A flatten whose ack the command consumer confirmed will not be
    delivered again by it: it is let go at once, as a rebuilt tracker lets go
    the flattens below the ack floor; whether it is done is kept while a
    consumer made anew, replaying ``replay_ns``, could bring it, then forgotten."""
    s = 1_000_000_000
    live = tracker()

    def ran(at_s: int, *, acknowledged: bool = True) -> FlattenAccount:
        f = FlattenAccount.create(
            FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
        )
        live.flatten_started(f)
        live.flatten_done([])
        live.flatten_ended()
        if acknowledged:
            live.flatten_acknowledged(f.id, now_ns=at_s * s, replay_ns=30 * s)
        return f

    first, second = ran(0), ran(1)
    unacked = ran(2, acknowledged=False)  # its ack not confirmed: it may come again
    assert [f.id for f in live.unfinished_flattens()] == []
    assert live._flattens.keys() == {unacked.id}
    assert live.flattened(first.id)  # a consumer made anew could replay it: a repeat
    third = ran(30)  # the first's 30 s are over
    assert not live.flattened(first.id)
    assert all(live.flattened(f.id) for f in (second, unacked, third))
    # However many it handles, it holds those of the last 30 s (and the unacked one).
    for at in range(100, 1100):
        ran(at)
    assert len(live._flattened) == 30 + 1  # acknowledged at 1070 to 1099 s
    assert live._flattens.keys() == {unacked.id}


def test_a_flatten_the_consumer_acknowledged_is_not_waited_for_and_stays_done() -> None:
    """Flattens the command consumer acknowledged will not be delivered
    again: one cut without an outcome (given up, dead-lettered) is not among
    the flattens a crash may have cut, and one that ran stays done, in case
    a consumer made anew replays it. Its closing order keeps it as its cause."""
    live = tracker()
    ran, cut = (
        FlattenAccount.create(
            FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
        )
        for _ in range(2)
    )
    live.flatten_started(ran)
    done = live.flatten_done(
        [order(None, broker_id="c-1", client_id="close-1", symbol="AAPL", side="sell")]
    )
    live.flatten_ended()
    rebuilt = tracker()
    for e in (ran, *done, cut):
        rebuilt.evolve(e)  # type: ignore[arg-type]
    assert [f.id for f in rebuilt.unfinished_flattens()] == [cut.id]
    rebuilt.flattens_acknowledged({ran.id, cut.id, uuid.uuid4()})  # another account's too
    assert rebuilt.unfinished_flattens() == []
    assert rebuilt.flattened(ran.id)
    assert not rebuilt.flattened(cut.id)
    [closing] = rebuilt.orders.values()
    assert closing.closing
    assert closing.cause == ran


def test_a_position_the_close_all_refused_is_published_as_a_rejection() -> None:
    """A flatten whose close-all left a position open does not pass for done
    silently: the refused closing order is an ``OrderRejected`` caused by the
    flatten, with the venue's code; a rebuilt tracker knows the flatten ran."""
    live = tracker()
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    live.flatten_started(flatten)
    done = live.flatten_done(
        [order(None, broker_id="c-1", client_id="close-1", symbol="AAPL", side="sell")],
        [CloseRefused("MSFT", "insufficient qty available for order", "40310000", entry=1)],
    )
    live.flatten_ended()
    accepted, placed, rejected = done
    assert isinstance(accepted, OrderAccepted)
    # The refused one was never placed: not among the orders the gate counts.
    assert isinstance(placed, ClosingOrdersPlaced)
    assert [o.symbol for o in placed.payload.orders] == ["AAPL"]
    assert isinstance(rejected, OrderRejected)
    assert rejected.causation_id == flatten.id
    assert rejected.payload.code == "40310000"
    assert "MSFT position, which is still open" in rejected.payload.reason
    # The same refusal seen again (a rebuilt tracker) is the same event.
    again = tracker()
    again.evolve(flatten)
    again.flatten_started(flatten)
    refused_again = again.flatten_done([], [CloseRefused("MSFT", "x", "1", entry=0)])
    assert [e.id for e in refused_again] == [rejected.id]
    rebuilt = tracker()
    for e in (flatten, rejected):
        rebuilt.evolve(e)
    assert rebuilt.flattened(flatten.id)


def test_an_order_the_cancel_all_left_working_is_published_as_a_rejection() -> None:
    """The cancel-all before a close-all refused two cancels: of an opg
    buy locked until the open (still working) and of an order that filled
    meanwhile (its fill taken in since). The one still working is an
    ``OrderRejected`` caused by the flatten, under an id of its own, naming
    the broker's order; the order itself stays working, and its fill later
    is published. The filled one is not said."""
    t = tracker()
    moo, done = command(), command(symbol="MSFT", qty="2")
    for c in (moo, done):
        t.plan_submit(c)
    t.on_update(OrderUpdate("accepted", order(moo, broker_id="b-moo"), 1))
    filled = order(done, "2", "50", "filled", broker_id="b-done")
    t.on_update(fill_update(filled, "2", "50", "x-done"))
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    t.flatten_started(flatten)
    refusals = [
        CancelRefused("b-moo", "order is not cancelable (opg)", "42210000", entry=0),
        CancelRefused("b-done", "order is filled", "42210000", entry=1),
    ]
    working = t.left_working(refusals)
    assert working == refusals[:1]
    placed, rejected = t.flatten_done([], working=working)
    t.flatten_ended()
    assert isinstance(placed, ClosingOrdersPlaced)
    assert isinstance(rejected, OrderRejected)
    assert rejected.causation_id == flatten.id
    assert rejected.payload.order_id != moo.payload.order_id
    assert rejected.payload.code == "42210000"
    assert "order b-moo (buy 10 AAPL), which is still working" in rejected.payload.reason
    assert t.get(moo.payload.order_id).terminal is None  # type: ignore[union-attr]
    [fill] = t.on_update(
        fill_update(order(moo, "10", "101", "filled", broker_id="b-moo"), "10", "101", "x-moo")
    )
    assert isinstance(fill, FillReceived)
    assert t.net_positions() == {"AAPL": D(10), "MSFT": D(2)}


def test_refused_closes_that_name_no_symbol_are_each_published() -> None:
    """A close-all's refusals that name no symbol are told apart by their
    place in the answer: each is an ``OrderRejected`` of its own (they all had
    the id of symbol "?", and all but the first were dropped as repeats), and
    the same answer read again gives the same ids."""
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    refused = [
        CloseRefused(None, "forbidden", "40310000", entry=0),
        CloseRefused("MSFT", "halted", "40310000", entry=1),
        CloseRefused(None, "forbidden", "40310000", entry=3),
    ]

    def rejections(t: OrderTracker) -> list[Event]:
        t.flatten_started(flatten)
        out = t.flatten_done([], refused)
        t.flatten_ended()
        return out

    first = rejections(tracker())
    rejected = [e for e in first if isinstance(e, OrderRejected)]
    assert len(rejected) == len(first) == 3
    assert len({e.id for e in rejected}) == 3
    assert len({e.payload.order_id for e in rejected}) == 3
    assert all(e.causation_id == flatten.id for e in rejected)
    assert "entry 3 of its answer" in rejected[2].payload.reason
    assert "MSFT position, which is still open" in rejected[1].payload.reason
    assert [e.id for e in rejections(tracker())] == [e.id for e in first]


def test_a_closing_order_the_contract_refuses_loses_none_of_the_flatten_s_events() -> None:
    """A closing order the contract cannot carry (a symbol it refuses, a
    quantity with too many places) made ``flatten_done`` raise part-way,
    after recording the acceptances built before it: never published, and
    the flatten counted done, so the command's retry was a repeat and the
    acceptances, ``ClosingOrdersPlaced`` and the refusals were lost for
    good. Now nothing is recorded unless all of it is; given a list for
    them (the gateway's way), such orders are set aside there and the rest
    is recorded and returned, in the outbox's order."""
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    good = order(None, broker_id="c-1", client_id="close-1", symbol="AAPL", side="sell")
    bad_symbol = order(
        None, broker_id="c-2", client_id="close-2", symbol="O:SPY241340P00720000", side="sell"
    )
    bad_quantity = order(
        None, broker_id="c-3", client_id="close-3", symbol="BTC/USD", qty="0.0000000000001"
    )
    closing = [good, bad_symbol, bad_quantity]
    refused = [CloseRefused("MSFT", "halted", "40310000", entry=3)]

    strict = tracker()
    strict.flatten_started(flatten)
    with pytest.raises(ValueError, match="O:SPY241340P00720000"):
        strict.flatten_done(closing, refused)
    strict.flatten_ended()
    assert not strict.flattened(flatten.id)  # its retry runs it
    assert not strict.find(good).accepted  # type: ignore[union-attr]

    live = tracker()
    live.flatten_started(flatten)
    unexpressed: list[tuple[BrokerOrder, ValueError]] = []
    done = live.flatten_done(closing, refused, unexpressed=unexpressed)
    live.flatten_ended()
    assert [e.type for e in done] == ["OrderAccepted", "ClosingOrdersPlaced", "OrderRejected"]
    placed = done[1]
    assert isinstance(placed, ClosingOrdersPlaced)
    assert [o.symbol for o in placed.payload.orders] == ["AAPL"]
    assert [o.broker_order_id for o, _ in unexpressed] == ["c-2", "c-3"]
    # Neither half of the order whose ClosingOrder failed is recorded.
    assert not live.find(bad_quantity).accepted  # type: ignore[union-attr]
    assert live.flattened(flatten.id)
