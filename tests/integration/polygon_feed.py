"""The Polygon live source under test: its settings against the fakes, a sink
that remembers what it was handed, an injected clock, and the recorded
stream read back.

Time inside the source comes from ``FakeClock``, so the gap-fill windows are
exact; ``running`` runs a source until the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats.errors
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.codec import decode
from libs.contract.envelope import Event
from libs.contract.events import BarClosed, FeedStatusChanged
from libs.contract.subjects import STREAM
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs
from services.marketdata.adapters.polygon.client import PolygonSource
from services.marketdata.config import MarketdataSettings
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
