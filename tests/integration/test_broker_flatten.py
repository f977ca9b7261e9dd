"""The gateway's flattens end to end, on the command path of command_path
(real NATS, consumer, worker and paper adapter, a real paper broker server).

What a flatten says it left open and which closing orders it placed, how
long a flatten is remembered, and to which strategy its closing fill is
booked after a lost connection.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from libs.bus.client import Bus
from libs.testing.wait import eventually
from services.broker_gateway.gateway import CLOCK_SKEW_NS
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import D, Venue, flatten, gateway, last_event, stored, submit


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
