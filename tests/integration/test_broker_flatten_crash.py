"""A flatten cut by a crash (kill -9) of the gateway, on the command path of
command_path (real NATS, consumer, worker and paper adapter, a real paper
broker server).

Restarted with its tracker rebuilt from what was stored, the gateway finds
what the flatten's close-all did, publishes what is missing once, and holds
back nothing for a flatten that cannot come again.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from nats.aio.msg import Msg
from pydantic import SecretStr

from libs.bus.client import Bus
from libs.contract.events import FlattenAccount
from libs.contract.subjects import STREAM
from libs.testing.wait import eventually
from services.broker_gateway.config import GatewaySettings
from services.broker_gateway.errors import AnswerUnread
from services.broker_gateway.main import _rebuilt
from services.paper_broker.domain.book import OrderSpec
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.integration.command_path import (
    CLOCK,
    D,
    Venue,
    caused_by,
    flatten,
    gateway,
    rebuilt,
    stored,
    submit,
)
from tests.integration.recording import record_stream


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
                    lambda: caused_by(bus, f"broker.fill.{a.account}", flat.id), timeout=10
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
            lambda: caused_by(bus, f"broker.close.{a.account}", flat.id), timeout=10
        )
        rejected = await eventually(
            lambda: caused_by(bus, f"broker.reject.{a.account}", flat.id), timeout=10
        )
        fills = await eventually(
            lambda: caused_by(bus, f"broker.fill.{a.account}", flat.id), timeout=10
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
        await eventually(lambda: caused_by(bus, f"broker.close.{a.account}", ran.id), timeout=10)
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
