"""The Polygon source's one way out: a bounded queue, its publisher, statuses and dead letters.

Everything the source emits (data parsed from a frame, gap-fill bars,
statuses, dead letters) is put on one bounded queue, in order, and one
publisher (:meth:`Outbox.pump`) hands it to the sink a batch at a time. When
JetStream is slower than the feed the queue fills and whoever puts waits: the
socket is no longer read and TCP pushes back on Polygon; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging

from libs.contract.envelope import Clock, Event
from libs.contract.events import FeedStatusChanged, FeedStatusPayload
from services.marketdata import metrics
from services.marketdata.adapters.polygon.links import Link
from services.marketdata.adapters.polygon.parse import FEED, Rejected
from services.marketdata.feed import EventSink

log = logging.getLogger(__name__)

#: The statuses of a connection after which its open gaps may have changed:
#: they state them (``open_gaps``) and why (``gaps_awaiting_rest``), for a
#: restart to read back.
GAP_STATUSES = ("disconnected", "reconnecting", "gap_filled")


class Outbox:
    """The queue of events on their way to the sink, and the makers of our own events."""

    def __init__(self, *, source: str, clock: Clock, queue_frames: int, batch: int) -> None:
        self.source = source
        self.clock = clock
        self.batch = batch
        self.queue: asyncio.Queue[list[Event] | None] = asyncio.Queue(maxsize=queue_frames)
        #: Total, for /health.
        self.dead_lettered = 0

    async def pump(self, sink: EventSink) -> None:
        """The one publisher: batches of queued events to the sink, in order."""
        limit = self.batch
        queue = self.queue
        while True:
            item = await queue.get()
            if item is None:
                return
            batch = item  # a fresh list per frame: ours to extend
            done = False
            while len(batch) < limit and not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    done = True
                    break
                batch.extend(more)
            await sink.publish(batch)
            if done:
                return

    async def emit(self, events: list[Event]) -> None:
        """Queue ``events`` (a fresh list, which the publisher may extend); none: nothing."""
        if events:
            await self.queue.put(events)

    async def say(self, status: str, message: str, *, link: Link | None = None) -> None:
        """Queue one status (:meth:`status`)."""
        await self.emit([self.status(status, message, link=link)])

    async def close(self) -> None:
        """The publisher drains the queue, then ends."""
        await self.queue.put(None)

    def status(
        self, status: str, message: str, *, link: Link | None = None, bars: int | None = None
    ) -> FeedStatusChanged:
        """A ``FeedStatusChanged`` of ``link`` (or of the feed), its open gaps stated."""
        text = f"{link.market}: {message}" if link is not None else message
        gaps = awaiting = None
        if link is not None:
            link.last_status = status
            if status in GAP_STATUSES and link.fillers:
                # What a restart reads back (resume.py): a gap still open
                # when we stop is filled by the next run.
                gaps = {interval: f.open_gaps() for interval, f in link.fillers.items()}
                # And why: a gap waiting for REST to build its bars gives
                # them up, and says so, where any other takes them as no trades.
                awaiting = {interval: f.awaiting_rest() for interval, f in link.fillers.items()}
        log.info("polygon %s: %s", status, text)
        payload = FeedStatusPayload.model_validate(
            {
                "feed": FEED,
                "status": status,
                "message": text,
                "gap_filled_bars": bars,
                "market": link.market if link is not None else None,
                "open_gaps": gaps,
                "gaps_awaiting_rest": awaiting,
            }
        )
        return FeedStatusChanged.create(
            payload,
            source=self.source,
            clock=self.clock,
        )

    def dead_letter(self, link: Link, bad: Rejected) -> Event:
        """The ``MessageDeadLettered`` of a frame or record we could not take, counted."""
        log.warning("polygon %s: dead-lettering %s: %s", link.market, bad.reason, bad.detail)
        metrics.DEAD_LETTERS.labels(service="marketdata", reason=bad.reason).inc()
        self.dead_lettered += 1
        return bad.dead_letter(market=link.market, source=self.source, clock=self.clock)
