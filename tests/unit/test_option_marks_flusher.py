"""The flusher of held and standing marks (``services/marketdata/main.py``
``run_source``): it runs beside the source, stops with it, raises a failure
as itself, and marks what is held when the source ends."""

from __future__ import annotations

import asyncio

import pytest

from libs.bus.errors import PublishFailed
from libs.contract.envelope import Event
from libs.contract.events import MarkUpdated
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.marks import MarkPolicy, OptionMarks
from services.marketdata.feed import EventSink
from services.marketdata.main import flush_every_s, run_source
from services.marketdata.sink import JetStreamSink
from tests.unit.option_marks_inputs import (
    MS,
    OPTION,
    POLICY,
    T0,
    At,
    D,
    S,
    quote,
)


class FlushSink:
    """What run_source needs of the sink: its marks and publish_due."""

    def __init__(self, fail: bool = False, policy: MarkPolicy = POLICY) -> None:
        self.marks = OptionMarks(policy)
        self.fail = fail
        self.flushes = 0
        self.flushed = asyncio.Event()

    async def publish(self, events: object) -> None:
        raise AssertionError("not called here")

    async def publish_due(self, now_ns: int, *, final: bool = False) -> int:
        self.flushes += 1
        self.flushed.set()
        if self.fail:
            raise PublishFailed("no ack for the due marks")
        return 0


async def test_run_source_stops_both_tasks_and_raises_a_failure_as_itself() -> None:
    """The source and the flusher of held marks run together: the source's end
    stops the flusher; a failure of either stops the other and is raised as
    itself (main turns a BusError into exit 1, not a group of exceptions)."""

    class Ends:
        """Ends once the flusher has looked for due marks."""

        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            assert isinstance(sink, FlushSink)
            await sink.flushed.wait()

    class Fails:
        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            raise PublishFailed("no ack")

    class Waits:
        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            await stop.wait()

    sink = FlushSink()
    await run_source(Ends(), sink, asyncio.Event(), At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    assert sink.flushes >= 1
    with pytest.raises(PublishFailed, match="no ack"):
        await run_source(Fails(), FlushSink(), asyncio.Event(), At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    stop = asyncio.Event()
    with pytest.raises(PublishFailed, match="due marks"):
        await run_source(Waits(), FlushSink(fail=True), stop, At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    assert stop.is_set()


class EndsAfterAFlush:
    """A source that ends once the flusher has looked for due marks."""

    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        assert isinstance(sink, FlushSink)
        await sink.flushed.wait()


class EndsAtOnce:
    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        return None


async def test_standing_quotes_are_looked_at_without_an_interval_too() -> None:
    """Nothing is held back without an interval, but standing quotes fall due:
    the flusher runs unless both are off."""
    remarks_only = MarkPolicy(min_interval_ns=0, min_change=D(0), refresh_ns=30 * S)
    sink = FlushSink(policy=remarks_only)
    await asyncio.wait_for(
        run_source(EndsAfterAFlush(), sink, asyncio.Event(), At(T0), flush_every_s=0.01),  # type: ignore[arg-type]
        timeout=5,
    )
    assert sink.flushes >= 1
    neither = FlushSink(policy=MarkPolicy(min_interval_ns=0, refresh_ns=S, max_standing_ns=0))
    await run_source(EndsAtOnce(), neither, asyncio.Event(), At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    assert neither.flushes == 0


class PublishedBus:
    """What JetStreamSink needs of the bus: publish_many, every event kept."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish_many(self, events: list[Event], *, window: int) -> int:
        self.events += events
        return len(events)


async def test_a_quote_held_when_the_source_ends_is_still_marked() -> None:
    """On SIGTERM the flusher takes its last look at once, while the source
    still publishes what it had parsed; and a quote held back then is not due
    yet. The last quote of the burst is the contract's market: it is marked
    once the source has ended, not lost with the process."""
    bus = PublishedBus()
    sink = JetStreamSink(bus, marks=OptionMarks(POLICY))  # type: ignore[arg-type]
    last = quote(OPTION, "2.20", "2.30", T0 + 200 * MS)

    class Drains:
        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            await sink.publish([quote(OPTION, "2.00", "2.10", T0)])
            stop.set()
            await sink.publish([last])  # parsed before the stop, published after it

    await run_source(Drains(), sink, asyncio.Event(), At(T0 + 300 * MS), flush_every_s=0.01)
    marks = [e for e in bus.events if isinstance(e, MarkUpdated)]
    assert [m.causation_id for m in marks][1:] == [last.id]
    assert bus.events[-1] == marks[-1], "after its quote"


def test_the_flusher_looks_every_half_interval_or_half_refresh() -> None:
    assert flush_every_s(MarketdataSettings(mark_min_interval_s=0.4)) == 0.2
    assert flush_every_s(MarketdataSettings(mark_min_interval_s=0, mark_refresh_s=1)) == 0.5
    assert flush_every_s(MarketdataSettings(mark_min_interval_s=0)) == 1.0  # at most 1 s
