"""Market hours from ``exchange-calendars`` behind the domain's ``MarketHours`` port.

``TRADEBUS_CALENDAR`` names the calendar: ``XNYS`` (regular NYSE sessions,
the default), or ``24/7`` for round-the-clock data (and tests). A lookup is
about a millisecond, so the answer is kept per minute.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import exchange_calendars  # type: ignore[import-untyped]  # no type information shipped
import pandas as pd  # type: ignore[import-untyped]  # no stubs installed

from libs.config import ConfigError

log = logging.getLogger(__name__)


def _quietly(call: Callable[[], Any]) -> Any:
    # exchange-calendars uses pandas APIs that pandas 3 deprecates; the
    # warnings are theirs to fix and say nothing about our data.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return call()


MINUTE_NS = 60 * 1_000_000_000


class ExchangeHours:
    """``is_open(ts_ns)`` from an exchange calendar (regular session, breaks ignored)."""

    def __init__(self, code: str) -> None:
        try:
            self.calendar = _quietly(lambda: exchange_calendars.get_calendar(code))
        except exchange_calendars.errors.InvalidCalendarName as e:
            raise ConfigError(f"TRADEBUS_CALENDAR: unknown exchange calendar {code!r}") from e
        self.code = code
        self._minute = -1
        self._open = False

    def is_open(self, ts_ns: int) -> bool:
        minute = ts_ns - ts_ns % MINUTE_NS
        if minute != self._minute:
            self._minute = minute
            try:
                stamp = pd.Timestamp(minute, unit="ns", tz="UTC")
                self._open = bool(
                    _quietly(lambda: self.calendar.is_open_on_minute(stamp, ignore_breaks=True))
                )
            except exchange_calendars.errors.MinuteOutOfBounds:
                # Past the calendar's range: say open, so silence is still reported.
                log.warning("%s has no sessions for this time; assuming open", self.code)
                self._open = True
        return self._open
