"""Polygon gap-fill and the minute that had just closed at the reconnect.

Polygon's REST aggregate of a minute that closed a moment ago may not hold
its late trades yet, and the live ``AM`` bar of that minute may still be on
its way; both share the bar's event id. The gap-fill publishes a REST bar
only once its window closed ``polygon_gapfill_settle_s`` ago: before that it
leaves the gap open and fetches those bars again when they are final,
publishing only the ones the live stream did not deliver meanwhile.

REST's aggregates can also lag further: a bar REST does not return (nor a
later one of that symbol) keeps the gap open and is asked for again until
``polygon_gapfill_lag_s`` after its close.
"""

from __future__ import annotations

from libs.bus.client import Bus
from libs.contract.events import BarClosed, FeedStatusChanged
from libs.testing.fakes.polygon_data import (
    MINUTE_MS,
    RestBar,
    make_minute_bars,
    rest_bar_to_am,
)
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs
from libs.testing.wait import eventually
from services.marketdata.adapters.polygon.client import PolygonSource
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


def minute(i: int) -> int:
    return T0 + i * MINUTE_MS


def unfinished(bar: RestBar) -> RestBar:
    """What REST has for a minute before its late trades are in: less volume, an earlier close."""
    early = dict(bar)
    early["v"] = bar["v"] // 2
    early["c"] = bar["o"]
    return early


async def test_a_minute_closed_just_before_the_reconnect_is_filled_once_final(bus: Bus) -> None:
    aapl = make_minute_bars("AAPL", T0, 5)
    msft = make_minute_bars("MSFT", T0, 5)
    # At the reconnect REST has minute 3 (closed half a second before) only in part.
    early = {"AAPL": [*aapl[:3], unfinished(aapl[3])], "MSFT": [*msft[:3], unfinished(msft[3])]}
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest(early, api_key=KEY) as rest,
    ):
        settings = make_settings(
            ws, rest, channels="trades,minute_bars", polygon_gapfill_settle_s=30
        )
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 5_000)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            clock.set_ms(minute(1) + 1_000)
            await ws.publish([rest_bar_to_am("AAPL", aapl[0]), rest_bar_to_am("MSFT", msft[0])])
            await eventually(lambda: len(sink.bars()) == 2)
            # Down in minute 1, back half a second into minute 4.
            clock.set_ms(minute(4) + 500)
            await ws.drop()
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
            # Minutes 1 and 2 are final: filled at once. Minute 3 is not yet.
            assert {r.path for r in rest.agg_requests()} == {
                f"/v2/aggs/ticker/{s}/range/1/minute/{minute(1)}/{minute(2)}"
                for s in ("AAPL", "MSFT")
            }
            # AAPL's live bar of minute 3 arrives late, after the reconnect.
            conn = await ws.wait_subscribed("AM.AAPL", "AM.MSFT")
            await ws.publish([rest_bar_to_am("AAPL", aapl[3])], conn)
            await eventually(
                lambda: any(
                    b.payload.symbol == "AAPL" and b.payload.start_ns == minute(3) * MS
                    for b in sink.bars()
                )
            )
            # REST has caught up; once minute 3 closed 30 s ago it is fetched again.
            rest.set_bars("AAPL", aapl)
            rest.set_bars("MSFT", msft)
            clock.set_ms(minute(4) + 30_000)
            await eventually(lambda: has_status(sink, "gap_filled", 2), timeout=10)

        asked = [r.path for r in rest.agg_requests()]
        assert sorted(asked[2:]) == [
            f"/v2/aggs/ticker/{s}/range/1/minute/{minute(3)}/{minute(3)}" for s in ("AAPL", "MSFT")
        ]
        by_key = {(b.payload.symbol, b.payload.start_ns // MS): b for b in sink.bars()}
        ids = [b.id for b in sink.bars()]
        assert len(ids) == len(set(ids)) == 8, "each bar once, none lost"
        assert set(by_key) == {(s, minute(i)) for s in ("AAPL", "MSFT") for i in range(4)}
        live = by_key["AAPL", minute(3)]
        assert not live.payload.backfilled, "the live bar, not a REST bar standing in for it"
        assert live.payload.volume == aapl[3]["v"]
        filled = by_key["MSFT", minute(3)]
        assert filled.payload.backfilled
        assert (filled.payload.volume, filled.payload.close) == (msft[3]["v"], msft[3]["c"])
        [first, second] = [
            e.payload.gap_filled_bars
            for e in sink.events
            if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
        ]
        assert (first, second) == (4, 1)
        on_stream = [e for e in await stream_events(bus) if isinstance(e, BarClosed)]
        assert sorted(e.id for e in on_stream) == sorted(ids)


def gap_statuses(sink: CountingSink) -> list[FeedStatusChanged]:
    return [
        e
        for e in sink.events
        if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
    ]


async def test_a_minute_rest_has_not_built_yet_is_fetched_again_not_lost(bus: Bus) -> None:
    """REST's aggregates can lag the live feed. MSFT's minute 3 is not in REST
    at the reconnect (nor a later MSFT bar): the gap stays open from it and it
    is fetched again once REST has it. NVDA's minutes 2 and 3 never come: once
    they closed polygon_gapfill_lag_s ago they are taken as no trades, and
    the status says so."""
    aapl, msft, nvda = (make_minute_bars(s, T0, 4) for s in ("AAPL", "MSFT", "NVDA"))
    lagging = {"AAPL": aapl, "MSFT": msft[:3], "NVDA": nvda[:2]}
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest(lagging, api_key=KEY) as rest,
    ):
        settings = make_settings(
            ws,
            rest,
            symbols="AAPL,MSFT,NVDA",
            channels="trades,minute_bars",
            polygon_gapfill_lag_s=120,
            polygon_gapfill_recheck_s=10,
        )
        sink = CountingSink(bus)
        clock = FakeClock(T0 + 5_000)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("AM.AAPL", "AM.MSFT", "AM.NVDA")
            clock.set_ms(minute(1) + 1_000)
            await ws.publish([rest_bar_to_am(s, b[0]) for s, b in lagging.items()])
            await eventually(lambda: len(sink.bars()) == 3)
            # Down in minute 1, back half a second into minute 4: 1..3 are asked.
            clock.set_ms(minute(4) + 500)
            await ws.drop()
            await eventually(lambda: has_status(sink, "gap_filled"), timeout=10)
            [first] = gap_statuses(sink)
            assert first.payload.open_gaps == {
                "1m": {"MSFT": minute(3) * MS, "NVDA": minute(2) * MS}
            }
            assert "not in REST yet, asked again: MSFT from" in first.payload.message
            # REST catches up on MSFT; the recheck is due 10 s after the first pass.
            rest.set_bars("MSFT", msft)
            clock.set_ms(minute(4) + 10_500)
            await eventually(lambda: has_status(sink, "gap_filled", 2), timeout=10)
            second = gap_statuses(sink)[1]
            assert second.payload.open_gaps == {"1m": {"NVDA": minute(2) * MS}}
            # Minute 3 closed 120 s ago: NVDA's 2 and 3 are given up on.
            clock.set_ms(minute(6))
            await eventually(lambda: has_status(sink, "gap_filled", 3), timeout=10)
            third = gap_statuses(sink)[2]
            assert third.payload.open_gaps == {"1m": {}}
            assert "taken as no trades: NVDA from" in third.payload.message

        asked = [r.path for r in rest.agg_requests()]
        assert asked.count(f"/v2/aggs/ticker/MSFT/range/1/minute/{minute(3)}/{minute(3)}") == 1
        assert asked.count(f"/v2/aggs/ticker/NVDA/range/1/minute/{minute(2)}/{minute(3)}") == 2
        assert len(asked) == 3 + 2 + 1
        ids = [b.id for b in sink.bars()]
        assert len(ids) == len(set(ids)) == 3 + 3 + 3 + 1, "each bar once, MSFT's 3 not lost"
        assert ("MSFT", minute(3)) in {
            (b.payload.symbol, b.payload.start_ns // MS) for b in sink.bars()
        }
        assert [s.payload.gap_filled_bars for s in gap_statuses(sink)] == [6, 1, 0]
