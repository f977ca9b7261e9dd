"""What the gateway publishes from the broker's stream and checks, on the
command path of command_path (real NATS, consumer, worker and paper adapter,
a real paper broker server).

The stream's events are published in order, a position the fills do not
explain is said, and a day order the broker expires is published canceled.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from libs.bus.client import Bus
from libs.testing.wait import eventually
from services.broker_gateway.gateway import Timings
from services.paper_broker.domain.book import OrderSpec, day_order_expiry_ns
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import (
    CountingBook,
    D,
    SetClock,
    Venue,
    gateway,
    last_event,
    stored,
    submit,
)


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
