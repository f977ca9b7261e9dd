"""The JetStream sink: where every marketdata source's events go.

:meth:`JetStreamSink.publish` returns only once JetStream has acknowledged
every event it was given. That is the back-pressure: a source awaits its
publish before it makes more, so what is in flight is bounded by one call
(and within a call by :data:`WINDOW` unacknowledged publishes). Nothing is
dropped; a publish that cannot be acknowledged before the bus's deadline
raises :class:`~libs.bus.errors.PublishFailed` and stops the service.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from libs.bus.client import Bus
from libs.contract.envelope import Event
from libs.contract.events import BarClosed, QuoteUpdated, TradePrinted
from services.marketdata import metrics

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
    if event.type == "FeedStatusChanged":
        return "status"
    return "other"


class JetStreamSink:
    """An :class:`~services.marketdata.feed.EventSink` onto the recorded stream."""

    def __init__(self, bus: Bus, *, window: int = WINDOW) -> None:
        self.bus = bus
        self.window = window
        #: Events acknowledged so far.
        self.published = 0
        #: ``ts_event`` of the last acknowledged event, and when we saw it (ns).
        self.last_event_ns: int | None = None

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish ``events`` in order; return once every one is acknowledged."""
        if not events:
            return
        await self.bus.publish_many(events, window=self.window)
        self.published += len(events)
        self.last_event_ns = events[-1].ts_event
        for channel, n in Counter(channel_of(e) for e in events).items():
            metrics.EVENTS_OUT.labels(channel=channel).inc(n)
