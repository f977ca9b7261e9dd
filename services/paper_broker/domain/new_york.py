"""New York wall-clock arithmetic shared by the paper broker's sessions: a
``day`` order's expiry (``ledger.py``) and the auctions' sessions
(``auction.py``), both in the exchange's time (``EXCHANGE_TZ``), and the
day of a fill the activities endpoint filters by (``adapters/server.py``).
Times are whole seconds (``ns // 1_000_000_000``): seconds as a float round
a time a nanosecond before midnight up to the next day.

Pure. Weekdays are trading days: holidays and early closes are not known.
"""

from __future__ import annotations

import datetime as dt

from libs.contract.options import EXCHANGE_TZ


def new_york(at_s: int) -> dt.datetime:
    """``at_s`` (seconds since the epoch) as New York's wall clock has it."""
    return dt.datetime.fromtimestamp(at_s, EXCHANGE_TZ)


def ns_at(day: dt.date, at: dt.time) -> int:
    """``at`` (New York time) on ``day``, in ns since the epoch (whole seconds)."""
    return int(dt.datetime.combine(day, at, tzinfo=EXCHANGE_TZ).timestamp()) * 1_000_000_000


def is_weekday(day: dt.date) -> bool:
    return day.weekday() < 5


def next_weekday(day: dt.date) -> dt.date:
    """The first weekday after ``day``."""
    day += dt.timedelta(days=1)
    while not is_weekday(day):
        day += dt.timedelta(days=1)
    return day
