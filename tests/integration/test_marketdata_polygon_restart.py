"""The Polygon live source restarted: it resumes from what the previous run
left on the stream (the newest bar, the gaps still open) and gap-fills the
rest from REST."""

from __future__ import annotations

from typing import Any

import pytest

from libs.bus.client import Bus
from libs.contract.events import BarClosed, FeedStatusChanged
from libs.testing.fakes.polygon_data import (
    MINUTE_MS,
    make_minute_bars,
    make_second_bars,
    rest_bar_to_a,
    rest_bar_to_am,
)
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs, encode_frame
from libs.testing.wait import eventually
from services.marketdata.adapters.polygon import resume
from services.marketdata.adapters.polygon.client import PolygonSource
from services.marketdata.adapters.polygon.parse import FrameParser, rest_bar_event
from services.marketdata.adapters.polygon.schemas import RestAgg
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
