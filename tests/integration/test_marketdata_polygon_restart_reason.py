"""A gap the last run left open, filled after a restart: given up on only if
it was open waiting for bars REST had not built.

A bar REST does not return is a window without trades, or one REST has not
built yet; the gap-fill waits ``polygon_gapfill_lag_s`` for the latter and
then says it gave up. A restart reads the last run's open gaps back from its
statuses; they must also say *why* each was open, or a gap open for another
reason (REST refusing, a stop right after the reconnect) whose end merely
had no trades (after the close) is reported as given up on.
"""

from __future__ import annotations

import logging

import pytest

from libs.bus.client import Bus
from libs.contract.events import FeedStatusChanged
from libs.testing.fakes.polygon_data import MINUTE_MS, make_minute_bars, rest_bar_to_am
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
)


def minute(i: int) -> int:
    return T0 + i * MINUTE_MS


def gap_filled(sink: CountingSink) -> list[FeedStatusChanged]:
    return [
        e
        for e in sink.events
        if isinstance(e, FeedStatusChanged) and e.payload.status == "gap_filled"
    ]


async def test_a_gap_left_open_by_a_failing_rest_whose_end_had_no_trades_is_not_given_up_on(
    bus: Bus, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The market closes after minute 2: REST has AAPL's minutes 0 to 2 and
    nothing after. The first run goes down in minute 1 and back in minute 4
    while REST refuses AAPL, and stops with the gap open from minute 1 (not
    waiting for REST to build anything). Restarted at minute 30, REST serves
    minutes 1 and 2; minutes 3 to 19 closed more than the lag (600 s) ago
    and had no trades, as in a fill the first run had seen through: not
    given up on. Minutes 20 to 29 are recent, waited for as in any fill."""
    aapl = make_minute_bars("AAPL", T0, 3)
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": aapl}, api_key=KEY, not_authorized=["AAPL"]) as rest,
    ):
        settings = make_settings(
            ws,
            rest,
            symbols="AAPL",
            channels="minute_bars",
            nats_url=nats_url,
            polygon_resume_from_stream=True,
        )
        first = CountingSink(bus)
        clock = FakeClock(T0 + 1_000)
        async with running(PolygonSource(settings, clock=clock, hours=AlwaysOpen()), first):
            await ws.wait_subscribed("AM.AAPL")
            clock.set_ms(minute(1) + 1_000)
            await ws.publish([rest_bar_to_am("AAPL", aapl[0])])
            await eventually(lambda: len(first.bars()) == 1)
            clock.set_ms(minute(4) + 10_000)
            await ws.drop()
            await ws.wait_subscribed("AM.AAPL")
            await eventually(lambda: len(rest.agg_requests("AAPL")) >= 1, timeout=10)
        assert all(r.status == 403 for r in rest.agg_requests("AAPL"))

        rest.not_authorized.clear()
        rest.requests.clear()
        second = CountingSink(bus)
        clock.set_ms(minute(30) + 5_000)
        caplog.set_level(logging.WARNING, logger="services.marketdata")
        async with running(PolygonSource(settings, clock=clock, hours=AlwaysOpen()), second):
            await eventually(lambda: has_status(second, "gap_filled"), timeout=10)
        [request, *_] = rest.agg_requests("AAPL")
        assert request.path.endswith(f"/{minute(1)}/{minute(29)}")
        assert [b.payload.start_ns // MS for b in second.bars()] == [minute(1), minute(2)]
        status = gap_filled(second)[0]
        assert "taken as no trades" not in status.payload.message
        assert "not in REST yet, asked again: AAPL from" in status.payload.message
        assert status.payload.open_gaps == {"1m": {"AAPL": minute(20) * MS}}
        assert not [r for r in caplog.records if "taken as no trades" in r.getMessage()]


async def test_a_gap_left_open_waiting_for_rest_is_given_up_on_after_a_restart_and_said_so(
    bus: Bus, nats_url: str
) -> None:
    """The first run fills minute 1 and waits for minute 2, which REST has
    not built (nor a later one); its statuses say so, and it stops. REST
    never builds it: restarted at minute 30, minutes 2 to 19 closed over the
    lag ago and are given up on, said so, as the first run would have."""
    aapl = make_minute_bars("AAPL", T0, 4)
    async with (
        FakePolygonWs(api_key=KEY) as ws,
        FakePolygonRest({"AAPL": aapl[:2]}, api_key=KEY) as rest,
    ):
        settings = make_settings(
            ws,
            rest,
            symbols="AAPL",
            channels="minute_bars",
            nats_url=nats_url,
            polygon_resume_from_stream=True,
        )
        first = CountingSink(bus)
        clock = FakeClock(T0 + 1_000)
        async with running(PolygonSource(settings, clock=clock, hours=AlwaysOpen()), first):
            await ws.wait_subscribed("AM.AAPL")
            clock.set_ms(minute(1) + 1_000)
            await ws.publish([rest_bar_to_am("AAPL", aapl[0])])
            await eventually(lambda: len(first.bars()) == 1)
            clock.set_ms(minute(4) + 500)
            await ws.drop()
            await eventually(lambda: has_status(first, "gap_filled"), timeout=10)
        [waiting] = gap_filled(first)
        assert waiting.payload.open_gaps == {"1m": {"AAPL": minute(2) * MS}}
        assert waiting.payload.gaps_awaiting_rest == {"1m": {"AAPL": minute(2) * MS}}

        second = CountingSink(bus)
        clock.set_ms(minute(30) + 5_000)
        async with running(PolygonSource(settings, clock=clock, hours=AlwaysOpen()), second):
            await eventually(lambda: has_status(second, "gap_filled"), timeout=10)
        assert second.bars() == []
        status = gap_filled(second)[0]
        assert "taken as no trades: AAPL from 2023-11-14T22:16:00Z" in status.payload.message
        assert status.payload.gaps_awaiting_rest == {"1m": {"AAPL": minute(20) * MS}}
