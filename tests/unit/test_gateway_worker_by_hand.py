"""The gateway's AccountWorker without servers: orders placed by hand at
the broker while a flatten runs (or may be recovering) are nobody's, not the
flatten's closing orders. The broker is a stand-in; the clock is the
test's."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from nats.aio.msg import Msg

from libs.testing.wait import eventually
from services.broker_gateway.domain.model import BrokerOrder, CanceledAll
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import Held
from tests.unit.gateway_doubles import (
    CLOCK,
    Delivery,
    broker,
    filled_position,
    outbox_into,
    said_fills,
    submit,
    worker,
)


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
