"""The gateway's command path while a broker is away: real NATS, the real
command consumer, worker and paper adapter, and the real paper broker server
(in this process, over a real WebSocket), which the test stops and starts
again on the same port.

A command held for a broker that is away, and those queued behind it, are
kept in progress on NATS: none is delivered again, none runs twice (a
flatten, least of all), and one account's backlog does not keep the
commands of another from its broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import nats.js.errors
import orjson
import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api
from prometheus_client import REGISTRY
from pydantic import SecretStr

from libs.bus.client import Bus
from libs.contract import codec
from libs.contract.envelope import WallClock
from libs.contract.events import (
    AnyEvent,
    CancelOrder,
    CancelOrderPayload,
    FlattenAccount,
    FlattenAccountPayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.contract.subjects import STREAM
from libs.local.servers import free_port
from libs.testing.wait import eventually
from services.broker_gateway.adapters.commands import (
    DEAD_LETTER_RETRY_S,
    MAX_ACK_PENDING,
    CommandConsumer,
    DeadLetter,
)
from services.broker_gateway.adapters.history import ORDER_PATH_TYPES
from services.broker_gateway.adapters.paper.client import PaperBroker
from services.broker_gateway.config import GatewaySettings
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.errors import AnswerUnread
from services.broker_gateway.gateway import (
    CLOCK_SKEW_NS,
    RECONCILE_ATTEMPTS,
    RETRY_INITIAL_S,
    TIMINGS,
    AccountWorker,
    Outbox,
    Timings,
)
from services.broker_gateway.main import _rebuilt
from services.paper_broker.adapters.server import Credentials, PaperBrokerServer
from services.paper_broker.domain.book import (
    BookConfig,
    Canceling,
    Closing,
    OrderSpec,
    PaperBook,
    TradeUpdate,
    day_order_expiry_ns,
)
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.integration.recording import record_stream

D = Decimal
CLOCK = WallClock()
ACK_WAIT_S = 1.0


class CountingBook(PaperBook):
    """A paper book that counts the flatten calls it serves."""

    def __init__(self) -> None:
        super().__init__(BookConfig(), clock=CLOCK, ids=lambda: str(uuid.uuid4()))
        self.cancel_alls = 0
        self.close_alls = 0

    def cancel_all(self, account: str) -> tuple[list[Canceling], list[TradeUpdate]]:
        self.cancel_alls += 1
        return super().cancel_all(account)

    def close_all(
        self, account: str, *, cancel_orders: bool = False
    ) -> tuple[list[Closing], list[TradeUpdate]]:
        self.close_alls += 1
        return super().close_all(account, cancel_orders=cancel_orders)


@dataclass
class Venue:
    """One account's paper broker, which can go away and come back on its port."""

    account: str
    book: CountingBook = field(default_factory=CountingBook)
    port: int = field(default_factory=free_port)
    server: PaperBrokerServer | None = None

    async def up(self, *, rate_limited: int = 0, retry_after_s: float | None = None) -> None:
        """Serve again; the first ``rate_limited`` requests are answered 429."""
        creds = [Credentials(f"key-{self.account}", SecretStr("secret"), self.account)]
        self.server = PaperBrokerServer(self.book, creds, port=self.port)
        self.server.throttle(rate_limited, retry_after_s)
        await self.server.start()

    async def down(self) -> None:
        if self.server is not None:
            await self.server.close()

    def orders(self) -> list[str]:
        return [o.client_order_id for o in self.book.orders(self.account, "all")]


@dataclass
class Gateway:
    workers: dict[str, AccountWorker]
    #: (command type, delivery number) of each message the consumer handed over.
    deliveries: list[tuple[str, int]]
    #: The outbox's, each worker's and the consumer's (the last).
    tasks: list[asyncio.Task[None]]

    def ended(self) -> list[str]:
        """How each task that ended did (none should, before the test stops it)."""
        return [repr(t) for t in self.tasks if t.done()]


@contextlib.asynccontextmanager
async def gateway(
    bus: Bus,
    venues: list[Venue],
    *,
    max_held: int = 1000,
    position_check_every_s: float = 0.0,
    trackers: dict[str, OrderTracker] | None = None,
    max_submit_delay_s: float = 120,
    timings: Timings = TIMINGS,
    dead_letter: DeadLetter | None = None,
    dead_letter_deadline_s: float = 5.0,
    dead_letter_retry_s: float = DEAD_LETTER_RETRY_S,
) -> AsyncIterator[Gateway]:
    """The gateway's command path, wired as main.py wires it, ack wait 1 s;
    ``trackers`` as rebuilt after a restart (else new ones); ``timings``
    shorter than the service's where a test waits out a backoff; a failed
    command is not expected to be dead-lettered unless ``dead_letter`` is given."""
    trackers = trackers or {}
    outbox = Outbox(bus)

    async def unexpected(msg: Msg, error: str) -> None:
        raise AssertionError(f"dead-lettered: {error}")

    dead = dead_letter or unexpected

    workers = {}
    for v in venues:
        port = PaperBroker(
            account=v.account,
            url=f"ws://127.0.0.1:{v.port}/stream",
            key_id=f"key-{v.account}",
            secret_key=SecretStr("secret"),
            heartbeat_interval_s=0.2,
            heartbeat_timeout_s=0.3,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.2,
        )
        workers[v.account] = AccountWorker(
            v.account,
            port,
            trackers.get(v.account)
            or OrderTracker(v.account, clock=CLOCK, source="broker-gateway/test"),
            outbox,
            clock=CLOCK,
            source="broker-gateway/test",
            max_submit_delay_s=max_submit_delay_s,
            ack_wait_s=ACK_WAIT_S,
            dead_letter=dead,
            max_held=max_held,
            position_check_every_s=position_check_every_s,
            timings=timings,
        )
    deliveries: list[tuple[str, int]] = []

    async def dispatch(command: AnyEvent, msg: Msg) -> None:
        deliveries.append((command.type, msg.metadata.num_delivered))
        await workers[str(getattr(command.payload, "account", ""))].offer(command, msg)

    consumer = CommandConsumer(
        bus,
        durable="broker-gateway-test",
        service="broker-gateway",
        ack_wait_s=ACK_WAIT_S,
        start_back_s=60,
        max_bytes=1 << 20,
        dead_letter_deadline_s=dead_letter_deadline_s,
        dead_letter_retry_s=dead_letter_retry_s,
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(outbox.run())]
    for w in workers.values():
        tasks += [
            asyncio.create_task(w.run_events()),
            asyncio.create_task(w.run_commands()),
            asyncio.create_task(w.keep_alive()),
        ]
        await w.port.start()
    tasks.append(asyncio.create_task(consumer.run(dispatch, stop)))
    try:
        yield Gateway(workers, deliveries, tasks)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for w in workers.values():
            await w.port.close()


@pytest.fixture
async def venues() -> AsyncIterator[list[Venue]]:
    made = [Venue("acct-a"), Venue("acct-b")]
    for v in made:
        await v.up()
    try:
        yield made
    finally:
        for v in made:
            await v.down()


def submit(account: str, symbol: str, qty: str = "1", limit: str | None = None) -> SubmitOrder:
    signal = SignalGenerated.create(
        SignalPayload(strategy="s1", symbol=symbol, name="x", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy="s1",
            account=account,
            symbol=symbol,
            side="buy",
            quantity=D(qty),
            order_type="market" if limit is None else "limit",
            limit_price=None if limit is None else D(limit),
        ),
        source="test/risk-gate",
        clock=CLOCK,
        cause=signal,
    )


def flatten(account: str) -> FlattenAccount:
    return FlattenAccount.create(
        FlattenAccountPayload(account=account, reason="test"), source="test/risk-gate", clock=CLOCK
    )


async def ack_waits_pass(bus: Bus, n: int) -> None:
    """Until the server has let ``n`` ack waits pass: a message nobody acks,
    on a consumer of its own with the same ack wait, is delivered ``n + 1``
    times (the server's own clock, not ours)."""
    await bus.publish(
        TradePrinted.create(
            TradePayload(symbol="CLOCK", price=D(1), size=D(1), feed="synthetic"),
            source="test",
            clock=CLOCK,
        )
    )
    sub = await bus.js.pull_subscribe(
        "md.trade.CLOCK",
        durable=f"clock-{uuid.uuid4().hex[:8]}",
        stream=STREAM,
        config=js_api.ConsumerConfig(ack_wait=ACK_WAIT_S, max_deliver=-1),
    )
    try:
        delivered = 0
        while delivered <= n:
            with contextlib.suppress(TimeoutError):
                [msg] = await sub.fetch(1, timeout=ACK_WAIT_S * 2)
                delivered = msg.metadata.num_delivered
    finally:
        await sub.unsubscribe()


async def test_commands_held_for_an_absent_broker_run_once_when_it_is_back(
    bus: Bus, venues: list[Venue]
) -> None:
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    a.book.on_market(MarketUpdate.trade("MSFT", D(50)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        first = submit(a.account, "AAPL", "10")
        await bus.publish(first)
        await eventually(lambda: [p.qty for p in a.book.positions(a.account)] == [D(10)])

        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        held, flat = submit(a.account, "MSFT", "1"), flatten(a.account)
        await bus.publish_many([held, flat])
        await eventually(lambda: w.held == 2, timeout=10)
        await ack_waits_pass(bus, 3)  # long enough for 3 redeliveries of each

        await a.up()
        await eventually(lambda: a.book.close_alls >= 1 and w.held == 0, timeout=20)
        await w.wait_idle()
        assert gw.deliveries == [("SubmitOrder", 1), ("SubmitOrder", 1), ("FlattenAccount", 1)]
        assert (a.book.cancel_alls, a.book.close_alls) == (1, 1)
        assert a.book.positions(a.account) == []

        # A copy of the flatten handed over after it ran (its ack lost, say)
        # does not run again: a position opened since stays open.
        second = submit(a.account, "AAPL", "5")
        await bus.publish(second)
        await eventually(lambda: [p.qty for p in a.book.positions(a.account)] == [D(5)])

        class Copy:  # a second delivery of the flatten's message, not from JetStream
            reply = ""
            subject = "orders.cmd.acct-a"

        await w.offer(flat, Copy())  # type: ignore[arg-type]
        await w.wait_idle()
        assert (a.book.cancel_alls, a.book.close_alls) == (1, 1)
        assert [p.qty for p in a.book.positions(a.account)] == [D(5)]


async def test_one_account_s_backlog_does_not_hold_up_another(
    bus: Bus, venues: list[Venue]
) -> None:
    a, b = venues
    for v in venues:
        v.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues, max_held=2) as gw:
        wa = gw.workers[a.account]
        for w in gw.workers.values():
            assert await w.port.wait_connected(timeout=10)
        await a.down()
        await eventually(lambda: not wa.port.connected, timeout=10)
        backlog = [submit(a.account, "AAPL") for _ in range(6)]
        await bus.publish_many(backlog)
        await eventually(lambda: wa.held == 2, timeout=10)
        for_b = submit(b.account, "AAPL")
        await bus.publish(for_b)
        await eventually(lambda: b.orders() == [str(for_b.payload.order_id)], timeout=10)

        await a.up()
        ids = [str(c.payload.order_id) for c in backlog]
        await eventually(lambda: len(a.orders()) == len(ids), timeout=30)
        assert a.orders() == ids  # in stream order, each once


async def test_a_consumer_made_with_the_old_cap_is_raised(bus: Bus) -> None:
    await bus.js.add_consumer(
        STREAM,
        js_api.ConsumerConfig(
            durable_name="broker-gateway-old",
            filter_subject="orders.cmd.>",
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=10,
            max_ack_pending=1000,
            max_deliver=-1,
        ),
    )
    consumer = CommandConsumer(
        bus,
        durable="broker-gateway-old",
        service="broker-gateway",
        ack_wait_s=10,
        start_back_s=60,
        max_bytes=1 << 20,
    )
    await consumer.ensure()
    info = await bus.js.consumer_info(STREAM, "broker-gateway-old")
    assert info.config.max_ack_pending == MAX_ACK_PENDING


async def test_a_changed_command_ack_wait_reaches_the_existing_consumer(bus: Bus) -> None:
    """TRADEBUS_COMMAND_ACK_WAIT_S changed (10 -> 60 s) is the consumer's own
    ack wait at the next start. It was set only when the consumer was made,
    so the server went on redelivering held commands after the old 10 s while
    the gateway, going by 60, said they were in progress only every 20 s: a
    copy of each came back again and again."""
    for ack_wait in (10.0, 60.0, 10.0):
        consumer = CommandConsumer(
            bus,
            durable="broker-gateway-wait",
            service="broker-gateway",
            ack_wait_s=ack_wait,
            start_back_s=60,
            max_bytes=1 << 20,
        )
        await consumer.ensure()
        info = await bus.js.consumer_info(STREAM, "broker-gateway-wait")
        assert info.config.ack_wait == ack_wait
        assert info.config.max_ack_pending == MAX_ACK_PENDING


async def test_a_command_handed_back_that_never_returns_does_not_stall_its_account(
    bus: Bus, venues: list[Venue]
) -> None:
    """Commands handed back for lack of room are taken again in stream order;
    should the first of them leave the stream meanwhile (deleted, aged out),
    the ones after it run once it is given up on, not never."""
    a, _ = venues
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues, max_held=2) as gw:
        wa = gw.workers[a.account]
        assert await wa.port.wait_connected(timeout=10)
        await a.down()
        await eventually(lambda: not wa.port.connected, timeout=10)
        backlog = [submit(a.account, "AAPL") for _ in range(5)]
        seqs = [(await bus.publish(c)).seq for c in backlog]
        await eventually(lambda: wa.held == 2, timeout=10)
        await bus.js.delete_msg(STREAM, seqs[2])  # the first one handed back
        await a.up()
        ids = [str(c.payload.order_id) for i, c in enumerate(backlog) if i != 2]
        await eventually(lambda: a.orders() == ids, timeout=10 + wa.give_up_s * 2)


async def last_event(bus: Bus, subject: str) -> dict[str, Any] | None:
    """The last event stored on ``subject``, decoded; None if there is none."""
    try:
        msg = await bus.js.get_last_msg(STREAM, subject)
    except nats.js.errors.NotFoundError:
        return None
    assert msg.data is not None
    event: dict[str, Any] = orjson.loads(msg.data)
    return event


async def test_a_flatten_that_leaves_a_position_open_says_so(bus: Bus, venues: list[Venue]) -> None:
    """The broker's close-all refuses one position (here: its symbol halted
    since it was bought; at Alpaca also shares held by an order): the flatten
    publishes an ``OrderRejected`` for it, caused by the flatten, with the
    venue's code and the symbol, instead of passing for done."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    a.book.on_market(MarketUpdate.trade("MSFT", D(50)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await bus.publish_many([submit(a.account, "AAPL", "10"), submit(a.account, "MSFT", "5")])
        await eventually(lambda: len(a.book.positions(a.account)) == 2, timeout=10)
        a.book.config = replace(a.book.config, halted_symbols=frozenset({"MSFT"}))
        flat = flatten(a.account)
        await bus.publish(flat)
        rejected = await eventually(
            lambda: last_event(bus, f"broker.reject.{a.account}"), timeout=10
        )
        assert rejected["type"] == "OrderRejected"
        assert rejected["causation_id"] == str(flat.id)
        assert rejected["payload"]["code"] == "40310000"
        assert "MSFT position, which is still open" in rejected["payload"]["reason"]
        assert [(p.symbol, p.qty) for p in a.book.positions(a.account)] == [("MSFT", D(5))]
        await w.wait_idle()
        assert w.tracker.flattened(flat.id)  # done: a copy of it does not run again


async def test_the_gateway_lets_go_of_a_flatten_no_consumer_can_deliver_again(
    bus: Bus, venues: list[Venue]
) -> None:
    """The worker's tracker kept every flatten it ran for the life of the
    gateway. Once its ack is confirmed, a flatten is let go; whether it is
    done is kept while a consumer made anew (replaying max_submit_delay_s,
    on clocks up to CLOCK_SKEW_NS apart) could bring it, so a copy is still
    a repeat then, and forgotten after."""
    a = venues[0]
    async with gateway(bus, venues[:1], max_submit_delay_s=0.1) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        first = flatten(a.account)
        await bus.publish(first)
        await eventually(lambda: w.handled == 1, timeout=10)
        acknowledged = time.time_ns()
        assert w.tracker.flattened(first.id)  # a consumer made anew could replay it
        assert first.id not in w.tracker._flattens
        kept_ns = 100_000_000 + CLOCK_SKEW_NS
        await eventually(lambda: time.time_ns() > acknowledged + kept_ns, timeout=10)
        second = flatten(a.account)
        await bus.publish(second)
        await eventually(lambda: w.handled == 2, timeout=10)
        assert w.tracker.flattened(second.id)
        assert not w.tracker.flattened(first.id)
        assert w.tracker._flattens == {}


async def test_a_flatten_says_which_closing_orders_it_placed(bus: Bus, venues: list[Venue]) -> None:
    """The risk-gate reads no acks: the flatten's closing orders reach it as
    one ``ClosingOrdersPlaced`` on ``broker.close.<account>``, caused by the
    flatten, naming each order as its fills do, with what still works of it
    (its quantity less the fills published before it) and the strategy whose
    position it closes."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await bus.publish(submit(a.account, "AAPL", "10"))
        await eventually(lambda: w.tracker.position("AAPL", "s1") == 10, timeout=10)
        flat = flatten(a.account)
        await bus.publish(flat)
        placed = await eventually(lambda: last_event(bus, f"broker.close.{a.account}"), timeout=10)
        await w.wait_idle()
        await eventually(lambda: w.tracker.position("AAPL") == 0, timeout=10)
    assert placed["type"] == "ClosingOrdersPlaced"
    assert placed["causation_id"] == str(flat.id)
    [order] = placed["payload"]["orders"]
    assert (order["symbol"], order["side"], order["quantity"]) == ("AAPL", "sell", "10")
    closing = [
        f
        for f in await stored(bus, f"broker.fill.{a.account}")
        if f["causation_id"] == str(flat.id)
    ]
    assert {f["payload"]["order_id"] for f in closing} == {order["order_id"]}
    # Working when the close-all answered (booked to s1), or filled before it.
    assert (order["leaves_quantity"], order["strategy"]) in {("10", "s1"), ("0", None)}


async def stored(bus: Bus, subject: str) -> list[dict[str, Any]]:
    """Every event stored on ``subject`` so far, oldest first, decoded."""
    info = await bus.js.stream_info(STREAM, subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    if not count:
        return []
    sub = await bus.js.subscribe(
        subject, stream=STREAM, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL
    )
    try:
        return [orjson.loads((await sub.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("retry_after_s", [0.3, None])
async def test_a_rate_limited_broker_is_given_time(
    bus: Bus, venues: list[Venue], retry_after_s: float | None
) -> None:
    """A 429 is retried after the broker's Retry-After, or, without one, after
    a backoff that doubles; no longer at once (the broker counted each of
    those retries against us, and went on refusing)."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        assert a.server is not None
        # One order through first: by then the reconciliation that follows
        # the connection has asked its question, so the 429s are the submit's.
        first = submit(a.account, "AAPL", "1")
        await bus.publish(first)
        await eventually(lambda: len(a.book.positions(a.account)) == 1, timeout=20)
        await w.wait_idle()
        a.server.throttle(3, retry_after_s=retry_after_s)
        order = submit(a.account, "AAPL", "2")
        await bus.publish(order)
        await eventually(lambda: len(a.orders()) == 2, timeout=20)
        assert a.orders()[1] == str(order.payload.order_id)
        at = a.server.throttled_at
        assert len(at) == 3
        gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
        for attempt, gap in enumerate(gaps):
            least = retry_after_s if retry_after_s is not None else RETRY_INITIAL_S * 2**attempt / 2
            assert gap >= least * 0.95, (attempt, gaps)


async def test_fills_are_published_while_a_reconciliation_waits_out_a_rate_limit(
    bus: Bus, venues: list[Venue]
) -> None:
    """The broker is back and rate-limits the reconciliation's first call
    (429, Retry-After 30 s) while its stream brings a fill: the fill is
    published before the backoff ends. Reconciliation ran in the task reading
    the stream, so the fill waited the 30 s (and the risk-gate's positions
    with it)."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        resting = submit(a.account, "AAPL", "3", limit="90")
        await bus.publish(resting)
        await eventually(lambda: last_event(bus, f"broker.ack.{a.account}"), timeout=10)
        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        await a.up(rate_limited=1, retry_after_s=30)
        assert a.server is not None
        server = a.server
        await eventually(lambda: len(server.throttled_at) == 1, timeout=10)
        server.market(MarketUpdate.trade("AAPL", D(89)))
        fill = await eventually(lambda: last_event(bus, f"broker.fill.{a.account}"), timeout=10)
        assert fill["payload"]["order_id"] == str(resting.payload.order_id)
        assert fill["payload"]["cumulative_quantity"] == "3"
        assert len(server.throttled_at) == 1  # the reconciliation has not asked again yet


class StrictBook(CountingBook):
    """A broker at a strict rate limit: once ``strict``, each order it is
    asked for uses up the allowance, and the next request is refused (429,
    ``Retry-After`` 0.2 s). Records the orders it is asked for."""

    def __init__(self, venue: Venue) -> None:
        super().__init__()
        self.venue = venue
        self.strict = False
        self.asked: list[str] = []

    def order(self, account: str, order_id: str) -> Any:
        if self.strict and self.venue.server is not None:
            self.asked.append(order_id)
            self.venue.server.throttle(1, retry_after_s=0.2)
        return super().order(account, order_id)


async def test_a_rate_limited_reconciliation_goes_on_from_where_it_was(
    bus: Bus, venues: list[Venue]
) -> None:
    """Four working orders fill while the broker is away. Back, it refuses
    the call after each order it looks up (each order's fills): the
    reconciliation waits, asks that call again and goes on to the next order,
    so it publishes every fill, asking for each order once. A 429 used to
    start it again from the first order: it never got past that order's
    fills and gave up after 5 attempts, publishing nothing."""
    a = venues[0]
    book = a.book = StrictBook(a)
    await a.down()
    await a.up()  # on the strict book
    book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        resting = [submit(a.account, "AAPL", "1", limit=str(90 - i)) for i in range(4)]
        await bus.publish_many(resting)
        await eventually(lambda: len(book.orders(a.account)) == 4, timeout=10)
        await w.wait_idle()
        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        book.on_market(MarketUpdate.trade("AAPL", D(80)))  # fills them all, unseen
        book.strict = True
        await a.up()

        ids = {str(c.payload.order_id) for c in resting}

        async def all_filled() -> bool:
            fills = await stored(bus, f"broker.fill.{a.account}")
            return {e["payload"]["order_id"] for e in fills} == ids

        await eventually(all_filled, timeout=20)
        broker_ids = [o.id for o in book.orders(a.account, "all")]
        assert book.asked == broker_ids  # each once, in order
        assert a.server is not None
        assert len(a.server.throttled_at) == 4


async def test_a_reconciliation_given_up_is_said_counted_and_tried_again(
    bus: Bus,
    venues: list[Venue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The give-up rule: one call refused ``RECONCILE_ATTEMPTS`` times in a
    row ends the reconciliation, with a warning and
    ``tradebus_broker_reconciliations_given_up_total``. While the broker
    stays connected it is tried again after a backoff, and publishes the
    fill it was to fetch, with no reconnection in between. It used to wait
    for the next reconnection or gap: the fill stayed unpublished (and the
    risk-gate's position short) for as long as the connection held."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))

    def given_up() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_reconciliations_given_up_total", {"account": a.account}
        )

    async with gateway(bus, venues[:1], timings=Timings(reconcile_retry_initial_s=0.3)) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        resting = submit(a.account, "AAPL", "1", limit="90")
        await bus.publish(resting)
        await eventually(lambda: last_event(bus, f"broker.ack.{a.account}"), timeout=10)
        await w.wait_idle()
        before = given_up()
        assert before is not None
        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        a.book.on_market(MarketUpdate.trade("AAPL", D(80)))  # fills it, unseen
        with caplog.at_level("INFO"):
            await a.up(rate_limited=RECONCILE_ATTEMPTS, retry_after_s=0)
            await eventually(lambda: given_up() == before + 1, timeout=10)
            assert await last_event(bus, f"broker.fill.{a.account}") is None
            connections = len(await stored(bus, f"broker.conn.{a.account}"))
            fill = await eventually(lambda: last_event(bus, f"broker.fill.{a.account}"), timeout=10)
        assert fill["payload"]["order_id"] == str(resting.payload.order_id)
        assert a.server is not None
        assert len(a.server.throttled_at) == RECONCILE_ATTEMPTS
        assert len(await stored(bus, f"broker.conn.{a.account}")) == connections  # no reconnection
        assert w.port.connected
        assert given_up() == before + 1
        assert f"reconciliation of {a.account} given up" in caplog.text
        assert f"reconciliation of {a.account} (everything) tried again in" in caplog.text


async def test_the_stream_s_events_are_queued_before_a_waiting_submit_is_woken(
    bus: Bus, venues: list[Venue]
) -> None:
    """An order's events come from the stream, the reconciliation task and
    the command task; the outbox publishes them in the order they are queued.
    The stream's were queued only after waking a submit waiting for them,
    which takes a lock that submit holds for a moment once woken: meanwhile
    a reconciliation could queue the order's later fill ahead of them (on
    the bus: the fill to 5 before the fill to 3, or before the
    OrderAccepted). With that lock held, the stream's fill is published all
    the same."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        resting = submit(a.account, "AAPL", "3", limit="90")
        await bus.publish(resting)
        await eventually(lambda: last_event(bus, f"broker.ack.{a.account}"), timeout=10)
        await w.wait_idle()
        assert a.server is not None
        async with w._progress:  # as a submit woken in _settle holds it
            a.server.market(MarketUpdate.trade("AAPL", D(89)))
            fill = await eventually(lambda: last_event(bus, f"broker.fill.{a.account}"), timeout=5)
        assert fill["payload"]["order_id"] == str(resting.payload.order_id)


async def test_a_position_the_fills_do_not_explain_is_said_once_and_kept_on_the_board(
    bus: Bus,
    venues: list[Venue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gateway compares the broker's positions with the account's
    recorded fills. First check: they agree (published once). Then, while
    the gateway is away, an order placed at the broker by hand fills: the
    reconnection's reconciliation cannot see it (it is no longer open), but
    the check after it finds the broker holding 5 more AAPL than the fills
    say. That is published as ``BrokerPositionsChecked`` with the difference,
    logged, and the account's gauge shows it; later checks that find the
    same say nothing new on the bus."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    subject = f"broker.positions.{a.account}"

    def checks(outcome: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "tradebus_broker_position_checks_total", {"account": a.account, "outcome": outcome}
            )
            or 0.0
        )

    timings = Timings(position_confirm_s=0.3)
    async with gateway(bus, venues[:1], position_check_every_s=0.3, timings=timings) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await bus.publish(submit(a.account, "AAPL", "1"))
        await eventually(lambda: last_event(bus, f"broker.fill.{a.account}"), timeout=10)
        first = await eventually(lambda: last_event(bus, subject), timeout=10)
        assert first["payload"]["differences"] == []  # (made before or after the fill)
        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        by_hand = OrderSpec("AAPL", "buy", D(5), client_order_id="by-hand")
        _, updates = a.book.submit(a.account, by_hand)
        assert updates  # filled at once, at the last trade
        with caplog.at_level("WARNING"):
            await a.up()

            async def said() -> dict[str, Any] | None:
                checked = await stored(bus, subject)
                return checked[-1] if len(checked) == 2 else None

            found = await eventually(said, timeout=10)
            differ = checks("differ")
            await eventually(lambda: checks("differ") >= differ + 2, timeout=10)
        assert found["payload"]["differences"] == [
            {"symbol": "AAPL", "broker_quantity": "6", "recorded_quantity": "1"}
        ]
        assert found["payload"]["broker_positions"] == 1
        assert len(await stored(bus, subject)) == 2  # the same difference again: nothing new
        assert (
            REGISTRY.get_sample_value(
                "tradebus_broker_position_differences", {"account": a.account}
            )
            == 1
        )
        assert f"positions of {a.account}: AAPL is 6 at the broker, 1 from the recorded fills" in (
            caplog.text
        )


class SetClock:
    def __init__(self) -> None:
        self.ns = time.time_ns()

    def now_ns(self) -> int:
        return self.ns


class DayBook(CountingBook):
    """A paper book that expires day orders at 16:00 New York, on its own clock."""

    def __init__(self, clock: SetClock) -> None:
        super().__init__()
        self.config = replace(self.config, day_orders_expire_at=dt.time(16, 0))
        self.clock = clock


async def test_a_day_order_the_broker_expires_at_the_close_is_published_canceled(
    bus: Bus, venues: list[Venue]
) -> None:
    """The paper broker expires a working day order at the close, as Alpaca
    does; the gateway publishes it as ``OrderCanceled`` (reason ``expired``),
    which ends the order for the risk-gate and the strategy-runner."""
    a = venues[0]
    clock = SetClock()
    book = a.book = DayBook(clock)
    await a.down()
    await a.up()
    book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        resting = submit(a.account, "AAPL", "1", limit="90")
        assert resting.payload.time_in_force == "day"
        await bus.publish(resting)
        await eventually(lambda: last_event(bus, f"broker.ack.{a.account}"), timeout=10)
        [order] = book.orders(a.account)
        clock.ns = day_order_expiry_ns(order.created_at_ns, dt.time(16, 0))
        assert a.server is not None
        a.server.expire_orders()
        canceled = await eventually(
            lambda: last_event(bus, f"broker.cancel.{a.account}"), timeout=10
        )
    assert canceled["payload"]["order_id"] == str(resting.payload.order_id)
    assert "expired" in canceled["payload"]["reason"]
    assert book.orders(a.account) == []


async def test_a_flatten_after_a_lost_connection_books_its_close_to_the_strategy_that_filled(
    bus: Bus, venues: list[Venue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is lost; a resting order of s1 fills meanwhile (the
    stream does not bring it) and the risk-gate sends a flatten. Once the
    broker is back, the flatten's closing fill is booked to the strategies
    by the fills published, so s1's missed fill must be published first: it
    was left to the reconnection's reconciliation, which (here: just after
    the flatten, as it may) published it after the closing fill, booked to
    nobody. s1 kept +10 AAPL the flatten had sold, nobody held -10."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        resting = submit(a.account, "AAPL", "10", limit="90")
        await bus.publish(resting)
        await eventually(lambda: last_event(bus, f"broker.ack.{a.account}"), timeout=10)
        await w.wait_idle()
        reconcile = w.reconcile

        async def after_the_flatten(only: set[Any] | None = None) -> bool:
            await eventually(lambda: a.book.close_alls >= 1, timeout=20)
            return await reconcile(only)

        monkeypatch.setattr(w, "reconcile", after_the_flatten)
        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        assert a.book.on_market(MarketUpdate.trade("AAPL", D(89)))  # fills it, unseen
        flat = flatten(a.account)
        await bus.publish(flat)
        await eventually(lambda: w.held == 1, timeout=10)
        await a.up()

        async def both_fills() -> list[dict[str, Any]] | None:
            fills = await stored(bus, f"broker.fill.{a.account}")
            return fills if len(fills) >= 2 else None

        fills = await eventually(both_fills, timeout=20)
        await w.wait_idle()
    assert a.book.positions(a.account) == []
    by_order = {
        f["payload"]["order_id"]: (f["payload"]["strategy"], f["payload"]["side"]) for f in fills
    }
    assert by_order.pop(str(resting.payload.order_id)) == ("s1", "buy")
    assert list(by_order.values()) == [("s1", "sell")]  # the close, to s1, not to nobody
    assert w.tracker.position("AAPL", "s1") == 0
    assert w.tracker.position("AAPL") == 0


@pytest.mark.parametrize("behind", ["cancel", "flatten"])
async def test_a_held_order_whose_cancel_is_queued_behind_it_is_never_sent(
    bus: Bus, venues: list[Venue], behind: str
) -> None:
    """The broker is away with a market order held; the risk-gate's reaction
    (connection_lost: a CancelOrder per open order, then FlattenAccount; the
    kill switch the same) comes behind it. Once the broker is back the order
    is withdrawn, never sent, as it would have been after a crash: it was
    sent and filled, the cancel came too late and the flatten sold it
    again, a round trip at the market the risk-gate had called off."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await a.down()
        await eventually(lambda: not w.port.connected, timeout=10)
        held = submit(a.account, "AAPL", "10")
        oid = held.payload.order_id
        cancel = CancelOrder.create(
            CancelOrderPayload(order_id=oid, account=a.account, reason="connection_lost"),
            source="test/risk-gate",
            clock=CLOCK,
        )
        reaction = [cancel, flatten(a.account)] if behind == "cancel" else [flatten(a.account)]
        await bus.publish_many([held, *reaction])
        await eventually(lambda: w.held == 1 + len(reaction), timeout=10)
        await a.up()
        await eventually(lambda: a.book.close_alls == 1 and w.held == 0, timeout=20)
        await w.wait_idle()
        assert str(oid) not in a.orders()
        assert a.book.positions(a.account) == []
        canceled = await eventually(
            lambda: last_event(bus, f"broker.cancel.{a.account}"), timeout=10
        )
    assert canceled["payload"]["order_id"] == str(oid)
    assert canceled["payload"]["reason"] == "canceled before it reached the broker"
    assert canceled["causation_id"] == str(reaction[0].id)


async def rebuilt(bus: Bus, account: str) -> OrderTracker:
    """The account's tracker as a restarted gateway rebuilds it: the stored
    order-path events (the types the store's history reads) folded in order."""
    subject = f"*.*.{account}"  # orders.cmd.<account>, broker.<what>.<account>
    info = await bus.js.stream_info(STREAM, subjects_filter=subject)
    count = sum((info.state.subjects or {}).values())
    sub = await bus.js.subscribe(
        subject, stream=STREAM, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL
    )
    try:
        decoded = [codec.decode((await sub.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()
    tracker = OrderTracker(account, clock=CLOCK, source="broker-gateway/test")
    for event in decoded:
        if event.type in ORDER_PATH_TYPES:
            tracker.evolve(event)
    return tracker


@pytest.mark.parametrize("published", ["nothing", "the stream's"])
async def test_a_flatten_cut_by_a_crash_after_its_close_all_loses_nothing(
    bus: Bus, venues: list[Venue], monkeypatch: pytest.MonkeyPatch, published: str
) -> None:
    """The gateway dies (kill -9) once the broker has acted on a flatten's
    close-all: it sold s1's 10 AAPL and refused MSFT (halted). Either
    nothing of it was published (the broker's updates went to a dead
    socket), or the stream's acceptance and fill of the closing order were
    and the close-all's answer was not. Restarted, with its tracker rebuilt
    from what was stored, the gateway gets the flatten again: it published
    nothing for it (the closing fill never booked, s1 long 10 AAPL the broker
    no longer holds) or took it for done (a closing order of it accepted),
    and ClosingOrdersPlaced and the MSFT refusal were lost. Now it finds the
    closing orders its close-all placed, publishes what is missing, each
    once, and sends no second close-all."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    a.book.on_market(MarketUpdate.trade("MSFT", D(50)))
    flat = flatten(a.account)
    crashed = asyncio.Event()
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await bus.publish_many([submit(a.account, "AAPL", "10"), submit(a.account, "MSFT", "5")])
        await eventually(
            lambda: [w.tracker.position(s, "s1") for s in ("AAPL", "MSFT")] == [D(10), D(5)],
            timeout=10,
        )
        await w.wait_idle()
        a.book.config = replace(a.book.config, halted_symbols=frozenset({"MSFT"}))
        close_all = w.port.close_all

        async def acted_then_died() -> None:
            if published == "nothing":
                # The broker acts; its updates and answer reach no one.
                a.book.close_all(a.account, cancel_orders=True)
            else:
                await close_all()
                await eventually(
                    lambda: _caused_by(bus, f"broker.fill.{a.account}", flat.id), timeout=10
                )
            crashed.set()
            await asyncio.Event().wait()  # dead: nothing after this runs

        monkeypatch.setattr(w.port, "close_all", acted_then_died)
        await bus.publish(flat)
        await eventually(crashed.is_set, timeout=10)
    assert a.book.positions(a.account)[0].symbol == "MSFT"
    tracker = await rebuilt(bus, a.account)
    async with gateway(bus, venues[:1], trackers={a.account: tracker}) as gw:
        w = gw.workers[a.account]
        await eventually(lambda: w.tracker.flattened(flat.id), timeout=20)
        await w.wait_idle()
        placed = await eventually(
            lambda: _caused_by(bus, f"broker.close.{a.account}", flat.id), timeout=10
        )
        rejected = await eventually(
            lambda: _caused_by(bus, f"broker.reject.{a.account}", flat.id), timeout=10
        )
        fills = await eventually(
            lambda: _caused_by(bus, f"broker.fill.{a.account}", flat.id), timeout=10
        )
        assert (w.tracker.position("AAPL", "s1"), w.tracker.position("MSFT", "s1")) == (D(0), D(5))
        assert w.tracker.position("AAPL") == 0  # nothing booked to nobody
    assert a.book.close_alls == 1  # no second close-all
    [closing] = placed
    [order] = closing["payload"]["orders"]
    assert (order["symbol"], order["side"], order["quantity"]) == ("AAPL", "sell", "10")
    [fill] = fills
    assert fill["payload"]["order_id"] == order["order_id"]
    assert (fill["payload"]["strategy"], fill["payload"]["quantity"]) == ("s1", "10")
    [refusal] = rejected
    assert "MSFT position, which is still open" in refusal["payload"]["reason"]
    acks = [a for a in await stored(bus, f"broker.ack.{a.account}") if a["causation_id"]]
    assert [a["payload"]["order_id"] for a in acks].count(order["order_id"]) == 1


async def test_a_flatten_cut_by_a_crash_owns_its_working_closing_order_before_reconciliation(
    bus: Bus, venues: list[Venue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above (nothing published), but the closing order still works: the
    broker fills at most 4 a print, so its sell of s1's 8 AAPL filled 4 and rests
    with 4. Restarted, the gateway's reconnection reconciles before the
    flatten comes again, finds an open order it does not know and took it
    in as nobody's: its fill of 4 booked to no strategy, for good (the
    flatten, run after, claims the order and books only the later fills to
    s1). s1 stayed long 8 in its own books while the account was long 4.
    Now the reconciliation holds the order back until the flatten has run:
    every fill of it is s1's, each published once."""
    a = venues[0]
    a.book.config = replace(a.book.config, fill_model=FillModelConfig(max_fill_quantity=D(4)))
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    flat = flatten(a.account)
    crashed = asyncio.Event()
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await bus.publish(submit(a.account, "AAPL", "4"))
        await eventually(lambda: w.tracker.position("AAPL", "s1") == D(4), timeout=10)
        await bus.publish(submit(a.account, "AAPL", "4"))
        await eventually(lambda: w.tracker.position("AAPL", "s1") == D(8), timeout=10)
        await w.wait_idle()

        async def acted_then_died() -> None:
            a.book.close_all(a.account, cancel_orders=True)  # its news reaches no one
            crashed.set()
            await asyncio.Event().wait()  # dead: nothing after this runs

        monkeypatch.setattr(w.port, "close_all", acted_then_died)
        await bus.publish(flat)
        await eventually(crashed.is_set, timeout=10)
    [working] = a.book.orders(a.account, "open")
    assert (working.side, working.qty, working.filled_qty) == ("sell", D(8), D(4))
    tracker = await rebuilt(bus, a.account)
    async with gateway(bus, venues[:1], trackers={a.account: tracker}) as gw:
        w = gw.workers[a.account]
        flatten_once = w._flatten

        async def after_the_reconnection(command: FlattenAccount, delivery: int = 1) -> str:
            # The reconnection's reconciliation has gone through every order first.
            await eventually(lambda: w._reached_end, timeout=10)
            return await flatten_once(command, delivery)

        monkeypatch.setattr(w, "_flatten", after_the_reconnection)
        await eventually(lambda: w.tracker.flattened(flat.id), timeout=20)
        await w.wait_idle()
        assert a.server is not None
        a.server.market(MarketUpdate.trade("AAPL", D(101)))  # fills the last 4
        await eventually(lambda: w.tracker.net_positions() == {}, timeout=10)
        # Not s1 long 4 and nobody short 4.
        assert (w.tracker.position("AAPL", "s1"), w.tracker.position("AAPL")) == (D(0), D(0))
    assert a.book.close_alls == 1
    assert a.book.positions(a.account) == []
    fills = [
        f for f in await stored(bus, f"broker.fill.{a.account}") if f["payload"]["side"] == "sell"
    ]
    assert [(f["payload"]["strategy"], f["payload"]["quantity"]) for f in fills] == [
        ("s1", "4"),
        ("s1", "4"),
    ]
    assert all(f["causation_id"] == str(flat.id) for f in fills)


async def test_a_restart_holds_back_nothing_for_a_flatten_that_cannot_come_again(
    bus: Bus, venues: list[Venue], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two flattens are recorded without an outcome. One was given up (its
    close-all's answer never read, and the broker showed no closing order):
    it records nothing and is acknowledged, so JetStream never delivers it
    again. The other ran to its end (its ``ClosingOrdersPlaced`` is
    recorded) and the gateway died (kill -9) before its ack. Rebuilt from
    the store through the consumer's ack floor, the tracker counted the
    given-up one among the flattens a crash may have cut: at every start-up
    a market order placed by hand at the broker was held back, unknown to
    the strategies and the risk-gate, for four ack waits (and again at each
    restart while that flatten stayed in the store). Now it is not waited
    for, the order is taken in by the reconnection's reconciliation, and the
    flatten that ran, delivered again, is still a repeat: no second close-all."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    given_up, ran = flatten(a.account), flatten(a.account)
    died = asyncio.Event()
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await bus.publish(submit(a.account, "AAPL", "10"))
        await eventually(lambda: w.tracker.position("AAPL", "s1") == D(10), timeout=10)
        close_all = w.port.close_all

        async def unread() -> None:
            raise AnswerUnread("acct-a: no answer to close_all within 5s")

        monkeypatch.setattr(w.port, "close_all", unread)
        floor = (await bus.publish(given_up)).seq
        await eventually(lambda: ("FlattenAccount", 1) in gw.deliveries, timeout=10)
        await w.wait_idle()
        assert not w.tracker.flattened(given_up.id)  # given up: nothing recorded

        async def acked_never(msg: Msg) -> None:
            died.set()
            await asyncio.Event().wait()  # dead: its ack is never sent

        monkeypatch.setattr(w.port, "close_all", close_all)
        monkeypatch.setattr(w, "_ack_confirmed", acked_never)

        async def acked_to_floor() -> bool:
            info = await bus.js.consumer_info(STREAM, "broker-gateway-test")
            return info.ack_floor is not None and info.ack_floor.stream_seq >= floor

        await eventually(acked_to_floor, timeout=10)
        await bus.publish(ran)
        await eventually(died.is_set, timeout=10)
        await eventually(lambda: _caused_by(bus, f"broker.close.{a.account}", ran.id), timeout=10)
    assert (a.book.cancel_alls, a.book.close_alls) == (2, 1)
    assert a.book.positions(a.account) == []
    # While the gateway is down the trader buys 3 MSFT at the market by hand
    # (no price yet: it works).
    hand, _ = a.book.submit(a.account, OrderSpec(symbol="MSFT", side="buy", qty=D(3)))
    await record_stream(bus, database_url)
    settings = GatewaySettings(
        database_url=SecretStr(database_url), consumer="broker-gateway-test", rebuild_wait_s=0
    )
    last_seq = (await bus.js.stream_info(STREAM)).state.last_seq
    trackers = await _rebuilt(settings, bus, [a.account], last_seq, CLOCK, "broker-gateway/test")
    tracker = trackers[a.account]
    assert tracker.flattened(ran.id)
    assert tracker.unfinished_flattens() == []
    async with gateway(bus, venues[:1], trackers=trackers) as gw:
        w = gw.workers[a.account]
        assert not w._recoverable
        await eventually(lambda: w._reached_end, timeout=10)
        assert hand.id in w.tracker._by_broker  # taken in, not held back
        await eventually(lambda: ("FlattenAccount", 2) in gw.deliveries, timeout=10)
        await w.wait_idle()
        assert w.tracker.flattened(ran.id)
    assert gw.deliveries == [("FlattenAccount", 2)]  # the given-up one never comes again
    assert (a.book.cancel_alls, a.book.close_alls) == (2, 1)  # the repeat did nothing
    assert [o.id for o in a.book.orders(a.account, "open")] == [hand.id]


async def _caused_by(bus: Bus, subject: str, cause: uuid.UUID) -> list[dict[str, Any]] | None:
    """The events stored on ``subject`` caused by ``cause``; None if none."""
    return [e for e in await stored(bus, subject) if e["causation_id"] == str(cause)] or None
