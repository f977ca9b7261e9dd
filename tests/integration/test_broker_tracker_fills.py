"""The gateway's order tracker (services/broker_gateway/domain/tracker.py):
its fills, exactly once.

Pure and synchronous (no NATS, no broker): it lives here with the other
broker tests. It proves the exactly-once rules: ids derived from broker
facts, the cumulative-quantity watermark, gap detection and reconciliation
(the fills inferred from the broker's totals among them), against a stream
that drops, repeats and reorders.
"""

from __future__ import annotations

import random
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    FillReceived,
    OrderAccepted,
    OrderCanceled,
)
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
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
