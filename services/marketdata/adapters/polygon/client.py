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
  one ledger per interval). At start-up the newest bar per symbol and
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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from libs.config import ConfigError
from libs.contract.envelope import Clock, Event
from libs.contract.events import FeedStatusChanged, FeedStatusPayload
from services.marketdata import metrics
from services.marketdata.adapters.polygon.parse import (
    FEED,
    INTERVAL_MS,
    INTERVAL_OF_PREFIX,
    MS,
    PREFIX_OF_CHANNEL,
    FrameParser,
    Parsed,
    Rejected,
    rest_bar_event,
    rest_bar_rejected,
    statuses_text,
)
from services.marketdata.adapters.polygon.rest import GapFillFetchError, PolygonRest
from services.marketdata.adapters.polygon.resume import resume_point
from services.marketdata.adapters.polygon.schemas import RestAgg, ws_auth, ws_subscribe
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.cache import INTERVAL
from services.marketdata.domain.gapfill import GapFiller, time_ordered
from services.marketdata.domain.staleness import MarketHours, StaleMonitor
from services.marketdata.feed import EventSink

log = logging.getLogger(__name__)

#: websockets logs every frame at DEBUG, the auth frame (our key) included.
_WIRE_LOG = logging.getLogger(f"{__name__}.wire")
_WIRE_LOG.setLevel(logging.INFO)

#: Statuses after which the server closes the connection, and ours for them.
KICKS = ("max_connections", "force_disconnect", "slow_consumer")
#: Statuses that withdraw our authentication, at the door or later.
AUTH_REFUSED = ("auth_failed", "auth_timeout")
#: Reasons retried slowly (``polygon_auth_retry_s``) rather than with backoff.
SLOW_RETRY = ("auth_failed", "max_connections")
#: The statuses of a connection after which its open gaps may have changed:
#: they state them (``open_gaps``), for a restart to read back.
GAP_STATUSES = ("disconnected", "reconnecting", "gap_filled")
#: A session that lasted this long was healthy: the backoff starts over.
HEALTHY_SESSION_S = 10.0
#: Allocations between two young-generation collections while the feed runs.
GC_GEN0_THRESHOLD = 10_000
WS_MAX_FRAME = 16 * 1024 * 1024
#: Polygon's REST timespan of each bar interval (the cache's INTERVAL, turned
#: round), and its length.
TIMESPAN: dict[str, str] = {interval: timespan for timespan, interval in INTERVAL.items()}
INTERVAL_NS = {interval: ms * MS for interval, ms in INTERVAL_MS.items()}


@dataclass
class Link:
    """One WebSocket connection: a market and what it subscribes to."""

    market: str
    url: str
    channels: list[str]
    #: Per bar interval subscribed (``1m``, ``1s``): its ledger and open gaps.
    fillers: dict[str, GapFiller]
    state: str = "idle"
    last_status: str = ""
    sessions: int = 0


@dataclass
class _Outcome:
    """How a session ended."""

    reason: str  # dropped, closed, auth_failed, max_connections, ... (metric label)
    message: str
    #: The subscribe was sent: from then on data may flow (before the acks too).
    asked: bool = False
    subscribed: bool = False
    data: bool = False
    #: The last status the server sent that we had no use for (an unconfirmed
    #: refusal, say), for the message if the handshake then times out.
    said: str = ""
    started: float = field(default_factory=time.monotonic)


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


def parse_channels(value: str) -> list[str]:
    """``trades,quotes,minute_bars`` -> Polygon prefixes ``T``, ``Q``, ``AM``."""
    prefixes: list[str] = []
    for name in (c.strip() for c in value.split(",")):
        if not name:
            continue
        if name not in PREFIX_OF_CHANNEL:
            known = ", ".join(PREFIX_OF_CHANNEL)
            raise ConfigError(f"TRADEBUS_CHANNELS: unknown channel {name!r} (known: {known})")
        prefixes.append(PREFIX_OF_CHANNEL[name])
    if not prefixes:
        raise ConfigError("TRADEBUS_CHANNELS: no channels")
    return list(dict.fromkeys(prefixes))


def _market_url(url: str, market: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"TRADEBUS_POLYGON_WS_URL: not a ws:// or wss:// URL for {market}")
    return url


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
        prefixes = parse_channels(settings.channels)
        symbols = settings.symbol_list
        stocks = [s for s in symbols if not s.startswith("O:")]
        options = [s for s in symbols if s.startswith("O:")]
        self.links: list[Link] = []
        max_gap_ns = int(settings.polygon_gapfill_max_s * 1e9)
        for market, url, syms in (
            ("stocks", settings.polygon_ws_url, stocks),
            ("options", settings.polygon_options_ws_url, options),
        ):
            if syms:
                subs = [f"{p}.{s}" for p in prefixes for s in syms]
                bar_symbols = [s for s in syms if s != "*"]
                fillers = {
                    interval: GapFiller(
                        bar_symbols,
                        interval_ns=INTERVAL_NS[interval],
                        max_gap_ns=max_gap_ns,
                        # The ledger need reach no further back than a gap can.
                        retention_ns=max_gap_ns + INTERVAL_NS[interval],
                    )
                    for prefix, interval in INTERVAL_OF_PREFIX.items()
                    if prefix in prefixes and bar_symbols
                }
                self.links.append(Link(market, _market_url(url, market), subs, fillers))
        self._rest = rest
        self._hours = hours
        self._parser = FrameParser(source=self.source, clock=clock)
        self._queue: asyncio.Queue[list[Event] | None] = asyncio.Queue(
            maxsize=settings.polygon_queue_frames
        )
        #: Reconnect times (ns) per link and bar interval, for its gap-fill task.
        self._gap_triggers: dict[tuple[str, str], asyncio.Queue[int]] = {
            (link.market, interval): asyncio.Queue()
            for link in self.links
            for interval in link.fillers
        }
        self._stale: StaleMonitor | None = None
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not crypto
        #: Totals, for /health and tests.
        self.published_frames = 0
        self.gap_filled_bars = 0
        self.dead_lettered = 0

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
        try:
            with collector_tuned_for_throughput():
                await self._run(sink, stop)
        finally:
            if self._rest is not None:
                self._rest.close()

    async def _run(self, sink: EventSink, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                pump = tg.create_task(self._pump(sink), name="polygon-publish")
                workers = [
                    tg.create_task(self._supervise(link), name=f"polygon-{link.market}")
                    for link in self.links
                ]
                workers.append(tg.create_task(self._watch_staleness(), name="polygon-stale"))
                workers.extend(
                    tg.create_task(
                        self._gap_fill_loop(link, interval),
                        name=f"polygon-gapfill-{link.market}-{interval}",
                    )
                    for link in self.links
                    for interval in link.fillers
                )
                await stop.wait()
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                await self._emit([self._status("disconnected", "stopped")])
                await self._queue.put(None)  # the publisher drains the queue, then ends
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
                    filler.reopen(symbol, start_ns, point.published.get(symbol, ()))
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

    # ------------------------------------------------------------ publishing

    async def _pump(self, sink: EventSink) -> None:
        """The one publisher: batches of queued events to the sink, in order."""
        limit = self.settings.polygon_publish_batch
        queue = self._queue
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

    async def _emit(self, events: list[Event]) -> None:
        if events:
            await self._queue.put(events)

    def _status(
        self, status: str, message: str, *, link: Link | None = None, bars: int | None = None
    ) -> FeedStatusChanged:
        text = f"{link.market}: {message}" if link is not None else message
        gaps = None
        if link is not None:
            link.last_status = status
            if status in GAP_STATUSES and link.fillers:
                # What a restart reads back (resume.py): a gap still open
                # when we stop is filled by the next run.
                gaps = {interval: f.open_gaps() for interval, f in link.fillers.items()}
        log.info("polygon %s: %s", status, text)
        payload = FeedStatusPayload.model_validate(
            {
                "feed": FEED,
                "status": status,
                "message": text,
                "gap_filled_bars": bars,
                "market": link.market if link is not None else None,
                "open_gaps": gaps,
            }
        )
        return FeedStatusChanged.create(
            payload,
            source=self.source,
            clock=self.clock,
        )

    # ------------------------------------------------------------ supervision

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (never below a tenth of the first delay)."""
        first = self.settings.polygon_reconnect_initial_s
        cap = min(self.settings.polygon_reconnect_max_s, first * 2**attempt)
        return max(first / 10, self._rng.uniform(0, cap))

    async def _supervise(self, link: Link) -> None:
        """Keep ``link`` connected forever (until cancelled)."""
        attempt = 0
        while True:
            link.sessions += 1
            outcome = _Outcome("dropped", "")
            try:
                outcome = await self._session(link, outcome)
            except Exception:
                # A bug must not end the feed for good: say it loudly, go on.
                log.exception("polygon %s: session failed", link.market)
                outcome.reason = "error"
                outcome.message = "internal error (see the log)"
                if outcome.asked:
                    self._disconnected(link)
            finally:
                link.state = "disconnected"
            metrics.RECONNECTS.labels(feed=FEED, reason=outcome.reason).inc()
            lived = time.monotonic() - outcome.started
            if outcome.subscribed and (outcome.data or lived >= HEALTHY_SESSION_S):
                attempt = 0
            if outcome.reason in SLOW_RETRY:
                delay = self.settings.polygon_auth_retry_s
            else:
                delay = self._backoff(attempt)
                attempt += 1
            link.state = "reconnecting"
            await self._emit(
                [
                    self._status(
                        "reconnecting",
                        f"in {delay:.2f}s after {outcome.reason}",
                        link=link,
                    )
                ]
            )
            await asyncio.sleep(delay)

    async def _session(self, link: Link, outcome: _Outcome) -> _Outcome:
        """One connection, from the handshake to its end; says how it ended."""
        timeout = self.settings.polygon_connect_timeout_s
        link.state = "connecting"
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(
                    link.url,
                    open_timeout=timeout,
                    close_timeout=1,
                    ping_interval=20,
                    ping_timeout=20,
                    max_size=WS_MAX_FRAME,
                    logger=_WIRE_LOG,
                )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
            outcome.reason = "connect_failed"
            outcome.message = f"cannot connect: {type(e).__name__}: {e}"
            await self._emit([self._status("disconnected", outcome.message, link=link)])
            return outcome
        try:
            await self._converse(ws, link, outcome)
        except ConnectionClosed as e:
            self._ended(e, outcome)
        except TimeoutError:
            outcome.reason = "timeout"
            outcome.message = f"no answer within {timeout}s during the handshake"
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
        if outcome.asked:
            self._disconnected(link)
        await self._emit([self._status("disconnected", outcome.message, link=link)])
        return outcome

    def _disconnected(self, link: Link) -> None:
        now = self.clock.now_ns()
        for filler in link.fillers.values():
            filler.on_disconnect(now)

    @staticmethod
    def _ended(e: ConnectionClosed, outcome: _Outcome) -> None:
        if outcome.reason in KICKS or outcome.reason == "auth_failed":
            return  # the server said why before closing
        if e.rcvd is None:
            outcome.reason = "dropped"
            outcome.message = "connection lost without a close frame"
        else:
            code, why = e.rcvd.code, e.rcvd.reason
            outcome.reason = "closed"
            outcome.message = (
                f"server closed the connection (code {code}{': ' + why if why else ''})"
            )

    async def _converse(self, ws: ClientConnection, link: Link, outcome: _Outcome) -> None:
        timeout = self.settings.polygon_connect_timeout_s
        # 1. The connected frame.
        async with asyncio.timeout(timeout):
            first = self._parser.parse(await ws.recv(decode=False))
        if any(s.status == "connected" for s in first.statuses):
            link.state = "connected"
            await self._emit([self._status("connected", "connected", link=link)])
        else:
            log.warning("polygon %s: expected a connected status, got %s", link.market, first)
        # 2. Auth, answered in a frame of its own.
        await ws.send(json.dumps(ws_auth(self._key)))
        async with asyncio.timeout(timeout):
            reply = self._parser.parse(await ws.recv(decode=False))
        names = {s.status for s in reply.statuses}
        kicked = [s for s in reply.statuses if s.status in KICKS]
        if kicked:
            # Refused at the door (e.g. max_connections in the auth reply).
            outcome.reason = kicked[0].status
            outcome.message = statuses_text(kicked)
            await self._emit([self._status(kicked[0].status, kicked[0].message, link=link)])
            return
        if "auth_success" not in names:
            outcome.reason = "auth_failed"
            said = statuses_text(reply.statuses) or "no auth reply"
            outcome.message = f"authentication refused ({said}); retrying in "
            outcome.message += f"{self.settings.polygon_auth_retry_s:g}s"
            link.state = "auth_failed"
            await self._emit([self._status("auth_failed", outcome.message, link=link)])
            return
        link.state = "authenticated"
        await self._emit([self._status("authenticated", "authenticated", link=link)])
        # 3. Subscribe; the acks come one per channel.
        await ws.send(json.dumps(ws_subscribe(link.channels)))
        # Data may come before the last ack (or the acks never all come): a
        # session that asked for data opens a gap when it ends, and the first
        # one marks where our bars start.
        outcome.asked = True
        now = self.clock.now_ns()
        for filler in link.fillers.values():
            filler.on_subscribed(now)
        pending = set(link.channels)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if pending:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    async with asyncio.timeout(max(0.0, remaining)):
                        frame = await ws.recv(decode=False)
                except TimeoutError:
                    # Polygon acks every channel it serves: one without an ack
                    # is not streaming, so this is no session (not "subscribed").
                    named = ", ".join(sorted(pending)[:5]) + (", ..." if len(pending) > 5 else "")
                    outcome.reason = "timeout"
                    outcome.message = (
                        f"no ack within {timeout}s for {len(pending)} channel(s): {named}"
                    )
                    if outcome.said:
                        outcome.message += f" (the server said {outcome.said})"
                    return
            else:
                frame = await ws.recv(decode=False)
            parsed = self._parser.parse(frame)
            refused = False
            if parsed.statuses:
                was_pending = bool(pending)
                refused = self._server_statuses(parsed, link, outcome, pending)
                if was_pending and not pending and not refused:
                    await self._subscribed(link, outcome)
            await self._data(parsed, link, outcome)
            if refused:
                return  # retried slowly; the server closes, or we do

    async def _subscribed(self, link: Link, outcome: _Outcome) -> None:
        now = self.clock.now_ns()
        outcome.subscribed = True
        link.state = "subscribed"
        await self._emit(
            [self._status("subscribed", f"{len(link.channels)} channel(s)", link=link)]
        )
        for interval, filler in link.fillers.items():
            # Its session start was marked when the subscribe went out.
            if filler.open_gaps():
                self._gap_triggers[link.market, interval].put_nowait(now)

    def _server_statuses(
        self, parsed: Parsed, link: Link, outcome: _Outcome, pending: set[str]
    ) -> bool:
        """Act on the frame's statuses; True if the server withdrew our authentication."""
        refused = False
        for st in parsed.statuses:
            if st.status == "success":
                for verb in ("subscribed to: ", "unsubscribed to: "):
                    if st.message.startswith(verb):
                        pending.discard(st.message[len(verb) :].strip())
            elif st.status in KICKS:
                outcome.reason = st.status
                outcome.message = f"{st.status}: {st.message}"
                parsed.events.append(self._status(st.status, st.message, link=link))
            elif st.status in AUTH_REFUSED:
                # Mid-stream (a key revoked, a plan ended): as at the door, a
                # slow retry, not the reconnect backoff that would hammer.
                refused = True
                outcome.reason = "auth_failed"
                outcome.message = f"{st.status}: {st.message}"
                link.state = "auth_failed"
                parsed.events.append(self._status("auth_failed", st.message, link=link))
            else:
                outcome.said = f"{st.status}: {st.message}"
                log.warning("polygon %s server status %s: %s", link.market, st.status, st.message)
        return refused

    async def _data(self, parsed: Parsed, link: Link, outcome: _Outcome) -> None:
        events = parsed.events
        if parsed.counts:
            outcome.data = True
            for channel, n in parsed.counts.items():
                metrics.MESSAGES_IN.labels(channel=channel).inc(n)
            now = self.clock.now_ns()
            if parsed.newest_ns is not None:
                metrics.FEED_LAG.set((now - parsed.newest_ns) / 1e9)
            if self._stale is not None and self._stale.on_data(now) == "recovered":
                metrics.STALE.set(0)
                events.append(self._status("recovered", self._stale.reason))
            fillers = link.fillers
            if fillers and (parsed.counts.get("minute_bars") or parsed.counts.get("second_bars")):
                # A bar already gap-filled (or seen before) is not published again.
                events = [
                    e
                    for e in events
                    if e.type != "BarClosed"
                    or (filler := fillers.get(e.payload.interval)) is None
                    or filler.admit(e.payload.symbol, e.payload.start_ns)
                ]
        events.extend(self._dead_letter(link, bad) for bad in parsed.rejected)
        if events:
            await self._queue.put(events)

    def _dead_letter(self, link: Link, bad: Rejected) -> Event:
        log.warning("polygon %s: dead-lettering %s: %s", link.market, bad.reason, bad.detail)
        metrics.DEAD_LETTERS.labels(service="marketdata", reason=bad.reason).inc()
        self.dead_lettered += 1
        return bad.dead_letter(market=link.market, source=self.source, clock=self.clock)

    # ------------------------------------------------------------ gap-fill

    async def _gap_fill_loop(self, link: Link, interval: str) -> None:
        """Fill ``link``'s open gaps of ``interval`` bars after each reconnect.

        One REST request (and its pages) per symbol and outage; failed fetches
        are retried with backoff. The bars are published in time order across
        symbols, ``polygon_publish_batch`` at a time, then one ``gap_filled``.
        """
        assert self._rest is not None
        filler = link.fillers[interval]
        timespan = TIMESPAN[interval]
        triggers = self._gap_triggers[link.market, interval]
        batch = self.settings.polygon_publish_batch
        while True:
            reconnect = await triggers.get()
            attempt = 0
            while True:
                while not triggers.empty():
                    reconnect = triggers.get_nowait()  # the newest reconnect wins
                windows = filler.windows(reconnect)
                if not windows:
                    break
                fetched = []
                failed: list[str] = []
                for window in windows:
                    try:
                        rows = await self._rest.bars(
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
                                symbol, row, interval=interval, source=self.source, ts_init=ts_init
                            )
                        )
                    except ValidationError as e:
                        # Dead-lettered, as the same bar over the WebSocket
                        # would be; it used to end the feed (and a restart
                        # fetched it again: a crash loop).
                        refused += 1
                        bad = rest_bar_rejected(symbol, row, e, interval=interval)
                        events.append(self._dead_letter(link, bad))
                for window, _rows in fetched:
                    filler.filled(window)
                if fetched:
                    count = len(events) - refused
                    self.gap_filled_bars += count
                    metrics.GAP_FILLED_BARS.inc(count)
                    unit = "min" if interval == "1m" else "s"
                    spans = ", ".join(f"{w.symbol} {w.bars} {unit}" for w, _ in fetched)
                    if failed:
                        # A partial pass: its status says (and states) what is left.
                        spans += "; still open: " + ", ".join(failed)
                    # A long outage of second bars is many bars: hand them to the
                    # publisher a batch at a time (it takes each queued list whole).
                    # Every event, dead letters included: cut by ``count`` (bars
                    # only), the last ones were dropped, already in the ledger.
                    chunks = [events[i : i + batch] for i in range(0, len(events), batch)] or [[]]
                    chunks[-1].append(
                        self._status(
                            "gap_filled",
                            f"{count} {interval} bar(s) from REST ({spans})",
                            link=link,
                            bars=count,
                        )
                    )
                    for chunk in chunks:
                        await self._emit(chunk)
                if not failed:
                    break
                delay = self._backoff(attempt)
                attempt += 1
                log.warning(
                    "polygon gap-fill %s: retrying %s in %.1fs", interval, ",".join(failed), delay
                )
                await asyncio.sleep(delay)

    # ------------------------------------------------------------ staleness

    async def _watch_staleness(self) -> None:
        assert self._stale is not None
        every = min(1.0, self.settings.stale_after_s / 4)
        while True:
            await asyncio.sleep(every)  # a polling period, not synchronisation
            transition = self._stale.check(self.clock.now_ns())
            if transition == "stale":
                metrics.STALE.set(1)
                await self._emit([self._status("stale", self._stale.reason)])
            elif transition == "recovered":
                metrics.STALE.set(0)
                await self._emit([self._status("recovered", self._stale.reason)])
