"""The Polygon source's gap-fill: the bars of an outage from REST, after each reconnect.

One :class:`Backfill` task per link and bar interval waits for the link's
reconnects (its trigger queue, fed by :class:`.session.Supervisor`), asks the
interval's ledger (:class:`~services.marketdata.domain.gapfill.GapFiller`)
which windows are open, fetches them from the REST aggregates (:mod:`.rest`)
and publishes the bars not already published, in time order,
``backfilled=True``, then one ``gap_filled`` status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from pydantic import ValidationError

from libs.contract.envelope import Clock, Event
from services.marketdata import metrics
from services.marketdata.adapters.polygon.links import Link
from services.marketdata.adapters.polygon.outbox import Outbox
from services.marketdata.adapters.polygon.parse import MS, rest_bar_event, rest_bar_rejected
from services.marketdata.adapters.polygon.rest import GapFillFetchError, PolygonRest
from services.marketdata.adapters.polygon.schemas import RestAgg
from services.marketdata.adapters.polygon.session import Backoff
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.cache import INTERVAL
from services.marketdata.domain.gapfill import GapFiller, GapWindow, time_ordered

log = logging.getLogger(__name__)


def _utc(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Polygon's REST timespan of each bar interval (the cache's INTERVAL, turned round).
TIMESPAN: dict[str, str] = {interval: timespan for timespan, interval in INTERVAL.items()}
#: Longest sleep between two looks at the clock while bars become final.
SETTLE_POLL_S = 1.0


class Backfill:
    """Fills the links' open gaps of bars from REST; counts the bars it published."""

    def __init__(
        self,
        settings: MarketdataSettings,
        *,
        clock: Clock,
        outbox: Outbox,
        triggers: dict[tuple[str, str], asyncio.Queue[tuple[int, int]]],
        backoff: Backoff,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.outbox = outbox
        self.triggers = triggers
        self.backoff = backoff
        #: Total, for /health.
        self.bars = 0

    async def run(self, rest: PolygonRest, link: Link, interval: str) -> None:
        """Fill ``link``'s open gaps of ``interval`` bars after each reconnect.

        One REST request (and its pages) per symbol and outage; failed fetches
        are retried with backoff. The bars are published in time order across
        symbols, ``polygon_publish_batch`` at a time, then one ``gap_filled``.
        Bars not final yet (closed less than ``polygon_gapfill_settle_s``
        before) are fetched in a second pass once they are, less those the
        live stream delivered meanwhile; bars REST had not built yet are
        asked again every ``polygon_gapfill_recheck_s`` until their window
        closed ``polygon_gapfill_lag_s`` ago.
        """
        filler = link.fillers[interval]
        triggers = self.triggers[link.market, interval]
        while True:
            reconnect, epoch = await triggers.get()
            attempt = 0
            while True:
                while not triggers.empty():
                    reconnect, epoch = triggers.get_nowait()  # the newest reconnect wins
                if filler.disconnects != epoch:
                    # Down again since that reconnect: the gaps now reach into
                    # an outage not over yet, and the next reconnect fills them.
                    break
                now = self.clock.now_ns()
                windows = filler.windows(reconnect, now)
                failed = await self._fill(rest, link, interval, windows, now)
                if failed:
                    delay = self.backoff(attempt)
                    attempt += 1
                    log.warning(
                        "polygon gap-fill %s: retrying %s in %.1fs",
                        interval,
                        ",".join(failed),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                due = filler.final_at(reconnect)
                if due is None:
                    break
                await self._until(due, filler, epoch, triggers)

    async def _until(
        self,
        due_ns: int,
        filler: GapFiller,
        epoch: int,
        triggers: asyncio.Queue[tuple[int, int]],
    ) -> None:
        """Wait for the clock to reach ``due_ns``, a newer reconnect, or a disconnect."""
        while filler.disconnects == epoch and triggers.empty():
            left_s = (due_ns - self.clock.now_ns()) / 1e9
            if left_s <= 0:
                return
            # A polling period, not synchronisation: the clock is injected.
            await asyncio.sleep(min(left_s, SETTLE_POLL_S))

    async def _fill(
        self,
        rest: PolygonRest,
        link: Link,
        interval: str,
        windows: list[GapWindow],
        asked_ns: int,
    ) -> list[str]:
        """Fetch ``windows`` (asked for at ``asked_ns``) and publish their bars
        not yet published; the symbols that failed."""
        filler = link.fillers[interval]
        timespan = TIMESPAN[interval]
        batch = self.settings.polygon_publish_batch
        fetched = []
        failed: list[str] = []
        for window in windows:
            try:
                rows = await rest.bars(
                    window.symbol, window.first_start_ns, window.last_start_ns, timespan
                )
            except GapFillFetchError as e:
                log.error("polygon gap-fill %s %s: %s", interval, window.symbol, e)
                failed.append(window.symbol)
                continue
            fetched.append((window, rows))
        chosen: list[tuple[str, RestAgg]] = []
        for window, rows in fetched:
            missing = filler.missing(window, rows, lambda r: r.t * MS)
            chosen.extend((window.symbol, r) for r in missing)
        ts_init = self.clock.now_ns()
        events: list[Event] = []
        refused = 0
        for symbol, row in time_ordered(chosen, lambda r: r.t):
            try:
                events.append(
                    rest_bar_event(
                        symbol, row, interval=interval, source=self.outbox.source, ts_init=ts_init
                    )
                )
            except ValidationError as e:
                # Dead-lettered, as the same bar over the WebSocket
                # would be; it used to end the feed (and a restart
                # fetched it again: a crash loop).
                refused += 1
                bad = rest_bar_rejected(symbol, row, e, interval=interval)
                events.append(self.outbox.dead_letter(link, bad))
        waiting: list[str] = []
        given_up: list[str] = []
        for window, rows in fetched:
            outcome = filler.filled(window, [r.t * MS for r in rows], asked_ns)
            if outcome.waiting_from_ns is not None:
                waiting.append(f"{window.symbol} from {_utc(outcome.waiting_from_ns)}")
            if outcome.given_up_from_ns is not None:
                given_up.append(f"{window.symbol} from {_utc(outcome.given_up_from_ns)}")
                log.warning(
                    "polygon gap-fill %s %s: REST has no bar from %s on %.0fs after its close;"
                    " taken as no trades",
                    interval,
                    window.symbol,
                    _utc(outcome.given_up_from_ns),
                    self.settings.polygon_gapfill_lag_s,
                )
        if fetched:
            count = len(events) - refused
            self.bars += count
            metrics.GAP_FILLED_BARS.inc(count)
            unit = "min" if interval == "1m" else "s"
            spans = ", ".join(f"{w.symbol} {w.bars} {unit}" for w, _ in fetched)
            if failed:
                # A partial pass: its status says (and states) what is left.
                spans += "; still open: " + ", ".join(failed)
            if any(not w.final for w, _ in fetched):
                spans += "; the last bars when final"
            if waiting:
                spans += "; not in REST yet, asked again: " + ", ".join(waiting)
            if given_up:
                lag = self.settings.polygon_gapfill_lag_s
                spans += f"; still not in REST {lag:.0f}s after, taken as no trades: "
                spans += ", ".join(given_up)
            # A long outage of second bars is many bars: hand them to the
            # publisher a batch at a time (it takes each queued list whole).
            # Every event, dead letters included: cut by ``count`` (bars
            # only), the last ones were dropped, already in the ledger.
            chunks = [events[i : i + batch] for i in range(0, len(events), batch)] or [[]]
            chunks[-1].append(
                self.outbox.status(
                    "gap_filled",
                    f"{count} {interval} bar(s) from REST ({spans})",
                    link=link,
                    bars=count,
                )
            )
            for chunk in chunks:
                await self.outbox.emit(chunk)
        return failed
