"""The gateway's command path for integration tests, wired as main.py wires
it: real NATS, the real command consumer, worker and paper adapter, and a
real paper broker server per account (:class:`Venue`, in this process, over
a real WebSocket), which a test can stop and start again on the same port.
Also the commands the tests send and readers of what the stream stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.js import api as js_api
from prometheus_client import REGISTRY
from pydantic import SecretStr

from libs.bus.client import Bus
from libs.contract import codec
from libs.contract.envelope import WallClock
from libs.contract.events import (
    AnyEvent,
    FlattenAccount,
    FlattenAccountPayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.contract.subjects import STREAM
from libs.local.servers import free_port
from libs.testing.wait import eventually
from services.broker_gateway.adapters.commands import (
    DEAD_LETTER_RETRY_S,
    CommandConsumer,
    DeadLetter,
)
from services.broker_gateway.adapters.history import ORDER_PATH_TYPES
from services.broker_gateway.adapters.paper.client import PaperBroker
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import TIMINGS, AccountWorker, Outbox, Timings
from services.paper_broker.adapters.journal import Journal
from services.paper_broker.adapters.server import Credentials, PaperBrokerServer
from services.paper_broker.domain.book import BookConfig, Canceling, Closing, PaperBook, TradeUpdate

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


async def last_event(bus: Bus, subject: str) -> dict[str, Any] | None:
    """The last event stored on ``subject``, decoded; None if there is none."""
    try:
        msg = await bus.js.get_last_msg(STREAM, subject)
    except nats.js.errors.NotFoundError:
        return None
    assert msg.data is not None
    event: dict[str, Any] = orjson.loads(msg.data)
    return event


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


class SetClock:
    def __init__(self) -> None:
        self.ns = time.time_ns()

    def now_ns(self) -> int:
        return self.ns


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


def flattens(account: str, outcome: str) -> float:
    """The account's flattens counted with ``outcome``, or its positions
    flattens left open (``outcome`` "refused")."""
    if outcome == "refused":
        value = REGISTRY.get_sample_value(
            "tradebus_broker_flatten_refused_positions_total", {"account": account}
        )
    else:
        value = REGISTRY.get_sample_value(
            "tradebus_broker_commands_total",
            {"account": account, "type": "FlattenAccount", "outcome": outcome},
        )
    return value or 0.0


async def restarted_without_prices(venue: Venue, journal: Path) -> None:
    """The paper broker restarts: its books replayed from its journal (the
    positions and orders; no price until the feed brings one)."""
    await venue.down()
    Journal(journal).compact(venue.book)
    venue.book = CountingBook()
    Journal(journal).replay(venue.book)
    await venue.up()


async def holding_without_prices(
    bus: Bus, worker: AccountWorker, venue: Venue, journal: Path
) -> None:
    """s1 comes to hold 10 AAPL through ``worker`` at ``venue``, whose
    paper broker then restarts (:func:`restarted_without_prices`) with no
    price of AAPL; the worker connected again and idle."""
    await bus.publish(submit(venue.account, "AAPL", "10"))
    await eventually(lambda: worker.tracker.position("AAPL", "s1") == D(10), timeout=10)
    await worker.wait_idle()
    await restarted_without_prices(venue, journal)
    assert venue.book.last_price("AAPL") is None
    assert await worker.port.wait_connected(timeout=10)  # again
    await worker.wait_idle()


async def caused_by(bus: Bus, subject: str, cause: uuid.UUID) -> list[dict[str, Any]] | None:
    """The events stored on ``subject`` caused by ``cause``; None if none."""
    return [e for e in await stored(bus, subject) if e["causation_id"] == str(cause)] or None
