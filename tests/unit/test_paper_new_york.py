"""The paper broker's New York wall-clock arithmetic and sessions
(domain/new_york.py), shared by the day orders' expiry and the auctions'
sessions."""

from __future__ import annotations

import datetime as dt

import pytest

from libs.strategy.testing import ny_ns
from services.paper_broker.domain.new_york import new_york, next_session, ns_at, regular_session


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2026-12-10", "2026-12-11"),  # Thursday: Friday
        ("2026-12-11", "2026-12-14"),  # Friday: Monday
        ("2026-12-12", "2026-12-14"),  # Saturday: Monday
        ("2026-12-13", "2026-12-14"),  # Sunday: Monday
        ("2025-11-26", "2025-11-28"),  # the day before Thanksgiving: the half day after
        ("2025-12-24", "2025-12-26"),  # Christmas Eve: past Christmas
        ("2025-04-17", "2025-04-21"),  # past Good Friday and the weekend
    ],
)
def test_the_next_session(day: str, expected: str) -> None:
    s = next_session(dt.date.fromisoformat(day))
    assert s.day == dt.date.fromisoformat(expected)


def test_the_regular_session_of_a_day() -> None:
    full = regular_session(dt.date(2025, 12, 1))
    assert full is not None
    assert (full.open_ns, full.close_ns) == (
        ny_ns(dt.date(2025, 12, 1), 9, 30),
        ny_ns(dt.date(2025, 12, 1), 16, 0),
    )
    half = regular_session(dt.date(2025, 11, 28))
    assert half is not None
    assert half.close_ns == ny_ns(dt.date(2025, 11, 28), 13, 0)
    assert regular_session(dt.date(2025, 11, 27)) is None  # Thanksgiving
    assert regular_session(dt.date(2025, 11, 29)) is None  # Saturday


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
