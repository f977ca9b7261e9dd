"""New York wall-clock arithmetic and the exchange's sessions, shared by the
paper broker's ``day`` orders' expiry (``ledger.py``) and its auctions
(``auction.py``), both in the exchange's time (``EXCHANGE_TZ``), and the
day of a fill the activities endpoint filters by (``adapters/rest.py``).
Times are whole seconds (``ns // 1_000_000_000``): seconds as a float round
a time a nanosecond before midnight up to the next day.

Which days trade, and when each session opens and closes, come from the
exchange calendar (:data:`CALENDAR`, ``libs/contract/sessions.py``): no
session on a holiday, a 13:00 close on an NYSE half day. Pure: the
calendar's answers depend on the day alone. XNYS's days from 2000 to 2040
come from the committed table (``xnys_table.py``, no import of the
library); outside it, without exchange-calendars installed, every weekday is
a 09:30 to 16:00 session.
"""

from __future__ import annotations

import datetime as dt

from libs.contract import sessions
from libs.contract.options import EXCHANGE_TZ, EXPIRY_CALENDAR, EXPIRY_CLOSE
from libs.contract.sessions import Session

#: The exchange whose sessions the paper broker keeps: the one whose close
#: ends an option contract's expiry day.
CALENDAR = EXPIRY_CALENDAR
#: A weekday's regular session when the calendar cannot be read.
_OPEN = dt.time(9, 30)
#: Sessions are at most a few days apart (a holiday beside a weekend): a
#: search for the next one that finds none in this many days is a bug.
_MAX_GAP_DAYS = 14


def new_york(at_s: int) -> dt.datetime:
    """``at_s`` (seconds since the epoch) as New York's wall clock has it."""
    return dt.datetime.fromtimestamp(at_s, EXCHANGE_TZ)


def ns_at(day: dt.date, at: dt.time) -> int:
    """``at`` (New York time) on ``day``, in ns since the epoch (whole seconds)."""
    return int(dt.datetime.combine(day, at, tzinfo=EXCHANGE_TZ).timestamp()) * 1_000_000_000


def regular_session(day: dt.date) -> Session | None:
    """``day``'s regular session on the exchange (its close 13:00 on a half
    day), or None: it does not trade that day (a weekend, a holiday)."""
    try:
        return sessions.session(CALENDAR, day)
    except sessions.CalendarError:  # not installed: weekdays, 09:30 to 16:00
        if day.weekday() >= 5:
            return None
        close = ns_at(day, EXPIRY_CLOSE)
        return Session(CALENDAR, day, ns_at(day, _OPEN), close, close)


def next_session(day: dt.date) -> Session:
    """The first regular session after ``day``."""
    for gap in range(1, _MAX_GAP_DAYS + 1):
        session = regular_session(day + dt.timedelta(days=gap))
        if session is not None:
            return session
    raise AssertionError(f"no {CALENDAR} session in the {_MAX_GAP_DAYS} days after {day}")
