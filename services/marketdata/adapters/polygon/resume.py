"""Where the last run stopped: the newest bar per symbol and interval on the stream.

A restarted service has lost its in-memory ledger of published bars; without
it the bars of the minutes it was down would never be published. At start-up
:func:`newest_bars` asks JetStream for the last message on
``md.bar.<1m|1s>.<symbol>`` of each symbol (one ``STREAM.MSG.GET`` each) and
the :class:`~services.marketdata.domain.gapfill.GapFiller` of that interval is
seeded with it, so the first connection gap-fills from the bar after it (at
most ``polygon_gapfill_max_s`` back). The bars' ids are derived from their
minute, so a bar that was in fact published already is deduplicated.

Best effort: when the stream cannot be read (NATS down, or a NATS user
without permission for ``$JS.API.STREAM.MSG.GET.TRADEBUS``) the feed starts
without it and says so in the log.
"""

from __future__ import annotations

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


async def newest_bars(
    settings: MarketdataSettings, symbols: Iterable[str], interval: str = "1m"
) -> dict[str, int]:
    """Symbol -> window start (ns) of its newest ``interval`` bar on the recorded stream."""
    wanted = [s for s in symbols if _is_token(s)]
    if not wanted:
        return {}
    found: dict[str, int] = {}
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
            try:
                msg = await bus.js.get_last_msg(STREAM, f"md.bar.{interval}.{symbol_token(symbol)}")
            except nats.js.errors.NotFoundError:
                continue
            try:
                event = decode(msg.data or b"")
            except DecodeError:
                continue
            if isinstance(event, BarClosed) and event.payload.interval == interval:
                found[symbol] = event.payload.start_ns
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("not resuming gap-fill from the stream: %s", e)
    finally:
        await bus.close()
    return found


def _is_token(symbol: str) -> bool:
    try:
        symbol_token(symbol)
    except SubjectError:
        return False
    return True
