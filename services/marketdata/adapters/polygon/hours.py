"""Market hours from :mod:`libs.contract.sessions` behind the domain's ``MarketHours`` port.

``TRADEBUS_CALENDAR`` names the calendar: ``XNYS`` (regular NYSE sessions,
the default, or an alias of it: ``NYSE``, ``XNAS``, ...), another
exchange-calendars code, or ``24/7`` for round-the-clock data (and tests).
XNYS is answered from the committed table, so the feed does not import
exchange-calendars and pandas (about a second and 100 MB) to know it; other
calendars, and XNYS's days past the table, from the library. The answer is
kept per minute.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

from libs.config import ConfigError
from libs.contract import sessions

log = logging.getLogger(__name__)

MINUTE_NS = 60 * 1_000_000_000
NS_PER_S = 1_000_000_000

#: Days either side of a time's UTC date whose sessions may hold it, on a
#: calendar other than XNYS: a session's date is the exchange's own (up to
#: a day from UTC's) and some open the evening before it (CMES) or close
#: the day after.
_NEIGHBOUR_DAYS = 2


class ExchangeHours:
    """``is_open(ts_ns)``: inside a regular session of the calendar, open
    minute included, close minute not (``open_ns <= ts < close_ns``; a
    lunch break counts as open), as exchange-calendars' ``is_open_on_minute``
    with ``ignore_breaks`` says."""

    def __init__(self, code: str) -> None:
        try:
            sessions.check(code)
        except sessions.CalendarError as e:
            raise ConfigError(f"TRADEBUS_CALENDAR: {e}") from e
        self.code = code
        self._minute = -1
        self._open = False

    def is_open(self, ts_ns: int) -> bool:
        minute = ts_ns - ts_ns % MINUTE_NS
        if minute != self._minute:
            self._minute = minute
            try:
                self._open = any(s.open_ns <= minute < s.close_ns for s in self._sessions(minute))
            except ValueError:
                # CalendarError (exchange-calendars not installed, and the
                # day is past the table) or the library's refusal of a day
                # it keeps no holidays for: say open, so silence is still
                # reported.
                log.warning("%s has no sessions for this time; assuming open", self.code)
                self._open = True
        return self._open

    def _sessions(self, minute: int) -> Iterator[sessions.Session]:
        if self.code in sessions.TABLE_CODES:
            # XNYS's sessions lie within their New York day (the table's
            # generator refuses one that does not).
            days = [sessions.new_york_time(minute).date()]
        else:
            utc_day = dt.datetime.fromtimestamp(minute // NS_PER_S, dt.UTC).date()
            days = [
                utc_day + dt.timedelta(days=step)
                for step in range(-_NEIGHBOUR_DAYS, _NEIGHBOUR_DAYS + 1)
            ]
        for day in days:
            found = sessions.session(self.code, day)
            if found is not None:
                yield found
