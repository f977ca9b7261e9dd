"""The synthetic feed: the seeded :class:`SyntheticMarket`, paced in real time.

It ticks the market ``rate`` times a second on the wall clock and hands what
each round of ticks yields to the sink, waiting for the acks before ticking
on. If publishing falls behind, the schedule restarts from now rather than
bursting to catch up (counted in a metric); nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from libs.contract.envelope import Clock, Event
from services.marketdata import metrics
from services.marketdata.domain.synthetic import SyntheticMarket
from services.marketdata.feed import EventSink
from services.marketdata.sink import channel_of

log = logging.getLogger(__name__)

#: Most ticks generated in one go when behind; beyond it the schedule resets.
MAX_CATCH_UP_TICKS = 2000


class SyntheticSource:
    """A :class:`~services.marketdata.feed.FeedSource` of seeded synthetic data."""

    feed = "synthetic"

    def __init__(self, market: SyntheticMarket, *, rate: float, clock: Clock) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.market = market
        self.rate = rate
        self.clock = clock
        self.ticks = 0
        #: The latest tick time so far (ns).
        self._now_ns = 0

    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        """Tick at ``rate`` per second until ``stop`` is set."""
        log.info(
            "synthetic feed: %s, %s at %g ticks/s (seed %d)",
            ",".join(self.market.config.symbols),
            ",".join(sorted(self.market.config.channels)),
            self.rate,
            self.market.config.seed,
        )
        start = time.monotonic()
        done = 0  # ticks since ``start``
        while not stop.is_set():
            due = int((time.monotonic() - start) * self.rate) + 1 - done
            if due > MAX_CATCH_UP_TICKS:
                metrics.SCHEDULE_RESETS.labels(feed=self.feed).inc()
                log.warning(
                    "publishing is %d ticks behind %g/s; restarting the pace", due, self.rate
                )
                start, done, due = time.monotonic(), 0, 1
            if due > 0:
                await self._emit(sink, due)
                done += due
            delay = start + done / self.rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def _emit(self, sink: EventSink, ticks: int) -> None:
        events: list[Event] = []
        for _ in range(ticks):
            # The wall clock can be set back (NTP, a resumed VM); the market's
            # time must not go back, so it waits at the latest time seen.
            self._now_ns = max(self._now_ns, self.clock.now_ns())
            events.extend(self.market.tick(self._now_ns))
        self.ticks += ticks
        for channel, n in Counter(channel_of(e) for e in events).items():
            metrics.MESSAGES_IN.labels(channel=channel).inc(n)
        await sink.publish(events)
