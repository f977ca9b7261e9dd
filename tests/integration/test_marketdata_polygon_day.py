"""The Polygon feed's whole day as processes: ``tradebus marketdata run --source
polygon`` and the recorder, through an outage and its recovery, record every
minute bar of the day once."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from libs.bus.client import Bus
from libs.contract.events import BarClosed, FeedStatusChanged
from libs.contract.subjects import STREAM
from libs.testing.fakes.polygon_data import MINUTE_MS, make_minute_bars, rest_bar_to_am, trade
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.wait import eventually
from tests.integration.polygon_feed import KEY, MS, stream_events


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
