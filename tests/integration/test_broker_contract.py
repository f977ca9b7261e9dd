"""The BrokerPort contract, one suite run against every broker adapter.

Each implementation comes with a harness: its adapter connected, through a
TCP proxy that can cut or freeze the network, to a venue that the harness can
move (set a symbol's price). The paper adapter runs against the real paper
broker server (in this process, over a real WebSocket). The Alpaca and
Tradier adapters will join with harnesses around their fake venues: add a
parameter to the ``harness`` fixture, and every test here runs for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import orjson
import pytest
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve

from libs.contract.envelope import WallClock
from libs.testing.wait import eventually
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.adapters.paper.client import PaperBroker
from services.broker_gateway.domain.model import (
    BrokerEvent,
    ConnectionUpdate,
    OrderRequest,
    OrderUpdate,
)
from services.broker_gateway.errors import (
    BrokerUnavailable,
    NotCancelable,
    OrderNotFound,
    OrderRefused,
)
from services.broker_gateway.ports import BrokerPort
from services.paper_broker.adapters.server import Credentials, PaperBrokerServer
from services.paper_broker.domain.book import BookConfig, PaperBook
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate

D = Decimal
HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_TIMEOUT_S = 0.3


class Proxy:
    """A TCP proxy in front of a venue: pass traffic, cut it, or freeze it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.refusing = False
        self.refused = 0  # connections turned away while refusing

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    def cut(self) -> None:
        """Drop every connection and refuse new ones (the venue is unreachable)."""
        self.refusing = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        """Stop forwarding without closing anything (the venue hangs)."""
        self._flowing.clear()

    def restore(self) -> None:
        self.refusing = False
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Events:
    """Everything the port's event stream yields, collected in the background."""

    def __init__(self, port: BrokerPort) -> None:
        self.items: list[BrokerEvent] = []
        self._task = asyncio.create_task(self._pump(port))

    async def _pump(self, port: BrokerPort) -> None:
        async for event in port.events():
            self.items.append(event)

    def states(self) -> list[str]:
        return [e.state for e in self.items if isinstance(e, ConnectionUpdate)]

    def updates(self, client_order_id: str) -> list[OrderUpdate]:
        return [
            e
            for e in self.items
            if isinstance(e, OrderUpdate) and e.order.client_order_id == client_order_id
        ]

    def kinds(self, client_order_id: str) -> list[str]:
        return [u.kind for u in self.updates(client_order_id)]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Harness:
    port: BrokerPort
    proxy: Proxy
    events: Events
    #: Moves the venue's market: the symbol trades at this price.
    set_price: Callable[[str, Decimal], Awaitable[None]]
    #: The venue fills at most this much of an order per market update.
    fill_size: Decimal
    #: A symbol the venue refuses to trade.
    untradable: str


@contextlib.asynccontextmanager
async def paper_harness(
    *, refusing: bool = False, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
) -> AsyncIterator[Harness]:
    """The paper adapter on a proxy to a real paper broker; with ``refusing``,
    started while the proxy turns connections away (a broker not up yet)."""
    counter = itertools.count(1)
    book = PaperBook(
        BookConfig(
            fill_model=FillModelConfig(max_fill_quantity=D(100)),
            untradable_symbols=frozenset({"HALT"}),
        ),
        clock=WallClock(),
        ids=lambda: f"po-{next(counter)}",
    )
    creds = [Credentials("key-a", SecretStr("secret-a"), "acct-a")]
    server = await PaperBrokerServer(book, creds).start()
    proxy = await Proxy(server.port).start()
    proxy.refusing = refusing
    port = PaperBroker(
        account="acct-a",
        url=f"ws://127.0.0.1:{proxy.port}/stream",
        key_id="key-a",
        secret_key=SecretStr("secret-a"),
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s=heartbeat_timeout_s,
        request_timeout_s=2.0,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
    )

    async def set_price(symbol: str, price: Decimal) -> None:
        server.market(MarketUpdate.trade(symbol, price))

    events = Events(port)
    await port.start()
    try:
        yield Harness(port, proxy, events, set_price, D(100), "HALT")
    finally:
        await port.close()
        await events.close()
        await proxy.close()
        await server.close()


@pytest.fixture(params=["paper"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harnesses = {"paper": paper_harness}
    async with harnesses[request.param]() as h:
        assert await h.port.wait_connected(timeout=10), "the adapter never connected"
        yield h


def cid() -> str:
    return str(uuid.uuid4())


def market(symbol: str, side: str, qty: str, client_order_id: str) -> OrderRequest:
    return OrderRequest(client_order_id, symbol, side, D(qty))  # type: ignore[arg-type]


async def test_connects_and_says_so(broker: Harness) -> None:
    assert broker.port.connected
    await eventually(lambda: broker.events.states() == ["connected"], timeout=5)


async def test_submit_fills_and_is_idempotent(broker: Harness) -> None:
    await broker.set_price("AAPL", D("190.5"))
    c = cid()
    first = await broker.port.submit(market("AAPL", "buy", "10", c))
    assert first.client_order_id == c
    assert first.symbol == "AAPL"
    await eventually(lambda: broker.events.kinds(c) == ["accepted", "fill"], timeout=5)
    fill = broker.events.updates(c)[1].fill
    assert fill is not None
    assert (fill.quantity, fill.cumulative_quantity, fill.leaves_quantity) == (D(10), D(10), D(0))
    assert fill.price == D("190.5")
    # The same client order id again: the same order, nothing new placed or filled.
    again = await broker.port.submit(market("AAPL", "buy", "10", c))
    assert again.broker_order_id == first.broker_order_id
    [pos] = await broker.port.positions()
    assert (pos.symbol, pos.quantity) == ("AAPL", D(10))
    got = await broker.port.get_order(client_order_id=c)
    assert got is not None
    assert (got.status, got.filled_quantity, got.filled_avg_price) == ("filled", D(10), D("190.5"))
    assert broker.events.kinds(c) == ["accepted", "fill"]


async def test_a_client_order_id_taken_by_another_order_is_refused(broker: Harness) -> None:
    """A venue that answers "duplicate" (Alpaca's 422, 40010001) to a repeated
    client order id: the same order again is the order it holds (above); a
    different one under that id is refused, and the first is untouched."""
    await broker.set_price("AAPL", D(20))
    c = cid()
    first = await broker.port.submit(market("AAPL", "buy", "3", c))
    with pytest.raises(OrderRefused) as e:
        await broker.port.submit(market("AAPL", "sell", "3", c))
    assert "already used" in e.value.reason
    got = await broker.port.get_order(client_order_id=c)
    assert got is not None
    assert (got.broker_order_id, got.side) == (first.broker_order_id, "buy")


async def test_large_order_fills_in_partial_fills(broker: Harness) -> None:
    await broker.set_price("MSFT", D(400))
    c = cid()
    qty = broker.fill_size * 2 + 5
    order = await broker.port.submit(market("MSFT", "sell", str(qty), c))
    for price in ("401", "402"):
        await broker.set_price("MSFT", D(price))
    await eventually(lambda: broker.events.kinds(c).count("fill") == 3, timeout=5)
    fills = [u.fill for u in broker.events.updates(c) if u.fill is not None]
    assert [f.cumulative_quantity for f in fills] == [broker.fill_size, broker.fill_size * 2, qty]
    assert [f.leaves_quantity for f in fills] == [qty - broker.fill_size, D(5), D(0)]
    listed = await broker.port.order_fills(order)
    if listed is not None:  # a venue that lists executions lists these
        assert [(f.quantity, f.price, f.cumulative_quantity) for f in listed] == [
            (f.quantity, f.price, f.cumulative_quantity) for f in fills
        ]


async def test_an_order_s_fills_are_its_own_among_many(broker: Harness) -> None:
    """A venue's fill list is the account's (Alpaca's has no order filter) and
    comes in pages: the order's fills are found among more than a page of
    other orders' fills, and nothing of the others is taken for its own."""
    await broker.set_price("TSLA", D(10))
    await broker.set_price("F", D(5))
    c = cid()
    qty = broker.fill_size * 2 + 5
    order = await broker.port.submit(market("TSLA", "buy", str(qty), c))
    others = [cid() for _ in range(120)]
    for other in others:
        await broker.port.submit(market("F", "buy", "1", other))
    for price in ("11", "12"):
        await broker.set_price("TSLA", D(price))
    await eventually(lambda: broker.events.kinds(c).count("fill") == 3, timeout=10)
    await eventually(lambda: broker.events.kinds(others[-1]) == ["accepted", "fill"], timeout=10)
    got = await broker.port.get_order(client_order_id=c)
    assert got is not None
    listed = await broker.port.order_fills(got)
    if listed is None:
        return  # a venue that cannot list executions
    assert [(f.client_order_id, f.symbol) for f in listed] == [(c, "TSLA")] * 3
    assert [(f.quantity, f.price, f.cumulative_quantity) for f in listed] == [
        (broker.fill_size, D(10), broker.fill_size),
        (broker.fill_size, D(11), broker.fill_size * 2),
        (D(5), D(12), qty),
    ]
    assert {f.broker_order_id for f in listed} == {order.broker_order_id}


async def test_refused_order_is_never_placed(broker: Harness) -> None:
    c = cid()
    with pytest.raises(OrderRefused) as e:
        await broker.port.submit(market(broker.untradable, "buy", "1", c))
    assert e.value.code
    assert e.value.reason
    assert await broker.port.get_order(client_order_id=c) is None


async def test_limit_order_rests_then_cancel(broker: Harness) -> None:
    await broker.set_price("NVDA", D(100))
    c = cid()
    request = OrderRequest(c, "NVDA", "buy", D(3), "limit", limit_price=D(90))
    order = await broker.port.submit(request)
    assert order.status == "accepted"
    assert [o.client_order_id for o in await broker.port.open_orders()] == [c]
    await broker.port.cancel(client_order_id=c)
    await eventually(lambda: broker.events.kinds(c) == ["accepted", "canceled"], timeout=5)
    assert await broker.port.open_orders() == []
    with pytest.raises(NotCancelable):
        await broker.port.cancel(broker_order_id=order.broker_order_id)
    with pytest.raises(OrderNotFound):
        await broker.port.cancel(client_order_id=cid())


async def test_every_open_order_is_listed_however_many(broker: Harness) -> None:
    """A venue lists a bounded number of orders per call (Alpaca: 50 unless
    asked, 500 at most, newest first): all of them still come back, each once,
    oldest first."""
    await broker.set_price("INTC", D(30))
    cids = [cid() for _ in range(520)]
    for c in cids:
        await broker.port.submit(OrderRequest(c, "INTC", "buy", D(1), "limit", limit_price=D(1)))
    listed = await broker.port.open_orders()
    assert [o.client_order_id for o in listed] == cids


async def test_orders_created_in_a_window_are_listed_ended_or_working(broker: Harness) -> None:
    """Every order the broker created in the window, filled, canceled or
    still working, oldest first; none from before it or after it."""
    await broker.set_price("NFLX", D(40))
    before = await broker.port.submit(market("NFLX", "buy", "1", cid()))
    after_ns = time.time_ns()
    await eventually(lambda: time.time_ns() > after_ns + 2_000_000, timeout=1)  # the clock moves
    filled = await broker.port.submit(market("NFLX", "buy", "2", cid()))
    resting = cid()
    await broker.port.submit(OrderRequest(resting, "NFLX", "buy", D(1), "limit", limit_price=D(1)))
    canceled = cid()
    await broker.port.submit(OrderRequest(canceled, "NFLX", "buy", D(1), "limit", limit_price=D(1)))
    await broker.port.cancel(client_order_id=canceled)
    until_ns = time.time_ns()
    await eventually(lambda: time.time_ns() > until_ns + 2_000_000, timeout=1)
    await broker.port.submit(market("NFLX", "buy", "3", cid()))
    listed = await broker.port.orders_created(after_ns, until_ns)
    assert [(o.client_order_id, o.status) for o in listed] == [
        (filled.client_order_id, "filled"),
        (resting, "accepted"),
        (canceled, "canceled"),
    ]
    assert before.client_order_id not in {o.client_order_id for o in listed}


async def test_cancel_all_then_close_all_flattens(broker: Harness) -> None:
    await broker.set_price("AAPL", D(10))
    await broker.set_price("SPY", D(20))
    await broker.port.submit(market("AAPL", "buy", "7", cid()))
    await broker.port.submit(market("SPY", "sell", "4", cid()))
    resting = cid()
    await broker.port.submit(OrderRequest(resting, "AAPL", "buy", D(1), "limit", limit_price=D(1)))
    canceled = await broker.port.cancel_all()
    assert [o.client_order_id for o in canceled.orders] == [resting]
    assert canceled.refused == ()
    closed = await broker.port.close_all()
    assert closed.refused == ()
    assert sorted((o.symbol, o.side, o.quantity) for o in closed.orders) == [
        ("AAPL", "sell", D(7)),
        ("SPY", "buy", D(4)),
    ]
    await eventually(lambda: _flat(broker.port), timeout=5)


async def test_close_all_cancels_the_orders_that_hold_the_shares(broker: Harness) -> None:
    """A position whose shares an open order holds (Alpaca refuses to close
    it, 403) is closed all the same: close-all cancels the open orders."""
    await broker.set_price("AMD", D(10))
    await broker.port.submit(market("AMD", "buy", "6", cid()))
    resting = cid()
    await broker.port.submit(OrderRequest(resting, "AMD", "sell", D(6), "limit", limit_price=D(99)))
    closed = await broker.port.close_all()
    assert closed.refused == ()
    assert [(o.symbol, o.side, o.quantity) for o in closed.orders] == [("AMD", "sell", D(6))]
    await eventually(lambda: broker.events.kinds(resting) == ["accepted", "canceled"], timeout=5)
    await eventually(lambda: _flat(broker.port), timeout=5)


async def _flat(port: BrokerPort) -> bool:
    return await port.positions() == []


async def test_unreachable_broker_is_reported_then_reconnected(broker: Harness) -> None:
    await broker.set_price("AAPL", D(50))
    c = cid()
    await broker.port.submit(market("AAPL", "buy", "2", c))
    broker.proxy.cut()
    await eventually(
        lambda: broker.events.states()[-2:] == ["disconnected", "reconnecting"], timeout=5
    )
    assert not broker.port.connected
    with pytest.raises(BrokerUnavailable):
        await broker.port.submit(market("AAPL", "buy", "1", cid()))
    broker.proxy.restore()
    assert await broker.port.wait_connected(timeout=5)
    await eventually(
        lambda: (
            broker.events.states() == ["connected", "disconnected", "reconnecting", "connected"]
        ),
        timeout=5,
    )
    # The venue kept the order; asking again finds it.
    got = await broker.port.get_order(client_order_id=c)
    assert got is not None
    assert got.filled_quantity == D(2)


async def test_hung_broker_is_detected_by_the_heartbeat(broker: Harness) -> None:
    broker.proxy.freeze()
    started = asyncio.get_running_loop().time()
    await eventually(lambda: "disconnected" in broker.events.states(), timeout=5)
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed <= HEARTBEAT_INTERVAL_S + HEARTBEAT_TIMEOUT_S + 0.5
    assert not broker.port.connected
    broker.proxy.restore()
    assert await broker.port.wait_connected(timeout=5)


async def test_a_reader_held_up_by_a_slow_consumer_is_no_lost_connection() -> None:
    """The gateway takes the adapter's events more slowly than the broker
    sends them (a stalled publish): the full event queue holds the reader
    up, the socket is no longer read, and the pongs wait in it behind the
    updates. That is our back-pressure, not a hung broker: the connection
    stays up and, once the events are taken, every update is there. It used
    to be declared lost ("no heartbeat answer") though the broker answered
    every ping: BrokerConnectionChanged(disconnected), the risk-gate's
    connection_lost breaker, and the updates still in the socket dropped."""
    counter = itertools.count(1)
    book = PaperBook(
        BookConfig(fill_model=FillModelConfig(max_fill_quantity=D(100))),
        clock=WallClock(),
        ids=lambda: f"po-{next(counter)}",
    )
    server = await PaperBrokerServer(
        book, [Credentials("key-a", SecretStr("secret-a"), "acct-a")]
    ).start()

    def adapter(max_events: int) -> PaperBroker:
        return PaperBroker(
            account="acct-a",
            url=f"ws://127.0.0.1:{server.port}/stream",
            key_id="key-a",
            secret_key=SecretStr("secret-a"),
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
            max_events=max_events,
        )

    slow, entry = adapter(max_events=4), adapter(max_events=10_000)
    others = Events(entry)
    for port in (slow, entry):
        await port.start()
        assert await port.wait_connected(timeout=5)
    try:
        server.market(MarketUpdate.trade("AAPL", D(10)))
        orders = [cid() for _ in range(30)]
        for c in orders:  # new and fill each: 60 frames for the slow reader
            await entry.submit(market("AAPL", "buy", "1", c))
        ws = slow._ws
        assert ws is not None
        # Three heartbeats due while it is held up.
        await eventually(lambda: not slow.connected or len(ws.pending_pings) >= 3, timeout=5)
        assert slow.connected, slow.state
        events = Events(slow)
        try:
            await eventually(
                lambda: all(events.kinds(c)[-1:] == ["fill"] for c in orders), timeout=5
            )
            assert events.states() == ["connected"]
            await eventually(lambda: not ws.pending_pings, timeout=5)  # all answered
            assert slow.connected
        finally:
            await events.close()
    finally:
        for port in (slow, entry):
            await port.close()
        await others.close()
        await server.close()


async def test_a_broker_coming_up_after_the_adapter_is_no_outage() -> None:
    """As under ``tradebus up``, where the gateway may start before the paper
    broker listens: refused first connections within the grace are retried
    quietly, so the risk-gate is not told of a lost connection (which would
    halt the account until an operator resumed it)."""
    async with paper_harness(refusing=True, heartbeat_timeout_s=10.0) as h:
        await eventually(lambda: h.proxy.refused >= 2, timeout=5)
        h.proxy.restore()
        assert await h.port.wait_connected(timeout=5)
        await eventually(lambda: h.events.states() == ["connected"], timeout=5)


async def test_a_broker_out_of_reach_past_the_grace_is_an_outage() -> None:
    grace_s = 0.5
    async with paper_harness(refusing=True, heartbeat_timeout_s=grace_s) as h:
        started = asyncio.get_running_loop().time()
        await eventually(lambda: h.events.states() == ["disconnected", "reconnecting"], timeout=5)
        elapsed = asyncio.get_running_loop().time() - started
        assert grace_s <= elapsed <= grace_s + 1.0, elapsed
        assert h.proxy.refused >= 2
        h.proxy.restore()
        assert await h.port.wait_connected(timeout=5)
        await eventually(
            lambda: h.events.states() == ["disconnected", "reconnecting", "connected"], timeout=5
        )


async def test_a_broker_that_drops_each_connection_at_once_is_reconnected_with_backoff() -> None:
    """A paper broker that authorizes, says ``listening`` and closes at once
    (1013, "try again later"), every time. The backoff used to be reset by
    each handshake and not waited after a connection lost, so the adapter
    reconnected as fast as the socket allowed: about a thousand connections,
    and three ConnectionUpdates each, a second."""
    opened: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        opened.append(time.monotonic())
        await ws.recv()
        await ws.send(orjson.dumps({"stream": "authorization", "data": {"status": "authorized"}}))
        await ws.recv()
        listening = {"stream": "listening", "data": {"streams": ["trade_updates"]}}
        await ws.send(orjson.dumps(listening))
        await ws.close(1013, "try again later")

    initial_s = 0.1
    async with serve(handler, "127.0.0.1", 0) as server:
        port = PaperBroker(
            account="acct-a",
            url=f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/stream",
            key_id="key-a",
            secret_key=SecretStr("secret-a"),
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
            reconnect_initial_s=initial_s,
            reconnect_max_s=1.0,
        )
        await port.start()
        try:
            await eventually(lambda: len(opened) >= 4, timeout=5)
        finally:
            await port.close()
    gaps = [b - a for a, b in itertools.pairwise(opened[:4])]
    # Jittered between half and all of 0.1, 0.2, 0.4 s.
    assert all(gap >= initial_s / 2 * 2**i for i, gap in enumerate(gaps)), gaps


def test_paper_wire_format_parses_alpaca_shapes() -> None:
    """Recorded-style payloads: numbers as strings or JSON numbers, extra fields ignored."""
    raw = {
        "event": "partial_fill",
        "execution_id": "e-1",
        "timestamp": "2026-01-05T14:30:00.123456Z",
        "price": 101.25,
        "qty": "40",
        "position_qty": "40",
        "extra": "ignored",
        "order": {
            "id": "o-1",
            "client_order_id": "c-1",
            "symbol": "AAPL",
            "side": "buy",
            "qty": "100",
            "filled_qty": "40",
            "filled_avg_price": "101.25",
            "type": "limit",
            "limit_price": "101.30",
            "status": "partially_filled",
            "updated_at": "2026-01-05T14:30:00.123456Z",
            "legs": None,
        },
    }
    update = parse.trade_update(schemas.TradeUpdate.model_validate(raw))
    assert update is not None
    assert update.kind == "fill"
    assert update.fill is not None
    assert update.fill.price == D("101.25")
    assert (update.fill.cumulative_quantity, update.fill.leaves_quantity) == (D(40), D(60))
    assert update.ts_ns == 1767623400123456000
    assert update.order.status == "partially_filled"
    pending = {**raw, "event": "pending_new", "order": {**raw["order"], "status": "pending_new"}}  # type: ignore[dict-item]
    assert parse.trade_update(schemas.TradeUpdate.model_validate(pending)) is None
    short = schemas.Position.model_validate(
        {"symbol": "X", "qty": "5", "side": "short", "avg_entry_price": "3"}
    )
    assert parse.position(short).quantity == D(-5)
