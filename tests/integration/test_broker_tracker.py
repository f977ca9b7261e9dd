"""The gateway's order tracker (services/broker_gateway/domain/tracker.py).

Pure and synchronous (no NATS, no broker): it lives here with the other
broker tests. It proves the exactly-once rules — ids derived from broker
facts, the cumulative-quantity watermark, gap detection and reconciliation —
causation, the rebuild from recorded events, and how a flatten's closing
fills are booked to strategies.
"""

from __future__ import annotations

import gc
import random
import uuid
from collections.abc import Sequence
from decimal import Decimal

import pytest

from libs.contract.codec import derived_id
from libs.contract.envelope import CauseRef, Event
from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    ClosingOrdersPlaced,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    OrderAccepted,
    OrderCanceled,
    OrderRejected,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    CancelRefused,
    CloseRefused,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import (
    OrderTracker,
    TrackedOrder,
    position_differences,
)

D = Decimal
ACCOUNT = "acct"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000

    def now_ns(self) -> int:
        self.t += 1
        return self.t


CLOCK = Clock()


def tracker() -> OrderTracker:
    return OrderTracker(ACCOUNT, clock=Clock(), source="broker-gateway/test")


def command(
    symbol: str = "AAPL", side: str = "buy", qty: str = "10", strategy: str = "s1"
) -> SubmitOrder:
    signal = SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol=symbol, name="x", direction="long"),
        source="test",
        clock=CLOCK,
    )
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy=strategy,
            account=ACCOUNT,
            symbol=symbol,
            side=side,
            quantity=D(qty),
        ),
        source="test",
        clock=CLOCK,
        cause=signal,
    )


def order(
    cmd: SubmitOrder | None,
    filled: str = "0",
    avg: str | None = None,
    status: str = "accepted",
    *,
    broker_id: str = "b-1",
    symbol: str = "AAPL",
    side: str = "buy",
    qty: str = "10",
    client_id: str | None = None,
) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=broker_id,
        client_order_id=client_id or (str(cmd.payload.order_id) if cmd else "theirs"),
        symbol=cmd.payload.symbol if cmd else symbol,
        side=cmd.payload.side if cmd else side,  # type: ignore[arg-type]
        quantity=cmd.payload.quantity if cmd else D(qty),
        filled_quantity=D(filled),
        filled_avg_price=D(avg) if avg else None,
        status=status,  # type: ignore[arg-type]
    )


def fill_update(o: BrokerOrder, qty: str, price: str, exec_id: str) -> OrderUpdate:
    f = BrokerFill(
        broker_order_id=o.broker_order_id,
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        side=o.side,
        quantity=D(qty),
        price=D(price),
        cumulative_quantity=o.filled_quantity,
        leaves_quantity=o.quantity - o.filled_quantity,
        ts_ns=5,
        execution_id=exec_id,
    )
    return OrderUpdate("fill", o, 5, fill=f)


def fills_of(events: Sequence[Event]) -> list[tuple[str, str, str, str, str | None]]:
    out = []
    for e in events:
        assert isinstance(e, FillReceived)
        p = e.payload
        out.append(
            (
                str(p.quantity),
                str(p.price),
                str(p.cumulative_quantity),
                str(p.leaves_quantity),
                p.strategy,
            )
        )
    return out


def submitted(t: OrderTracker, cmd: SubmitOrder) -> list[Event]:
    assert t.plan_submit(cmd)
    request = t.request(cmd.payload.order_id)
    assert request.client_order_id == str(cmd.payload.order_id)
    return t.submitted(cmd.payload.order_id, order(cmd))


def test_ack_then_fills_with_causation_and_derived_ids() -> None:
    t = tracker()
    cmd = command()
    [ack] = submitted(t, cmd)
    assert isinstance(ack, OrderAccepted)
    assert (ack.causation_id, ack.correlation_id) == (cmd.id, cmd.correlation_id)
    # The same acknowledgement again (the stream's "new"): nothing more.
    assert t.on_update(OrderUpdate("accepted", order(cmd), 3)) == []
    assert not t.plan_submit(cmd)  # a repeated command: the broker already has it
    part = t.on_update(fill_update(order(cmd, "4", "100", "partially_filled"), "4", "100", "x1"))
    done = t.on_update(fill_update(order(cmd, "10", "100.6", "filled"), "6", "101", "x2"))
    assert fills_of(part + done) == [("4", "100", "4", "6", "s1"), ("6", "101", "10", "0", "s1")]
    for e in part + done:
        assert (e.causation_id, e.correlation_id) == (cmd.id, cmd.correlation_id)
    assert [e.payload.status for e in part + done] == ["partial", "complete"]
    assert t.position("AAPL", "s1") == D(10)
    # Another tracker seeing the same facts derives the same ids.
    u = tracker()
    again = submitted(u, cmd)
    again += u.on_update(fill_update(order(cmd, "4", "100", "partially_filled"), "4", "100", "x1"))
    assert [e.id for e in again] == [ack.id, part[0].id]


def test_a_fill_seen_twice_is_published_once() -> None:
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    update = fill_update(order(cmd, "10", "100", "filled"), "10", "100", "x1")
    assert len(t.on_update(update)) == 1
    assert t.on_update(update) == []
    fill = BrokerFill(
        "b-1", str(cmd.payload.order_id), "AAPL", "buy", D(10), D(100), D(10), D(0), 5
    )
    assert t.reconcile(order(cmd, "10", "100", "filled"), [fill]) == []


def test_a_gap_is_not_published_until_reconciled_in_order() -> None:
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    # Fills 0->4 were missed; this one takes the order from 4 to 10.
    assert t.on_update(fill_update(order(cmd, "10", "100.6", "filled"), "6", "101", "x2")) == []
    assert set(t.needs_reconcile) == {cmd.payload.order_id}
    oid = str(cmd.payload.order_id)
    listed = [
        BrokerFill("b-1", oid, "AAPL", "buy", D(4), D(100), D(4), D(6), 1, "x1"),
        BrokerFill("b-1", oid, "AAPL", "buy", D(6), D(101), D(10), D(0), 2, "x2"),
    ]
    events = t.reconcile(order(cmd, "10", "100.6", "filled"), listed)
    assert fills_of(events) == [("4", "100", "4", "6", "s1"), ("6", "101", "10", "0", "s1")]
    assert t.needs_reconcile == {}


def test_an_answer_older_than_the_stream_undoes_nothing_and_keeps_the_gap_marked() -> None:
    """The gateway reads the stream while a reconciliation waits for the
    broker's answers, so an answer may be older than updates taken in since
    it was asked for. It publishes nothing twice and undoes nothing; and an
    order the stream found a gap in stays marked until an answer shows what
    the stream showed. A stale answer used to clear the mark: the missed
    fills, or the end, waited for the next reconnection."""
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    oid = cmd.payload.order_id
    asked = order(cmd, "2", "100", "partially_filled")  # the broker when it was asked
    taken = t.on_update(fill_update(order(cmd, "2", "100", "partially_filled"), "2", "100", "x1"))
    assert fills_of(taken) == [("2", "100", "2", "8", "s1")]
    # Then 3 more, the first 2 of them missed: a gap.
    gap = fill_update(order(cmd, "5", "100.6", "partially_filled"), "1", "101", "x3")
    assert t.on_update(gap) == []
    assert t.reconcile(asked, None) == []
    assert t.get(oid).filled == D(2)  # type: ignore[union-attr]
    assert set(t.needs_reconcile) == {oid}
    events = t.reconcile(order(cmd, "5", "100.6", "partially_filled"), None)
    assert fills_of(events) == [("3", "101", "5", "5", "s1")]
    assert t.needs_reconcile == {}
    assert t.reconcile(asked, None) == []  # later still: nothing
    assert t.get(oid).filled == D(5)  # type: ignore[union-attr]

    # The stream says canceled with 2 more filled than published; the answer
    # was read after those fills but before the cancel.
    t = tracker()
    submitted(t, cmd)
    t.on_update(fill_update(order(cmd, "2", "100", "partially_filled"), "2", "100", "x1"))
    assert t.on_update(OrderUpdate("canceled", order(cmd, "4", "100", "canceled"), 9)) == []
    events = t.reconcile(order(cmd, "4", "100", "partially_filled"), None)
    assert fills_of(events) == [("2", "100", "4", "6", "s1")]
    assert t.get(oid).terminal is None  # type: ignore[union-attr]
    assert set(t.needs_reconcile) == {oid}  # the end is still to be published
    events = t.reconcile(order(cmd, "4", "100", "canceled"), None)
    assert [e.type for e in events] == ["OrderCanceled"]
    assert t.needs_reconcile == {}


def test_reconcile_without_a_fill_list_infers_the_missing_fill() -> None:
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    t.on_update(fill_update(order(cmd, "4", "100", "partially_filled"), "4", "100", "x1"))
    # The broker says 10 filled at an average of 100.6: 6 more at 101.
    events = t.reconcile(order(cmd, "10", "100.6", "filled"), None)
    assert fills_of(events) == [("6", "101", "10", "0", "s1")]
    assert events[0].payload.fill_id.startswith("reconciled:")


def test_an_inferred_fill_price_is_written_without_trailing_zeros_and_keeps_its_places() -> None:
    """The price inferred from the broker's average is computed to 12 places:
    a fill at 190 was published, recorded and shown as 190.000000000000. It
    is the same number written plainly; one that needs its places keeps them."""
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    events = t.reconcile(order(cmd, "10", "190", "filled"), None)
    assert fills_of(events) == [("10", "190", "10", "0", "s1")]
    t = tracker()
    submitted(t, cmd)
    t.on_update(fill_update(order(cmd, "4", "100", "partially_filled"), "4", "100", "x1"))
    # 10 at an average of 100.5 after 4 at 100: 6 more at 100.8333..., to 12 places.
    events = t.reconcile(order(cmd, "10", "100.5", "filled"), None)
    assert fills_of(events) == [("6", "100.833333333333", "10", "0", "s1")]
    # And never in exponent form: a whole price of 100 is 100, not 1E+2.
    t = tracker()
    submitted(t, cmd)
    events = t.reconcile(order(cmd, "10", "100", "filled"), None)
    assert fills_of(events) == [("10", "100", "10", "0", "s1")]


def test_an_inferred_fill_price_of_sixteen_digits_or_more_is_exact() -> None:
    """The contract carries prices of 38 digits, 12 after the point, and the
    paper broker fills up to 1e26. In Python's default 28-digit context an
    inferred price of 1e16 or more raised ``InvalidOperation`` (no
    ``ValueError``: it ended the reconciliation task, and with it the
    gateway, at every reconnection), and the notional of the fills before
    it, rounded to 28 digits, made it wrong from 1e19 on."""
    t = tracker()
    cmd = command(qty="10")
    submitted(t, cmd)
    p1 = "12345678901234567.123456789012"
    t.on_update(fill_update(order(cmd, "4", p1, "partially_filled"), "4", p1, "x1"))
    # 10 at an average of (4 x p1 + 6 x p2) / 10: 6 more at p2, exactly.
    events = t.reconcile(order(cmd, "10", "12345678901234567.9493827156048", "filled"), None)
    assert fills_of(events) == [("6", "12345678901234568.5", "10", "0", "s1")]
    # At 1e19 the notional rounded to 28 digits was off by 0.000000005.
    t = tracker()
    submitted(t, cmd)
    p1 = "12345678901234567890.123456789012"
    t.on_update(fill_update(order(cmd, "4", p1, "partially_filled"), "4", p1, "x1"))
    events = t.reconcile(order(cmd, "10", "12345678901234567890.9493827156048", "filled"), None)
    assert fills_of(events) == [("6", "12345678901234567891.5", "10", "0", "s1")]


def test_cancel_after_missed_fills_publishes_the_fills_first() -> None:
    t = tracker()
    cmd = command()
    submitted(t, cmd)
    cancel = CancelOrder.create(
        CancelOrderPayload(order_id=cmd.payload.order_id, account=ACCOUNT), source="r", clock=CLOCK
    )
    t.evolve(cancel)
    canceled = order(cmd, "3", "100", "canceled")
    assert t.on_update(OrderUpdate("canceled", canceled, 9)) == []
    events = t.reconcile(canceled, None)
    assert [e.type for e in events] == ["FillReceived", "OrderCanceled"]
    assert events[1].causation_id == cancel.id
    assert t.get(cmd.payload.order_id).terminal == "canceled"  # type: ignore[union-attr]


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


def test_orders_nobody_here_placed_are_roots() -> None:
    t = tracker()
    theirs = order(None, "2", "10", "filled", broker_id="manual-1", qty="2", client_id="by-hand")
    events = t.on_update(fill_update(theirs, "2", "10", "m1"))
    assert [e.type for e in events] == ["OrderAccepted", "FillReceived"]
    assert all(e.causation_id is None and e.correlation_id == e.id for e in events)
    assert t.positions == {(None, "AAPL"): D(2)}


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


def _broker_truth(rng: random.Random, q: int) -> tuple[list[tuple[int, Decimal, int, str]], int]:
    """The broker's executions of an order of ``q``: (qty, price, cumulative,
    execution id), all of it or (the rest canceled) some."""
    total = q if rng.random() < 0.7 else rng.randint(0, q)
    fills: list[tuple[int, Decimal, int, str]] = []
    cum = 0
    while cum < total:
        k = rng.randint(1, total - cum)
        cum += k
        fills.append((k, D(rng.randint(9900, 10100)) / 100, cum, f"x{len(fills)}"))
    return fills, total


def test_random_deliveries_publish_every_fill_once() -> None:
    """The broker's stream drops, repeats and reorders updates; the gateway
    reconciles now and then (answers older than the stream among them) and at
    the end. Every execution is published exactly once, in order, at its
    price (an inferred one within its average); and at every step, what the
    stream has shown is published or the order is marked for reconciliation."""
    for seed in range(1000):
        _one_random_order(seed)


def _one_random_order(seed: int) -> None:
    rng = random.Random(seed)
    t = tracker()
    q = rng.choice([1, 5, 10, 37])
    cmd = command(qty=str(q))
    submitted(t, cmd)
    fills, total = _broker_truth(rng, q)
    notional = sum((p * k for k, p, _, _ in fills), D(0))
    final = "filled" if total == q else "canceled"

    def at(cum: int, status: str) -> BrokerOrder:
        n = sum((p * k for k, p, c, _ in fills if c <= cum), D(0))
        avg = str((n / cum).quantize(D("0.0001"))) if cum else None
        return order(cmd, str(cum), avg, status)

    def listed() -> list[BrokerFill] | None:
        if rng.random() < 0.5:
            return None  # a venue that does not list executions
        oid = str(cmd.payload.order_id)
        return [BrokerFill("b-1", oid, "AAPL", "buy", D(k), p, D(c), D(q - c), 1, x)
                for k, p, c, x in fills]  # fmt: skip

    updates = []
    for k, price, c, x in fills:
        o = at(c, "filled" if c == q else "partially_filled")
        exec_id = x if rng.random() < 0.8 else None
        f = BrokerFill(o.broker_order_id, o.client_order_id, o.symbol, o.side, D(k), price,
                       D(c), D(q - c), 5, exec_id)  # fmt: skip
        updates.append(OrderUpdate("fill", o, 5, fill=f))
    if total < q:
        updates.append(OrderUpdate("canceled", at(total, "canceled"), 9))
    delivered = [u for u in updates if rng.random() > 0.2]
    delivered += [rng.choice(updates) for _ in range(rng.randint(0, 3))] if updates else []
    if rng.random() < 0.5:
        rng.shuffle(delivered)

    def earlier() -> BrokerOrder:
        """The order as the broker answered at some point before the end."""
        c = rng.choice([0, *(c for _, _, c, _ in fills)])
        return at(c, "filled" if c == q else "partially_filled" if c else "accepted")

    out: list[Event] = []
    seen, ended = D(0), False  # what the stream has shown
    for u in delivered:
        out += t.on_update(u)
        seen, ended = max(seen, u.order.filled_quantity), ended or not u.order.is_open
        if rng.random() < 0.3:
            # A reconciliation's answer, read before what the stream brought since.
            out += t.reconcile(earlier(), listed())
        if t.needs_reconcile and rng.random() < 0.3:
            out += t.reconcile(at(total, final), listed())
        # Whatever the stream has shown is published, or the order is marked.
        tracked = t.get(cmd.payload.order_id)
        assert tracked is not None
        shown = tracked.filled >= seen and (tracked.terminal is not None or not ended)
        assert shown or tracked.order_id in t.needs_reconcile, seed
    out += t.reconcile(at(total, final), listed())

    published = [e for e in out if isinstance(e, FillReceived)]
    assert sum((e.payload.quantity for e in published), D(0)) == total, seed
    cums = [e.payload.cumulative_quantity for e in published]
    assert cums == sorted(set(cums)), seed
    paid = sum((e.payload.price * e.payload.quantity for e in published), D(0))
    assert abs(paid - notional) <= D("0.0001") * q, seed
    assert len({e.id for e in out}) == len(out), seed
    canceled = [e for e in out if isinstance(e, OrderCanceled)]
    assert len(canceled) == (1 if total < q else 0), seed


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


def test_an_order_done_for_the_day_lives_on() -> None:
    """A GTC order done for the day (Alpaca's ``done_for_day``) is reconciled
    as the open order it is: no ``OrderCanceled``, it stays unsettled, and its
    next day's fill is published."""
    t = tracker()
    cmd = command(qty="10")
    submitted(t, cmd)
    wire = {
        "id": "b-1",
        "client_order_id": str(cmd.payload.order_id),
        "symbol": "AAPL",
        "side": "buy",
        "qty": "10",
        "filled_qty": "4",
        "filled_avg_price": "100",
        "time_in_force": "gtc",
        "status": "done_for_day",
    }
    done_for_day = parse.order(schemas.Order.model_validate(wire))
    out = t.reconcile(done_for_day, None)
    assert [type(e).__name__ for e in out] == ["FillReceived"]
    assert [o.order_id for o in t.unsettled()] == [cmd.payload.order_id]
    next_day = order(cmd, filled="10", avg="100.6", status="filled")
    assert fills_of(t.on_update(fill_update(next_day, "6", "101", "x-2"))) == [
        ("6", "101", "10", "0", "s1")
    ]


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


def test_an_order_that_ends_loses_its_gap_mark() -> None:
    """A submit's fetch was given up (its order marked, fetch_later); then the
    stream brings the fill after all and the order ends: nothing is left to
    fetch, so the mark goes. It stayed, and every later stream update asked
    for a reconciliation of it that had nothing to do."""
    t = tracker()
    cmd = command(qty="10")
    submitted(t, cmd)
    answer = order(cmd, "10", "100", "filled")
    t.fetch_later(answer)
    assert cmd.payload.order_id in t.needs_reconcile
    events = t.on_update(fill_update(answer, "10", "100", "x-1"))
    assert [e.type for e in events] == ["FillReceived"]
    assert t.needs_reconcile == {}
