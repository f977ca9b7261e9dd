"""An option contract's expiry: the close of its expiry day's regular
session, from the exchange calendar (13:00 New York on an NYSE half day)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from libs.contract import options, sessions
from libs.contract.options import parse_option
from libs.strategy.testing import ny_ns


@pytest.fixture
def fresh_closes() -> Iterator[None]:
    """Each expiry day's close asked anew, and forgotten again after the test."""
    options.expiry_close.cache_clear()
    sessions.session.cache_clear()
    yield
    options.expiry_close.cache_clear()
    sessions.session.cache_clear()


@pytest.mark.parametrize("day", [dt.date(2025, 11, 28), dt.date(2025, 12, 24), dt.date(2025, 7, 3)])
def test_a_contract_expiring_on_a_half_day_expires_at_its_13_00_close(day: dt.date) -> None:
    """The day after Thanksgiving has weekly SPY contracts expiring: they
    stop trading at the 13:00 close, not at 16:00."""
    c = parse_option(f"O:SPY{day:%y%m%d}C00600000")
    assert c.expires_at_ns == ny_ns(day, 13, 0)
    assert not c.expired_by(ny_ns(day, 13, 0) - 1)
    assert c.expired_by(ny_ns(day, 13, 0))
    assert c.expired_by(ny_ns(day, 15, 59))
    assert c.expired_text == f"expired at the close of {day} (13:00 New York)"


def test_a_full_day_expiry_is_at_16_00_in_summer_too() -> None:
    c = parse_option("O:SPY250718P00600000")
    assert c.expires_at_ns == ny_ns(dt.date(2025, 7, 18), 16, 0)
    assert c.expired_text == "expired at the close of 2025-07-18 (16:00 New York)"


def test_an_expiry_on_a_day_the_exchange_is_closed_is_at_16_00() -> None:
    # No contract expires on a holiday (its expiry moves to the day before,
    # and its symbol with it): a symbol that says so keeps the full-day close.
    c = parse_option("O:SPY251127C00600000")  # Thanksgiving 2025
    assert c.expires_at_ns == ny_ns(dt.date(2025, 11, 27), 16, 0)


@pytest.mark.usefixtures("fresh_closes")
def test_the_close_is_read_once_per_expiry_day() -> None:
    call = parse_option("O:SPY251128C00600000")
    put = parse_option("O:SPY251128P00590000")
    for _ in range(3):
        assert call.expires_at_ns == put.expires_at_ns == ny_ns(dt.date(2025, 11, 28), 13, 0)
        assert call.expired_text == put.expired_text
    info = options.expiry_close.cache_info()
    assert (info.misses, info.currsize) == (1, 1)


@pytest.mark.usefixtures("fresh_closes")
def test_without_exchange_calendars_the_table_answers_and_past_it_16_00(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> None:
        raise sessions.CalendarError("exchange-calendars is not installed")

    monkeypatch.setattr(sessions, "_library", missing)
    half_day = parse_option("O:SPY251128C00600000")  # in the table: its 13:00 close
    assert half_day.expires_at_ns == ny_ns(dt.date(2025, 11, 28), 13, 0)
    options.warm_calendar()  # the table reaches four years ahead: nothing to import
    past = parse_option("O:SPY411129C00600000")  # the day after Thanksgiving 2041
    assert past.expires_at_ns == ny_ns(dt.date(2041, 11, 29), 16, 0)
    assert past.expired_text == "expired at the close of 2041-11-29 (16:00 New York)"


@pytest.mark.usefixtures("fresh_closes")
def test_warming_past_the_table_needs_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the table no longer reaches four years ahead, a service warms the
    library's calendar at start-up through the longest listed expiry (the
    import and the build are not paid at the first order in a LEAPS), and
    cannot start without it."""
    today = dt.datetime.now(dt.UTC).date()
    monkeypatch.setattr(sessions, "TABLE_LAST", today + dt.timedelta(days=366))
    monkeypatch.setattr(sessions, "_calendars", {})
    options.warm_calendar()
    calendar = sessions._calendars[options.EXPIRY_CALENDAR]
    assert calendar.last_session.date() >= today + dt.timedelta(days=3 * 366)

    def missing() -> None:
        raise sessions.CalendarError("exchange-calendars is not installed")

    monkeypatch.setattr(sessions, "_library", missing)
    with pytest.raises(sessions.CalendarError, match="not installed"):
        options.warm_calendar()
