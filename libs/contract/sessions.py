"""Exchange sessions: when a trading day's regular session opens and closes.

The answers come from ``exchange-calendars`` (``XNYS``: the NYSE, with its
holidays and its 13:00 early closes on the day after Thanksgiving, on
Christmas Eve and on July 3), not from a calendar of our own. Strategies ask
(``examples/opening_range.py`` flattens before an early close), so it is a
plain function, the same live and in a backtest, with no bus and no clock:

    s = session("XNYS", dt.date(2025, 11, 28))  # None on a holiday or weekend
    s.close_ns - s.full_day_close_ns            # -3 hours: a half day

The library (and pandas under it, most of a second to import) is imported at
the first question, so that code that never asks pays nothing for it, and
each day's answer is kept: asking again, at every bar, is a dict lookup.
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NS_PER_US = 1_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Days built on either side of one asked about outside a calendar's range.
_MARGIN_DAYS = 14

#: The calendars built so far, by code; each is widened when asked about a
#: day outside its range (see :func:`_calendar`).
_calendars: dict[str, Any] = {}


class CalendarError(ValueError):
    """No such exchange calendar, or ``exchange-calendars`` is not installed."""


@dataclass(frozen=True, slots=True)
class Session:
    """One day's regular session on an exchange; times in integer nanoseconds (UTC)."""

    calendar: str
    day: dt.date
    open_ns: int
    close_ns: int
    #: Where the close is on a full day (16:00 New York on the NYSE): later
    #: than ``close_ns`` on an early close.
    full_day_close_ns: int

    @property
    def early_by_ns(self) -> int:
        """How long before its full-day close this session closes: 0 on a full
        day, three hours on an NYSE half day (13:00); negative on a late close."""
        return self.full_day_close_ns - self.close_ns


def _library() -> Any:
    try:
        import exchange_calendars  # type: ignore[import-untyped]  # no type information shipped
    except ImportError as e:
        raise CalendarError(
            "exchange-calendars is not installed: pip install 'tradebus[calendar]'"
        ) from e
    return exchange_calendars


def _quietly(call: Callable[[], Any]) -> Any:
    # exchange-calendars uses pandas APIs that pandas 3 deprecates; the
    # warnings are theirs to fix and say nothing about our sessions.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return call()


def check(calendar: str, through: dt.date | None = None) -> str:
    """``calendar`` if ``exchange-calendars`` knows it (``XNYS``, ``XLON``, ...),
    for a config check; :class:`CalendarError` if not.

    It also builds the calendar (a few tenths of a second), up to ``through``
    if that is later than its default range (a year ahead): checked when a
    strategy's parameters are loaded, so that the first :func:`session`, asked
    in a callback, does not spend its watchdog's time (``max_callback_s``,
    1 s by default) building it.
    """
    names = _quietly(lambda: _library().get_calendar_names(include_aliases=True))
    if calendar not in names:
        raise CalendarError(f"unknown exchange calendar {calendar!r} (e.g. XNYS)")
    _calendar(calendar, dt.datetime.now(dt.UTC).date())
    if through is not None:
        _calendar(calendar, through)
    return calendar


def _ns(stamp: dt.datetime) -> int:
    return (stamp - _EPOCH) // dt.timedelta(microseconds=1) * NS_PER_US


def _calendar(code: str, day: dt.date) -> Any:
    xc = _library()
    cal = _calendars.get(code)
    try:
        if cal is None:
            cal = _quietly(lambda: xc.get_calendar(code))
        first, last = cal.first_session.date(), cal.last_session.date()
        if not first <= day <= last:
            # The default range is twenty years back to one ahead of today: a
            # backtest of older history (or a day further ahead) widens it,
            # once, for about a tenth of a second. The sessions of a day do
            # not depend on the range, only whether it can be answered. The
            # margin keeps ``day`` inside the sessions built: a range starting
            # (or ending) on a holiday starts at the next session, and the
            # library refuses to answer about a day outside its sessions.
            margin = dt.timedelta(days=_MARGIN_DAYS)
            start, end = min(day - margin, first), max(day + margin, last)
            cal = _quietly(lambda: xc.get_calendar(code, start=start, end=end))
    except xc.errors.InvalidCalendarName as e:
        raise CalendarError(f"unknown exchange calendar {code!r} (e.g. XNYS)") from e
    _calendars[code] = cal
    return cal


@functools.lru_cache(maxsize=8192)
def session(calendar: str, day: dt.date) -> Session | None:
    """``day``'s regular session on ``calendar`` (an ``exchange-calendars``
    code: ``XNYS``), or None if the exchange does not trade that day (a
    weekend, a holiday). The day is the session's date in the exchange's own
    time zone. Kept once asked: the second question about a day costs a dict
    lookup. :class:`CalendarError` for an unknown calendar."""
    cal = _calendar(calendar, day)
    import pandas as pd  # type: ignore[import-untyped]  # no stubs installed; installed with exchange-calendars

    label = pd.Timestamp(day)
    if not _quietly(lambda: cal.is_session(label)):
        return None
    opens = _quietly(lambda: cal.session_open(label)).to_pydatetime()
    closes = _quietly(lambda: cal.session_close(label)).to_pydatetime()
    # close_times: (from which date or None, time) for every change of the
    # usual close, oldest first; close_offset: days after the session's date.
    usual = next(
        time for start, time in reversed(cal.close_times) if start is None or start.date() <= day
    )
    full_day_close = dt.datetime.combine(
        day + dt.timedelta(days=cal.close_offset), usual, tzinfo=cal.tz
    )
    return Session(calendar, day, _ns(opens), _ns(closes), _ns(full_day_close))
