"""The gateway's AccountWorker without servers: how it takes commands back
in order, counts failures and spaces its retries. Messages are stand-ins that
record what the worker answered (ack, nak); the clock is the test's."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from libs.contract.envelope import WallClock
from libs.contract.events import AnyEvent, SubmitOrder, SubmitOrderPayload
from libs.testing.wait import eventually
from services.broker_gateway import gateway
from services.broker_gateway.domain.model import BrokerOrder, CanceledAll
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import (
    MAX_FAILURES,
    TIMINGS,
    AccountWorker,
    Held,
    Outbox,
    Timings,
    retry_delay_s,
)

CLOCK = WallClock()


class Delivery:
    """A JetStream delivery of stream sequence ``seq`` (its ``delivered``-th)."""

    def __init__(self, seq: int, delivered: int = 1) -> None:
        self.subject = "orders.cmd.acct"
        self.reply = f"$JS.ACK.TRADEBUS.broker-gateway.{delivered}.{seq}.{seq}.0.0"
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.answers: list[str] = []

    async def nak(self, delay: float | None = None) -> None:
        self.answers.append("nak")

    async def ack(self) -> None:
        self.answers.append("ack")

    async def in_progress(self) -> None:
        self.answers.append("in_progress")


def submit() -> SubmitOrder:
    payload = SubmitOrderPayload(
        order_id=uuid.uuid4(),
        strategy="s",
        account="acct",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
    )
    return SubmitOrder.create(payload, source="test/risk-gate", clock=CLOCK)


def worker(
    now: list[float],
    dead: list[str],
    max_held: int = 1,
    account: str = "acct",
    tracker: OrderTracker | None = None,
    timings: Timings = TIMINGS,
) -> AccountWorker:
    """A worker on the test's clock; ``tracker`` as rebuilt on start-up (else
    a new one); ``timings`` shorter than the service's where a test waits
    out a backoff."""

    async def dead_letter(msg: Msg, error: str) -> None:
        dead.append(error)

    w = AccountWorker(
        account,
        cast(Any, None),  # the broker is never called here
        tracker or OrderTracker(account, clock=CLOCK, source="test"),
        cast(Any, None),
        clock=CLOCK,
        source="test",
        max_submit_delay_s=30,
        ack_wait_s=1.0,
        dead_letter=dead_letter,
        max_held=max_held,
        timings=timings,
    )
    w.monotonic = lambda: now[0]
    return w


async def offer(w: AccountWorker, command: AnyEvent, msg: Delivery) -> None:
    await w.offer(command, cast(Msg, msg))


def queued(w: AccountWorker) -> list[int]:
    return [h.seq for h in w._queue]


async def test_commands_handed_back_keep_their_order_however_long_the_wait() -> None:
    """While the account has no room, the commands after the first one
    handed back wait for it. It comes back every delay and is handed back
    again: it has not left the stream, so it is never given up on, and the
    later one never overtakes it (a cancel ahead of its submit)."""
    now: list[float] = [1000.0]
    dead: list[str] = []
    w = worker(now, dead)
    first, second, third = submit(), submit(), submit()
    await offer(w, first, Delivery(1))  # takes the only room
    for cycle in range(10):  # 10 delays: far past the give-up time
        now[0] = 1000 + cycle * w.defer_s + 0.01
        await offer(w, second, Delivery(2, cycle + 1))
        await offer(w, third, Delivery(3, cycle + 1))
        assert queued(w) == [1]
    assert 10 * w.defer_s > w.give_up_s
    w._held.clear()  # the first one ran: room again
    w._queue.clear()
    now[0] += w.defer_s
    await offer(w, third, Delivery(3, 12))  # back first this time: still waits
    await offer(w, second, Delivery(2, 12))
    assert queued(w) == [2]


async def test_a_command_is_dead_lettered_after_its_own_failures_not_its_deliveries() -> None:
    """NATS's delivery count also counts the deliveries handed back for lack
    of room: a command handed back five times used to be dead-lettered (a
    flatten: positions left open) on its first failure."""
    now: list[float] = [1000.0]
    dead: list[str] = []
    w = worker(now, dead)
    command = submit()
    for attempt in range(1, MAX_FAILURES + 1):
        msg = Delivery(7, delivered=10 + attempt)
        await offer(w, command, msg)
        held = w._queue.popleft()
        await w._failed(held, ValueError("the broker refused the call"))
        del w._held[command.id]
        assert msg.answers == (["ack"] if attempt == MAX_FAILURES else ["nak"])
        assert len(dead) == (1 if attempt == MAX_FAILURES else 0), attempt


async def test_the_failures_of_a_command_that_does_not_come_back_are_forgotten() -> None:
    """A failed command is handed back and comes again; its failures are
    counted until it is done or dead-lettered. One that never comes again
    (it left the stream, or was acked meanwhile) used to keep its count for
    the life of the gateway: an entry per such command. It is forgotten once
    it has been away ``give_up_s``; one that keeps coming back, however long
    it waits for room, keeps its count."""
    now: list[float] = [1000.0]
    dead: list[str] = []
    w = worker(now, dead)  # room for one command
    gone, back, blocker, other = submit(), submit(), submit(), submit()
    for seq, command in ((1, gone), (2, back)):
        await offer(w, command, Delivery(seq))
        await w._failed(w._queue.popleft(), ValueError("the broker refused the call"))
        del w._held[command.id]
    await offer(w, blocker, Delivery(3))  # takes the room: back is handed back each time
    for delivered in range(2, 12):  # 10 delays: far past give_up_s
        now[0] += w.defer_s
        await offer(w, back, Delivery(2, delivered))
        assert queued(w) == [3]
    assert 10 * w.defer_s > w.give_up_s
    await w._failed(Held(other, cast(Msg, Delivery(4)), 4), ValueError("refused"))
    assert gone.id not in w._failures
    w._held.clear()  # the blocker ran: room again
    w._queue.clear()
    for delivered in range(12, 12 + MAX_FAILURES - 1):  # its failures 2 to 5
        await offer(w, back, Delivery(2, delivered))
        await w._failed(w._queue.popleft(), ValueError("the broker refused the call"))
        del w._held[back.id]
    assert len(dead) == 1
    assert set(w._failures) == {other.id}


@pytest.mark.parametrize("attempt", [0, 5, 1023, 1024, 10**6])
def test_the_retry_delay_is_bounded_for_any_attempt(attempt: int) -> None:
    delay = retry_delay_s(attempt)
    assert gateway.RETRY_INITIAL_S / 2 <= delay <= gateway.RETRY_MAX_S


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [(0.0, gateway.RETRY_INITIAL_S, gateway.RETRY_INITIAL_S * 1.1), (3.0, 3.0, 3.3), (600, 60, 60)],
)
def test_retry_after_is_honoured_never_at_once_and_capped(
    retry_after: float, low: float, high: float
) -> None:
    for _ in range(50):
        assert low <= retry_delay_s(0, retry_after) <= high


async def test_the_series_the_boards_watch_start_at_zero() -> None:
    """Prometheus's increase() starts from a series' first sample: a counter
    first seen at 1 (made by its first inc) shows no increase, and the risk
    board would miss the first position a flatten left open. The worker makes
    its account's series at 0; the held-commands gauge follows its queue."""
    account = f"fresh-{uuid.uuid4().hex[:8]}"  # no test has made its series yet

    def sample(name: str, **labels: str) -> float | None:
        value = REGISTRY.get_sample_value(name, {"account": account, **labels})
        return None if value is None else float(value)

    assert sample("tradebus_broker_flatten_refused_positions_total") is None
    w = worker([1000.0], [], max_held=1, account=account)
    assert sample("tradebus_broker_flatten_refused_positions_total") == 0
    assert sample("tradebus_broker_flatten_working_orders_total") == 0
    assert sample("tradebus_broker_rate_limited_total") == 0
    assert sample("tradebus_broker_reconciliations_given_up_total") == 0
    assert sample("tradebus_broker_events_published_total", type="OrderRejected") == 0
    assert sample("tradebus_broker_commands_held") == 0
    # Each command's outcomes the board shows as not carried out (the first
    # stale submit, the first incomplete flatten, were missed).
    for command, outcome in (
        ("SubmitOrder", "stale"),
        ("SubmitOrder", "rejected"),
        ("CancelOrder", "not_cancelable"),
        ("FlattenAccount", "incomplete"),
    ):
        assert sample("tradebus_broker_commands_total", type=command, outcome=outcome) == 0
    await offer(w, submit(), Delivery(1))
    await offer(w, submit(), Delivery(2))  # no room: handed back, not held
    assert w.held == 1
    assert sample("tradebus_broker_commands_held") == 1
    done = asyncio.Event()

    async def handle(held: Any) -> None:
        await done.wait()  # the broker answers when the test says so

    w.handle = handle  # type: ignore[method-assign]
    runner = asyncio.create_task(w.run_commands())
    try:
        await eventually(lambda: not w._queue)  # taken: under way, still held
        assert sample("tradebus_broker_commands_held") == 1
        done.set()
        await eventually(lambda: sample("tradebus_broker_commands_held") == 0)
        assert w.held == 0
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_working_order_the_broker_no_longer_knows_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An order the broker acknowledged and now answers 404 for (a paper
    broker's forgotten order, an order removed at the venue) has an unknown
    outcome: reconciliation used to skip it without a word."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    account = f"gone-{uuid.uuid4().hex[:8]}"
    w = worker([1000.0], [], account=account)
    command = submit()
    oid = command.payload.order_id
    accepted = OrderAcceptedPayload(
        order_id=oid, account=account, broker_order_id="b-42", symbol="AAPL"
    )
    w.tracker.evolve(
        command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": account})}
        )
    )
    w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    asked: list[str | None] = []

    async def get_order(**ids: str | None) -> None:
        asked.append(ids.get("broker_order_id"))

    async def open_orders() -> list[Any]:
        return []

    w.port = cast(Any, SimpleNamespace(get_order=get_order, open_orders=open_orders))

    def unknown() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_orders_unknown_total", {"account": account}
        )

    assert unknown() == 0
    with caplog.at_level("WARNING"):
        await w.reconcile()
    assert asked == ["b-42"]
    assert unknown() == 1
    assert f"the broker no longer knows order {oid} (broker order b-42" in caplog.text

    # Marked for its fills (the stream showed more filled than was published):
    # the broker's 404 ends the mark, which no answer could ever clear. It used
    # to stay, and every later stream update asked for the order (and said and
    # counted it) again.
    w.tracker.needs_reconcile[oid] = BrokerOrder(
        broker_order_id="b-42",
        client_order_id=str(oid),
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
        filled_quantity=Decimal(1),
        filled_avg_price=Decimal(100),
        status="filled",
    )
    await w.reconcile(only=set(w.tracker.needs_reconcile))
    assert (asked, unknown()) == (["b-42", "b-42"], 1)
    assert oid not in w.tracker.needs_reconcile


async def test_an_order_the_broker_no_longer_knows_is_counted_once() -> None:
    """The order stays unsettled (its outcome is unknown), so every full
    reconciliation (each reconnection, each retry) asks for it again. The
    counter ("Working orders the broker no longer knows") counts orders: it
    used to count each of those answers, one old order climbing for ever."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    account = f"gone-{uuid.uuid4().hex[:8]}"
    w = worker([1000.0], [], account=account)
    for n in range(2):
        command = submit()
        command = command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": account})}
        )
        accepted = OrderAcceptedPayload(
            order_id=command.payload.order_id,
            account=account,
            broker_order_id=f"b-{n}",
            symbol="AAPL",
        )
        w.tracker.evolve(command)
        w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    asked: list[str] = []

    async def get_order(**ids: str | None) -> None:
        asked.append(str(ids.get("broker_order_id")))

    async def open_orders() -> list[Any]:
        return []

    w.port = cast(Any, SimpleNamespace(get_order=get_order, open_orders=open_orders))
    for _ in range(3):  # three reconnections
        await w.reconcile()
    assert sorted(asked) == ["b-0"] * 3 + ["b-1"] * 3  # still asked: it may come back
    assert (
        REGISTRY.get_sample_value("tradebus_broker_orders_unknown_total", {"account": account}) == 2
    )


class GatedBus:
    """A bus each publish of which waits for the test to let it through
    (``gate``; ``open`` lets every one through); records what it published."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.open = False
        self.published: list[str] = []

    async def publish_together(self, events: list[Any]) -> None:
        if not self.open:
            await self.gate.wait()
            self.gate.clear()
        self.published += [e.name for e in events]


def named(name: str) -> Any:
    """A stand-in event the outbox can count: its ``name`` is what the bus records."""
    return SimpleNamespace(name=name, type="OutboxTest", payload=SimpleNamespace(account="t"))


async def test_events_handed_in_while_the_outbox_is_full_keep_their_order() -> None:
    """The outbox is full (NATS slow): a task hands in its events (a
    reconciliation: an order's OrderAccepted and first fill) and waits for
    room; the stream's task then hands in the order's next fill. They must
    leave in that order. The outbox was an asyncio.Queue with a bound: room
    made by a publish went to whichever task ran first, the one that had
    waited being woken only to find the queue full again, so the later fill
    was published before the acceptance."""
    bus = GatedBus()
    outbox = Outbox(cast(Any, bus), max_pending=1)
    running = asyncio.create_task(outbox.run())
    try:
        await outbox.post([named("first")])
        await eventually(lambda: outbox._queue.empty())  # taken: its publish waits
        await outbox.post([named("second")])  # the queue is full
        handed_in = asyncio.Event()

        async def reconcile() -> None:
            handed_in.set()  # seen once this task waits, in the publish below
            await outbox.publish([named("accepted"), named("fill 1")])

        reconciled = asyncio.create_task(reconcile())
        stream_read = asyncio.Event()

        async def stream() -> None:
            await stream_read.wait()  # the next update, read while the outbox is full
            await outbox.post([named("fill 2")])

        streaming = asyncio.create_task(stream())
        await handed_in.wait()
        assert not reconciled.done()
        # The publish ends (room) as the stream's task is woken.
        bus.gate.set()
        stream_read.set()
        await streaming
        bus.open = True
        bus.gate.set()
        await reconciled
        await eventually(lambda: len(bus.published) == 5)
        assert bus.published == ["first", "second", "accepted", "fill 1", "fill 2"]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_submit_waiting_for_its_fills_is_woken_by_a_reconciliation() -> None:
    """A submit's answer shows a fill the stream does not bring (a command
    redelivered after a crash, or a gap): the submit waits up to
    SETTLE_GRACE_S for it, then fetches the order itself. A reconciliation
    that publishes the fill meanwhile (the one after a reconnection, or the
    gap's) must end that wait. It did not wake it: the account's commands
    stood still for the whole grace, and the order was asked for a second
    time, against the broker's rate limit."""
    from services.broker_gateway.domain.model import BrokerOrder

    w = worker([1000.0], [])
    command = submit()
    oid = command.payload.order_id
    assert w.tracker.plan_submit(command)
    w.tracker.request(oid)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    w.tracker.submitted(oid, answer)
    asked: list[dict[str, Any]] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        asked.append(ids)
        return answer

    async def order_fills(order: BrokerOrder) -> None:
        return None  # the fill is inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        pass

    w.port = cast(Any, SimpleNamespace(get_order=get_order, order_fills=order_fills))
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    settling = asyncio.create_task(w._settle(answer))
    await asyncio.sleep(0)  # one step: the submit now waits for the fill
    assert not settling.done()
    await w.reconcile(only={oid})  # the reconciliation task's
    async with asyncio.timeout(5):
        await settling
    assert w.tracker.get(oid).filled == Decimal(1)  # type: ignore[union-attr]
    assert len(asked) == 1


async def test_a_submit_s_fetch_refused_again_and_again_is_given_up_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The README: the fetch a submit makes when the stream has not brought
    the fills its answer shows gives up as a reconciliation does, one call
    refused RECONCILE_ATTEMPTS times in a row, with a warning and
    ``tradebus_broker_reconciliations_given_up_total`` (it gave up without
    counting it). The order is then marked for the reconciliation of gaps,
    which is tried after a backoff and publishes the fill. Until then the
    fill waited for the next reconnection."""
    from services.broker_gateway.domain.model import BrokerOrder
    from services.broker_gateway.errors import RateLimited

    monkeypatch.setattr(gateway, "SETTLE_GRACE_S", 0.01)
    account = f"refused-{uuid.uuid4().hex[:8]}"
    w = worker(
        [1000.0],
        [],
        account=account,
        timings=Timings(retry_initial_s=0.001, reconcile_retry_initial_s=0.01),
    )
    command = submit()
    command = command.model_copy(
        update={"payload": command.payload.model_copy(update={"account": account})}
    )
    oid = command.payload.order_id
    assert w.tracker.plan_submit(command)
    w.tracker.request(oid)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    w.tracker.submitted(oid, answer)
    refusals: list[int] = []
    refusing = True
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if not refusing:
            return answer
        refusals.append(1)
        raise RateLimited("429", retry_after_s=None)

    async def order_fills(order: BrokerOrder) -> None:
        return None  # the fill is inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        published.extend(e.type for e in events)

    w.port = cast(
        Any, SimpleNamespace(get_order=get_order, order_fills=order_fills, connected=True)
    )
    w.outbox = cast(Any, SimpleNamespace(publish=publish))

    def given_up() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_reconciliations_given_up_total", {"account": account}
        )

    assert given_up() == 0
    with caplog.at_level("WARNING"):
        await w._settle(answer)
    assert len(refusals) == gateway.RECONCILE_ATTEMPTS
    assert given_up() == 1
    assert "given up" in caplog.text
    assert oid in w.tracker.needs_reconcile
    assert w._retry is not None
    assert published == []
    refusing = False
    retrying = asyncio.create_task(w.run_reconciliations())
    try:
        await eventually(lambda: published == ["FillReceived"], timeout=5)
    finally:
        retrying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrying
    assert oid not in w.tracker.needs_reconcile
    assert w.tracker.get(oid).filled == Decimal(1)  # type: ignore[union-attr]
    assert len(refusals) == gateway.RECONCILE_ATTEMPTS


async def test_positions_checks_publish_the_first_outcome_and_each_change_only() -> None:
    """``check_positions`` publishes ``BrokerPositionsChecked`` on the first
    check and whenever what differs changes; a difference seen in the first
    look only (a fill on its way) is not said."""
    from libs.contract.events import FillPayload, FillReceived
    from services.broker_gateway.domain.model import BrokerPosition

    w = worker([1000.0], [], account="checked", timings=Timings(position_confirm_s=0.0))
    fill = FillReceived.create(
        FillPayload(
            order_id=uuid.uuid4(),
            account="checked",
            broker_order_id="b-1",
            fill_id="f-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(3),
            price=Decimal(100),
            cumulative_quantity=Decimal(3),
            leaves_quantity=Decimal(0),
            status="complete",
            strategy="s",
        ),
        source="test",
        clock=CLOCK,
    )
    w.tracker.evolve(fill)
    looks: list[list[BrokerPosition]] = []
    published: list[list[tuple[str, str, str]]] = []

    async def positions() -> list[BrokerPosition]:
        return looks.pop(0)

    async def publish(events: list[Any]) -> None:
        for e in events:
            published.append(
                [
                    (d.symbol, str(d.broker_quantity), str(d.recorded_quantity))
                    for d in e.payload.differences
                ]
            )

    w.port = broker(positions=positions)
    w.outbox = cast(Any, SimpleNamespace(publish=publish))

    def pos(symbol: str, qty: int) -> BrokerPosition:
        return BrokerPosition(symbol, Decimal(qty), Decimal(100))

    agree = [pos("AAPL", 3)]
    extra = [pos("AAPL", 3), pos("TSLA", 2)]
    checks: list[tuple[list[list[BrokerPosition]], list[list[tuple[str, str, str]]]]] = [
        ([agree], [[]]),  # the first check: said, though nothing differs
        ([agree], []),  # the same: nothing
        ([extra, agree], []),  # TSLA in the first look only: nothing
        ([extra, extra], [[("TSLA", "2", "0")]]),  # in both looks: said
        ([[*extra, pos("MSFT", 1)], extra], []),  # MSFT in the first look only, TSLA as before
        ([agree], [[]]),  # agrees again: said
    ]
    for answers, said in checks:
        looks[:] = answers
        before = len(published)
        await w.check_positions()
        assert looks == []
        assert published[before:] == said


def accepted_order(w: AccountWorker, quantity: int) -> uuid.UUID:
    """A buy of ``quantity`` AAPL the broker acknowledged (b-1), nothing filled."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    command = submit()
    command = command.model_copy(
        update={
            "payload": command.payload.model_copy(
                update={"account": w.account, "quantity": Decimal(quantity)}
            )
        }
    )
    oid = command.payload.order_id
    w.tracker.evolve(command)
    accepted = OrderAcceptedPayload(
        order_id=oid, account=w.account, broker_order_id="b-1", symbol="AAPL"
    )
    w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    return oid


def broker(**calls: Any) -> Any:
    """A stand-in broker port, connected, named ``paper``: ``calls`` are its
    methods; ``open_orders`` lists none and ``order_fills`` lists nothing
    (a fill is then inferred from the order's totals) unless given."""

    async def open_orders() -> list[BrokerOrder]:
        return []

    async def order_fills(order: BrokerOrder) -> None:
        return None

    defaults = {"connected": True, "broker": "paper", "open_orders": open_orders}
    return cast(Any, SimpleNamespace(**(defaults | {"order_fills": order_fills} | calls)))


def outbox_into(published: list[Any]) -> Any:
    """A stand-in outbox that keeps what it is handed, in order."""

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    return cast(Any, SimpleNamespace(publish=publish))


def said(events: list[Any]) -> list[Any]:
    """What the events are: a check as its differences, anything else as its type."""
    return [
        [
            (d.symbol, str(d.broker_quantity), str(d.recorded_quantity))
            for d in e.payload.differences
        ]
        if e.type == "BrokerPositionsChecked"
        else e.type
        for e in events
    ]


async def test_a_difference_while_a_reconciliation_awaits_its_retry_is_said_and_cleared() -> None:
    """A reconnection's reconciliation is given up (the broker refused a call
    RECONCILE_ATTEMPTS times) and waits for its retry (up to
    RECONCILE_RETRY_MAX_S); the periodic positions check comes meanwhile.
    The fill the retry is to fetch is unpublished, the risk-gate's position
    short, for as long: that is said, not held off (a reconciliation that
    kept failing would hold every check off), and the retry's check clears
    it once the fill is published. (Passes before the fixes too: it guards
    the hold-off of a check against reaching a retry.)"""
    from services.broker_gateway.domain.model import BrokerPosition
    from services.broker_gateway.errors import RateLimited

    # A reconciliation given up is tried again 0.2-0.4 s later.
    w = worker(
        [1000.0],
        [],
        account=f"owed-{uuid.uuid4().hex[:8]}",
        timings=Timings(
            retry_initial_s=0.001, reconcile_retry_initial_s=0.4, position_confirm_s=0.0
        ),
    )
    w.position_check_every_s = 3600.0  # its own timer never fires here: _check_due below
    oid = accepted_order(w, 5)
    filled = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(5), Decimal(5), Decimal(100), "filled"
    )
    refusing = True
    published: list[Any] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if refusing:
            raise RateLimited("429", retry_after_s=None)
        return filled

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(5), Decimal(100))]

    w.port = broker(get_order=get_order, positions=positions)
    w.outbox = outbox_into(published)
    running = asyncio.create_task(w.run_reconciliations())
    try:
        w.want_reconcile(everything=True)  # the reconnection's
        await eventually(lambda: w._retry is not None, timeout=5)
        assert published == []
        refusing = False  # the rate limit is lifted before the retry is due
        w._check_due()  # the periodic check
        await eventually(lambda: "FillReceived" in said(published), timeout=5)
        await eventually(lambda: published[-1].type == "BrokerPositionsChecked", timeout=5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert said(published) == [[("AAPL", "5", "0")], "FillReceived", []]


async def test_no_positions_check_says_a_difference_the_stream_showed_a_gap_in_meanwhile() -> None:
    """A check's first look differs (a fill the broker booked, on its way);
    the stream then brings that fill, but past a fill it lost: the order is
    marked for reconciliation, its fills not yet recorded. The second look
    still differs, and the check said it: a difference that is only fills
    the next reconciliation publishes, red on the board until the next
    check (TRADEBUS_POSITION_CHECK_EVERY_S). The check waits for the
    reconciliation instead, and is done after it."""
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition, OrderUpdate

    w = worker(
        [1000.0], [], account=f"gap-{uuid.uuid4().hex[:8]}", timings=Timings(position_confirm_s=0.0)
    )
    w.position_check_every_s = 3600.0
    oid = accepted_order(w, 10)
    filled = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(10), Decimal(10), Decimal(100), "filled"
    )
    looks = 0
    published: list[Any] = []

    async def positions() -> list[BrokerPosition]:
        nonlocal looks
        looks += 1
        if looks == 2:
            # Between the looks: the last fill (4 of 10), the first one (6) lost.
            fill = BrokerFill(
                "b-1", str(oid), "AAPL", "buy", Decimal(4), Decimal(100), Decimal(10), Decimal(0), 1
            )
            assert w.tracker.on_update(OrderUpdate("fill", filled, 1, fill)) == []
            assert oid in w.tracker.needs_reconcile
        return [BrokerPosition("AAPL", Decimal(10), Decimal(100))]

    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)
    await w.check_positions()
    assert looks == 2
    assert said(published) == []  # nothing said while fills are known to be missing
    assert w._check_wanted  # checked again after the reconciliation


async def test_no_check_says_a_difference_while_a_reconnection_s_reconciliation_waits() -> None:
    """The broker reconnects between a check's two looks: the reconciliation
    of everything it asks for is about to run, and may publish fills the
    broker booked while it was away. The check said the difference (a
    warning, the board red) and the check after that reconciliation took it
    back. It waits for that reconciliation instead."""
    from services.broker_gateway.domain.model import BrokerPosition

    w = worker(
        [1000.0],
        [],
        account=f"back-{uuid.uuid4().hex[:8]}",
        timings=Timings(position_confirm_s=0.0),
    )
    w.position_check_every_s = 3600.0
    accepted_order(w, 10)
    looks = 0
    published: list[Any] = []

    async def positions() -> list[BrokerPosition]:
        nonlocal looks
        looks += 1
        if looks == 2:
            w.want_reconcile(everything=True)  # the stream's "connected"
        return [BrokerPosition("AAPL", Decimal(10), Decimal(100))]

    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)
    await w.check_positions()
    assert looks == 2
    assert said(published) == []
    assert w._check_wanted


async def test_a_mark_left_on_a_settled_order_does_not_hold_off_the_positions_check() -> None:
    """A submit's fetch given up marks its order (``fetch_later``); should
    the stream have brought its fill meanwhile, the order is settled and no
    reconciliation visits it again (they ask for unsettled orders only): the
    mark stays. It is no fill owed, so a difference in its symbol is said."""
    from libs.contract.events import FillPayload, FillReceived
    from services.broker_gateway.domain.model import BrokerPosition

    w = worker(
        [1000.0],
        [],
        account=f"settled-{uuid.uuid4().hex[:8]}",
        timings=Timings(position_confirm_s=0.0),
    )
    oid = accepted_order(w, 1)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    fill = FillPayload(
        order_id=oid,
        account=w.account,
        broker_order_id="b-1",
        fill_id="f-1",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
        price=Decimal(100),
        cumulative_quantity=Decimal(1),
        leaves_quantity=Decimal(0),
        status="complete",
        strategy="s",
    )
    w.tracker.evolve(FillReceived.create(fill, source="test", clock=CLOCK))  # the stream's
    w.tracker.fetch_later(answer)  # the fetch, given up
    assert w.tracker.get(oid).terminal == "filled"  # type: ignore[union-attr]
    published: list[Any] = []

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(3), Decimal(100))]  # 2 bought by hand

    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)
    await w.check_positions()
    assert said(published) == [[("AAPL", "3", "1")]]


async def test_a_periodic_check_whose_reconciliation_is_given_up_runs_after_its_retry() -> None:
    """The periodic check is due while an order is marked (a gap): the
    reconciliation of the gaps runs first, and the check only once it has
    run to the end. That reconciliation is given up (the broker refused a
    call RECONCILE_ATTEMPTS times) and tried again later, and runs to the
    end: the check must run then. It was dropped, until the next period
    (TRADEBUS_POSITION_CHECK_EVERY_S, 300 s)."""
    from services.broker_gateway.domain.model import BrokerPosition
    from services.broker_gateway.errors import RateLimited

    # A reconciliation given up is tried again 0.2-0.4 s later.
    w = worker(
        [1000.0],
        [],
        account=f"dropped-{uuid.uuid4().hex[:8]}",
        timings=Timings(
            retry_initial_s=0.001, reconcile_retry_initial_s=0.4, position_confirm_s=0.0
        ),
    )
    w.position_check_every_s = 3600.0  # its own timer never fires here: _check_due below
    oid = accepted_order(w, 5)
    filled = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(5), Decimal(5), Decimal(100), "filled"
    )
    w.tracker.fetch_later(filled)  # marked, as a gap in the stream is
    refusing = True
    published: list[Any] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if refusing:
            raise RateLimited("429", retry_after_s=None)
        return filled

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(5), Decimal(100))]

    w.port = broker(get_order=get_order, positions=positions)
    w.outbox = outbox_into(published)
    running = asyncio.create_task(w.run_reconciliations())
    try:
        w._check_due()  # the periodic check
        await eventually(lambda: w._retry is not None, timeout=5)
        assert published == []
        refusing = False  # the rate limit is lifted before the retry is due
        await eventually(lambda: "FillReceived" in said(published), timeout=5)
        await eventually(lambda: published[-1].type == "BrokerPositionsChecked", timeout=2)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert said(published) == ["FillReceived", []]


async def test_a_submit_s_fetch_interrupted_by_a_broker_error_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit's fetch of the fills its answer shows (the stream did not
    bring them) interrupted by a broker error other than the broker being
    away (here Alpaca's 403 on the fill activities) is given up as a
    reconciliation's is: the order marked, tried again after a backoff. The
    error escaped the fetch instead: the SubmitOrder failed and was handed
    back, came again as a repeat (the order is accepted) and was acked, and
    the fill was never fetched: unpublished, the risk-gate's position
    short, until the next reconnection."""
    from services.broker_gateway.errors import OrderRefused

    monkeypatch.setattr(gateway, "SETTLE_GRACE_S", 0.01)
    w = worker(
        [1000.0],
        [],
        account=f"forbidden-{uuid.uuid4().hex[:8]}",
        timings=Timings(reconcile_retry_initial_s=0.01),
    )
    oid = accepted_order(w, 1)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    refusing = True
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        return answer

    async def order_fills(order: BrokerOrder) -> None:
        if refusing:
            raise OrderRefused("forbidden", "40310000")
        return None  # the fill is inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        published.extend(e.type for e in events)

    w.port = cast(
        Any, SimpleNamespace(get_order=get_order, order_fills=order_fills, connected=True)
    )
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    await w._settle(answer)
    assert oid in w.tracker.needs_reconcile
    assert w._retry is not None
    assert published == []
    refusing = False
    retrying = asyncio.create_task(w.run_reconciliations())
    try:
        await eventually(lambda: published == ["FillReceived"], timeout=5)
    finally:
        retrying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrying
    assert oid not in w.tracker.needs_reconcile


async def test_an_order_the_broker_answers_with_an_error_does_not_stop_the_reconciliation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two working orders filled unseen; the broker answers the first with an
    error of its own (a 403). The second's fill is published all the same,
    and the reconciliation says it is to be tried again. The first order's
    error used to end it, and every retry of it, before the second. Such an
    error may come at every retry: the positions check is not held off by
    it, and says the difference the skipped order leaves."""
    from services.broker_gateway.domain.model import BrokerPosition
    from services.broker_gateway.errors import OrderRefused

    w = worker([1000.0], [], account="skipping", timings=Timings(position_confirm_s=0.0))
    answers: dict[str, BrokerOrder] = {}
    for n in (1, 2):
        command = submit()
        command = command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": "skipping"})}
        )
        oid = command.payload.order_id
        assert w.tracker.plan_submit(command)
        w.tracker.request(oid)
        accepted = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
        )
        w.tracker.submitted(oid, accepted)
        answers[f"b-{n}"] = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
        )
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if ids.get("broker_order_id") == "b-1":
            raise OrderRefused("forbidden", "40310000")
        return answers[ids["broker_order_id"]]

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(2), Decimal(100))]

    checked: list[Any] = []

    async def publish(events: list[Any]) -> None:
        for e in events:
            if e.type == "BrokerPositionsChecked":
                checked.append(e.payload)
            else:
                published.append(f"{e.type} {e.payload.broker_order_id}")

    w.port = broker(get_order=get_order, positions=positions)
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    with caplog.at_level("WARNING"):
        assert await w.reconcile() is False
    assert published == ["FillReceived b-2"]
    assert "skipped, the others go on (OrderRefused: forbidden)" in caplog.text

    w.position_check_every_s = 300.0
    running = asyncio.create_task(w.run_reconciliations())
    try:
        w.want_reconcile(everything=True)
        await eventually(lambda: checked, timeout=5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    [difference] = checked[0].differences
    assert (difference.symbol, difference.broker_quantity, difference.recorded_quantity) == (
        "AAPL",
        Decimal(2),
        Decimal(1),
    )


async def test_a_reconciliation_that_raises_unexpectedly_is_given_up_not_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error the gateway does not expect (a bug's, here a KeyError from
    taking the first order's answer in, then from listing the open orders)
    ended the reconciliation task, so the account's event task and with it
    the whole gateway, every account; restarted, the reconnection's
    reconciliation met it again. As a command's is (ce3702e), it is now said
    with its traceback: the order is skipped and the others reconciled, or
    the reconciliation given up, and either is tried again later."""
    w = worker([1000.0], [], account="buggy")
    answers: dict[str, BrokerOrder] = {}
    for n in (1, 2):
        command = submit()
        command = command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": "buggy"})}
        )
        oid = command.payload.order_id
        assert w.tracker.plan_submit(command)
        w.tracker.request(oid)
        acked = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
        )
        w.tracker.submitted(oid, acked)
        answers[f"b-{n}"] = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
        )
    taken_in = w.tracker.reconcile

    def reconcile(order: BrokerOrder, fills: Any) -> list[Any]:
        if order.broker_order_id == "b-1":
            raise KeyError("a bug")
        return taken_in(order, fills)

    w.tracker.reconcile = reconcile  # type: ignore[method-assign]
    listing_fails = False

    async def get_order(**ids: Any) -> BrokerOrder:
        return answers[ids["broker_order_id"]]

    async def open_orders() -> list[BrokerOrder]:
        if listing_fails:
            raise KeyError("another bug")
        return []

    published: list[Any] = []
    w.port = broker(get_order=get_order, open_orders=open_orders)
    w.outbox = outbox_into(published)
    running = asyncio.create_task(w.run_reconciliations())
    try:
        with caplog.at_level("WARNING"):
            w.want_reconcile(everything=True)
            await eventually(lambda: published or running.done(), timeout=5)
            await eventually(lambda: w._retry is not None or running.done(), timeout=5)
            assert not running.done(), running
            assert [(e.type, e.payload.broker_order_id) for e in published] == [
                ("FillReceived", "b-2")
            ]
            assert "KeyError: 'a bug'" in caplog.text
            assert "Traceback" in caplog.text
            # Now the whole of it fails: given up, and tried again later.
            w.tracker.reconcile = taken_in  # type: ignore[method-assign]
            listing_fails = True
            assert await w.reconcile() is False
            assert "KeyError: 'another bug'" in caplog.text
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert [(e.type, e.payload.broker_order_id) for e in published] == [
        ("FillReceived", "b-2"),
        ("FillReceived", "b-1"),
    ]


async def test_a_positions_check_that_raises_unexpectedly_fails_not_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The positions check after a reconnection's reconciliation meets an
    error the gateway does not expect (a bug's KeyError, here from the
    broker's positions). check_positions caught only BrokerError and
    ValueError: the error ended the reconciliation task, so the account's
    event task and the whole gateway, and the next start's reconnection met
    it again. It is now a failed check, said with its traceback and counted
    as one; the reconciliations go on, and the next check publishes."""
    from services.broker_gateway.domain.model import BrokerPosition

    account = f"checked-{uuid.uuid4().hex[:8]}"
    w = worker([1000.0], [], account=account, timings=Timings(position_confirm_s=0.0))
    w.position_check_every_s = 3600.0  # its own timer never fires here: _check_due below
    looks = 0

    async def positions() -> list[BrokerPosition]:
        nonlocal looks
        looks += 1
        if looks == 1:
            raise KeyError("a bug")
        return []

    published: list[Any] = []
    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)

    def failed() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_position_checks_total", {"account": account, "outcome": "failed"}
        )

    running = asyncio.create_task(w.run_reconciliations())
    try:
        with caplog.at_level("WARNING"):
            w.want_reconcile(everything=True)  # the reconnection's, and its check
            await eventually(lambda: looks == 1 and (failed() or running.done()), timeout=5)
            assert not running.done(), running
            assert failed() == 1
            assert "KeyError: 'a bug'" in caplog.text
            assert "Traceback" in caplog.text
            w._check_due()  # the next periodic check
            await eventually(lambda: bool(published) or running.done(), timeout=5)
            assert not running.done(), running
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert said(published) == [[]]


@pytest.mark.parametrize("at_broker", [False, True])
async def test_a_dead_lettered_submit_is_given_an_outcome_the_risk_gate_closes_it_by(
    at_broker: bool,
) -> None:
    """A SubmitOrder that fails MAX_FAILURES times for a reason other than the
    broker being away (here an answer the adapter maps to no refusal) is
    dead-lettered. It used to get no outcome: the risk-gate counted its order
    open for good (its quantity and notional against the caps) and the
    strategy's intent never ended. Now the broker is asked: an order it does
    not have is rejected (code ``failed``, naming the failure), one it has is
    taken in (acknowledged; its end comes from the broker)."""
    from libs.contract.events import OrderAccepted, OrderRejected
    from services.broker_gateway.errors import OrderNotFound
    from services.risk_gate.domain.evolve import evolve
    from services.risk_gate.domain.state import RiskState

    w = worker([1000.0], [])
    command = submit()
    oid = command.payload.order_id
    held_by_broker = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
    )
    published: list[Any] = []

    async def submit_order(request: Any) -> BrokerOrder:
        raise OrderNotFound("404 page not found")

    async def get_order(**ids: Any) -> BrokerOrder | None:
        assert ids == {"client_order_id": str(oid)}
        return held_by_broker if at_broker else None

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    w.port = cast(Any, SimpleNamespace(submit=submit_order, get_order=get_order, connected=True))
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    runner = asyncio.create_task(w.run_commands())
    try:
        for attempt in range(1, MAX_FAILURES + 1):
            msg = Delivery(7, delivered=attempt)
            await offer(w, command, msg)
            await eventually(lambda msg=msg: bool(msg.answers), timeout=5)  # type: ignore[misc]
            assert msg.answers == (["ack"] if attempt == MAX_FAILURES else ["nak"])
            if attempt < MAX_FAILURES:
                assert published == []
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    if at_broker:
        assert [type(e) for e in published] == [OrderAccepted]
        assert w.tracker.unsettled() == [w.tracker.get(oid)]
        return
    [rejected] = published
    assert isinstance(rejected, OrderRejected)
    assert rejected.payload.order_id == oid
    assert rejected.payload.code == "failed"
    assert "OrderNotFound: 404 page not found" in rejected.payload.reason
    assert rejected.causation_id == command.id
    assert rejected.correlation_id == command.correlation_id
    # The risk-gate closes the order on it: nothing counts against the caps.
    state = evolve(RiskState.initial(), command)
    assert oid in state.orders
    state = evolve(state, rejected)
    assert oid not in state.orders
    assert state.open_quantity == {}


async def test_a_command_that_raises_unexpectedly_fails_alone_and_the_account_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error the gateway does not expect (a bug's KeyError, here from the
    adapter) in one command used to end the command task, so the whole
    gateway, every account with it; restarted, the same command came back
    and ended it again, and no cancel or flatten reached any broker. It is
    now that command's failure, said with its traceback: retried, then
    dead-lettered with an outcome, while the next command is carried out."""
    from libs.contract.events import OrderRejected

    dead: list[str] = []
    w = worker([1000.0], dead)
    poison, fine = submit(), submit()
    published: list[Any] = []

    async def submit_order(request: Any) -> BrokerOrder:
        if request.client_order_id == str(poison.payload.order_id):
            raise KeyError("a bug")
        return BrokerOrder(
            "b-2", request.client_order_id, "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
        )

    async def get_order(**ids: Any) -> BrokerOrder | None:
        return None

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    w.port = cast(Any, SimpleNamespace(submit=submit_order, get_order=get_order, connected=True))
    w.outbox = cast(Any, SimpleNamespace(publish=publish, post=publish))
    runner = asyncio.create_task(w.run_commands())
    try:
        with caplog.at_level("ERROR"):
            for attempt in range(1, MAX_FAILURES + 1):
                msg = Delivery(7, delivered=attempt)
                await offer(w, poison, msg)
                await eventually(lambda msg=msg: bool(msg.answers), timeout=5)  # type: ignore[misc]
                assert not runner.done(), runner
                assert msg.answers == (["ack"] if attempt == MAX_FAILURES else ["nak"])
            after = Delivery(8)
            await offer(w, fine, after)
            await eventually(lambda: w.handled == 1, timeout=5)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert "KeyError: 'a bug'" in caplog.text
    assert "Traceback" in caplog.text
    assert dead == ["KeyError: 'a bug'"]
    rejected = [e for e in published if isinstance(e, OrderRejected)]
    assert [e.payload.order_id for e in rejected] == [poison.payload.order_id]


async def test_a_submit_whose_answer_raises_unexpectedly_is_still_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bug's error raised while taking the broker's answer in (here the
    tracker's, on an order the broker has): the submit fails MAX_FAILURES
    times, and the outcome sought before dead-lettering it (_abandoned) asks
    the broker, finds the order and takes it in the same way, which raised
    again out of the failure handling: the command task ended with the
    error, every command of every account with it, and the command was
    neither dead-lettered nor acknowledged (back at the next start, to end it
    again). The outcome's own failure is now said and the order left to the
    reconciliations; the command is dead-lettered and the next one runs."""
    dead: list[str] = []
    w = worker([1000.0], dead)
    poison, fine = submit(), submit()
    published: list[Any] = []

    def answer(request_id: str) -> BrokerOrder:
        return BrokerOrder(
            "b-" + request_id, request_id, "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
        )

    async def submit_order(request: Any) -> BrokerOrder:
        return answer(request.client_order_id)

    async def get_order(**ids: Any) -> BrokerOrder | None:
        return answer(ids["client_order_id"])

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    taken_in = w.tracker.submitted

    def submitted(order_id: uuid.UUID, order: BrokerOrder) -> list[Any]:
        if order_id == poison.payload.order_id:
            raise KeyError("a bug")
        return taken_in(order_id, order)

    w.tracker.submitted = submitted  # type: ignore[method-assign]
    w.port = cast(Any, SimpleNamespace(submit=submit_order, get_order=get_order, connected=True))
    w.outbox = cast(Any, SimpleNamespace(publish=publish, post=publish))
    runner = asyncio.create_task(w.run_commands())
    try:
        with caplog.at_level("ERROR"):
            for attempt in range(1, MAX_FAILURES + 1):
                msg = Delivery(7, delivered=attempt)
                await offer(w, poison, msg)
                await eventually(lambda msg=msg: bool(msg.answers) or runner.done(), timeout=5)  # type: ignore[misc]
                assert not runner.done(), runner
                assert msg.answers == (["ack"] if attempt == MAX_FAILURES else ["nak"])
            await offer(w, fine, Delivery(8))
            await eventually(lambda: w.handled == 1, timeout=5)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert dead == ["KeyError: 'a bug'"]
    assert f"order {poison.payload.order_id} of acct" in caplog.text
    # Not rejected: the broker has it. The reconciliations take it in.
    assert poison.payload.order_id in {t.order_id for t in w.tracker.unsettled()}
    assert [e.payload.order_id for e in published] == [fine.payload.order_id]


async def test_a_flatten_with_a_closing_order_the_contract_refuses_publishes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The close-all placed a closing order the contract cannot carry (here
    an option symbol it refuses) beside a good one, and refused a position.
    The flatten failed on it after recording the good one's acceptance, which
    marks the flatten done: its retry was a repeat, and the acceptance,
    ``ClosingOrdersPlaced`` and the refusal were never published. The order
    is now said and left out; the rest is published at once."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import ClosedAll, CloseRefused

    w = worker([1000.0], [])
    closing = [
        BrokerOrder(
            f"c-{n}", f"close-{n}", symbol, "sell", Decimal(1), Decimal(0), None, "accepted"
        )
        for n, symbol in enumerate(["AAPL", "O:SPY241340P00720000"])
    ]
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        return ClosedAll(tuple(closing), (CloseRefused("MSFT", "halted", "403", entry=2),))

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    w.port = cast(Any, SimpleNamespace(cancel_all=cancel_all, close_all=close_all, connected=True))
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    with caplog.at_level("ERROR"):
        await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
    assert [e.type for e in published] == [
        "OrderAccepted",
        "ClosingOrdersPlaced",
        "OrderRejected",
    ]
    assert "cannot take in its closing order c-1 (sell 1 O:SPY241340P00720000)" in caplog.text
    await w.handle(Held(flatten, cast(Msg, Delivery(1, 2)), 1))  # a copy: a repeat
    assert len(published) == 3


async def test_a_submit_answered_pending_before_a_restart_is_reconciled() -> None:
    """A submit the broker answered ``pending`` (Alpaca's pending_new) is
    acknowledged by the stream's "new"; a restart before that leaves only
    the recorded SubmitOrder. The rebuilt tracker did not count the order as
    one the broker may know, and the reconnection's reconciliation skips the
    open orders the tracker knows: the order (filled meanwhile, here) was
    never acknowledged and its fill never published. Now every order with
    a SubmitOrder and no outcome is asked for; one the broker does not know
    (never sent) is asked for once."""
    from services.broker_gateway.adapters.history import History

    sent, unsent = submit(), submit()
    w = worker([1000.0], [])
    w.tracker = History([sent, unsent]).trackers(["acct"], clock=CLOCK, source="test")["acct"]
    filled = BrokerOrder(
        "b-1",
        str(sent.payload.order_id),
        "AAPL",
        "buy",
        Decimal(1),
        Decimal(1),
        Decimal(100),
        "filled",
    )
    asked: list[str] = []
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder | None:
        asked.append(ids["client_order_id"])
        return filled if ids["client_order_id"] == filled.client_order_id else None

    async def open_orders() -> list[BrokerOrder]:
        return []  # filled while the gateway was away: no longer open

    async def order_fills(order: BrokerOrder) -> None:
        return None  # inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        published.extend(e.type for e in events)

    w.port = cast(
        Any, SimpleNamespace(get_order=get_order, open_orders=open_orders, order_fills=order_fills)
    )
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    assert await w.reconcile()
    assert published == ["OrderAccepted", "FillReceived"]
    assert w.tracker.get(sent.payload.order_id).terminal == "filled"  # type: ignore[union-attr]
    assert sorted(asked) == sorted([str(sent.payload.order_id), str(unsent.payload.order_id)])
    await w.reconcile()  # the next reconnection
    assert len(asked) == 2
    assert published == ["OrderAccepted", "FillReceived"]
    # Its command delivered after all (it was queued): sent, and asked for again.
    assert w.tracker.plan_submit(unsent)
    w.tracker.request(unsent.payload.order_id)
    assert [t.order_id for t in w.tracker.unsettled()] == [unsent.payload.order_id]


async def test_an_order_placed_by_hand_while_a_flatten_waits_for_the_broker_is_not_its() -> None:
    """The flatten comes while the broker is away (the risk-gate's reaction
    to connection_lost) and waits in its cancel-all. Meanwhile the trader
    sells 4 of s1's 10 AAPL by hand at the broker, an order still working.
    The reconnection's reconciliation takes it in: it took it as one of the
    flatten's closing orders (unknown orders were the flatten's from its
    start, not from its close-all), booked its fill to s1 and marked the
    flatten done. It is an order nobody here placed (its fill booked to no
    strategy) and the flatten still closes what is left."""
    from libs.contract.events import (
        FillPayload,
        FillReceived,
        FlattenAccount,
        FlattenAccountPayload,
        OrderAccepted,
        OrderAcceptedPayload,
    )
    from services.broker_gateway.domain.model import BrokerFill, ClosedAll
    from services.broker_gateway.errors import BrokerUnavailable

    w = worker([1000.0], [])
    bought = submit()
    oid = bought.payload.order_id
    bought = bought.model_copy(
        update={"payload": bought.payload.model_copy(update={"quantity": Decimal(10)})}
    )
    w.tracker.evolve(bought)
    w.tracker.evolve(
        OrderAccepted.create(
            OrderAcceptedPayload(
                order_id=oid, account="acct", broker_order_id="b-1", symbol="AAPL"
            ),
            source="test",
            clock=CLOCK,
            cause=bought,
        )
    )
    w.tracker.evolve(
        FillReceived.create(
            FillPayload(
                order_id=oid,
                account="acct",
                broker_order_id="b-1",
                fill_id="f-1",
                symbol="AAPL",
                side="buy",
                quantity=Decimal(10),
                price=Decimal(100),
                cumulative_quantity=Decimal(10),
                leaves_quantity=Decimal(0),
                status="complete",
                strategy="s",
            ),
            source="test",
            clock=CLOCK,
            cause=bought,
        )
    )
    by_hand = BrokerOrder(
        "h-1", "by-hand", "AAPL", "sell", Decimal(10), Decimal(4), Decimal(101), "partially_filled"
    )
    hand_fill = BrokerFill(
        "h-1", "by-hand", "AAPL", "sell", Decimal(4), Decimal(101), Decimal(4), Decimal(6), 1
    )
    back = asyncio.Event()
    asked: list[str] = []
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        asked.append("cancel_all")
        if not back.is_set():
            raise BrokerUnavailable("acct: not connected to the broker")
        nonlocal by_hand
        by_hand = BrokerOrder(
            "h-1", "by-hand", "AAPL", "sell", Decimal(10), Decimal(4), Decimal(101), "canceled"
        )
        return CanceledAll((by_hand,))

    async def close_all() -> ClosedAll:
        asked.append("close_all")
        return ClosedAll(
            (
                BrokerOrder(
                    "c-1", "close-1", "AAPL", "sell", Decimal(6), Decimal(0), None, "accepted"
                ),
            )
        )

    async def wait_connected(timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await back.wait()
        return back.is_set()

    async def open_orders() -> list[BrokerOrder]:
        return [by_hand] if by_hand.is_open else []

    async def get_order(**ids: str | None) -> BrokerOrder:
        return by_hand

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [hand_fill]

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    port = SimpleNamespace(
        cancel_all=cancel_all,
        close_all=close_all,
        wait_connected=wait_connected,
        open_orders=open_orders,
        get_order=get_order,
        order_fills=order_fills,
        connected=False,
    )
    w.port = cast(Any, port)
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="connection_lost"), source="test", clock=CLOCK
    )
    flattening = asyncio.create_task(w.handle(Held(flatten, cast(Msg, Delivery(1)), 1)))
    await eventually(lambda: asked == ["cancel_all"])
    port.connected = True  # the reconnection's reconciliation runs before the flatten goes on
    assert await w.reconcile()
    assert not w.tracker.flattened(flatten.id)
    back.set()
    await flattening
    assert asked == ["cancel_all", "cancel_all", "close_all"]
    fills = [
        (e.payload.broker_order_id, e.payload.strategy)
        for e in published
        if e.type == "FillReceived"
    ]
    assert fills == [("h-1", None)]
    [hand_ack] = [
        e for e in published if e.type == "OrderAccepted" and e.payload.broker_order_id == "h-1"
    ]
    assert hand_ack.causation_id is None
    assert (w.tracker.position("AAPL", "s"), w.tracker.position("AAPL")) == (
        Decimal(10),
        Decimal(-4),
    )
    [placed] = [e for e in published if e.type == "ClosingOrdersPlaced"]
    assert [(o.quantity, o.strategy) for o in placed.payload.orders] == [(Decimal(6), "s")]
    assert w.tracker.flattened(flatten.id)


async def test_a_close_all_whose_answer_cannot_be_read_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker answers the close-all (and may place closing orders each
    time) with what the adapter cannot parse. It was tried for ever, every
    attempt canceling the closing orders of the one before and placing new
    ones, the account's commands held behind it. It is tried
    CLOSE_ALL_ATTEMPTS times, said; the broker, asked for the closing orders
    it placed, has none: the flatten is given up, the account reconciled and
    checked."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.errors import AnswerUnread

    w = worker([1000.0], [], timings=Timings(retry_initial_s=0.001))
    close_alls: list[int] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> None:
        close_alls.append(1)
        raise AnswerUnread("acct: malformed answer: 1 validation error for Order")

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return []

    w.port = broker(cancel_all=cancel_all, close_all=close_all, orders_created=orders_created)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    with caplog.at_level("ERROR"):
        async with asyncio.timeout(10):
            await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
    assert len(close_alls) == gateway.CLOSE_ALL_ATTEMPTS
    assert "the broker's answer to its close-all was not read 3 times" in caplog.text
    assert "given up: it may have placed closing orders" in caplog.text
    assert w._reconcile_wanted.is_set()
    assert w._reconcile_everything
    assert w._check_wanted
    assert w.tracker._flattening is None  # unknown orders are nobody's again


async def test_a_flatten_dead_lettered_after_its_close_all_was_sent_is_forgotten() -> None:
    """A flatten whose close-all the broker answers with an error of its own
    (a 403 the adapter maps to OrderRefused) fails MAX_FAILURES times, each
    run after the first looking for an earlier one's closing orders (none),
    and is dead-lettered. When this gateway sent its close-all stayed in
    _close_alls_sent for the life of the process, one entry per such
    flatten: it is forgotten once the flatten is not coming again."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.errors import OrderRefused

    dead: list[str] = []
    w = worker([1000.0], dead)
    close_alls: list[int] = []
    windows: list[tuple[int, int]] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> None:
        close_alls.append(1)
        raise OrderRefused("forbidden", code="40310000")

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        windows.append((after_ns, until_ns))
        return []

    w.port = broker(cancel_all=cancel_all, close_all=close_all, orders_created=orders_created)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    runner = asyncio.create_task(w.run_commands())
    try:
        for attempt in range(1, MAX_FAILURES + 1):
            msg = Delivery(3, delivered=attempt)
            await offer(w, flatten, msg)
            await eventually(lambda msg=msg: bool(msg.answers), timeout=5)  # type: ignore[misc]
            assert msg.answers == (["ack"] if attempt == MAX_FAILURES else ["nak"])
            if attempt < MAX_FAILURES:
                assert flatten.id in w._close_alls_sent, "the next run looks for its orders"
        await eventually(lambda: not w._held, timeout=5)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert dead == ["OrderRefused: forbidden"]
    assert len(close_alls) == MAX_FAILURES
    assert len(windows) == MAX_FAILURES - 1
    assert w._close_alls_sent == {}


def filled_position(w: AccountWorker, quantity: int) -> None:
    """Strategy ``s`` bought ``quantity`` AAPL at 100 (order b-1, filled)."""
    from libs.contract.events import FillPayload, FillReceived

    oid = accepted_order(w, quantity)
    t = w.tracker.get(oid)
    assert t is not None
    assert isinstance(t.cause, SubmitOrder)
    w.tracker.evolve(
        FillReceived.create(
            FillPayload(
                order_id=oid,
                account=w.account,
                broker_order_id="b-1",
                fill_id="f-1",
                symbol="AAPL",
                side="buy",
                quantity=Decimal(quantity),
                price=Decimal(100),
                cumulative_quantity=Decimal(quantity),
                leaves_quantity=Decimal(0),
                status="complete",
                strategy="s",
            ),
            source="test",
            clock=CLOCK,
            cause=t.cause,
        )
    )


async def test_the_closing_orders_of_a_close_all_whose_answer_was_not_read_are_the_flatten_s() -> (
    None
):
    """The close-all's answer is not read (three times) but the broker acted
    on it: it placed a closing sell of s's 10 AAPL, 4 filled so far. The
    flatten gave up and left the order to the reconciliation, which took it in
    as nobody's: its fills booked to no strategy, s still long 10 in its own
    books (the gate's and the read model's) while the account was long 6. Now
    the flatten asks the broker for the orders its close-all placed and takes
    them in as its closing orders, as an answer's: the fill is booked to s,
    ClosingOrdersPlaced published; the reconciliation after finds nothing new."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition
    from services.broker_gateway.errors import AnswerUnread

    w = worker([1000.0], [], timings=Timings(retry_initial_s=0.001))
    filled_position(w, 10)
    closing = BrokerOrder(
        "c-1", "close-1", "AAPL", "sell", Decimal(10), Decimal(4), Decimal(101), "partially_filled"
    )
    fill = BrokerFill(
        "c-1", "close-1", "AAPL", "sell", Decimal(4), Decimal(101), Decimal(4), Decimal(6), 1
    )
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> None:
        raise AnswerUnread("acct: no answer to close_all within 5s")

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return [closing]

    async def open_orders() -> list[BrokerOrder]:
        return [closing]

    async def get_order(**ids: str | None) -> BrokerOrder:
        return closing

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [fill]

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(6), Decimal(100))]

    w.port = broker(
        cancel_all=cancel_all,
        close_all=close_all,
        orders_created=orders_created,
        open_orders=open_orders,
        get_order=get_order,
        order_fills=order_fills,
        positions=positions,
    )
    w.outbox = outbox_into(published)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    async with asyncio.timeout(10):
        await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
        await w.reconcile()  # the reconnection's, or the give-up's
    fills = [(e.payload.broker_order_id, e.payload.strategy) for e in said_fills(published)]
    assert fills == [("c-1", "s")]
    assert (w.tracker.position("AAPL", "s"), w.tracker.position("AAPL")) == (
        Decimal(6),
        Decimal(0),
    )
    [placed] = [e for e in published if e.type == "ClosingOrdersPlaced"]
    assert placed.causation_id == flatten.id
    assert [(o.leaves_quantity, o.strategy) for o in placed.payload.orders] == [(Decimal(6), "s")]
    assert w.tracker.flattened(flatten.id)


def said_fills(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type == "FillReceived"]


async def test_a_flatten_refused_only_an_expired_option_contract_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After its expiry no venue closes a contract (the paper broker refuses
    it, 422 "not tradable"): its position is the broker's to settle. Each
    flatten counted it as left open, outcome ``incomplete`` and the refused
    positions metric, for ever after, though no operator could clear it. A
    refusal of an expired contract is now said as awaiting settlement (its
    ``OrderRejected`` still published); the flatten's other refusals count
    as before."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import ClosedAll, CloseRefused

    expired, live = "O:SPY241220P00720000", "O:SPY991217P00720000"
    account = f"expiry-{uuid.uuid4().hex[:8]}"

    def sample(name: str, **labels: str) -> float:
        value = REGISTRY.get_sample_value(name, {"account": account, **labels})
        return 0.0 if value is None else float(value)

    async def flatten(refused: tuple[CloseRefused, ...]) -> list[Any]:
        w = worker([1000.0], [], account=account)
        published: list[Any] = []

        async def cancel_all() -> CanceledAll:
            return CanceledAll()

        async def close_all() -> ClosedAll:
            return ClosedAll((), refused)

        async def publish(events: list[Any]) -> None:
            published.extend(events)

        w.port = cast(
            Any, SimpleNamespace(cancel_all=cancel_all, close_all=close_all, connected=True)
        )
        w.outbox = cast(Any, SimpleNamespace(publish=publish))
        command = FlattenAccount.create(
            FlattenAccountPayload(account=account, reason="breaker"), source="test", clock=CLOCK
        )
        await w.handle(Held(command, cast(Msg, Delivery(1)), 1))
        return published

    not_tradable = f"asset {expired} is not tradable: it expired at the close of 2024-12-20"
    with caplog.at_level("WARNING"):
        published = await flatten((CloseRefused(expired, not_tradable, "422", entry=0),))
    assert [e.type for e in published] == ["OrderRejected"]
    assert sample("tradebus_broker_commands_total", type="FlattenAccount", outcome="flattened") == 1
    assert (
        sample("tradebus_broker_commands_total", type="FlattenAccount", outcome="incomplete") == 0
    )
    assert sample("tradebus_broker_flatten_refused_positions_total") == 0
    assert f"{expired} expired at the close of 2024-12-20" in caplog.text
    assert "awaiting the broker's settlement" in caplog.text

    # A contract not yet expired, refused beside it: left open, as before.
    await flatten(
        (
            CloseRefused(expired, not_tradable, "422", entry=0),
            CloseRefused(live, "halted", "403", entry=1),
        )
    )
    assert (
        sample("tradebus_broker_commands_total", type="FlattenAccount", outcome="incomplete") == 1
    )
    assert sample("tradebus_broker_flatten_refused_positions_total") == 1


async def test_an_order_placed_by_hand_taken_in_while_a_flatten_recovers_is_not_its() -> None:
    """A flatten delivered again after a restart finds its close-all's
    closing order at the broker (c-1, 4 of s's 10 AAPL sold) and, before it
    publishes it, asks for the account's positions. Meanwhile the
    reconnection's reconciliation takes in an order the trader placed at the
    broker by hand (h-1, a limit sell of 5 AAPL, 3 filled). The flatten held
    unknown orders as its own across those calls, so h-1 was taken for one
    of its closing orders: its fill of 3 booked to s, whose books then said
    3 AAPL where s held 6 (c-1 only had closed 4). It is nobody's, as the
    unknown orders found outside a close-all are."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition

    w = worker([1000.0], [])
    filled_position(w, 10)
    closing = BrokerOrder(
        "c-1", "close-1", "AAPL", "sell", Decimal(10), Decimal(4), Decimal(101), "partially_filled"
    )
    by_hand = BrokerOrder(
        "h-1",
        "by-hand",
        "AAPL",
        "sell",
        Decimal(5),
        Decimal(3),
        Decimal(102),
        "partially_filled",
        order_type="limit",
        limit_price=Decimal(102),
    )
    d = Decimal
    fills = {
        "c-1": [BrokerFill("c-1", "close-1", "AAPL", "sell", d(4), d(101), d(4), d(6), 1)],
        "h-1": [BrokerFill("h-1", "by-hand", "AAPL", "sell", d(3), d(102), d(3), d(2), 2)],
    }
    look = asyncio.Event()
    asked: list[str] = []
    published: list[Any] = []

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return [closing]  # h-1 is no market order (and may be older)

    async def positions() -> list[BrokerPosition]:
        asked.append("positions")
        await look.wait()
        return [BrokerPosition("AAPL", Decimal(3), Decimal(100))]

    async def open_orders() -> list[BrokerOrder]:
        return [closing, by_hand]

    async def get_order(**ids: str | None) -> BrokerOrder:
        return by_hand if ids.get("broker_order_id") == "h-1" else closing

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return fills[order.broker_order_id]

    w.port = broker(
        orders_created=orders_created,
        positions=positions,
        open_orders=open_orders,
        get_order=get_order,
        order_fills=order_fills,
    )
    w.outbox = outbox_into(published)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    async with asyncio.timeout(10):
        # Its second delivery: the gateway before a restart was running it.
        recovering = asyncio.create_task(w.handle(Held(flatten, cast(Msg, Delivery(1, 2)), 1)))
        await eventually(lambda: asked == ["positions"])
        await w.reconcile()  # the reconnection's
        look.set()
        await recovering
    booked = {e.payload.broker_order_id: e.payload.strategy for e in said_fills(published)}
    assert booked == {"c-1": "s", "h-1": None}
    assert (w.tracker.position("AAPL", "s"), w.tracker.position("AAPL")) == (
        Decimal(6),
        Decimal(-3),
    )
    [placed] = [e for e in published if e.type == "ClosingOrdersPlaced"]
    assert [(o.quantity, o.leaves_quantity) for o in placed.payload.orders] == [
        (Decimal(10), Decimal(6))
    ]
    [hand] = [t for t in w.tracker.orders.values() if t.broker_order_id == "h-1"]
    assert not hand.closing
    assert w.tracker.flattened(flatten.id)


async def test_an_order_held_back_for_a_flatten_that_does_not_come_is_taken_in_after() -> None:
    """Restarted with a flatten recorded whose close-all is not known to have
    answered (one that ran on an account already flat records nothing, and
    is never delivered again). A market order nobody here placed, working
    since before the restart, may be one of its closing orders: the
    reconnection's reconciliation, then the stream, hold it back rather than
    book its fills to nobody before the flatten can claim it. The flatten
    does not come again within ``give_up_s``: the order is taken in as
    nobody's as the broker has it then (filled, no longer open), each of its
    fills published once; s keeps its 10 AAPL."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import BrokerFill, OrderUpdate

    tracker = OrderTracker("acct", clock=CLOCK, source="test")
    tracker.evolve(
        FlattenAccount.create(
            FlattenAccountPayload(account="acct", reason="kill_switch"), source="test", clock=CLOCK
        )
    )
    w = worker([1000.0], [], tracker=tracker)
    filled_position(w, 10)
    w.give_up_s = 1.0  # the flatten does not come within it
    created = CLOCK.now_ns()

    def by_hand(filled: int, status: Any) -> BrokerOrder:
        return BrokerOrder(
            "h-1",
            "by-hand",
            "AAPL",
            "sell",
            Decimal(10),
            Decimal(filled),
            Decimal(101),
            status,
            created_ns=created,
        )

    fills = [
        BrokerFill(
            "h-1", "by-hand", "AAPL", "sell", Decimal(4), Decimal(101), Decimal(4), Decimal(6), 1
        ),
        BrokerFill(
            "h-1", "by-hand", "AAPL", "sell", Decimal(6), Decimal(101), Decimal(10), Decimal(0), 2
        ),
    ]
    order = by_hand(4, "partially_filled")
    streamed = asyncio.Event()

    async def open_orders() -> list[BrokerOrder]:
        return [order] if order.is_open else []

    async def get_order(**ids: str | None) -> BrokerOrder:
        return order

    async def order_fills(o: BrokerOrder) -> list[BrokerFill]:
        return [f for f in fills if f.cumulative_quantity <= o.filled_quantity]

    async def events() -> Any:
        nonlocal order
        order = by_hand(10, "filled")
        yield OrderUpdate("fill", order, 2, fills[1])
        streamed.set()
        await asyncio.Event().wait()

    published: list[Any] = []
    w.port = broker(
        open_orders=open_orders, get_order=get_order, order_fills=order_fills, events=events
    )
    outbox = outbox_into(published)
    w.outbox = cast(Any, SimpleNamespace(publish=outbox.publish, post=outbox.publish))
    assert await w.reconcile()  # the reconnection's
    assert published == []
    running = asyncio.create_task(w.run_events())
    try:
        await eventually(streamed.is_set, timeout=5)
        assert published == []
        await eventually(lambda: len(said_fills(published)) == 2, timeout=5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert [
        (e.payload.quantity, e.payload.cumulative_quantity, e.payload.strategy)
        for e in said_fills(published)
    ] == [(Decimal(4), Decimal(4), None), (Decimal(6), Decimal(10), None)]
    assert all(e.causation_id is None for e in published)
    assert (w.tracker.position("AAPL", "s"), w.tracker.position("AAPL")) == (
        Decimal(10),
        Decimal(-10),
    )


async def test_a_flatten_made_after_the_start_and_delivered_again_asks_for_no_window() -> None:
    """A flatten handed back for want of room comes again as a second
    delivery. Made after this gateway started, no gateway before it can have
    run it, yet its recovery window (from its making to the start) was
    asked of the broker, ending before it began (a broker may refuse
    ``after`` past ``until``, failing the flatten each time). One made before
    the start is still looked for."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from libs.strategy.testing import At
    from services.broker_gateway.domain.model import ClosedAll

    asked: list[tuple[int, int]] = []

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        asked.append((after_ns, until_ns))
        return []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        return ClosedAll((), ())

    async def publish(events: list[Any]) -> None:
        pass

    async def flatten(made_ns: int) -> None:
        w = worker([1000.0], [])
        w.port = cast(
            Any,
            SimpleNamespace(
                cancel_all=cancel_all,
                close_all=close_all,
                orders_created=orders_created,
                connected=True,
            ),
        )
        w.outbox = cast(Any, SimpleNamespace(publish=publish))
        command = FlattenAccount.create(
            FlattenAccountPayload(account="acct", reason="breaker"), source="t", clock=At(made_ns)
        )
        await w.handle(Held(command, cast(Msg, Delivery(1, 2)), 1))

    minute = 60 * 10**9
    await flatten(CLOCK.now_ns() + minute)  # made after the worker starts
    assert asked == []
    await flatten(CLOCK.now_ns() - minute)  # made before it: a crash may have cut it
    assert len(asked) == 1
    assert asked[0][0] < asked[0][1]


async def test_a_reconciliation_asks_the_broker_about_no_settlement_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """s1 holds 1 call and s2 2; the broker lists them expired (one activity,
    split in two fills) and the gateway died after publishing s1's. Rebuilt,
    the settlement's order (no broker order: its id is the activity's) is not
    done, and a reconnection's reconciliation asked the broker for it by the
    activity's id, as if it were an order it had acknowledged: 404, "the
    broker no longer knows order ..." said and counted, at every
    reconnection until the next settlement read. It asks about the broker's
    order only; the settlement's rest is still published by the next read."""
    from services.broker_gateway.settlement import settlement_events
    from tests.unit.test_gateway_settlement import CALL, activity, opened, tracker

    holdings = opened([("s1", CALL, "1"), ("s2", CALL, "2")])
    expired = [activity("a1", "OPEXP", CALL, "-3")]
    s1_expired, _ = settlement_events(tracker(holdings), expired)
    w = worker([1000.0], [], tracker=tracker([*holdings, s1_expired]))
    accepted_order(w, 1)  # b-1, working
    working = BrokerOrder("b-1", "c", "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted")
    asked: list[dict[str, Any]] = []

    async def get_order(**ids: Any) -> BrokerOrder | None:
        asked.append(ids)
        return working if ids.get("broker_order_id") == "b-1" else None

    published: list[Any] = []
    w.port = broker(get_order=get_order)
    w.outbox = outbox_into(published)
    with caplog.at_level("WARNING"):
        assert await w.reconcile()
    assert asked == [{"broker_order_id": "b-1"}]
    assert "no longer knows" not in caplog.text
    assert published == []
    rest = settlement_events(w.tracker, expired)
    assert [(e.payload.strategy, e.payload.quantity) for e in rest] == [("s2", Decimal(2))]


def working_order(w: AccountWorker, broker_order_id: str, created_ns: int) -> BrokerOrder:
    """s's limit buy of 3 AAPL at 90, on the opening auction, acknowledged as
    ``broker_order_id`` and working (nothing filled): the order as the broker
    lists it."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    command = submit()
    command = command.model_copy(
        update={
            "payload": command.payload.model_copy(
                update={
                    "account": w.account,
                    "quantity": Decimal(3),
                    "order_type": "limit",
                    "limit_price": Decimal(90),
                    "time_in_force": "opg",
                }
            )
        }
    )
    oid = command.payload.order_id
    w.tracker.evolve(command)
    accepted = OrderAcceptedPayload(
        order_id=oid, account=w.account, broker_order_id=broker_order_id, symbol="AAPL"
    )
    w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    return BrokerOrder(
        broker_order_id,
        str(oid),
        "AAPL",
        "buy",
        Decimal(3),
        Decimal(0),
        None,
        "accepted",
        order_type="limit",
        limit_price=Decimal(90),
        created_ns=created_ns,
    )


async def test_a_recovered_flatten_reports_the_orders_its_cancel_all_left_working() -> None:
    """A flatten delivered again after a restart: its close-all was sent
    before and its answer lost. Its closing order (c-1, s's 10 AAPL sold) is
    found at the broker, but so is s's opg buy o-1, placed before it, which
    the cancel-all refused (locked 09:28-09:30) and which is still working:
    it may fill at the open, and the account is not flat. With no cancel-all
    answer to read it was not seen, and the flatten said ``flattened``. It
    is now published as the normal path does (an OrderRejected caused by the
    flatten, under an id derived from it and o-1, the order kept working)
    and the flatten is ``incomplete``. An order placed (by hand) after the
    closing order, which no cancel-all before it can have left, is not its."""
    from libs.contract.codec import derived_id
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition

    w = worker([1000.0], [], account=f"recover-{uuid.uuid4().hex[:8]}")
    filled_position(w, 10)
    opg = working_order(w, "o-1", created_ns=1_000)
    closing = BrokerOrder(
        "c-1",
        "close-1",
        "AAPL",
        "sell",
        Decimal(10),
        Decimal(10),
        Decimal(101),
        "filled",
        created_ns=2_000,
    )
    by_hand = BrokerOrder(
        "h-1",
        "by-hand",
        "MSFT",
        "buy",
        Decimal(1),
        Decimal(0),
        None,
        "accepted",
        order_type="limit",
        limit_price=Decimal(300),
        created_ns=3_000,
    )
    fill = BrokerFill(
        "c-1", "close-1", "AAPL", "sell", Decimal(10), Decimal(101), Decimal(10), Decimal(0), 1
    )
    published: list[Any] = []

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return [closing]

    async def positions() -> list[BrokerPosition]:
        return []

    async def open_orders() -> list[BrokerOrder]:
        return [opg, by_hand]

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [fill]

    w.port = broker(
        orders_created=orders_created,
        positions=positions,
        open_orders=open_orders,
        order_fills=order_fills,
    )
    w.outbox = outbox_into(published)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=w.account, reason="breaker"), source="test", clock=CLOCK
    )
    async with asyncio.timeout(10):
        # Its second delivery: the gateway before a restart was running it.
        await w.handle(Held(flatten, cast(Msg, Delivery(1, 2)), 1))
    assert [(e.payload.broker_order_id, e.payload.strategy) for e in said_fills(published)] == [
        ("c-1", "s")
    ]
    [rejected] = [e for e in published if e.type == "OrderRejected"]
    assert rejected.causation_id == flatten.id
    assert rejected.payload.order_id == derived_id(
        "broker.close.working", w.account, flatten.id, "o-1"
    )
    assert "did not cancel order o-1 (buy 3 AAPL)" in rejected.payload.reason
    t = w.tracker.find(opg)
    assert t is not None
    assert t.terminal is None, "still working: its fills are published if it fills"
    assert w.tracker.flattened(flatten.id)
    outcomes = {
        outcome: REGISTRY.get_sample_value(
            "tradebus_broker_commands_total",
            {"account": w.account, "type": "FlattenAccount", "outcome": outcome},
        )
        for outcome in ("flattened", "incomplete")
    }
    assert outcomes == {"flattened": None, "incomplete": 1}
    # Counted as an order a flatten left working (the board's "Positions or
    # orders a flatten left open"), not as a position.
    assert [
        REGISTRY.get_sample_value(f"tradebus_broker_flatten_{what}_total", {"account": w.account})
        for what in ("working_orders", "refused_positions")
    ] == [1, 0]
