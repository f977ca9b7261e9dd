"""Where the last run stopped: the newest bar per symbol and interval on the stream.

A restarted service has lost its in-memory ledger of published bars; without
it the bars of the minutes it was down would never be published. At start-up
:func:`newest_bars` finds, for each symbol, the newest bar window on
``md.bar.<1m|1s>.<symbol>``, and the
:class:`~services.marketdata.domain.gapfill.GapFiller` of that interval is
seeded with it, so the first connection gap-fills from the bar after it (at
most ``polygon_gapfill_max_s`` back). The bars' ids are derived from their
window, so a bar that was in fact published already is deduplicated.

The newest window is not always the last message. Gap-fill publishes the
older bars of an outage after the reconnect, so a live bar of the reconnect
minute (or a later one, while REST is slow or failing) can sit on the stream
*before* older backfilled bars. Hence: the last message on the subject (one
``STREAM.MSG.GET``); if it is live, it is the newest (live bars come in time
order, and come after any gap-fill of an earlier outage). If it is
backfilled, any newer live bar was stored after the window of that backfilled
bar had closed, so the messages on the subject stored since that window's
start (less :data:`CLOCK_SLACK_S` for the exchange's and the server's clocks)
are read in batched direct gets (``$JS.API.DIRECT.GET.TRADEBUS``,
:data:`READ_AT_MOST` messages each) and the newest window among them wins.

The newest bar is not always where the last run's bars stop: an outage whose
gap-fill had not succeeded when it stopped (REST failing, or a stop right
after a reconnect) lies *before* the live bars that followed it. So the
statuses that change a connection's open gaps state them (``open_gaps`` of
``FeedStatusChanged``), and :func:`resume_point` reads the newest one per
connection and interval back (those of the last ``polygon_gapfill_max_s``)
with, per symbol with a gap, the bars on the stream since the gap's start,
so that the gap is filled and none of those is published again. The same
status says which of those gaps were open waiting for REST to build their
bars (``gaps_awaiting_rest``), and from where: only those are waited for
again, and given up on (and said so) if REST still lacks the bars; a gap
open for another reason, whose end had no trades, is not reported given up.

Best effort: when the stream cannot be read (NATS down, or a NATS user
without permission for ``$JS.API.STREAM.MSG.GET.TRADEBUS``) the feed starts
without it and says so in the log; when only the batched read fails, the last
message is used (a few bars may then be published again, with their ids).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors

from libs.bus.client import Bus
from libs.bus.errors import BusError
from libs.contract.codec import DecodeError, decode
from libs.contract.events import BarClosed, FeedStatusChanged
from libs.contract.subjects import STREAM, SubjectError, symbol_token
from services.marketdata.adapters.polygon.parse import FEED
from services.marketdata.config import MarketdataSettings

log = logging.getLogger(__name__)

#: How far the server's clock (message store times) may be behind the
#: exchange's (bar windows) without a newer live bar being missed.
CLOCK_SLACK_S = 60
#: Messages per batched read (one page; the next one starts after its last).
READ_AT_MOST = 10_000
#: How long one batched read may take before the last message is used instead.
READ_TIMEOUT_S = 5.0


def _bar_start(data: bytes | None, interval: str) -> tuple[int, bool] | None:
    """(window start ns, backfilled) of a bar message of ``interval``, else None."""
    try:
        event = decode(data or b"")
    except DecodeError:
        return None
    if isinstance(event, BarClosed) and event.payload.interval == interval:
        return event.payload.start_ns, event.payload.backfilled
    return None


@dataclass
class ResumePoint:
    """What the last run left on the stream for one connection and bar interval."""

    #: Symbol -> window start (ns) of its newest bar.
    newest: dict[str, int] = field(default_factory=dict)
    #: Symbol -> start of a gap the last run left open (its newest status said so).
    gaps: dict[str, int] = field(default_factory=dict)
    #: Symbol (with a gap) -> window starts of its bars on the stream since
    #: that gap's start (or ``polygon_gapfill_max_s`` ago, if later).
    published: dict[str, set[int]] = field(default_factory=dict)
    #: Of ``gaps``, symbol -> where the last run was waiting for REST to
    #: build its bars; None: that status did not say (it predates saying so).
    awaiting_rest: dict[str, int] | None = None


async def _connect(settings: MarketdataSettings) -> Bus | None:
    try:
        return await Bus.connect(
            settings.nats_url,
            name=f"marketdata/{settings.instance}/resume",
            user=settings.nats_user,
            password=(
                settings.nats_password.get_secret_value() if settings.nats_password else None
            ),
        )
    except BusError as e:
        log.warning("not resuming gap-fill from the stream: %s", e)
        return None


async def newest_bars(
    settings: MarketdataSettings, symbols: Iterable[str], interval: str = "1m"
) -> dict[str, int]:
    """Symbol -> window start (ns) of its newest ``interval`` bar on the recorded stream."""
    wanted = [s for s in symbols if _is_token(s)]
    if not wanted or (bus := await _connect(settings)) is None:
        return {}
    try:
        return await _newest_bars(bus, wanted, interval)
    finally:
        await bus.close()


async def resume_point(
    settings: MarketdataSettings,
    market: str,
    symbols: Iterable[str],
    interval: str,
    *,
    now_ns: int,
) -> ResumePoint:
    """The newest bars of ``symbols``, and the gaps of ``market``'s ``interval``
    bars the last run left open, with the bars published since they opened.

    The gaps are those of the newest ``FeedStatusChanged`` of ``market`` on
    ``md.status.polygon`` that states them (``open_gaps`` with ``interval``),
    among those stored in the last ``polygon_gapfill_max_s``: a gap the
    last run's statuses said was still open when it stopped (its REST fetch
    failing, or the stop right after a reconnect) is filled by this one.
    """
    point = ResumePoint()
    wanted = [s for s in symbols if _is_token(s)]
    if not wanted or (bus := await _connect(settings)) is None:
        return point
    horizon = now_ns - int(settings.polygon_gapfill_max_s * 1e9)
    try:
        point.newest = await _newest_bars(bus, wanted, interval)
        gaps, awaiting = await _open_gaps(bus, market, interval, horizon)
        if awaiting is not None:
            point.awaiting_rest = {s: w for s, w in awaiting.items() if s in gaps}
        for symbol in wanted:
            start = gaps.get(symbol)
            if start is None:
                continue
            seen: set[int] = set()
            subject = f"md.bar.{interval}.{symbol_token(symbol)}"
            if not await _read_since(bus, subject, max(start, horizon), _windows(seen, interval)):
                # Without the ledger the fill would publish bars again; the
                # ids still match (consumers can drop them), the bars are not lost.
                log.warning("resume: %s's bars since its open gap are unknown", symbol)
            point.gaps[symbol] = start
            point.published[symbol] = {w for w in seen if w >= start}
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("not resuming gap-fill from the stream: %s", e)
    finally:
        await bus.close()
    return point


async def _newest_bars(bus: Bus, symbols: list[str], interval: str) -> dict[str, int]:
    found: dict[str, int] = {}
    batched_reads = True  # until one fails (then the others would fail alike)
    try:
        for symbol in symbols:
            subject = f"md.bar.{interval}.{symbol_token(symbol)}"
            try:
                msg = await bus.js.get_last_msg(STREAM, subject)
            except nats.js.errors.NotFoundError:
                continue
            last = _bar_start(msg.data, interval)
            if last is None:
                continue
            start_ns, backfilled = last
            if backfilled and batched_reads:
                # Any newer live bar was stored after this window had closed.
                seen: set[int] = set()
                if await _read_since(bus, subject, start_ns, _windows(seen, interval)):
                    start_ns = max(start_ns, *seen) if seen else start_ns
                else:
                    batched_reads = False
            found[symbol] = start_ns
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("not resuming gap-fill from the stream: %s", e)
    return found


def _windows(into: set[int], interval: str) -> Callable[[bytes], None]:
    def take(data: bytes) -> None:
        bar = _bar_start(data, interval)
        if bar is not None:
            into.add(bar[0])

    return take


async def _open_gaps(
    bus: Bus, market: str, interval: str, since_ns: int
) -> tuple[dict[str, int], dict[str, int] | None]:
    """The open gaps of the newest status of ``market`` stating them for
    ``interval``, and those of them awaiting REST (None: it does not say)."""
    newest: dict[str, int] = {}
    awaiting: dict[str, int] | None = None

    def take(data: bytes) -> None:
        nonlocal newest, awaiting
        try:
            event = decode(data)
        except DecodeError:
            return
        if isinstance(event, FeedStatusChanged) and event.payload.market == market:
            gaps = event.payload.open_gaps
            if gaps is not None and interval in gaps:
                newest = dict(gaps[interval])  # stream order: the last one wins
                why = event.payload.gaps_awaiting_rest
                awaiting = None if why is None else dict(why.get(interval, {}))

    if not await _read_since(bus, f"md.status.{FEED}", since_ns, take):
        log.warning("resume: cannot read the statuses; gaps left open by the last run stay open")
    return newest, awaiting


async def _read_since(bus: Bus, subject: str, since_ns: int, take: Callable[[bytes], None]) -> bool:
    """Hand ``take`` every message on ``subject`` stored since ``since_ns``
    (less :data:`CLOCK_SLACK_S`), in stream order.

    Batched direct gets (``$JS.API.DIRECT.GET.TRADEBUS``) of
    :data:`READ_AT_MOST` messages, the next one from the sequence after the
    last; False when it cannot be read (refused, or no answer within
    :data:`READ_TIMEOUT_S`), having handed over what came before.
    """
    since = dt.datetime.fromtimestamp(since_ns / 1e9 - CLOCK_SLACK_S, tz=dt.UTC)
    request: dict[str, object] = {
        "next_by_subj": subject,
        "start_time": since.isoformat().replace("+00:00", "Z"),
        "batch": READ_AT_MOST,
    }
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    try:
        while True:
            await bus.nc.publish(
                f"$JS.API.DIRECT.GET.{STREAM}", json.dumps(request).encode(), reply=inbox
            )
            got, last_seq = 0, 0
            for _ in range(READ_AT_MOST + 1):
                reply = await sub.next_msg(timeout=READ_TIMEOUT_S)
                headers = reply.headers or {}
                if headers.get("Status"):
                    break  # 204: end of the batch; 404: nothing (more) since then
                got += 1
                last_seq = int(headers.get("Nats-Sequence", last_seq))
                take(reply.data)
            if got < READ_AT_MOST or not last_seq:
                return True
            request = {"next_by_subj": subject, "seq": last_seq + 1, "batch": READ_AT_MOST}
    except (nats.errors.Error, TimeoutError, ValueError) as e:
        log.warning("resume: cannot read the recent %s (%s)", subject, type(e).__name__)
        return False
    finally:
        await sub.unsubscribe()


def _is_token(symbol: str) -> bool:
    try:
        symbol_token(symbol)
    except SubjectError:
        return False
    return True
