"""The Polygon live source against the fake Polygon WebSocket and REST servers.

Real NATS JetStream (the service's own ``JetStreamSink``), real Postgres and
the recorder as a process for the outage-and-recovery run; the fakes follow
``PROTOCOLS.md`` (``libs/testing/fakes``). Time inside the source comes from
an injected clock, so the gap-fill windows are exact.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats.errors
import orjson
import pytest
from nats.js import api as js_api
from websockets.asyncio.client import connect

from libs.bus.client import Bus
from libs.contract.codec import decode
from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    FeedStatusChanged,
    MarkUpdated,
    MessageDeadLettered,
    QuoteUpdated,
    TradePrinted,
)
from libs.contract.subjects import STREAM, subject_for
from libs.testing.fakes.polygon_data import (
    MINUTE_MS,
    make_minute_bars,
    make_second_bars,
    quote,
    rest_bar_to_a,
    rest_bar_to_am,
    trade,
)
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs, encode_frame
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.wait import eventually
from services.marketdata import metrics
from services.marketdata.adapters.polygon import resume
from services.marketdata.adapters.polygon.client import PolygonSource
from services.marketdata.adapters.polygon.parse import FrameParser, bar_id, rest_bar_event
from services.marketdata.adapters.polygon.schemas import RestAgg
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.marks import OptionMarks
from services.marketdata.domain.staleness import AlwaysOpen
from services.marketdata.main import run_source
from services.marketdata.sink import JetStreamSink

KEY = "test-key-5f3a9c"
T0 = 1_700_000_040_000  # ms, a minute boundary
MS = 1_000_000


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ns = ms * MS

    def set_ms(self, ms: int) -> None:
        self.ns = ms * MS

    def now_ns(self) -> int:
        return self.ns


class CountingSink:
    """The real JetStream sink, remembering every event the source handed it."""

    def __init__(self, bus: Bus) -> None:
        self.inner = JetStreamSink(bus)
        self.events: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> None:
        await self.inner.publish(events)
        self.events.extend(events)

    def statuses(self) -> list[str]:
        return [e.payload.status for e in self.events if isinstance(e, FeedStatusChanged)]

    def status_messages(self, status: str) -> list[str]:
        return [
            e.payload.message
            for e in self.events
            if isinstance(e, FeedStatusChanged) and e.payload.status == status
        ]

    def bars(self) -> list[BarClosed]:
        return [e for e in self.events if isinstance(e, BarClosed)]


def make_settings(
    ws: FakePolygonWs, rest: FakePolygonRest | None, **over: Any
) -> MarketdataSettings:
    values: dict[str, Any] = {
        "polygon_api_key": KEY,
        "polygon_ws_url": ws.url,
        "polygon_rest_url": rest.url if rest else "http://127.0.0.1:9",
        "symbols": "AAPL,MSFT",
        "channels": "trades,quotes,minute_bars",
        "polygon_reconnect_initial_s": 0.05,
        "polygon_reconnect_max_s": 0.2,
        "polygon_auth_retry_s": 0.5,
        "polygon_connect_timeout_s": 5,
        "stale_after_s": 60,
        "instance": "md-test",
        "polygon_resume_from_stream": False,
        # These tests fill gaps whose bars are all final at the (frozen) reconnect;
        # test_marketdata_polygon_settle is about those that are not yet.
        "polygon_gapfill_settle_s": 0,
    }
    values.update(over)
    return MarketdataSettings(**values)


@contextlib.asynccontextmanager
async def running(source: PolygonSource, sink: CountingSink) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(sink, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def stream_events(bus: Bus) -> list[Event]:
    """Every event on the recorded stream, in stream order."""
    info = await bus.js.stream_info(STREAM)
    last = info.state.last_seq
    out: list[Event] = []
    if last == 0:
        return out
    sub = await bus.js.subscribe(
        ">", stream=STREAM, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            out.append(decode(msg.data))
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return out


def has_status(sink: CountingSink, status: str, count: int = 1) -> bool:
    return sink.statuses().count(status) >= count


# --------------------------------------------------------------------- flow


async def test_normal_flow_handshake_subscribe_and_events_on_the_stream(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, channels="trades,quotes,minute_bars,second_bars")
        sink = CountingSink(bus)
        clock = FakeClock(T0)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        bars = make_minute_bars("AAPL", T0, 2)
        before = metrics.MESSAGES_IN.labels(channel="trades")._value.get()
        async with running(source, sink):
            conn = await ws.wait_subscribed("T.AAPL", "Q.AAPL", "AM.MSFT", "A.MSFT")
            await ws.publish(
                [
                    trade("AAPL", 7, T0 + 1, "190.16", conditions=(12,)),
                    quote("AAPL", 8, T0 + 2, "190.15", "190.17"),
                    trade("MSFT", 3, T0 + 3, "410.5"),
                    trade("NVDA", 1, T0 + 4, "1"),  # not subscribed: the fake filters it
                    rest_bar_to_am("AAPL", bars[0]),
                ]
            )
            await eventually(lambda: len(sink.events) >= 7, timeout=10)

        # One auth action then one subscribe with every channel, comma-separated.
        assert [a["action"] for a in conn.actions] == ["auth", "subscribe"]
        assert conn.actions[0]["params"] == KEY
        assert set(conn.actions[1]["params"].split(",")) == {
            f"{p}.{s}" for p in ("T", "Q", "AM", "A") for s in ("AAPL", "MSFT")
        }
        on_stream = await stream_events(bus)
        data = [e for e in on_stream if not isinstance(e, FeedStatusChanged)]
        assert [e.type for e in data] == [
            "TradePrinted",
            "QuoteUpdated",
            "TradePrinted",
            "BarClosed",
        ]
        assert data[0].payload.price == Decimal("190.16")
        assert data[0].payload.conditions == (12,)
        assert data[0].ts_event == (T0 + 1) * MS
        assert data[3].id == bar_id("AAPL", "1m", T0)
        statuses = [e.payload.status for e in on_stream if isinstance(e, FeedStatusChanged)]
        assert statuses[:3] == ["connected", "authenticated", "subscribed"]
        assert statuses[-1] == "disconnected"  # "stopped", on the way out
        assert metrics.MESSAGES_IN.labels(channel="trades")._value.get() - before == 2


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


async def test_auth_failure_is_reported_retried_slowly_and_the_key_never_logged(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-key-SECRET-71c2"  # noqa: S105 - a made-up key, to look for in logs
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_api_key=secret, polygon_auth_retry_s=0.4)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await eventually(lambda: ws.auth_failures >= 2, timeout=10)
            first, second = ws.connections[0], ws.connections[1]
        assert not first.subscriptions
        assert not second.subscriptions
        [message, *_] = sink.status_messages("auth_failed")
        assert "auth_failed: authentication failed" in message
        assert "retrying in 0.4s" in message
        assert any("after auth_failed" in m for m in sink.status_messages("reconnecting"))
        assert "subscribed" not in sink.statuses()
    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert ours
    assert all(secret not in r.getMessage() for r in ours)
    assert all(secret.encode() not in orjson.dumps(e.model_dump(mode="json")) for e in sink.events)


async def test_auth_retry_waits_polygon_auth_retry_s(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_api_key="nope", polygon_auth_retry_s=0.6)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, CountingSink(bus)):
            await ws.wait_connections(1)
            started = time.monotonic()
            await ws.wait_connections(2, timeout=10)
            waited = time.monotonic() - started
        assert waited >= 0.5


# ------------------------------------------------------------------ outages


@pytest.mark.parametrize("fault", ["tcp_drop", "close_1011"])
async def test_outage_in_the_middle_of_a_minute_gap_fills_exactly_the_missing_bars(
    bus: Bus, fault: str
) -> None:
    aapl = make_minute_bars("AAPL", T0, 9, skip=frozenset({3}))  # minute 3: no trades
    msft = make_minute_bars("MSFT", T0, 9)
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": aapl, "MSFT": msft}, api_key=KEY) as rest,
    ):
        settings = make_settings(ws, rest, channels="trades,minute_bars")
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 5_000)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            # Live: minutes 0 and 1 of both, then a trade in the middle of minute 2.
            clock.set_ms(T0 + 2 * MINUTE_MS + 1_000)
            await ws.publish([rest_bar_to_am("AAPL", aapl[0]), rest_bar_to_am("MSFT", msft[0])])
            await ws.publish([rest_bar_to_am("AAPL", aapl[1]), rest_bar_to_am("MSFT", msft[1])])
            clock.set_ms(T0 + 2 * MINUTE_MS + 30_000)
            await ws.publish([trade("AAPL", 1, T0 + 2 * MINUTE_MS + 29_000, "100.5")])
            await eventually(
                lambda: (
                    len(sink.bars()) == 4 and any(isinstance(e, TradePrinted) for e in sink.events)
                )
            )
            # Down in the middle of minute 2; back in the middle of minute 6.
            clock.set_ms(T0 + 6 * MINUTE_MS + 20_000)
            if fault == "tcp_drop":
                await ws.drop()
            else:
                await ws.close(1011, "internal error")
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
            # Late live bars: minute 5 was gap-filled already, minute 6 is new.
            conn = await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            clock.set_ms(T0 + 7 * MINUTE_MS + 1_000)
            late = [rest_bar_to_am("AAPL", aapl[i]) for i in (3, 4)]  # minutes 4 and 5
            await ws.publish(late, conn)
            await ws.publish([rest_bar_to_am("MSFT", msft[6])], conn)
            await eventually(
                lambda: any(b.payload.start_ns == msft[6]["t"] * MS for b in sink.bars())
            )

        assert len(ws.connections) == 2
        assert ws.connections[1].subscriptions == ws.connections[0].subscriptions
        disconnected = sink.status_messages("disconnected")[0]
        if fault == "tcp_drop":
            assert "without a close frame" in disconnected
        else:
            assert "code 1011" in disconnected
        # REST was asked for minutes 2..5 (6 is in progress at the reconnect).
        asked = {r.path for r in rest.agg_requests()}
        assert asked == {
            f"/v2/aggs/ticker/{s}/range/1/minute/{T0 + 2 * MINUTE_MS}/{T0 + 5 * MINUTE_MS}"
            for s in ("AAPL", "MSFT")
        }
        assert all(r.auth == "bearer" for r in rest.agg_requests())
        backfilled = [
            (b.payload.symbol, b.payload.start_ns // MS)
            for b in sink.bars()
            if b.payload.backfilled
        ]

        def minute(i: int) -> int:
            return T0 + i * MINUTE_MS

        # In time order across symbols; AAPL minute 3 had no trades so no bar.
        assert backfilled == [
            ("AAPL", minute(2)),
            ("MSFT", minute(2)),
            ("MSFT", minute(3)),
            ("AAPL", minute(4)),
            ("MSFT", minute(4)),
            ("AAPL", minute(5)),
            ("MSFT", minute(5)),
        ]
        [filled] = [
            e
            for e in sink.events
            if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
        ]
        assert filled.payload.gap_filled_bars == 7
        # Every bar handed to the sink once (the late AM bars of minutes 4, 5 were not).
        ids = [b.id for b in sink.bars()]
        assert len(ids) == len(set(ids)) == 4 + 7 + 1
        on_stream = [e for e in await stream_events(bus) if isinstance(e, BarClosed)]
        assert sorted(e.id for e in on_stream) == sorted(ids)


async def test_a_first_session_with_data_before_its_acks_is_gap_filled_after_it_drops(
    bus: Bus,
) -> None:
    aapl = make_minute_bars("AAPL", T0, 5)
    msft = make_minute_bars("MSFT", T0, 5)
    # The first connection streams minute bars but never acks Q.MSFT.
    async with (
        FakePolygonWs(api_key=KEY, unacked={"Q.MSFT"}) as ws,
        FakePolygonRest({"AAPL": aapl, "MSFT": msft}, api_key=KEY) as rest,
    ):
        settings = make_settings(ws, rest, polygon_connect_timeout_s=30)
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 5_000)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            clock.set_ms(T0 + MINUTE_MS + 1_000)
            await ws.publish([rest_bar_to_am("AAPL", aapl[0]), rest_bar_to_am("MSFT", msft[0])])
            await eventually(lambda: len(sink.bars()) == 2)
            clock.set_ms(T0 + 4 * MINUTE_MS + 20_000)
            ws.unacked = frozenset()
            await ws.drop()
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
        assert "subscribed" in sink.statuses()  # the second session's
        asked = {r.path for r in rest.agg_requests()}
        assert asked == {
            f"/v2/aggs/ticker/{s}/range/1/minute/{T0 + MINUTE_MS}/{T0 + 3 * MINUTE_MS}"
            for s in ("AAPL", "MSFT")
        }
        assert sorted((b.payload.symbol, b.payload.start_ns // MS) for b in sink.bars()) == [
            (s, T0 + i * MINUTE_MS) for s in ("AAPL", "MSFT") for i in range(4)
        ]


async def test_gap_fill_follows_next_url_pages(bus: Bus) -> None:
    bars = make_minute_bars("AAPL", T0, 40)
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": bars}, api_key=KEY, page_size=7) as rest,
    ):
        settings = make_settings(ws, rest, symbols="AAPL", channels="minute_bars")
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 1)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL")
            clock.set_ms(T0 + MINUTE_MS + 1)
            await ws.publish([rest_bar_to_am("AAPL", bars[0])])
            await eventually(lambda: len(sink.bars()) == 1)
            clock.set_ms(T0 + 40 * MINUTE_MS)
            await ws.drop()
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
        requests = rest.agg_requests("AAPL")
        assert len(requests) == 6  # 39 bars, 7 a page
        assert "cursor" not in requests[0].query
        assert all("cursor" in r.query for r in requests[1:])
        starts = [b.payload.start_ns // MS for b in sink.bars()]
        assert starts == [b["t"] for b in bars]


async def test_a_rest_bar_the_contract_refuses_is_dead_lettered_and_the_gap_still_filled(
    bus: Bus,
) -> None:
    """A gap-fill bar Polygon's REST sends with a value our contract refuses
    (here an open of 0: prices are positive) is dead-lettered, as the same
    bar over the WebSocket would be, and the other bars of the gap are
    published. It used to raise out of the gap-fill task and end the feed;
    a restart fetched the same bar again."""
    bars = make_minute_bars("AAPL", T0, 6)
    bars[3] = {**bars[3], "o": 0}
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": bars}, api_key=KEY) as rest,
    ):
        settings = make_settings(ws, rest, symbols="AAPL", channels="minute_bars")
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 1)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL")
            clock.set_ms(T0 + MINUTE_MS + 1)
            await ws.publish([rest_bar_to_am("AAPL", bars[0])])
            await eventually(lambda: len(sink.bars()) == 1)
            clock.set_ms(T0 + 6 * MINUTE_MS)
            await ws.drop()
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
            # Still live after it: the next minute's bar is published.
            conn = await ws.wait_subscribed("AM.AAPL")
            late = make_minute_bars("AAPL", T0 + 6 * MINUTE_MS, 1)
            clock.set_ms(T0 + 7 * MINUTE_MS + 1)
            await ws.publish([rest_bar_to_am("AAPL", late[0])], conn)
            await eventually(lambda: len(sink.bars()) == 6)
        starts = [b.payload.start_ns // MS for b in sink.bars()]
        assert starts == [bars[i]["t"] for i in (0, 1, 2, 4, 5)] + [late[0]["t"]]
        [filled] = [
            e
            for e in sink.events
            if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
        ]
        assert filled.payload.gap_filled_bars == 4
        [letter] = [e for e in sink.events if isinstance(e, MessageDeadLettered)]
        assert letter.payload.service == "marketdata"
        assert letter.payload.error.startswith("invalid_event: REST 1m bar of AAPL at ")
        raw = json.loads(base64.b64decode(letter.payload.raw_b64))
        assert (raw["ticker"], raw["t"], raw["o"]) == ("AAPL", bars[3]["t"], "0")
        on_stream = await stream_events(bus)
        assert letter.id in {e.id for e in on_stream}


async def test_a_refused_rest_bar_does_not_cost_the_gap_fill_its_last_bars(bus: Bus) -> None:
    """The gap-fill hands its bars to the publisher ``polygon_publish_batch``
    at a time. It cut them into batches by the count of bars published, not
    of events: with a refused bar (a dead letter among them) and that count a
    multiple of the batch, the last events were never handed over; a valid
    bar so lost was in the ledger already, so nothing published it again."""
    bars = make_minute_bars("AAPL", T0, 6)
    bars[1] = {**bars[1], "o": 0}  # the gap's first bar: its dead letter leads
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": bars}, api_key=KEY) as rest,
    ):
        settings = make_settings(
            ws, rest, symbols="AAPL", channels="minute_bars", polygon_publish_batch=2
        )
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 1)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL")
            clock.set_ms(T0 + MINUTE_MS + 1)
            await ws.publish([rest_bar_to_am("AAPL", bars[0])])
            await eventually(lambda: len(sink.bars()) == 1)
            clock.set_ms(T0 + 6 * MINUTE_MS)
            await ws.drop()
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
        starts = [b.payload.start_ns // MS for b in sink.bars()]
        assert starts == [bars[i]["t"] for i in (0, 2, 3, 4, 5)]
        [letter] = [e for e in sink.events if isinstance(e, MessageDeadLettered)]
        raw = json.loads(base64.b64decode(letter.payload.raw_b64))
        assert raw["t"] == bars[1]["t"]


async def restarted(
    bus: Bus,
    nats_url: str,
    minutes: list[dict[str, Any]],
    *,
    now_ms: int,
    seconds: list[dict[str, Any]] | None = None,
    channels: str = "minute_bars",
    gap_fills: int = 1,
    **over: Any,
) -> tuple[FakePolygonRest, CountingSink]:
    """A feed started at ``now_ms`` that resumes from what a previous run left
    on the stream, run until it has reported ``gap_fills`` gap-fills
    (``over``: more settings)."""
    second_bars = {"AAPL": seconds} if seconds is not None else None
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": minutes}, api_key=KEY, second_bars=second_bars) as rest,
    ):
        settings = make_settings(
            ws,
            rest,
            symbols="AAPL",
            channels=channels,
            nats_url=nats_url,
            polygon_resume_from_stream=True,
            **over,
        )
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(now_ms), hours=AlwaysOpen())
        async with running(source, sink):
            await eventually(lambda: has_status(sink, "gap_filled", gap_fills), timeout=10)
    return rest, sink


async def test_a_restart_gap_fills_from_the_last_minute_bar_on_the_stream(
    bus: Bus, nats_url: str
) -> None:
    bars = make_minute_bars("AAPL", T0, 10)
    # The previous run published minute 2, then stopped.
    previous = FrameParser(source="marketdata/old", clock=FakeClock(T0)).parse(
        encode_frame([rest_bar_to_am("AAPL", bars[2])])
    )
    await bus.publish(previous.events[0])
    rest, sink = await restarted(bus, nats_url, bars, now_ms=T0 + 7 * MINUTE_MS + 10_000)
    [request] = rest.agg_requests("AAPL")
    assert request.path.endswith(f"/{T0 + 3 * MINUTE_MS}/{T0 + 6 * MINUTE_MS}")
    assert [b.payload.start_ns // MS for b in sink.bars()] == [
        T0 + i * MINUTE_MS for i in range(3, 7)
    ]
    assert all(b.payload.backfilled for b in sink.bars())


async def test_a_restart_after_a_longer_stop_gap_fills_the_last_polygon_gapfill_max_s(
    bus: Bus, nats_url: str
) -> None:
    """Stopped for longer than ``polygon_gapfill_max_s`` (a Friday evening's
    last bar, started again on Monday morning), the feed gap-fills what that
    reach allows, as an outage that long does. It used to leave a last bar
    older than the reach unseeded, and fill nothing at all."""
    bars = make_minute_bars("AAPL", T0, 10)
    previous = FrameParser(source="marketdata/old", clock=FakeClock(T0)).parse(
        encode_frame([rest_bar_to_am("AAPL", bars[0])])
    )
    await bus.publish(previous.events[0])
    # Back at 9:10 reaching 5 minutes back: minutes 4 to 8.
    rest, sink = await restarted(
        bus, nats_url, bars, now_ms=T0 + 9 * MINUTE_MS + 10_000, polygon_gapfill_max_s=300
    )
    [request] = rest.agg_requests("AAPL")
    assert request.path.endswith(f"/{T0 + 4 * MINUTE_MS}/{T0 + 8 * MINUTE_MS}")
    assert [b.payload.start_ns // MS for b in sink.bars()] == [
        T0 + i * MINUTE_MS for i in range(4, 9)
    ]


async def test_a_restart_resumes_after_the_newest_bar_not_the_last_one_on_the_stream(
    bus: Bus, nats_url: str
) -> None:
    # The previous run: minute 0 live, then an outage; back at 4:59 the live
    # bar of minute 4 went out before the gap-fill of minutes 1-3 (REST was
    # slow), so minute 3 is the last message on md.bar.1m.AAPL, minute 4 the
    # newest. Restarted at 9:05, minute 4 must not be published again.
    bars = make_minute_bars("AAPL", T0, 12)
    parser = FrameParser(source="marketdata/old", clock=FakeClock(T0))
    live = parser.parse(
        encode_frame([rest_bar_to_am("AAPL", bars[0]), rest_bar_to_am("AAPL", bars[4])])
    ).events
    for event in live:
        await bus.publish(event)
    for row in bars[1:4]:
        backfill = rest_bar_event("AAPL", RestAgg.model_validate(row), source="old", ts_init=T0)
        await bus.publish(backfill)
    rest, sink = await restarted(bus, nats_url, bars, now_ms=T0 + 9 * MINUTE_MS + 5_000)
    [request] = rest.agg_requests("AAPL")
    assert request.path.endswith(f"/{T0 + 5 * MINUTE_MS}/{T0 + 8 * MINUTE_MS}")
    assert [b.payload.start_ns // MS for b in sink.bars()] == [
        T0 + i * MINUTE_MS for i in range(5, 9)
    ]


async def test_a_gap_rest_could_not_fill_before_a_stop_is_filled_after_the_restart(
    bus: Bus, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage whose gap-fill had not succeeded when the feed stopped is
    filled by the next run. REST refuses MSFT during the first run: the
    gap-fill of minutes 1 to 3 publishes AAPL's and leaves MSFT's open, live
    bars of minutes 4 and 5 follow, the feed stops. The restart used to
    resume after the newest bar on the stream (minute 5) and MSFT's minutes 1
    to 3 were lost for good; the open gaps are now read back from the last
    status that stated them."""
    aapl = make_minute_bars("AAPL", T0, 9)
    msft = make_minute_bars("MSFT", T0, 9)
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": aapl, "MSFT": msft}, api_key=KEY, not_authorized=["MSFT"]) as rest,
    ):
        settings = make_settings(
            ws, rest, channels="minute_bars", nats_url=nats_url, polygon_resume_from_stream=True
        )
        first = CountingSink(bus)
        clock = FakeClock(T0 + 1_000)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, first):
            await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            clock.set_ms(T0 + MINUTE_MS + 1_000)
            await ws.publish([rest_bar_to_am("AAPL", aapl[0]), rest_bar_to_am("MSFT", msft[0])])
            await eventually(lambda: len(first.bars()) == 2)
            clock.set_ms(T0 + 4 * MINUTE_MS + 10_000)
            await ws.drop()
            conn = await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            await eventually(lambda: has_status(first, "gap_filled"), timeout=10)
            await eventually(lambda: len(rest.agg_requests("MSFT")) >= 2, timeout=10)
            clock.set_ms(T0 + 6 * MINUTE_MS + 1_000)
            live = [
                rest_bar_to_am(s, bars[i])
                for i in (4, 5)
                for s, bars in (("AAPL", aapl), ("MSFT", msft))
            ]
            await ws.publish(live, conn)
            await eventually(lambda: len(first.bars()) == 2 + 3 + 4)
        assert all(r.status == 403 for r in rest.agg_requests("MSFT"))
        [partial] = [
            e
            for e in first.events
            if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
        ]
        assert "still open: MSFT" in partial.payload.message
        assert partial.payload.open_gaps == {"1m": {"MSFT": (T0 + MINUTE_MS) * MS}}

        # Started again at 8:05 with REST serving MSFT; the stream read back
        # two messages a request, so the statuses and MSFT's bars take pages.
        monkeypatch.setattr(resume, "READ_AT_MOST", 2)
        rest.not_authorized.clear()
        rest.requests.clear()
        second = CountingSink(bus)
        clock.set_ms(T0 + 8 * MINUTE_MS + 5_000)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, second):
            await eventually(lambda: has_status(second, "gap_filled"), timeout=10)
        assert sorted(r.path for r in rest.agg_requests()) == [
            f"/v2/aggs/ticker/AAPL/range/1/minute/{T0 + 6 * MINUTE_MS}/{T0 + 7 * MINUTE_MS}",
            f"/v2/aggs/ticker/MSFT/range/1/minute/{T0 + MINUTE_MS}/{T0 + 7 * MINUTE_MS}",
        ]
        assert [(b.payload.symbol, b.payload.start_ns // MS) for b in second.bars()] == [
            ("MSFT", T0 + MINUTE_MS),
            ("MSFT", T0 + 2 * MINUTE_MS),
            ("MSFT", T0 + 3 * MINUTE_MS),
            ("AAPL", T0 + 6 * MINUTE_MS),
            ("MSFT", T0 + 6 * MINUTE_MS),
            ("AAPL", T0 + 7 * MINUTE_MS),
            ("MSFT", T0 + 7 * MINUTE_MS),
        ]
        # Every minute of both on the stream, once.
        on_stream = [
            (e.payload.symbol, e.payload.start_ns // MS)
            for e in await stream_events(bus)
            if isinstance(e, BarClosed)
        ]
        assert sorted(on_stream) == [
            (s, T0 + i * MINUTE_MS) for s in ("AAPL", "MSFT") for i in range(8)
        ]


async def test_second_bars_of_an_outage_are_gap_filled(bus: Bus) -> None:
    # The channels docker-compose subscribes: second bars, no minute bars.
    seconds = make_second_bars("AAPL", T0, 6 * 60, skip=frozenset({70, 71}))
    by_second = {(b["t"] - T0) // 1000: b for b in seconds}
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({}, api_key=KEY, second_bars={"AAPL": seconds}, page_size=50) as rest,
    ):
        settings = make_settings(ws, rest, symbols="AAPL", channels="trades,quotes,second_bars")
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 500)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("A.AAPL")
            clock.set_ms(T0 + 60_500)
            await ws.publish([rest_bar_to_a("AAPL", by_second[i]) for i in range(60)])
            await eventually(lambda: len(sink.bars()) == 60)
            # Down for two minutes and more; back at 3:10.5.
            clock.set_ms(T0 + 190_500)
            await ws.drop()
            conn = await ws.wait_subscribed("A.AAPL")
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
            # Late live bars: second 100 came from REST already, 190 is new.
            await ws.publish([rest_bar_to_a("AAPL", by_second[i]) for i in (100, 190)], conn)
            await eventually(
                lambda: any(b.payload.start_ns == (T0 + 190_000) * MS for b in sink.bars())
            )

        # One request for the window (seconds 60 to 189, the last closed), paged.
        requests = rest.agg_requests("AAPL")
        assert (
            requests[0].path == f"/v2/aggs/ticker/AAPL/range/1/second/{T0 + 60_000}/{T0 + 189_000}"
        )
        assert requests[0].query["adjusted"] == "false"
        assert len(requests) == 3  # 128 bars, 50 a page
        backfilled = [b for b in sink.bars() if b.payload.backfilled]
        want = [T0 + i * 1000 for i in range(60, 190) if i not in (70, 71)]
        assert [b.payload.start_ns // MS for b in backfilled] == want
        assert all(b.payload.interval == "1s" for b in sink.bars())
        assert backfilled[0].id == bar_id("AAPL", "1s", T0 + 60_000)
        assert backfilled[0].payload.end_ns == (T0 + 61_000) * MS
        [filled] = [
            e
            for e in sink.events
            if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
        ]
        assert filled.payload.gap_filled_bars == 128
        assert "1s bar(s)" in filled.payload.message
        ids = [b.id for b in sink.bars()]
        assert len(ids) == len(set(ids)) == 60 + 128 + 1  # second 100 not twice
        on_stream = [e for e in await stream_events(bus) if isinstance(e, BarClosed)]
        assert sorted(e.id for e in on_stream) == sorted(ids)


async def test_a_restart_gap_fills_second_bars_from_the_stream(bus: Bus, nats_url: str) -> None:
    seconds = make_second_bars("AAPL", T0, 160)
    minutes = make_minute_bars("AAPL", T0, 3)
    # The previous run published second 20 and minute 0, then stopped.
    previous = FrameParser(source="marketdata/old", clock=FakeClock(T0)).parse(
        encode_frame([rest_bar_to_a("AAPL", seconds[20]), rest_bar_to_am("AAPL", minutes[0])])
    )
    for event in previous.events:
        await bus.publish(event)
    rest, sink = await restarted(
        bus,
        nats_url,
        minutes,
        now_ms=T0 + 150_500,
        seconds=seconds,
        channels="second_bars,minute_bars",
        gap_fills=2,
    )
    paths = sorted(r.path for r in rest.agg_requests("AAPL"))
    assert paths == [
        f"/v2/aggs/ticker/AAPL/range/1/minute/{T0 + MINUTE_MS}/{T0 + MINUTE_MS}",
        f"/v2/aggs/ticker/AAPL/range/1/second/{T0 + 21_000}/{T0 + 149_000}",
    ]
    got = sorted((b.payload.interval, b.payload.start_ns // MS) for b in sink.bars())
    assert got == [("1m", T0 + MINUTE_MS)] + [("1s", T0 + i * 1000) for i in range(21, 150)]


async def test_max_connections_is_reported_and_retried_slowly(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_auth_retry_s=0.6)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        before = metrics.RECONNECTS.labels(feed="polygon", reason="max_connections")._value.get()
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            # Another client with our key: the newest connection kicks the oldest (ours).
            async with connect(ws.url) as other:
                await other.recv()
                await other.send(json.dumps({"action": "auth", "params": KEY}))
                assert json.loads(await other.recv())[0]["status"] == "auth_success"
                kicked = time.monotonic()
                await eventually(lambda: has_status(sink, "max_connections"))
                await ws.wait_connections(3, timeout=10)
                assert time.monotonic() - kicked >= 0.5
            await ws.wait_subscribed("T.AAPL")
        [message] = sink.status_messages("max_connections")
        assert "Maximum number of websocket connections exceeded" in message
        assert any("after max_connections" in m for m in sink.status_messages("reconnecting"))
        after = metrics.RECONNECTS.labels(feed="polygon", reason="max_connections")._value.get()
        assert after - before == 1


async def test_max_connections_in_the_auth_reply_is_reported_and_retried_slowly(
    bus: Bus,
) -> None:
    async with FakePolygonWs(api_key=KEY, refuse_newest=True) as ws:
        # Another client holds the one connection our key is allowed.
        async with connect(ws.url) as other:
            await other.recv()
            await other.send(json.dumps({"action": "auth", "params": KEY}))
            assert json.loads(await other.recv())[0]["status"] == "auth_success"
            settings = make_settings(ws, None, polygon_auth_retry_s=0.3)
            sink = CountingSink(bus)
            source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
            async with running(source, sink):
                await eventually(lambda: has_status(sink, "max_connections", 2), timeout=10)
        assert len(ws.connections) >= 3  # the other client, then ours at least twice
        assert "auth_failed" not in sink.statuses()
        assert any("after max_connections" in m for m in sink.status_messages("reconnecting"))


async def test_force_disconnect_is_reported_and_reconnected(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        sink = CountingSink(bus)
        source = PolygonSource(make_settings(ws, None), clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            await ws.kick("force_disconnect", "Server requested disconnect")
            await eventually(lambda: has_status(sink, "subscribed", 2), timeout=10)
            await ws.publish([trade("AAPL", 1, T0, "10")])
            await eventually(lambda: any(isinstance(e, TradePrinted) for e in sink.events))
        assert sink.status_messages("force_disconnect") == ["stocks: Server requested disconnect"]
        assert any("after force_disconnect" in m for m in sink.status_messages("reconnecting"))


async def test_a_channel_never_acknowledged_ends_the_session_it_is_not_subscribed(
    bus: Bus,
) -> None:
    # Polygon acks every channel it serves (PROTOCOLS.md); one without an ack
    # within the handshake timeout is not streaming, whatever else came.
    async with FakePolygonWs(api_key=KEY, unacked={"Q.MSFT"}) as ws:
        settings = make_settings(ws, None, polygon_connect_timeout_s=0.3)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_connections(2, timeout=10)
            await eventually(lambda: has_status(sink, "reconnecting"), timeout=10)
        assert "subscribed" not in sink.statuses()
        assert any("Q.MSFT" in m for m in sink.status_messages("disconnected"))
        assert any("after timeout" in m for m in sink.status_messages("reconnecting"))


async def test_auth_failed_mid_stream_is_reported_and_retried_slowly(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_auth_retry_s=0.6)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            await ws.kick("auth_failed", "authentication failed")
            kicked = time.monotonic()
            await ws.wait_connections(2, timeout=10)
            waited = time.monotonic() - kicked
            await ws.wait_subscribed("T.AAPL")
        assert waited >= 0.5
        assert sink.status_messages("auth_failed") == ["stocks: authentication failed"]
        assert any("after auth_failed" in m for m in sink.status_messages("reconnecting"))


# -------------------------------------------------------------- bad input


async def test_malformed_frame_is_dead_lettered_and_the_feed_goes_on(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        sink = CountingSink(bus)
        source = PolygonSource(make_settings(ws, None), clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            await ws.send_raw('[{"ev":"T","sym":"AAPL",')
            await ws.send_raw(
                '[{"ev":"T","sym":"AAPL","p":1,"s":1,"t":1,"q":1},{"ev":"T","sym":"AAPL"}]'
            )
            await ws.publish([trade("AAPL", 2, T0, "10.25")])
            await eventually(
                lambda: sum(isinstance(e, TradePrinted) for e in sink.events) == 2, timeout=10
            )
        assert len(ws.connections) == 1  # never reconnected
        on_stream = await stream_events(bus)
        letters = [e for e in on_stream if isinstance(e, MessageDeadLettered)]
        assert [e.payload.error.split(":")[0] for e in letters] == [
            "malformed_json",
            "invalid_event",
        ]
        assert all(e.payload.service == "marketdata" for e in letters)
        assert base64.b64decode(letters[0].payload.raw_b64) == b'[{"ev":"T","sym":"AAPL",'
        assert json.loads(base64.b64decode(letters[1].payload.raw_b64)) == {
            "ev": "T",
            "sym": "AAPL",
        }
        trades = [e for e in on_stream if isinstance(e, TradePrinted)]
        assert [t.payload.sequence for t in trades] == [1, 2]


async def test_stale_feed_is_reported_then_recovered(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        sink = CountingSink(bus)
        clock = FakeClock(T0)
        settings = make_settings(ws, None, stale_after_s=0.4)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            clock.set_ms(T0 + 1_000)  # a second of silence on the source's clock
            await eventually(lambda: has_status(sink, "stale"), timeout=10)
            assert metrics.STALE._value.get() == 1
            # Stale in market hours fails the service's /health (503); it
            # only said so in the body, under a 200.
            assert source.health()[0] is False
            assert source.health()[1]["stale"] is True
            await ws.publish([trade("AAPL", 1, T0 + 1_000, "10")])
            await eventually(lambda: has_status(sink, "recovered"), timeout=10)
            assert metrics.STALE._value.get() == 0
            assert source.health()[0] is True
        [stale] = sink.status_messages("stale")
        assert "no data for 1.0s during market hours" in stale
        on_stream = [
            e.payload.status for e in await stream_events(bus) if isinstance(e, FeedStatusChanged)
        ]
        assert on_stream.index("stale") < on_stream.index("recovered")


# ------------------------------------------------- the whole day, as processes


async def test_outage_and_recovery_records_every_minute_bar_of_the_day_once(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """``tradebus marketdata run --source polygon`` and the recorder, as processes.

    The day is 30 minutes of bars for two symbols, all closed before the run
    (the service's clock is the wall clock). Ten minutes come live, then the
    TCP connection is cut in the middle of minute 10; after the reconnect the
    rest comes from REST (paged) while late live bars of minutes 10-14 race
    it; then a non-clean close, a reconnect with nothing left to fill, and a
    few more late live bars. The recorded minute bars must be the fake's,
    one for one.
    """
    now_ms = time.time_ns() // MS
    day = now_ms - now_ms % MINUTE_MS - 36 * MINUTE_MS
    fake_bars = {
        "AAPL": make_minute_bars("AAPL", day, 30, skip=frozenset({4, 17, 18})),
        "MSFT": make_minute_bars("MSFT", day, 30, seed=2, skip=frozenset({25})),
    }
    by_minute = {s: {(b["t"] - day) // MINUTE_MS: b for b in bars} for s, bars in fake_bars.items()}

    def frame(first: int, last: int) -> list[dict[str, Any]]:
        return [
            rest_bar_to_am(s, by_minute[s][i])
            for i in range(first, last + 1)
            for s in ("AAPL", "MSFT")
            if i in by_minute[s]
        ]

    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest(fake_bars, api_key=KEY, page_size=8) as rest,
    ):
        recorder = ServiceProcess(
            ["recorder", "run"],
            env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
            log_path=tmp_path / "recorder.log",
            name="recorder",
        ).start()
        md = ServiceProcess(
            ["marketdata", "run", "--source", "polygon"],
            env={
                "NATS_URL": nats_url,
                "POLYGON_API_KEY": KEY,
                "TRADEBUS_POLYGON_WS_URL": ws.url,
                "TRADEBUS_POLYGON_REST_URL": rest.url,
                "TRADEBUS_SYMBOLS": "AAPL,MSFT",
                "TRADEBUS_CHANNELS": "trades,minute_bars",
                "TRADEBUS_POLYGON_RECONNECT_INITIAL_S": "0.05",
                "TRADEBUS_POLYGON_RECONNECT_MAX_S": "0.2",
                "TRADEBUS_CALENDAR": "24/7",
                "TRADEBUS_LOG_LEVEL": "DEBUG",
                # The day's bars all closed minutes before the run; with a settle
                # the empty last minute or two of each gap (and so the second
                # gap_filled) would come a minute or two later in wall time.
                "TRADEBUS_POLYGON_GAPFILL_SETTLE_S": "0",
            },
            log_path=tmp_path / "marketdata.log",
            name="md",
        ).start()
        try:
            conn = await ws.wait_subscribed("AM.AAPL", "AM.MSFT", timeout=30)
            for i in range(10):
                await ws.publish(frame(i, i), conn)
            await ws.publish([trade("AAPL", 1, day + 10 * MINUTE_MS + 5_000, "101.25")], conn)
            await eventually(
                lambda: _bars_on_stream(bus, 19), timeout=15, message=md.log_text()[-3000:]
            )
            await ws.drop()  # in the middle of minute 10
            conn = await ws.wait_subscribed("AM.AAPL", "AM.MSFT", timeout=15)
            await ws.publish(frame(10, 14), conn)  # late live bars race the gap-fill
            await eventually(
                lambda: _statuses_on_stream(bus, "gap_filled", 1),
                timeout=15,
                message=md.log_text()[-3000:],
            )
            await ws.close(1011, "internal error")
            conn = await ws.wait_subscribed("AM.AAPL", "AM.MSFT", timeout=15)
            await ws.publish(frame(26, 29), conn)  # already gap-filled: dropped as repeats
            await eventually(lambda: _statuses_on_stream(bus, "gap_filled", 2), timeout=15)
        finally:
            assert md.terminate() == 0, md.log_text()[-3000:]
        last = (await bus.js.stream_info(STREAM)).state.last_seq
        await eventually(
            lambda: _recorded_up_to(database_url, last),
            timeout=30,
            message=recorder.log_text()[-2000:],
        )
        assert recorder.terminate() == 0, recorder.log_text()[-2000:]

    recorded = [
        orjson.loads(r["payload"])
        for r in await rows(database_url, "WHERE subject LIKE 'md.bar.1m.%' ORDER BY seq")
    ]
    got = sorted(
        (
            p["symbol"],
            p["start_ns"] // MS,
            Decimal(p["open"]),
            Decimal(p["high"]),
            Decimal(p["low"]),
            Decimal(p["close"]),
            Decimal(p["volume"]),
        )
        for p in recorded
    )
    want = sorted(
        (s, b["t"], b["o"], b["h"], b["l"], b["c"], Decimal(b["v"]))
        for s, bars in fake_bars.items()
        for b in bars
    )
    assert len(recorded) == len(want) == 56  # none missing, none twice
    assert got == want
    # Minutes 0-9 came live, 15-29 from REST; 10-14 from whichever came first.
    minute_of = {id(p): (p["start_ns"] // MS - day) // MINUTE_MS for p in recorded}
    assert all(not p["backfilled"] for p in recorded if minute_of[id(p)] < 10)
    assert all(p["backfilled"] for p in recorded if minute_of[id(p)] >= 15)
    duplicates = await rows(database_url, "WHERE type = 'DuplicateSuppressed'")
    assert duplicates == []
    # REST was paged, with the key in the Authorization header only.
    assert any("cursor" in r.query for r in rest.agg_requests())
    assert all(r.auth == "bearer" for r in rest.agg_requests())
    log_text = md.log_text()
    assert "gap_filled" in log_text
    assert KEY not in log_text


async def _bars_on_stream(bus: Bus, count: int) -> bool:
    return sum(isinstance(e, BarClosed) for e in await stream_events(bus)) >= count


async def _statuses_on_stream(bus: Bus, status: str, count: int) -> bool:
    found = [
        e
        for e in await stream_events(bus)
        if isinstance(e, FeedStatusChanged) and e.payload.status == status
    ]
    return len(found) >= count


async def _recorded_up_to(database_url: str, seq: int) -> bool:
    found = await rows(database_url, "ORDER BY seq DESC LIMIT 1")
    return bool(found) and found[0]["seq"] >= seq


# ------------------------------------------------------------ the REST fake


def test_rest_fake_speaks_polygon_to_the_official_client() -> None:
    """Threaded mode, for blocking code: paging, both auth styles, error shapes."""
    import urllib.request

    from massive import RESTClient  # type: ignore[import-untyped,unused-ignore]
    from massive.exceptions import BadResponse  # type: ignore[import-untyped,unused-ignore]

    start = T0 - T0 % (5 * MINUTE_MS)  # a five-minute boundary
    bars = make_minute_bars("AAPL", start, 12, skip=frozenset({5}))
    with FakePolygonRest({"AAPL": bars}, api_key=KEY, page_size=4, not_authorized=["TSLA"]) as rest:
        client = RESTClient(KEY, base=rest.url, retries=0)
        got = list(client.list_aggs("AAPL", 1, "minute", start, start + 11 * MINUTE_MS))
        assert [a.timestamp for a in got] == [b["t"] for b in bars]
        assert len(rest.agg_requests("AAPL")) == 3  # 11 bars, 4 a page
        assert {r.auth for r in rest.requests} == {"bearer"}
        # Five-minute bars are aggregated from the minutes.
        fives = list(client.list_aggs("AAPL", 5, "minute", start, start + 11 * MINUTE_MS))
        assert [a.timestamp for a in fives] == [start + i * 5 * MINUTE_MS for i in range(3)]
        assert fives[0].volume == sum(b["v"] for b in bars[:5])
        assert Decimal(repr(fives[1].open)) == bars[5]["o"]  # minute 5: no bar; opens at 6
        # An empty range has no results key at all; the client copes.
        url = f"{rest.url}/v2/aggs/ticker/MSFT/range/1/minute/{T0}/{T0}?apiKey={KEY}"
        with urllib.request.urlopen(url) as r:  # noqa: S310 - our own http:// fake
            body = json.loads(r.read())
        assert body["status"] == "OK"
        assert "results" not in body
        assert rest.requests[-1].auth == "query"
        # Documented error bodies.
        with pytest.raises(BadResponse, match="Unknown API Key"):
            list(RESTClient("nope", base=rest.url, retries=0).list_aggs("AAPL", 1, "minute", 0, 1))
        with pytest.raises(BadResponse, match="NOT_AUTHORIZED"):
            list(client.list_aggs("TSLA", 1, "minute", T0, T0))
