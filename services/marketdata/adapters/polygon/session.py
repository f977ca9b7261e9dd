"""One Polygon WebSocket connection, kept up forever: handshake, data, supervision.

:meth:`Supervisor.supervise` runs the sessions of one :class:`.links.Link`
(see the handshake, supervision and back-pressure parts of :mod:`.client`):
each session speaks the handshake of ``PROTOCOLS.md``, hands what it parses
to the :class:`.outbox.Outbox`, opens the link's bar gaps when it ends and
asks for their gap-fill (a trigger per bar interval) once it is subscribed
again; any end of a session is followed by a reconnect, after backoff or,
for a refused key or a taken connection, ``polygon_auth_retry_s``.

The API key goes into the auth frame only: the wire logger is held at INFO
so that even ``TRADEBUS_LOG_LEVEL=DEBUG`` does not print the auth frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from libs.contract.envelope import Clock
from services.marketdata import metrics
from services.marketdata.adapters.polygon.links import Link
from services.marketdata.adapters.polygon.outbox import Outbox
from services.marketdata.adapters.polygon.parse import FEED, FrameParser, Parsed, statuses_text
from services.marketdata.adapters.polygon.schemas import ws_auth, ws_subscribe
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.staleness import StaleMonitor

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
#: A session that lasted this long was healthy: the backoff starts over.
HEALTHY_SESSION_S = 10.0
WS_MAX_FRAME = 16 * 1024 * 1024


@dataclass
class Outcome:
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


class Backoff:
    """Exponential backoff with full jitter, for reconnects and failed gap-fill fetches."""

    def __init__(self, settings: MarketdataSettings) -> None:
        self.settings = settings
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not crypto

    def __call__(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (never below a tenth of the first delay)."""
        first = self.settings.polygon_reconnect_initial_s
        cap = min(self.settings.polygon_reconnect_max_s, first * 2**attempt)
        return max(first / 10, self._rng.uniform(0, cap))


class Supervisor:
    """Keeps each link connected; what it parses goes to the outbox."""

    def __init__(
        self,
        settings: MarketdataSettings,
        *,
        key: str,
        clock: Clock,
        parser: FrameParser,
        outbox: Outbox,
        triggers: dict[tuple[str, str], asyncio.Queue[tuple[int, int]]],
        backoff: Backoff,
    ) -> None:
        self.settings = settings
        self.key = key
        self.clock = clock
        self.parser = parser
        self.outbox = outbox
        #: Per link and bar interval, for its gap-fill task: the reconnect times (ns), each
        #: with its ledger's disconnect count then (a fill is stale once that moved).
        self.triggers = triggers
        self.backoff = backoff
        #: Told about data (a recovery is reported); set once the feed runs.
        self.stale: StaleMonitor | None = None

    async def supervise(self, link: Link) -> None:
        """Keep ``link`` connected forever (until cancelled)."""
        attempt = 0
        while True:
            link.sessions += 1
            outcome = Outcome("dropped", "")
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
                delay = self.backoff(attempt)
                attempt += 1
            link.state = "reconnecting"
            await self.outbox.say(
                "reconnecting", f"in {delay:.2f}s after {outcome.reason}", link=link
            )
            await asyncio.sleep(delay)

    async def _session(self, link: Link, outcome: Outcome) -> Outcome:
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
            await self.outbox.say("disconnected", outcome.message, link=link)
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
        await self.outbox.say("disconnected", outcome.message, link=link)
        return outcome

    def _disconnected(self, link: Link) -> None:
        now = self.clock.now_ns()
        for filler in link.fillers.values():
            filler.on_disconnect(now)

    @staticmethod
    def _ended(e: ConnectionClosed, outcome: Outcome) -> None:
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

    async def _converse(self, ws: ClientConnection, link: Link, outcome: Outcome) -> None:
        timeout = self.settings.polygon_connect_timeout_s
        # 1. The connected frame.
        async with asyncio.timeout(timeout):
            first = self.parser.parse(await ws.recv(decode=False))
        if any(s.status == "connected" for s in first.statuses):
            link.state = "connected"
            await self.outbox.say("connected", "connected", link=link)
        else:
            log.warning("polygon %s: expected a connected status, got %s", link.market, first)
        # 2. Auth, answered in a frame of its own.
        await ws.send(json.dumps(ws_auth(self.key)))
        async with asyncio.timeout(timeout):
            reply = self.parser.parse(await ws.recv(decode=False))
        names = {s.status for s in reply.statuses}
        kicked = [s for s in reply.statuses if s.status in KICKS]
        if kicked:
            # Refused at the door (e.g. max_connections in the auth reply).
            outcome.reason = kicked[0].status
            outcome.message = statuses_text(kicked)
            await self.outbox.say(kicked[0].status, kicked[0].message, link=link)
            return
        if "auth_success" not in names:
            outcome.reason = "auth_failed"
            said = statuses_text(reply.statuses) or "no auth reply"
            outcome.message = f"authentication refused ({said}); retrying in "
            outcome.message += f"{self.settings.polygon_auth_retry_s:g}s"
            link.state = "auth_failed"
            await self.outbox.say("auth_failed", outcome.message, link=link)
            return
        link.state = "authenticated"
        await self.outbox.say("authenticated", "authenticated", link=link)
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
            parsed = self.parser.parse(frame)
            refused = False
            if parsed.statuses:
                was_pending = bool(pending)
                refused = self._server_statuses(parsed, link, outcome, pending)
                if was_pending and not pending and not refused:
                    await self._subscribed(link, outcome)
            await self._data(parsed, link, outcome)
            if refused:
                return  # retried slowly; the server closes, or we do

    async def _subscribed(self, link: Link, outcome: Outcome) -> None:
        now = self.clock.now_ns()
        outcome.subscribed = True
        link.state = "subscribed"
        await self.outbox.say("subscribed", f"{len(link.channels)} channel(s)", link=link)
        for interval, filler in link.fillers.items():
            # Its session start was marked when the subscribe went out.
            if filler.open_gaps():
                self.triggers[link.market, interval].put_nowait((now, filler.disconnects))

    def _server_statuses(
        self, parsed: Parsed, link: Link, outcome: Outcome, pending: set[str]
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
                parsed.events.append(self.outbox.status(st.status, st.message, link=link))
            elif st.status in AUTH_REFUSED:
                # Mid-stream (a key revoked, a plan ended): as at the door, a
                # slow retry, not the reconnect backoff that would hammer.
                refused = True
                outcome.reason = "auth_failed"
                outcome.message = f"{st.status}: {st.message}"
                link.state = "auth_failed"
                parsed.events.append(self.outbox.status("auth_failed", st.message, link=link))
            else:
                outcome.said = f"{st.status}: {st.message}"
                log.warning("polygon %s server status %s: %s", link.market, st.status, st.message)
        return refused

    async def _data(self, parsed: Parsed, link: Link, outcome: Outcome) -> None:
        events = parsed.events
        if parsed.counts:
            outcome.data = True
            for channel, n in parsed.counts.items():
                metrics.MESSAGES_IN.labels(channel=channel).inc(n)
            now = self.clock.now_ns()
            if parsed.newest_ns is not None:
                metrics.FEED_LAG.set((now - parsed.newest_ns) / 1e9)
            if self.stale is not None and self.stale.on_data(now) == "recovered":
                metrics.STALE.set(0)
                events.append(self.outbox.status("recovered", self.stale.reason))
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
        events.extend(self.outbox.dead_letter(link, bad) for bad in parsed.rejected)
        if events:
            await self.outbox.emit(events)
