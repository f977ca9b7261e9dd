"""New York wall-clock arithmetic and the exchange's sessions, shared by the
paper broker's ``day`` orders' expiry (``ledger.py``) and its auctions
(``auction.py``), both in the exchange's time (``EXCHANGE_TZ``), and the
day of a fill the activities endpoint filters by (``adapters/rest.py``).
Times are whole seconds (``sessions.new_york_time``): seconds as a float
round a time a nanosecond before midnight up to the next day.

Which days trade, and when each session opens and closes, come from the
exchange calendar (:data:`CALENDAR`, ``sessions.xnys_session``): no session
on a holiday, a 13:00 close on an NYSE half day. Pure: the calendar's
answers depend on the day alone. XNYS's days from 2000 to 2040 come from the
committed table (``xnys_table.py``, no import of the library); outside it,
without exchange-calendars installed, every weekday is a 09:30 to 16:00
session.
"""

from __future__ import annotations

import datetime as dt

from libs.contract import sessions
from libs.contract.sessions import Session

#: The exchange whose sessions the paper broker keeps: the one whose close
#: ends an option contract's expiry day.
CALENDAR = sessions.XNYS
#: Sessions are at most a few days apart (a holiday beside a weekend): a
#: search for the next one that finds none in this many days is a bug.
_MAX_GAP_DAYS = 14

#: ``regular_session(day)``: the day's regular session on the exchange (its
#: close 13:00 on a half day), or None: it does not trade that day.
regular_session = sessions.xnys_session
#: ``ns_at(day, at)``: ``at`` (New York time) on ``day``, in ns since the epoch.
ns_at = sessions.new_york_ns


def new_york(at_s: int) -> dt.datetime:
    """``at_s`` (seconds since the epoch) as New York's wall clock has it:
    for the functions cached by the second (``ledger``, ``auction``)."""
    return sessions.new_york_time(at_s * sessions.NS_PER_S)


def next_session(day: dt.date) -> Session:
    """The first regular session after ``day``."""
    for gap in range(1, _MAX_GAP_DAYS + 1):
        session = regular_session(day + dt.timedelta(days=gap))
        if session is not None:
            return session
    raise AssertionError(f"no {CALENDAR} session in the {_MAX_GAP_DAYS} days after {day}")
