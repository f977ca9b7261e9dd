"""The paper broker's New York wall-clock arithmetic (domain/new_york.py),
shared by the day orders' expiry and the auctions' sessions."""

from __future__ import annotations

import datetime as dt

import pytest

from services.paper_broker.domain.new_york import is_weekday, new_york, next_weekday, ns_at


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2026-12-10", "2026-12-11"),  # Thursday: Friday
        ("2026-12-11", "2026-12-14"),  # Friday: Monday
        ("2026-12-12", "2026-12-14"),  # Saturday: Monday
        ("2026-12-13", "2026-12-14"),  # Sunday: Monday
    ],
)
def test_the_next_weekday(day: str, expected: str) -> None:
    assert next_weekday(dt.date.fromisoformat(day)) == dt.date.fromisoformat(expected)


def test_weekdays_are_monday_to_friday() -> None:
    week = [dt.date(2026, 12, 7) + dt.timedelta(days=n) for n in range(7)]
    assert [is_weekday(d) for d in week] == [True] * 5 + [False] * 2


@pytest.mark.parametrize(
    ("day", "utc"),
    [
        ("2026-12-11", "2026-12-11T21:00:00+00:00"),  # EST: UTC-5
        ("2026-07-10", "2026-07-10T20:00:00+00:00"),  # EDT: UTC-4
    ],
)
def test_a_new_york_time_of_a_day(day: str, utc: str) -> None:
    ns = ns_at(dt.date.fromisoformat(day), dt.time(16, 0))
    assert ns == int(dt.datetime.fromisoformat(utc).timestamp()) * 1_000_000_000
    assert new_york(ns // 1_000_000_000).time() == dt.time(16, 0)
