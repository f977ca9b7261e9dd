"""The Polygon options feed beside the stocks feed: option quotes made marks of
(throttled, too wide, held until due), standing quotes re-marked until their
feed drops."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from libs.bus.client import Bus
from libs.contract.envelope import Event
from libs.contract.events import FeedStatusChanged, MarkUpdated, QuoteUpdated
from libs.contract.subjects import subject_for
from libs.testing.fakes.polygon_data import quote
from libs.testing.fakes.polygon_ws import FakePolygonWs
from libs.testing.wait import eventually
from services.marketdata import metrics
from services.marketdata.adapters.polygon.client import PolygonSource
from services.marketdata.domain.marks import OptionMarks
from services.marketdata.domain.staleness import AlwaysOpen
from services.marketdata.main import run_source
from services.marketdata.sink import JetStreamSink
from tests.integration.polygon_feed import KEY, MS, T0, FakeClock, make_settings, stream_events

OPTION = "O:SPY241220P00720000"


async def test_option_quotes_make_marks_and_a_held_quote_is_marked_when_due(bus: Bus) -> None:
    """The Polygon options feed beside the stocks feed, through the service's
    own run_source and a sink making marks with the default throttle (1 s,
    0.1 %): the option's first quote is a mark at once; a one-sided and a
    crossed quote make none; two quotes within the second are held back, and
    the newer one is marked once the service's clock passes the second, with
    no further quote. The equity's quote makes no mark."""
    async with (
        FakePolygonWs(api_key=KEY) as stocks,
        FakePolygonWs(api_key=KEY, market="options") as options,
    ):
        settings = make_settings(
            stocks,
            None,
            symbols=f"AAPL,{OPTION}",
            channels="quotes",
            polygon_options_ws_url=options.url,
        )
        clock = FakeClock(T0)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        sink = JetStreamSink(bus, marks=OptionMarks(settings.mark_policy()))
        stop = asyncio.Event()
        task = asyncio.create_task(run_source(source, sink, stop, clock, flush_every_s=0.02))
        try:
            await stocks.wait_subscribed("Q.AAPL")
            await options.wait_subscribed(f"Q.{OPTION}")
            await options.publish([quote(OPTION, 1, T0 + 1, "9.71", "9.81")])
            await stocks.publish([quote("AAPL", 1, T0 + 2, "190.15", "190.17")])
            await options.publish(
                [
                    quote(OPTION, 2, T0 + 200, "0", "9.81"),  # no bid
                    quote(OPTION, 3, T0 + 300, "9.90", "9.80"),  # crossed
                    quote(OPTION, 4, T0 + 400, "9.91", "10.01"),  # held
                    quote(OPTION, 5, T0 + 500, "9.95", "10.05"),  # held, replacing it
                ]
            )

            async def data() -> list[Event]:
                return [
                    e for e in await stream_events(bus) if isinstance(e, QuoteUpdated | MarkUpdated)
                ]

            before = await eventually(lambda: _count(data, 7), timeout=10)
            assert [e.type for e in before].count("MarkUpdated") == 1
            clock.set_ms(T0 + 1_001)  # a second after the first mark: the held one is due
            after = await eventually(lambda: _count(data, 8), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)

    marks = [e for e in after if isinstance(e, MarkUpdated)]
    quotes = {e.id: e for e in after if isinstance(e, QuoteUpdated)}
    assert [(m.payload.price, m.ts_event) for m in marks] == [
        (Decimal("9.76"), (T0 + 1) * MS),
        (Decimal("10.00"), (T0 + 500) * MS),
    ]
    assert {subject_for(m) for m in marks} == {f"md.mark.{OPTION}"}
    for m in marks:
        assert m.causation_id is not None
        q = quotes[m.causation_id]
        assert after.index(q) < after.index(m), "each mark after its quote"
        assert q.payload.symbol == OPTION
    assert marks[1].ts_init == (T0 + 1_001) * MS, "made when it fell due"
    skipped = {
        reason: metrics.MARKS_SKIPPED.labels(reason=reason)._value.get()
        for reason in ("one_sided", "crossed", "throttled")
    }
    assert all(n >= 1 for n in skipped.values()), skipped


#: A nickel class's contract (SPY's trade in pennies at every price: 0.05 x 0.10 is five of them).
CHEAP = "O:AAPL241220P00100000"


async def test_a_cheap_option_quoted_a_tick_or_two_wide_is_marked(bus: Bus) -> None:
    """A far out-of-the-money contract quoted 0.05 x 0.10 (a spread of 67 % of
    its midpoint, but one tick) is marked at 0.075 on md.mark.<contract>, from
    the settings' defaults; three ticks wide (0.05 x 0.20) is still too wide,
    and two (0.10 x 0.20) is marked again."""
    async with FakePolygonWs(api_key=KEY, market="options") as options:
        settings = make_settings(
            options, None, symbols=CHEAP, channels="quotes", polygon_options_ws_url=options.url
        )
        clock = FakeClock(T0)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        sink = JetStreamSink(bus, marks=OptionMarks(settings.mark_policy()))
        wide = metrics.MARKS_SKIPPED.labels(reason="wide_spread")._value.get()
        stop = asyncio.Event()
        task = asyncio.create_task(run_source(source, sink, stop, clock, flush_every_s=0.02))

        async def data() -> list[Event]:
            return [
                e for e in await stream_events(bus) if isinstance(e, QuoteUpdated | MarkUpdated)
            ]

        try:
            await options.wait_subscribed(f"Q.{CHEAP}")
            await options.publish(
                [
                    quote(CHEAP, 1, T0 + 1, "0.05", "0.10"),  # one tick: a mark at once
                    quote(CHEAP, 2, T0 + 2_001, "0.05", "0.20"),  # three: wide
                    quote(CHEAP, 3, T0 + 4_001, "0.10", "0.20"),  # two: a mark
                ]
            )
            events = await eventually(lambda: _count(data, 5), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)

    marks = [e for e in events if isinstance(e, MarkUpdated)]
    assert [(m.payload.price, m.payload.bid_price, m.payload.ask_price) for m in marks] == [
        (Decimal("0.075"), Decimal("0.05"), Decimal("0.10")),
        (Decimal("0.15"), Decimal("0.10"), Decimal("0.20")),
    ]
    assert [m.ts_event for m in marks] == [(T0 + 1) * MS, (T0 + 4_001) * MS]
    assert {subject_for(m) for m in marks} == {f"md.mark.{CHEAP}"}
    assert metrics.MARKS_SKIPPED.labels(reason="wide_spread")._value.get() - wide == 1


class LookingSink(JetStreamSink):
    """The service's sink, noting the times it was asked for due marks at."""

    def __init__(self, bus: Bus, marks: OptionMarks) -> None:
        super().__init__(bus, marks=marks)
        self.looks: list[int] = []

    async def publish_due(self, now_ns: int, *, final: bool = False) -> int:
        made = await super().publish_due(now_ns, final=final)
        self.looks.append(now_ns)
        return made

    def looked_at(self, ms: int) -> bool:
        return any(t >= ms * MS for t in self.looks)


async def test_a_standing_option_quote_is_re_marked_until_the_feed_drops(bus: Bus) -> None:
    """Polygon sends no quote while the quote stands: the service re-marks it
    every TRADEBUS_MARK_REFRESH_S (30 s) at the time it does, naming the
    quote. A dropped connection ends that; after the reconnect, a new quote
    stands again."""
    async with FakePolygonWs(api_key=KEY, market="options") as options:
        settings = make_settings(
            options,
            None,
            symbols=OPTION,
            channels="quotes",
            polygon_options_ws_url=options.url,
            stale_after_s=3600,
        )
        clock = FakeClock(T0)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        sink = LookingSink(bus, OptionMarks(settings.mark_policy()))
        ended = metrics.STANDING_ENDED.labels(reason="feed_lost")._value.get()
        remarks = metrics.REMARKS._value.get()
        stop = asyncio.Event()
        task = asyncio.create_task(run_source(source, sink, stop, clock, flush_every_s=0.02))

        async def marks() -> list[MarkUpdated]:
            return [e for e in await stream_events(bus) if isinstance(e, MarkUpdated)]

        try:
            await options.wait_subscribed(f"Q.{OPTION}")
            await options.publish([quote(OPTION, 1, T0 + 1, "2.50", "2.55")])
            await eventually(lambda: _count(marks, 1), timeout=10)
            clock.set_ms(T0 + 30_001)
            first_two = await eventually(lambda: _count(marks, 2), timeout=10)
            await options.drop()
            await options.wait_connections(2)
            conn = await options.wait_subscribed(f"Q.{OPTION}")
            clock.set_ms(T0 + 60_002)  # a refresh after the re-mark, the feed lost since
            await eventually(lambda: sink.looked_at(T0 + 60_002), timeout=10)
            assert await marks() == first_two, "no re-mark after the disconnect"
            await options.publish([quote(OPTION, 2, T0 + 61_000, "2.60", "2.65")], conn)
            await eventually(lambda: _count(marks, 3), timeout=10)
            clock.set_ms(T0 + 91_000)
            made = await eventually(lambda: _count(marks, 4), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)

    quotes = {e.id: e for e in await stream_events(bus) if isinstance(e, QuoteUpdated)}
    first, remark, fresh, fresh_remark = made
    assert (remark.payload, remark.causation_id) == (first.payload, first.causation_id)
    assert remark.ts_event == remark.ts_init == (T0 + 30_001) * MS
    assert first.causation_id is not None
    assert quotes[first.causation_id].ts_event == first.ts_event == (T0 + 1) * MS
    assert fresh.payload.price == Decimal("2.625")
    assert fresh_remark.causation_id == fresh.causation_id
    assert fresh_remark.ts_event == (T0 + 91_000) * MS
    assert len({m.id for m in made}) == 4
    assert metrics.STANDING_ENDED.labels(reason="feed_lost")._value.get() - ended >= 1
    assert metrics.REMARKS._value.get() - remarks == 2


async def test_a_stocks_disconnect_leaves_the_option_quotes_standing(bus: Bus) -> None:
    """The stocks and options feeds are separate connections: the stocks one
    dropping loses no option quote, so a standing option quote is re-marked
    on; the options one dropping ends it."""
    async with (
        FakePolygonWs(api_key=KEY) as stocks,
        FakePolygonWs(api_key=KEY, market="options") as options,
    ):
        settings = make_settings(
            stocks,
            None,
            symbols=f"AAPL,{OPTION}",
            channels="quotes",
            polygon_options_ws_url=options.url,
            stale_after_s=3600,
        )
        clock = FakeClock(T0)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        sink = LookingSink(bus, OptionMarks(settings.mark_policy()))
        stop = asyncio.Event()
        task = asyncio.create_task(run_source(source, sink, stop, clock, flush_every_s=0.02))

        async def marks() -> list[MarkUpdated]:
            return [e for e in await stream_events(bus) if isinstance(e, MarkUpdated)]

        try:
            await stocks.wait_subscribed("Q.AAPL")
            await options.wait_subscribed(f"Q.{OPTION}")
            await options.publish([quote(OPTION, 1, T0 + 1, "2.50", "2.55")])
            await eventually(lambda: _count(marks, 1), timeout=10)
            await stocks.drop()
            await stocks.wait_connections(2)
            await stocks.wait_subscribed("Q.AAPL")
            # The stocks feed's disconnect has passed through the sink.
            await eventually(lambda: _stocks_subscribed(bus, 2), timeout=10)
            clock.set_ms(T0 + 30_001)
            made = await eventually(lambda: _count(marks, 2), timeout=10)
            await options.drop()
            await options.wait_connections(2)
            await options.wait_subscribed(f"Q.{OPTION}")
            clock.set_ms(T0 + 60_002)  # a refresh after the re-mark, the options feed lost since
            await eventually(lambda: sink.looked_at(T0 + 60_002), timeout=10)
            assert await marks() == made, "no re-mark after the options disconnect"
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)

    first, remark = made
    assert remark.causation_id == first.causation_id
    assert remark.ts_event == (T0 + 30_001) * MS


async def _stocks_subscribed(bus: Bus, count: int) -> bool:
    return [
        e.payload.message
        for e in await stream_events(bus)
        if isinstance(e, FeedStatusChanged) and e.payload.status == "subscribed"
    ].count("stocks: 1 channel(s)") >= count


async def _count(data: Any, n: int) -> list[Event] | None:
    events: list[Event] = await data()
    return events if len(events) >= n else None
