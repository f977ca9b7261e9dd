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
are read in one batched direct get (``$JS.API.DIRECT.GET.TRADEBUS``, at most
:data:`READ_AT_MOST` messages) and the newest window among them wins.

Best effort: when the stream cannot be read (NATS down, or a NATS user
without permission for ``$JS.API.STREAM.MSG.GET.TRADEBUS``) the feed starts
without it and says so in the log; when only the batched read fails, the last
message is used (a few bars may then be published again, with their ids).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable

import nats.errors
import nats.js.errors

from libs.bus.client import Bus
from libs.bus.errors import BusError
from libs.contract.codec import DecodeError, decode
from libs.contract.events import BarClosed
from libs.contract.subjects import STREAM, SubjectError, symbol_token
from services.marketdata.config import MarketdataSettings

log = logging.getLogger(__name__)

#: How far the server's clock (message store times) may be behind the
#: exchange's (bar windows) without a newer live bar being missed.
CLOCK_SLACK_S = 60
#: Most messages read per symbol and interval when the last one is backfilled.
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


async def newest_bars(
    settings: MarketdataSettings, symbols: Iterable[str], interval: str = "1m"
) -> dict[str, int]:
    """Symbol -> window start (ns) of its newest ``interval`` bar on the recorded stream."""
    wanted = [s for s in symbols if _is_token(s)]
    if not wanted:
        return {}
    found: dict[str, int] = {}
    batched_reads = True  # until one fails (then the others would fail alike)
    try:
        bus = await Bus.connect(
            settings.nats_url,
            name=f"marketdata/{settings.instance}/resume",
            user=settings.nats_user,
            password=(
                settings.nats_password.get_secret_value() if settings.nats_password else None
            ),
        )
    except BusError as e:
        log.warning("not resuming gap-fill from the stream: %s", e)
        return found
    try:
        for symbol in wanted:
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
                newer = await _newest_since(bus, subject, interval, start_ns)
                if newer is None:
                    batched_reads = False
                else:
                    start_ns = max(start_ns, newer)
            found[symbol] = start_ns
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("not resuming gap-fill from the stream: %s", e)
    finally:
        await bus.close()
    return found


async def _newest_since(bus: Bus, subject: str, interval: str, window_start_ns: int) -> int | None:
    """The newest window among ``subject``'s messages stored since ``window_start_ns``.

    One batched direct get, at most :data:`READ_AT_MOST` messages (-1 if
    none is a bar); None when it cannot be read (refused, or no answer within
    :data:`READ_TIMEOUT_S`): the caller keeps the last message's window.
    """
    since = dt.datetime.fromtimestamp(window_start_ns / 1e9 - CLOCK_SLACK_S, tz=dt.UTC)
    request = {
        "next_by_subj": subject,
        "start_time": since.isoformat().replace("+00:00", "Z"),
        "batch": READ_AT_MOST,
    }
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    newest = -1
    try:
        await bus.nc.publish(
            f"$JS.API.DIRECT.GET.{STREAM}", json.dumps(request).encode(), reply=inbox
        )
        for _ in range(READ_AT_MOST + 1):
            reply = await sub.next_msg(timeout=READ_TIMEOUT_S)
            if (reply.headers or {}).get("Status"):
                break  # 204: end of the batch; 404: nothing since then
            bar = _bar_start(reply.data, interval)
            if bar is not None:
                newest = max(newest, bar[0])
    except (nats.errors.Error, TimeoutError) as e:
        log.warning(
            "resume: cannot read the recent %s (%s); starting after its last message",
            subject,
            type(e).__name__,
        )
        return None
    finally:
        await sub.unsubscribe()
    return newest


def _is_token(symbol: str) -> bool:
    try:
        symbol_token(symbol)
    except SubjectError:
        return False
    return True
