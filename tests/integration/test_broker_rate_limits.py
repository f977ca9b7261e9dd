"""The gateway against a broker that rate-limits it (429), on the command
path of command_path (real NATS, consumer, worker and paper adapter, a real
paper broker server).

A refused call is retried after the broker's Retry-After or a backoff; a
reconciliation goes on from where it was, is given up and tried again, and
does not hold up the stream's fills.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from prometheus_client import REGISTRY

from libs.bus.client import Bus
from libs.testing.wait import eventually
from services.broker_gateway.gateway import RECONCILE_ATTEMPTS, RETRY_INITIAL_S, Timings
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import (
    CountingBook,
    D,
    Venue,
    gateway,
    last_event,
    stored,
    submit,
)


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
