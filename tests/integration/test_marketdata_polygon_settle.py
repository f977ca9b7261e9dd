"""Polygon gap-fill and the minute that had just closed at the reconnect.

Polygon's REST aggregate of a minute that closed a moment ago may not hold
its late trades yet, and the live ``AM`` bar of that minute may still be on
its way; both share the bar's event id. The gap-fill publishes a REST bar
only once its window closed ``polygon_gapfill_settle_s`` ago: before that it
leaves the gap open and fetches those bars again when they are final,
publishing only the ones the live stream did not deliver meanwhile.
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
from tests.integration.test_marketdata_polygon import (
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
