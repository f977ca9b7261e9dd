"""The paper broker's price feed (NatsPriceFeed) on real NATS: every price
applied in order, none applied again after a reconnection, what was stored
before it started taken as history, not as trades."""

from __future__ import annotations

import asyncio
import uuid

from libs.bus.client import Bus
from libs.contract.envelope import WallClock
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from services.paper_broker.adapters.market import NatsPriceFeed
from tests.integration.broker_gateway_stack import CLOCK, D, trade


def price_feed(nats_url: str, subjects: list[str], linger_s: float = 0.0) -> NatsPriceFeed:
    """The paper broker's price feed on the test's NATS (no user: no permissions)."""
    return NatsPriceFeed(
        url=nats_url,
        name="test-paper-feed",
        user=None,
        password=None,
        subjects=subjects,
        consumer="paper-feed-test",
        linger_s=linger_s,
    )


async def test_paper_price_feed_with_a_linger_applies_every_price_in_order(
    bus: Bus, nats_url: str
) -> None:
    """The paper broker takes prices in lingering pulls: the last price of
    each symbol from before it started, then every later print in stream
    order (a resting limit order needs every one), none lost between pulls."""
    from services.paper_broker.domain.fill_model import MarketUpdate

    await bus.publish_many([trade("AAPL", "99"), trade("AAPL", "100"), trade("MSFT", "50")])
    updates: list[MarketUpdate] = []
    stop = asyncio.Event()
    feed = price_feed(nats_url, ["md.trade.>"], linger_s=0.05)
    running = asyncio.create_task(feed.run(updates.append, stop))
    try:

        async def started() -> bool:
            return len(updates) >= 2

        await eventually(started, timeout=10, message="the last price of each symbol")
        assert sorted((u.symbol, str(u.last)) for u in updates) == [
            ("AAPL", "100"),
            ("MSFT", "50"),
        ]
        prices = [f"{100 + k / 100:.2f}" for k in range(1, 301)]
        for chunk in range(0, 300, 50):  # in bursts, while pulls linger
            await bus.publish_many([trade("AAPL", p) for p in prices[chunk : chunk + 50]])

        async def all_in() -> bool:
            return len(updates) >= 302

        await eventually(all_in, timeout=10, message="every later print")
        assert [str(u.last) for u in updates[2:]] == prices
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)


async def test_paper_price_feed_does_not_apply_a_price_again_after_a_reconnection(
    bus: Bus, nats_url: str
) -> None:
    """Each (re)connection starts with the last message of each subject; what
    the broker has taken in already is skipped, so an order placed after a
    price is not filled by it. A stream made anew starts the count over."""
    from libs.contract.subjects import STREAM
    from services.paper_broker.domain.fill_model import MarketUpdate

    await bus.publish_many([trade("AAPL", "99"), trade("AAPL", "100"), trade("MSFT", "50")])
    updates: list[MarketUpdate] = []
    feed = price_feed(nats_url, ["md.trade.>", "md.bar.>"])

    async def connected_until(n: int) -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(feed.run(updates.append, stop))
        try:
            await eventually(lambda: feed.connected, timeout=10)
            published = trade("AAPL", str(n))
            await bus.publish(published)
            await eventually(lambda: updates and updates[-1].last == D(n), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=10)

    await connected_until(101)
    await connected_until(102)  # a reconnection: AAPL 101 and MSFT 50 come again
    assert [(u.symbol, str(u.last)) for u in updates] == [
        ("AAPL", "100"),
        ("MSFT", "50"),
        ("AAPL", "101"),
        ("AAPL", "102"),
    ]
    await delete_stream(bus.js, STREAM)
    await bus.ensure_stream()
    await bus.publish(trade("MSFT", "40"))
    await connected_until(103)
    assert [(u.symbol, str(u.last)) for u in updates[4:]] == [("MSFT", "40"), ("AAPL", "103")]


async def test_paper_price_feed_takes_prices_stored_before_it_as_history_not_trades(
    bus: Bus, nats_url: str
) -> None:
    """A paper broker (re)started with resting orders: the last price of each
    symbol, stored while it was away, sets its last price but fills no limit
    (it may predate the order; the broker was not there to trade on it); a
    market order waiting for a price fills at it. What comes after the feed
    connected trades as before. A resting buy limit at 96 with a stored print
    at 95 stays open; a live print at 95 fills it."""
    from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook, TradeUpdate

    book = PaperBook(BookConfig(), clock=WallClock(), ids=lambda: str(uuid.uuid4()))
    book.set_last("AAPL", D(100), ts_ns=CLOCK.now_ns())
    order, _ = book.submit(
        "acct",
        OrderSpec(
            symbol="AAPL",
            side="buy",
            qty=D(10),
            order_type="limit",
            limit_price=D(96),
            client_order_id="resting",
        ),
    )
    waiting, _ = book.submit("acct", OrderSpec(symbol="MSFT", side="sell", qty=D(5)))
    assert waiting.is_open  # no MSFT price yet
    fills: list[TradeUpdate] = []
    await bus.publish_many([trade("AAPL", "95"), trade("MSFT", "50")])
    feed = price_feed(nats_url, ["md.trade.>"])
    stop = asyncio.Event()
    running = asyncio.create_task(
        feed.run(
            lambda u: fills.extend(book.on_market(u)),
            stop,
            on_price=lambda u: fills.extend(book.set_last(u.symbol, u.last, ts_ns=u.ts_ns)),
        )
    )
    try:
        await eventually(lambda: book.last_price("MSFT") == D(50), timeout=10)
        assert book.last_price("AAPL") == D(95)
        assert [(f.order.symbol, f.price) for f in fills] == [("MSFT", D(50))]
        current = book.order("acct", order.id)
        assert current is not None
        assert current.is_open
        await bus.publish(trade("AAPL", "95"))
        await eventually(lambda: len(fills) == 2, timeout=10)
        assert (fills[1].order.symbol, fills[1].price) == ("AAPL", D(95))
        current = book.order("acct", order.id)
        assert current is not None
        assert not current.is_open
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)


async def test_every_price_stored_before_the_feed_is_history_however_many_subjects(
    bus: Bus, nats_url: str
) -> None:
    """A symbol stores its last price on several subjects (a bar and a trade):
    the feed starts with one stored message per subject. Only the first was
    taken as history; the second was traded on as a live print, and filled a
    resting limit at a price the broker was not there for."""
    from libs.contract.events import BarClosed, BarPayload
    from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook, TradeUpdate

    book = PaperBook(BookConfig(), clock=WallClock(), ids=lambda: str(uuid.uuid4()))
    book.set_last("AAPL", D(100), ts_ns=CLOCK.now_ns())
    order, _ = book.submit(
        "acct",
        OrderSpec(symbol="AAPL", side="buy", qty=D(10), order_type="limit", limit_price=D(96)),
    )
    bar = BarClosed.create(
        BarPayload(
            symbol="AAPL",
            interval="1m",
            **dict.fromkeys(("open", "high", "low", "close"), D(99)),
            volume=D(100),
            start_ns=0,
            end_ns=60_000_000_000,
            feed="synthetic",
        ),
        source="test/marketdata",
        clock=CLOCK,
    )
    await bus.publish_many([bar, trade("AAPL", "95")])  # both stored before the feed
    fills: list[TradeUpdate] = []
    feed = price_feed(nats_url, ["md.trade.>", "md.bar.>"])
    stop = asyncio.Event()
    running = asyncio.create_task(
        feed.run(
            lambda u: fills.extend(book.on_market(u)),
            stop,
            on_price=lambda u: fills.extend(book.set_last(u.symbol, u.last, ts_ns=u.ts_ns)),
        )
    )
    try:
        await eventually(lambda: book.last_price("AAPL") == D(95), timeout=10)
        current = book.order("acct", order.id)
        assert current is not None
        assert current.is_open, fills
        assert fills == []
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
