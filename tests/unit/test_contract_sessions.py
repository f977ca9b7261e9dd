"""Exchange sessions from exchange-calendars: early closes, holidays, full days."""

from __future__ import annotations

import datetime as dt

import pytest

from libs.contract import sessions
from libs.strategy.testing import ny_ns

HOUR_NS = 3600 * 1_000_000_000


def test_an_nyse_half_day_closes_at_13_00_three_hours_early() -> None:
    for day in (dt.date(2025, 11, 28), dt.date(2025, 12, 24), dt.date(2025, 7, 3)):
        s = sessions.session("XNYS", day)
        assert s is not None, day
        assert (s.open_ns, s.close_ns) == (ny_ns(day, 9, 30), ny_ns(day, 13, 0)), day
        assert s.full_day_close_ns == ny_ns(day, 16, 0)
        assert s.early_by_ns == 3 * HOUR_NS


def test_a_full_day_closes_at_16_00_in_winter_and_summer() -> None:
    for day in (dt.date(2025, 12, 1), dt.date(2025, 7, 7)):
        s = sessions.session("XNYS", day)
        assert s is not None
        assert (s.open_ns, s.close_ns) == (ny_ns(day, 9, 30), ny_ns(day, 16, 0))
        assert s.early_by_ns == 0


def test_no_session_on_a_holiday_or_a_weekend() -> None:
    assert sessions.session("XNYS", dt.date(2025, 11, 27)) is None  # Thanksgiving
    assert sessions.session("XNYS", dt.date(2025, 12, 25)) is None
    assert sessions.session("XNYS", dt.date(2025, 11, 29)) is None  # Saturday


def test_a_day_outside_the_default_range_is_answered() -> None:
    # exchange-calendars builds twenty years back and one ahead by default.
    old = dt.date(1999, 11, 26)  # the day after Thanksgiving 1999: 13:00
    s = sessions.session("XNYS", old)
    assert s is not None
    assert s.close_ns == ny_ns(old, 13, 0)
    far = dt.date(2040, 11, 23)  # the day after Thanksgiving 2040
    s = sessions.session("XNYS", far)
    assert s is not None
    assert s.close_ns == ny_ns(far, 13, 0)


def test_an_answer_is_kept_per_day() -> None:
    day = dt.date(2025, 11, 28)
    assert sessions.session("XNYS", day) is sessions.session("XNYS", day)


def test_an_unknown_calendar_is_refused() -> None:
    assert sessions.check("XNYS") == "XNYS"
    with pytest.raises(sessions.CalendarError, match="unknown exchange calendar 'NOPE'"):
        sessions.check("NOPE")
    with pytest.raises(sessions.CalendarError, match="unknown exchange calendar 'NOPE'"):
        sessions.session("NOPE", dt.date(2025, 11, 28))


def test_a_check_builds_the_calendar_so_a_callback_does_not() -> None:
    # A strategy's parameters are checked when they load; its callbacks
    # then ask with the calendar built (a first session() built it inside
    # the callback's watchdog time).
    sessions._calendars.pop("XNYS", None)
    assert sessions.check("XNYS") == "XNYS"
    assert "XNYS" in sessions._calendars


def test_a_holiday_just_before_the_built_range_is_no_session() -> None:
    # Widening the range to start on a holiday still starts it at the next
    # session: the holiday itself was outside it, and exchange-calendars
    # raised DateOutOfBounds rather than say it does not trade.
    sessions._calendars.pop("XNYS", None)
    sessions.session.cache_clear()
    assert sessions.session("XNYS", dt.date(1999, 1, 18)) is None  # Martin Luther King Jr. Day
    assert sessions.session("XNYS", dt.date(2099, 12, 25)) is None
