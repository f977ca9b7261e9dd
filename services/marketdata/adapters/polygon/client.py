"""The Polygon live source: WebSocket ingest, supervision, REST gap-fill, staleness.

:class:`PolygonSource` is a :class:`~services.marketdata.feed.FeedSource`. For
each market it needs (``stocks``; ``options`` when ``O:`` symbols are
configured) it keeps one WebSocket connection up, forever:

- **handshake** (``PROTOCOLS.md``): the ``connected`` frame, then
  ``{"action":"auth"}`` and its reply in a separate frame, then one
  ``subscribe`` for every configured channel and symbol, acknowledged per
  channel. Each phase has the named timeout ``polygon_connect_timeout_s``;
  a channel still not acknowledged then ends the session (``timeout``):
  Polygon acks every channel it serves, so it is not streaming.
- **supervision**: any end of a session (TCP drop, a close frame of any
  code, a handshake timeout, ``force_disconnect``, ``slow_consumer``) is
  reported and followed by a reconnect after exponential backoff with full
  jitter (``polygon_reconnect_initial_s`` doubling to
  ``polygon_reconnect_max_s``; back to the start after a healthy session).
  ``auth_failed`` / ``auth_timeout`` (in the auth reply or at any later
  point of the session) and ``max_connections`` (another client
  took our one connection) are retried slowly, every
  ``polygon_auth_retry_s``, so we neither hammer the API nor keep kicking
  the other client off.
- **gap-fill**: after a reconnect, the minute bars (``AM``) and second bars
  (``A``) of the outage, whichever are subscribed, come from the REST
  aggregates (:mod:`.rest`; timespan ``minute`` or ``second``, one request per
  symbol and outage, pages followed), only those not already published, in
  time order, ``backfilled=True`` (:mod:`services.marketdata.domain.gapfill`,
  one ledger per interval). Bars whose window closed less than
  ``polygon_gapfill_settle_s`` before are fetched in a second request once
  they are final, unless their live bar came meanwhile. Bars REST has not
  built yet (none of that symbol after them) are asked again every
  ``polygon_gapfill_recheck_s`` until they closed ``polygon_gapfill_lag_s``
  ago, then taken as no trades. At start-up the newest bar per symbol and
  interval on the stream is where the last run stopped (:mod:`.resume`), so a
  restart is gap-filled too.
- **staleness**: no data for ``stale_after_s`` while the exchange calendar
  says the market is open is reported (``stale``), as is the recovery.
- **bad input**: a malformed frame or an invalid event is dead-lettered
  (``MessageDeadLettered`` on ``deadletter.marketdata``) and the feed goes on.

Every status (``connected``, ``authenticated``, ``subscribed``,
``disconnected``, ``reconnecting``, ``auth_failed``, ``max_connections``,
``force_disconnect``, ``slow_consumer``, ``stale``, ``recovered``,
``gap_filled`` with its count) is a ``FeedStatusChanged`` on
``md.status.polygon``, naming its connection (``market``: ``stocks`` or
``options``) when it is about one, in order with the data. Frames are parsed as they
arrive and handed, a batch at a time, to the sink by one publisher task
through a bounded queue: when JetStream is slower than the feed, the queue
fills, the socket is no longer read and TCP pushes back on Polygon (which
may then send ``slow_consumer``); nothing is dropped.

Why ``websockets`` and not the official ``massive.WebSocketClient``: that
client reconnects inside ``connect()`` without telling its caller, so we
could neither report a disconnect nor know when to gap-fill; a clean close
ends it silently and ``max_reconnects`` ends it with an exception; it
handles ``auth_failed`` but not ``auth_timeout``; and with ``raw=False`` a
frame that is not JSON raises out of ``connect()`` and takes the feed down.
So the connection speaks the same protocol with ``websockets`` directly
(the library the official client uses underneath), and the REST side uses
the official ``RESTClient`` (:mod:`.rest`).

The API key goes into the auth frame and the REST client, nowhere else: the
wire logger is held at INFO so that even ``TRADEBUS_LOG_LEVEL=DEBUG`` does
not print the auth frame.

This module wires the parts and watches staleness: :mod:`.links` (the
connections and their bar ledgers, from the settings), :mod:`.session` (the
handshake, the data and the supervision of one connection), :mod:`.backfill`
(the gap-fill task of each connection and bar interval) and :mod:`.outbox`
(the bounded queue, its publisher, our statuses and dead letters).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any

from libs.config import ConfigError
from libs.contract.envelope import Clock
from services.marketdata import metrics
from services.marketdata.adapters.polygon.backfill import Backfill
from services.marketdata.adapters.polygon.links import Link, links_of
from services.marketdata.adapters.polygon.outbox import Outbox
from services.marketdata.adapters.polygon.parse import FrameParser
from services.marketdata.adapters.polygon.rest import PolygonRest
from services.marketdata.adapters.polygon.resume import resume_point
from services.marketdata.adapters.polygon.session import Backoff, Supervisor
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.gapfill import UNSTATED
from services.marketdata.domain.staleness import MarketHours, StaleMonitor
from services.marketdata.feed import EventSink

log = logging.getLogger(__name__)

#: Allocations between two young-generation collections while the feed runs.
GC_GEN0_THRESHOLD = 10_000


@contextlib.contextmanager
def collector_tuned_for_throughput() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off the hot path while the feed runs.

    Every record allocates a few short-lived containers (its venue record, our
    event and payload), none in a cycle; with the default threshold (700) the
    young generation is collected every dozen records, and each older
    collection walks every long-lived object of the process. Profiling the
    feed at 20k records/s showed a quarter of its CPU there. So the objects
    that live as long as the process are frozen out of the collector and the
    young generation is collected every ``GC_GEN0_THRESHOLD`` allocations.
    Process-wide, hence restored on the way out.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], GC_GEN0_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class PolygonSource:
    """Polygon's live feed as a ``FeedSource`` (see the module docstring)."""

    def __init__(
        self,
        settings: MarketdataSettings,
        *,
        clock: Clock,
        hours: MarketHours | None = None,
        rest: PolygonRest | None = None,
    ) -> None:
        if settings.polygon_api_key is None or not settings.polygon_api_key.get_secret_value():
            raise ConfigError("POLYGON_API_KEY: not set (the polygon source needs it)")
        self.settings = settings
        self.clock = clock
        self._key = settings.polygon_api_key.get_secret_value()
        self.source = f"marketdata/{settings.instance}"
        self.links: list[Link] = links_of(settings)
        self._rest = rest
        self._hours = hours
        self._outbox = Outbox(
            source=self.source,
            clock=clock,
            queue_frames=settings.polygon_queue_frames,
            batch=settings.polygon_publish_batch,
        )
        #: Per link and bar interval, for its gap-fill task: the reconnect times (ns), each
        #: with its ledger's disconnect count then (a fill is stale once that moved).
        triggers: dict[tuple[str, str], asyncio.Queue[tuple[int, int]]] = {
            (link.market, interval): asyncio.Queue()
            for link in self.links
            for interval in link.fillers
        }
        backoff = Backoff(settings)
        self._supervisor = Supervisor(
            settings,
            key=self._key,
            clock=clock,
            parser=FrameParser(source=self.source, clock=clock),
            outbox=self._outbox,
            triggers=triggers,
            backoff=backoff,
        )
        self._backfill = Backfill(
            settings, clock=clock, outbox=self._outbox, triggers=triggers, backoff=backoff
        )
        self._stale: StaleMonitor | None = None
        #: Totals, for /health and tests.
        self.published_frames = 0

    @property
    def gap_filled_bars(self) -> int:
        """Bars published by the gap-fill so far."""
        return self._backfill.bars

    @property
    def dead_lettered(self) -> int:
        """Frames and records dead-lettered so far."""
        return self._outbox.dead_lettered

    # ------------------------------------------------------------ FeedSource

    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set; then close the sockets and flush what was parsed."""
        if self._hours is None:
            from services.marketdata.adapters.polygon.hours import ExchangeHours

            self._hours = await asyncio.to_thread(ExchangeHours, self.settings.calendar)
        if self._rest is None and any(link.fillers for link in self.links):
            self._rest = PolygonRest(self._key, self.settings.polygon_rest_url)
        if self.settings.polygon_resume_from_stream:
            await self._resume()
        self._stale = StaleMonitor(
            int(self.settings.stale_after_s * 1e9), self._hours, now_ns=self.clock.now_ns()
        )
        self._supervisor.stale = self._stale
        try:
            with collector_tuned_for_throughput():
                await self._run(sink, stop)
        finally:
            if self._rest is not None:
                self._rest.close()

    async def _run(self, sink: EventSink, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                pump = tg.create_task(self._outbox.pump(sink), name="polygon-publish")
                workers = [
                    tg.create_task(self._supervisor.supervise(link), name=f"polygon-{link.market}")
                    for link in self.links
                ]
                workers.append(tg.create_task(self._watch_staleness(), name="polygon-stale"))
                rest = self._rest
                if rest is not None:
                    workers.extend(
                        tg.create_task(
                            self._backfill.run(rest, link, interval),
                            name=f"polygon-gapfill-{link.market}-{interval}",
                        )
                        for link in self.links
                        for interval in link.fillers
                    )
                await stop.wait()
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                await self._outbox.say("disconnected", "stopped")
                await self._outbox.close()  # the publisher drains the queue, then ends
                await pump
        except BaseExceptionGroup as eg:
            # Let the service see the sink's own error (e.g. PublishFailed), not a group.
            if len(eg.exceptions) == 1:
                raise eg.exceptions[0] from None
            raise

    async def _resume(self) -> None:
        """Seed each gap-filler with the newest bar of its interval already on the stream,
        and open again the gaps the last run's statuses left open (:mod:`.resume`).

        However old: the gap's window reaches back ``polygon_gapfill_max_s`` at
        most (:meth:`GapFiller.windows`), so a stop longer than that fills what
        it can, as an outage that long does, rather than nothing.
        """
        now = self.clock.now_ns()
        for link in self.links:
            for interval, filler in link.fillers.items():
                point = await resume_point(
                    self.settings, link.market, filler.symbols, interval, now_ns=now
                )
                for symbol, start_ns in point.newest.items():
                    filler.seed(symbol, start_ns)
                # A gap the last run left open starts before its newest bar.
                for symbol, start_ns in point.gaps.items():
                    filler.reopen(
                        symbol,
                        start_ns,
                        point.published.get(symbol, ()),
                        waiting_from_ns=(
                            UNSTATED
                            if point.awaiting_rest is None
                            else point.awaiting_rest.get(symbol)
                        ),
                    )
                if point.newest:
                    log.info(
                        "polygon %s: resuming after the last %s bar of %d symbol(s) on the stream",
                        link.market,
                        interval,
                        len(point.newest),
                    )
                if point.gaps:
                    log.info(
                        "polygon %s: %d %s gap(s) left open by the last run: %s",
                        link.market,
                        len(point.gaps),
                        interval,
                        ", ".join(sorted(point.gaps)[:10]),
                    )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Connection state per market, staleness and counts (for /health).

        Not ok while stale: no data in market hours for ``stale_after_s``
        (which a connection that is down, or refused its key, ends in too).
        It used to be said in the body under a 200."""
        stale = bool(self._stale and self._stale.stale)
        return not stale, {
            "links": {
                link.market: {"state": link.state, "last_status": link.last_status}
                for link in self.links
            },
            "stale": stale,
            "gap_filled_bars": self.gap_filled_bars,
            "dead_lettered": self.dead_lettered,
            "open_gaps": sum(
                len(filler.open_gaps()) for link in self.links for filler in link.fillers.values()
            ),
        }

    # ------------------------------------------------------------ staleness

    async def _watch_staleness(self) -> None:
        assert self._stale is not None
        every = min(1.0, self.settings.stale_after_s / 4)
        while True:
            await asyncio.sleep(every)  # a polling period, not synchronisation
            transition = self._stale.check(self.clock.now_ns())
            if transition == "stale":
                metrics.STALE.set(1)
                await self._outbox.say("stale", self._stale.reason)
            elif transition == "recovered":
                metrics.STALE.set(0)
                await self._outbox.say("recovered", self._stale.reason)
