"""The Polygon live source's gap-fill after an outage: exactly the bars missed,
from REST (paged), minute and second bars, a bar the contract refuses
dead-lettered."""

from __future__ import annotations

import base64
import json

import pytest

from libs.bus.client import Bus
from libs.contract.events import BarClosed, FeedStatusChanged, MessageDeadLettered, TradePrinted
from libs.testing.fakes.polygon_data import (
    MINUTE_MS,
    make_minute_bars,
    make_second_bars,
    rest_bar_to_a,
    rest_bar_to_am,
    trade,
)
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs
from libs.testing.wait import eventually
from services.marketdata.adapters.polygon.client import PolygonSource
from services.marketdata.adapters.polygon.parse import bar_id
from services.marketdata.domain.staleness import AlwaysOpen
from tests.integration.polygon_feed import (
    KEY,
    MS,
    T0,
    CountingSink,
    FakeClock,
    has_status,
    make_settings,
    running,
    stream_events,
)


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
