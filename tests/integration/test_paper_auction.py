"""Opening and closing auction orders (``opg`` / ``cls``) through the gateway
and the paper broker: real NATS, the gateway's command path and paper
adapter, and the paper broker's server over a real WebSocket.

The paper broker refused both until now (422), so a strategy in shadow mode
trading at the open or the close was refused on its paper account. Its
acceptance (``new``), its fill at the auction and its expiry come over the
same ``trade_updates`` stream as any order's, and the gateway publishes them
as it does any order's, unchanged.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from libs.bus.client import Bus
from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TimeInForce,
)
from libs.contract.options import EXCHANGE_TZ
from libs.testing.wait import eventually
from services.broker_gateway import metrics
from services.paper_broker.domain.auction import session_for
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import (
    CLOCK,
    CountingBook,
    SetClock,
    Venue,
    flatten,
    gateway,
    last_event,
)

D = Decimal


class AuctionBook(CountingBook):
    """A paper book on a clock of the test's."""

    def __init__(self, clock: SetClock) -> None:
        super().__init__()
        self.clock = clock


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    v = Venue(f"acct-auction-{uuid.uuid4().hex[:6]}")
    await v.up()
    try:
        yield v
    finally:
        await v.down()


def order(account: str, tif: TimeInForce, limit: str | None = None) -> SubmitOrder:
    signal = SignalGenerated.create(
        SignalPayload(strategy="s1", symbol="AAPL", name="x", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy="s1",
            account=account,
            symbol="AAPL",
            side="buy",
            quantity=D(3),
            order_type="market" if limit is None else "limit",
            limit_price=None if limit is None else D(limit),
            time_in_force=tif,
        ),
        source="test/risk-gate",
        clock=CLOCK,
        cause=signal,
    )


async def event_of(bus: Bus, subject: str, command: SubmitOrder) -> dict[str, Any] | None:
    event = await last_event(bus, subject)
    if event is None or event["payload"]["order_id"] != str(command.payload.order_id):
        return None
    return event


async def test_auction_orders_are_accepted_filled_and_expired_over_the_order_stream(
    bus: Bus, venue: Venue
) -> None:
    """A market-on-open buy and a limit-on-close buy, placed at 08:00 New
    York: both acknowledged (the broker's ``new``), neither filled at once;
    the first trade at the open fills the first whole at its price
    (``FillReceived``); the close, its limit not reached, expires the
    second (``OrderCanceled``, reason ``expired``)."""
    a = venue
    placed = dt.datetime.combine(dt.datetime.now(EXCHANGE_TZ).date(), dt.time(8, 0), EXCHANGE_TZ)
    clock = SetClock()
    clock.ns = int(placed.timestamp()) * 1_000_000_000
    session = session_for(clock.ns, "opg")
    assert session is not None
    book = a.book = AuctionBook(clock)
    await a.down()
    await a.up()
    async with gateway(bus, [a]) as gw:
        assert await gw.workers[a.account].port.wait_connected(timeout=10)
        moo, loc = order(a.account, "opg"), order(a.account, "cls", limit="50")
        acks = f"broker.ack.{a.account}"
        await bus.publish(moo)
        await eventually(lambda: event_of(bus, acks, moo), timeout=10)
        await bus.publish(loc)
        await eventually(lambda: event_of(bus, acks, loc), timeout=10)
        assert [(o.time_in_force, o.status, o.filled_qty) for o in book.orders(a.account)] == [
            ("opg", "new", D(0)),
            ("cls", "new", D(0)),
        ]
        assert a.server is not None
        clock.ns = session.open_ns + 1_000_000_000
        a.server.market(MarketUpdate.trade("AAPL", D("101.25"), session.open_ns + 500_000_000))
        fill = await eventually(lambda: event_of(bus, f"broker.fill.{a.account}", moo), timeout=10)
        assert fill["payload"]["price"] == "101.25"
        assert fill["payload"]["quantity"] == "3"
        assert fill["payload"]["status"] == "complete"
        clock.ns = session.close_ns + 1_000_000_000
        a.server.market(MarketUpdate.trade("AAPL", D("102"), session.close_ns + 500_000_000))
        canceled = await eventually(
            lambda: event_of(bus, f"broker.cancel.{a.account}", loc), timeout=10
        )
    assert "expired" in canceled["payload"]["reason"]
    assert book.orders(a.account) == []
    assert [(p.symbol, p.qty) for p in book.positions(a.account)] == [("AAPL", D(3))]


async def test_an_opg_orders_cancel_from_0928_is_refused_and_it_fills_at_the_open(
    bus: Bus, venue: Venue
) -> None:
    """As at Alpaca, the paper broker refuses to cancel an opg order from
    09:28 New York until the open (422); the gateway takes the refusal as it
    takes any refused cancel (``NotCancelable``: the command's outcome
    ``not_cancelable``, no event), and the order fills at the open."""
    a = venue
    placed = dt.datetime.combine(dt.datetime.now(EXCHANGE_TZ).date(), dt.time(8, 0), EXCHANGE_TZ)
    clock = SetClock()
    clock.ns = int(placed.timestamp()) * 1_000_000_000
    session = session_for(clock.ns, "opg")
    assert session is not None
    book = a.book = AuctionBook(clock)
    await a.down()
    await a.up()
    refused = metrics.COMMANDS.labels(
        account=a.account, type="CancelOrder", outcome="not_cancelable"
    )
    before = refused._value.get()
    async with gateway(bus, [a]) as gw:
        assert await gw.workers[a.account].port.wait_connected(timeout=10)
        moo = order(a.account, "opg")
        await bus.publish(moo)
        await eventually(lambda: event_of(bus, f"broker.ack.{a.account}", moo), timeout=10)
        clock.ns = session.open_ns - 60_000_000_000  # 09:29
        await bus.publish(
            CancelOrder.create(
                CancelOrderPayload(
                    order_id=moo.payload.order_id, account=a.account, reason="strategy"
                ),
                source="test/risk-gate",
                clock=CLOCK,
            )
        )
        await eventually(lambda: refused._value.get() == before + 1, timeout=10)
        assert [(o.time_in_force, o.status) for o in book.orders(a.account)] == [("opg", "new")]
        assert a.server is not None
        clock.ns = session.open_ns + 1_000_000_000
        a.server.market(MarketUpdate.trade("AAPL", D("101.25"), session.open_ns + 500_000_000))
        fill = await eventually(lambda: event_of(bus, f"broker.fill.{a.account}", moo), timeout=10)
    assert fill["payload"]["status"] == "complete"
    assert await event_of(bus, f"broker.cancel.{a.account}", moo) is None


async def test_a_flatten_at_0929_that_cannot_cancel_an_opg_order_says_so_and_books_its_fill(
    bus: Bus, venue: Venue
) -> None:
    """A market-on-open buy of 3 is working when a flatten comes at 09:29:
    the broker's cancel-all leaves it working (its entry 500, as Alpaca's
    for an opg order locked from 09:28 until the open), and the close-all
    has no position to close. The flatten does not pass for done: an
    ``OrderRejected`` caused by it names the order still working, and its
    outcome is ``incomplete``. The order stays working in the tracker, and
    its fill at the open is published: the account holds 3, as the broker
    does, and nothing said it was flat. Before, the flatten said
    ``flattened`` with the order still working, only a warning in the log."""
    a = venue
    placed = dt.datetime.combine(dt.datetime.now(EXCHANGE_TZ).date(), dt.time(8, 0), EXCHANGE_TZ)
    clock = SetClock()
    clock.ns = int(placed.timestamp()) * 1_000_000_000
    session = session_for(clock.ns, "opg")
    assert session is not None
    book = a.book = AuctionBook(clock)
    await a.down()
    await a.up()
    outcomes = {
        outcome: metrics.COMMANDS.labels(account=a.account, type="FlattenAccount", outcome=outcome)
        for outcome in ("incomplete", "flattened")
    }
    before = {outcome: c._value.get() for outcome, c in outcomes.items()}
    async with gateway(bus, [a]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        moo = order(a.account, "opg")
        await bus.publish(moo)
        await eventually(lambda: event_of(bus, f"broker.ack.{a.account}", moo), timeout=10)
        clock.ns = session.open_ns - 60_000_000_000  # 09:29
        flat = flatten(a.account)
        await bus.publish(flat)

        def ran() -> dict[str, float]:
            counted = {o: c._value.get() - before[o] for o, c in outcomes.items()}
            return {o: n for o, n in counted.items() if n}

        assert await eventually(ran, timeout=10) == {"incomplete": 1}
        rejected = await last_event(bus, f"broker.reject.{a.account}")
        assert rejected is not None
        assert rejected["causation_id"] == str(flat.id)
        assert rejected["payload"]["order_id"] != str(moo.payload.order_id)
        assert "still working" in rejected["payload"]["reason"]
        [held] = book.orders(a.account)
        assert held.id in rejected["payload"]["reason"]
        tracked = w.tracker.get(moo.payload.order_id)
        assert tracked is not None
        assert tracked.terminal is None, "still working"
        assert a.server is not None
        clock.ns = session.open_ns + 1_000_000_000
        a.server.market(MarketUpdate.trade("AAPL", D("101.25"), session.open_ns + 500_000_000))
        fill = await eventually(lambda: event_of(bus, f"broker.fill.{a.account}", moo), timeout=10)
        assert fill["payload"]["status"] == "complete"
        assert await event_of(bus, f"broker.cancel.{a.account}", moo) is None
        assert w.tracker.net_positions() == {"AAPL": D(3)}
    assert [(p.symbol, p.qty) for p in book.positions(a.account)] == [("AAPL", D(3))]
