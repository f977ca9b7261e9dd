"""Exchange sessions: when a trading day's regular session opens and closes.

The answers come from ``exchange-calendars`` (``XNYS``: the NYSE, with its
holidays and its 13:00 early closes on the day after Thanksgiving, on
Christmas Eve and on July 3), not from a calendar of our own. Strategies ask
(``examples/opening_range.py`` flattens before an early close), so it is a
plain function, the same live and in a backtest, with no bus and no clock:

    s = session("XNYS", dt.date(2025, 11, 28))  # None on a holiday or weekend
    s.close_ns - s.full_day_close_ns            # -3 hours: a half day

XNYS's days from :data:`TABLE_FIRST` to :data:`TABLE_LAST` (asked as ``XNYS`` or
as one of the library's aliases of it, ``NYSE``, ``XNAS``, ...: :data:`TABLE_CODES`)
are answered from a table generated from exchange-calendars and committed
(``libs/contract/xnys_table.py``: its holidays and its special sessions,
every other weekday 09:30 to 16:00), so that a service does not import the
library and pandas (about a second and 100 MB a process) to know when an
option expires. ``make calendar`` regenerates it; a test fails when the
installed library disagrees with it. Other calendars, and XNYS's days outside
the table, are asked of the library, imported at the first such question;
each day's answer is kept: asking again, at every bar, is a dict lookup.

The New York arithmetic every service does with XNYS is here once:
:func:`new_york_ns` (a New York day and time in ns since the epoch),
:func:`new_york_time` (a time in ns as New York's wall clock has it) and
:func:`xnys_session`, the session with the one rule for a day that cannot
be read (exchange-calendars not installed, past the table): every weekday
09:30 to 16:00.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from libs.contract import xnys_table

NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: The NYSE's exchange-calendars code: the calendar US equity and ETF
#: options stop trading with, and the one the paper broker keeps.
XNYS = "XNYS"
#: The calendar the committed table answers for, and its days (inclusive).
TABLE_CALENDAR = XNYS
#: The codes the table answers for: XNYS and the aliases exchange-calendars
#: gives its calendar (NYSE, XNAS, ...; generated into the table).
TABLE_CODES = frozenset({TABLE_CALENDAR, *xnys_table.ALIASES})
TABLE_FIRST = xnys_table.FIRST
TABLE_LAST = xnys_table.LAST
#: Where the table is, for ``--write-table`` and the drift test.
TABLE_PATH = Path(__file__).with_name("xnys_table.py")
#: XNYS's time zone: its sessions, and an option's expiry day, are New York's.
NEW_YORK = ZoneInfo("America/New_York")
#: XNYS's regular session (New York time) on every weekday the table does
#: not list, and on every weekday :func:`xnys_session` cannot read: its open
#: and its full-day close.
REGULAR_OPEN = dt.time(9, 30)
REGULAR_CLOSE = dt.time(16, 0)

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

    XNYS (or an alias of it: NYSE, ...), from today through ``through``, is
    in the committed table: nothing is imported or built, and the library
    need not be installed. Otherwise
    it also builds the calendar (a few tenths of a second), up to ``through``
    if that is later than its default range (a year ahead): checked when a
    strategy's parameters are loaded, so that the first :func:`session`, asked
    in a callback, does not spend its watchdog's time (``max_callback_s``,
    1 s by default) building it.
    """
    today = dt.datetime.now(dt.UTC).date()
    if calendar in TABLE_CODES and today >= TABLE_FIRST and (through or today) <= TABLE_LAST:
        return calendar  # answered from the table: nothing to import or build
    names = _quietly(lambda: _library().get_calendar_names(include_aliases=True))
    if calendar not in names:
        raise CalendarError(f"unknown exchange calendar {calendar!r} (e.g. XNYS)")
    _calendar(calendar, today)
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
    if calendar in TABLE_CODES and TABLE_FIRST <= day <= TABLE_LAST:
        return _from_table(day, calendar)
    return _from_library(calendar, day)


def xnys_session(day: dt.date) -> Session | None:
    """XNYS's regular session of ``day`` (:func:`session`), or None on a day
    it does not trade; where that cannot be read (a day outside the table
    without exchange-calendars installed), the usual one: every weekday
    09:30 to 16:00 New York, no session on a weekend."""
    try:
        return session(XNYS, day)
    except CalendarError:
        return None if day.weekday() >= 5 else _xnys(day, REGULAR_OPEN, REGULAR_CLOSE)


def new_york_ns(day: dt.date, at: dt.time) -> int:
    """``at`` (New York's wall-clock time, naive) on ``day``, in ns since the epoch."""
    return _ns(dt.datetime.combine(day, at, tzinfo=NEW_YORK))


def new_york_time(at_ns: int) -> dt.datetime:
    """``at_ns`` (ns since the epoch) as New York's wall clock has it, to the
    whole second below: seconds as a float would round a time a nanosecond
    before midnight up to the next day."""
    return dt.datetime.fromtimestamp(at_ns // NS_PER_S, NEW_YORK)


def _xnys(day: dt.date, opens: dt.time, closes: dt.time, calendar: str = XNYS) -> Session:
    full_day_close = new_york_ns(day, REGULAR_CLOSE)
    return Session(calendar, day, new_york_ns(day, opens), new_york_ns(day, closes), full_day_close)


def _from_table(day: dt.date, calendar: str = TABLE_CALENDAR) -> Session | None:
    if day.weekday() >= 5 or day in xnys_table.HOLIDAYS:
        return None
    opens, closes = xnys_table.SPECIAL.get(day, (REGULAR_OPEN, REGULAR_CLOSE))
    return _xnys(day, opens, closes, calendar)


def _from_library(calendar: str, day: dt.date) -> Session | None:
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


# ------------------------------------------------------------ the table


def render_table(first: dt.date = TABLE_FIRST, last: dt.date = TABLE_LAST) -> str:
    """``xnys_table.py`` as the installed exchange-calendars has XNYS from
    ``first`` to ``last``: every weekday without a session, and every session
    that does not open at 09:30 or close at 16:00 New York (on its own day);
    and the other codes the library gives XNYS's calendar (its aliases)."""
    xc = _library()
    cal = _quietly(lambda: xc.get_calendar(TABLE_CALENDAR, start=first, end=last))
    if cal.first_session.date() > first + dt.timedelta(days=7) or cal.last_session.date() < last:
        raise CalendarError(f"exchange-calendars cannot answer XNYS from {first} to {last}")
    schedule = _quietly(lambda: cal.schedule)
    traded: set[dt.date] = set()
    special: list[str] = []
    for label, row in schedule.iterrows():
        day = label.date()
        traded.add(day)
        if row["break_start"] == row["break_start"]:  # not NaT: XNYS has no breaks
            raise CalendarError(f"XNYS has a break on {day}: the table cannot say so")
        opens = row["open"].to_pydatetime().astimezone(NEW_YORK)
        closes = row["close"].to_pydatetime().astimezone(NEW_YORK)
        if opens.date() != day or closes.date() != day:
            raise CalendarError(f"XNYS's session of {day} is not within that day in New York")
        if (opens.time(), closes.time()) != (REGULAR_OPEN, REGULAR_CLOSE):
            special.append(f"    {_date(day)}: ({_time(opens.time())}, {_time(closes.time())}),\n")
    aliases = sorted(_quietly(lambda: xc.names_to_aliases()).get(TABLE_CALENDAR, []))
    holidays = []
    day = first
    while day <= last:
        if day.weekday() < 5 and day not in traded:
            holidays.append(f"    {_date(day)},\n")
        day += dt.timedelta(days=1)
    return (
        '"""XNYS (the NYSE) from exchange-calendars: its weekdays without a session\n'
        "and its sessions that do not open at 09:30 or close at 16:00 New York (open,\n"
        "close); every other weekday from FIRST to LAST is 09:30 to 16:00. ALIASES:\n"
        "the library's other codes for XNYS's calendar, answered from this table too.\n\n"
        "Generated by ``make calendar`` (``python -m libs.contract.sessions\n"
        "--write-table``): do not edit. tests/unit/test_contract_sessions.py fails\n"
        'when the installed exchange-calendars disagrees with it."""\n\n'
        "import datetime as dt\n\n"
        f"FIRST = {_date(first)}\n"
        f"LAST = {_date(last)}\n\n"
        "HOLIDAYS = frozenset(\n    {\n"
        + "".join(f"    {line}" for line in holidays)
        + "    }\n)\n\n"
        "SPECIAL = {\n" + "".join(special) + "}\n\n"
        "ALIASES = frozenset(\n    {\n"
        + "".join(f'        "{alias}",\n' for alias in aliases)
        + "    }\n)\n"
    )


def _date(day: dt.date) -> str:
    return f"dt.date({day.year}, {day.month}, {day.day})"


def _time(at: dt.time) -> str:
    return f"dt.time({at.hour}, {at.minute})"


def main(argv: Sequence[str] | None = None) -> int:
    """``--write-table``: regenerate ``xnys_table.py`` from the installed
    exchange-calendars; ``--check-table``: exit 1 if it differs."""
    parser = argparse.ArgumentParser(prog="python -m libs.contract.sessions")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-table", action="store_true")
    action.add_argument("--check-table", action="store_true")
    args = parser.parse_args(argv)
    expected = render_table()
    if args.check_table:
        if TABLE_PATH.read_text(encoding="utf-8") != expected:
            print(f"{TABLE_PATH} is stale, run `make calendar`", file=sys.stderr)
            return 1
        return 0
    TABLE_PATH.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
