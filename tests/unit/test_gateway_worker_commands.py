"""The gateway's AccountWorker without servers: how it takes commands back
in order, counts failures and spaces its retries, publishes in order, and
what a command that fails for good (or unexpectedly) is given. Messages are
stand-ins that record what the worker answered (ack, nak); the clock is the
test's."""

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

from libs.testing.wait import eventually
from services.broker_gateway import gateway
from services.broker_gateway.domain.model import BrokerOrder
from services.broker_gateway.gateway import MAX_FAILURES, AccountWorker, Held, Outbox, retry_delay_s
from tests.unit.gateway_doubles import Delivery, offer, submit, worker


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
