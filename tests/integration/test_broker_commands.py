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

import contextlib
import uuid

import pytest
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.events import CancelOrder, CancelOrderPayload, TradePayload, TradePrinted
from libs.contract.subjects import STREAM
from libs.testing.wait import eventually
from services.broker_gateway.adapters.commands import MAX_ACK_PENDING, CommandConsumer
from services.broker_gateway.gateway import Timings
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import (
    ACK_WAIT_S,
    CLOCK,
    D,
    Venue,
    flatten,
    gateway,
    last_event,
    submit,
)

#: A command handed back for lack of room stays away for the ack wait
#: (ACK_WAIT_S), not the service's NAK_DELAY_S (2 s).
SHORT_NAK = Timings(nak_delay_s=0.2)


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
    # Handed back for lack of room for the ack wait (1 s), not the service's 2 s.
    async with gateway(bus, venues, max_held=2, timings=SHORT_NAK) as gw:
        wa = gw.workers[a.account]
        assert wa.defer_s == ACK_WAIT_S
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
    # Handed back for the ack wait (1 s), not the service's 2 s: the one
    # that never returns is given up on after 4 s instead of 8.
    async with gateway(bus, venues, max_held=2, timings=SHORT_NAK) as gw:
        wa = gw.workers[a.account]
        assert wa.defer_s == ACK_WAIT_S
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
