"""ExchangeHours (marketdata's ``MarketHours``) against exchange-calendars.

It answered from the library (``is_open_on_minute(minute, ignore_breaks=True)``
on the calendar's default range, the open minute open, the close minute
closed); it answers from ``libs.contract.sessions`` now, XNYS from the
committed table. These tests hold it to the library's answers minute by
minute around every open, close and break of the library's range, on half
days and holidays, and at random times.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.contract import sessions
from services.marketdata.adapters.polygon.hours import ExchangeHours

ROOT = Path(__file__).resolve().parents[2]
MINUTE_NS = 60 * 1_000_000_000
DAY_NS = 24 * 60 * MINUTE_NS


def _library(code: str) -> Any:
    import exchange_calendars  # type: ignore[import-untyped]  # no type information shipped

    return sessions._quietly(lambda: exchange_calendars.get_calendar(code))


def _library_is_open(calendar: Any, ts_ns: int) -> bool:
    """The answer ExchangeHours gave before it read sessions.py (called
    within ``sessions._quietly``)."""
    import pandas as pd  # type: ignore[import-untyped]  # no stubs installed

    stamp = pd.Timestamp(ts_ns - ts_ns % MINUTE_NS, unit="ns", tz="UTC")
    return bool(calendar.is_open_on_minute(stamp, ignore_breaks=True))


def _ns(stamp: Any) -> int:
    return int(stamp.value)


def _minutes(calendar: Any, since: dt.date, samples: int) -> Iterator[int]:
    """Minutes either side of every open, close and break of ``calendar``'s
    sessions from ``since``, midnights (UTC and New York) of every day in
    its range, weekends and holidays included, and random minutes (some not
    on the minute)."""
    schedule = calendar.schedule
    first, last = _ns(calendar.first_minute), _ns(calendar.last_minute)
    for label, row in schedule.iterrows():
        if label.date() < since:
            continue
        for column in ("open", "close", "break_start", "break_end"):
            edge = row[column]
            if edge == edge:  # not NaT
                for step in range(-2, 3):
                    yield _ns(edge) + step * MINUTE_NS
        yield _ns(row["close"]) - 1  # the last nanosecond of the last minute
    day = max(since, calendar.first_session.date())
    while day <= calendar.last_session.date():
        for midnight in (
            sessions._ns(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)),
            sessions.new_york_ns(day, dt.time()),
            sessions.new_york_ns(day, dt.time(12)),
        ):
            for step in (-1, 0):
                yield midnight + step * MINUTE_NS
        day += dt.timedelta(days=1)
    rng = random.Random(f"hours {calendar.name}")
    for _ in range(samples):
        yield rng.randrange(first, last)


@pytest.mark.parametrize(
    ("code", "since", "samples"),
    [
        # One calendar of each kind the code tells apart (building each of
        # the library's calendars costs seconds: 24/5, XLON and XTKS, kinds
        # already here, were left out to keep the suite's time).
        ("XNYS", dt.date(1900, 1, 1), 8_000),  # the library's whole default range
        ("NYSE", dt.date(2025, 1, 1), 1_000),  # an alias, answered from the table too
        ("XNAS", dt.date(2025, 1, 1), 1_000),
        ("24/7", dt.date(2026, 1, 1), 1_000),
        ("CMES", dt.date(2025, 6, 1), 1_000),  # sessions open the evening before
        ("XHKG", dt.date(2025, 6, 1), 1_000),  # a lunch break; opens before New York's midnight
    ],
)
def test_open_minute_by_minute_as_exchange_calendars_says(
    code: str, since: dt.date, samples: int
) -> None:
    calendar = _library(code)
    first, last = sessions._quietly(lambda: (calendar.first_minute, calendar.last_minute))
    # Outside the library's default range (twenty years back, one ahead) it
    # raised MinuteOutOfBounds, taken as open: sessions.py widens the range.
    minutes = [
        ts
        for ts in sessions._quietly(lambda: list(_minutes(calendar, since, samples)))
        if _ns(first) <= ts <= _ns(last)
    ]
    expected = sessions._quietly(lambda: [_library_is_open(calendar, ts) for ts in minutes])
    hours = ExchangeHours(code)
    answers = [hours.is_open(ts) for ts in minutes]
    wrong = [
        sessions.new_york_time(ts)
        for ts, a, e in zip(minutes, answers, expected, strict=True)
        if a != e
    ]
    assert wrong == []
    assert len(minutes) > samples


def test_xnys_half_days_and_holidays() -> None:
    hours = ExchangeHours("XNYS")

    def at(day: dt.date, hh: int, mm: int, ss: int = 0) -> bool:
        return hours.is_open(sessions.new_york_ns(day, dt.time(hh, mm, ss)))

    friday, half_day = dt.date(2025, 11, 21), dt.date(2025, 11, 28)
    assert not at(friday, 9, 29, 59)
    assert at(friday, 9, 30)  # the open minute is open
    assert at(friday, 15, 59, 59)
    assert not at(friday, 16, 0)  # the close minute is not
    assert at(half_day, 12, 59)
    assert not at(half_day, 13, 0)
    assert not at(dt.date(2025, 11, 27), 12, 0)  # Thanksgiving
    assert not at(dt.date(2025, 11, 29), 12, 0)  # a Saturday


def test_xnys_is_answered_without_the_library_or_pandas() -> None:
    """Marketdata's start-up with TRADEBUS_CALENDAR=XNYS, in a fresh
    interpreter: neither exchange-calendars nor pandas is imported."""
    code = """
import datetime as dt, sys
from services.marketdata.adapters.polygon.hours import ExchangeHours
from libs.contract import sessions
hours = ExchangeHours("XNYS")
print(hours.is_open(sessions.new_york_ns(dt.date(2025, 11, 28), dt.time(12, 59))))
print(hours.is_open(sessions.new_york_ns(dt.date(2025, 11, 28), dt.time(13))))
print(sorted(m for m in ("exchange_calendars", "pandas") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.stdout.splitlines() == ["True", "False", "[]"]


def test_a_time_the_calendar_cannot_answer_is_taken_as_open_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # AIXK's holidays are recorded from 2017 only: the library refuses 2010.
    hours = ExchangeHours("AIXK")
    saturday = sessions._ns(dt.datetime(2010, 1, 2, 9, tzinfo=dt.UTC))
    with caplog.at_level(logging.WARNING):
        assert hours.is_open(saturday)
    assert "AIXK has no sessions for this time; assuming open" in caplog.text


def test_xnys_past_the_table_without_the_library_is_taken_as_open_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hours = ExchangeHours("XNYS")

    def not_installed() -> Any:
        raise sessions.CalendarError("exchange-calendars is not installed")

    monkeypatch.setattr(sessions, "_library", not_installed)
    past = sessions.TABLE_LAST + dt.timedelta(days=400)
    while past.weekday() != 5:  # a Saturday: closed, were it answered
        past += dt.timedelta(days=1)
    with caplog.at_level(logging.WARNING):
        assert hours.is_open(sessions.new_york_ns(past, dt.time(12)))
    assert "XNYS has no sessions for this time; assuming open" in caplog.text
    # Inside the table, the library is not needed.
    assert not hours.is_open(sessions.new_york_ns(dt.date(2025, 11, 29), dt.time(12)))


@pytest.mark.parametrize("code", ["NOT-A-CALENDAR", "xnys", ""])
def test_an_unknown_calendar_is_refused_naming_the_setting(code: str) -> None:
    from libs.config import ConfigError

    with pytest.raises(ConfigError, match="TRADEBUS_CALENDAR"):
        ExchangeHours(code)
