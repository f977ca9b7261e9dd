"""The JetStream sink: where every marketdata source's events go.

:meth:`JetStreamSink.publish` returns only once JetStream has acknowledged
every event it was given. That is the back-pressure: a source awaits its
publish before it makes more, so what is in flight is bounded by one call
(and within a call by :data:`WINDOW` unacknowledged publishes). Nothing is
dropped; a publish that cannot be acknowledged before the bus's deadline
raises :class:`~libs.bus.errors.PublishFailed` and stops the service.

Given :class:`~services.marketdata.domain.marks.OptionMarks`, the sink also
makes the option marks (``MarkUpdated`` on ``md.mark.<symbol>``) from the
option quotes that pass through it, whatever the source: each mark goes out
right after its quote, in the same call, and :meth:`JetStreamSink.publish_due`
publishes the marks of quotes held back by the throttle once they are due,
and the re-marks of quotes that still stand. The feed's own statuses pass
through here in order with its data, so a disconnect or a gap ends the
standing of its quotes before anything published after it. One lock keeps
the two apart, so a mark never reaches the stream before its quote.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

from libs.bus.client import Bus
from libs.contract.envelope import Event
from libs.contract.events import BarClosed, MarkUpdated, QuoteUpdated, TradePrinted
from services.marketdata import metrics
from services.marketdata.domain.marks import Marked, OptionMarks

log = logging.getLogger(__name__)

#: Most publishes in flight (unacknowledged) at once.
WINDOW = 1024


def channel_of(event: Event) -> str:
    """The channel an event is counted under (``trades``, ``minute_bars``, ``status``)."""
    if isinstance(event, TradePrinted):
        return "trades"
    if isinstance(event, QuoteUpdated):
        return "quotes"
    if isinstance(event, BarClosed):
        return "second_bars" if event.payload.interval == "1s" else "minute_bars"
    if isinstance(event, MarkUpdated):
        return "marks"
    if event.type == "FeedStatusChanged":
        return "status"
    return "other"


def _count(marked: Marked) -> None:
    for reason, n in marked.skipped.items():
        metrics.MARKS_SKIPPED.labels(reason=reason).inc(n)
    if marked.remarks:
        metrics.REMARKS.inc(marked.remarks)
    for why, n in marked.ended.items():
        metrics.STANDING_ENDED.labels(reason=why).inc(n)


class JetStreamSink:
    """An :class:`~services.marketdata.feed.EventSink` onto the recorded stream."""

    def __init__(self, bus: Bus, *, window: int = WINDOW, marks: OptionMarks | None = None) -> None:
        self.bus = bus
        self.window = window
        #: Makes the option marks of the quotes published (None: no marks).
        self.marks = marks
        self._lock = asyncio.Lock()
        #: Events acknowledged so far.
        self.published = 0
        #: ``ts_event`` of the last acknowledged event, and when we saw it (ns).
        self.last_event_ns: int | None = None

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish ``events`` in order (with the marks they make, each after its
        quote); return once every one is acknowledged."""
        if not events:
            return
        async with self._lock:
            if self.marks is not None:
                marked = self.marks.with_marks(events)
                events = marked.events
                _count(marked)
            await self._send(events)
        self.last_event_ns = events[-1].ts_event

    async def publish_due(self, now_ns: int, *, final: bool = False) -> int:
        """Publish the marks of the quotes held back whose interval has passed
        by ``now_ns`` (``final``: of all of them), and the re-marks of standing
        quotes due; returns how many."""
        if self.marks is None:
            return 0
        async with self._lock:
            due = self.marks.due(now_ns, final=final)
            _count(due)
            if due.events:
                await self._send(due.events)
        return due.marks

    async def _send(self, events: Sequence[Event]) -> None:
        await self.bus.publish_many(events, window=self.window)
        self.published += len(events)
        for channel, n in Counter(channel_of(e) for e in events).items():
            metrics.EVENTS_OUT.labels(channel=channel).inc(n)
