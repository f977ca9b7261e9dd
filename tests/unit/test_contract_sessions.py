"""Exchange sessions from exchange-calendars, and XNYS's from its committed
table: early closes, holidays, full days."""

from __future__ import annotations

import datetime as dt
import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from libs.contract import sessions, xnys_table
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


def test_a_day_outside_the_table_is_asked_of_the_library() -> None:
    # The table holds 2000 to 2040; exchange-calendars builds twenty years
    # back and one ahead by default, and widens its range when asked.
    sessions._calendars.pop("XNYS", None)
    old = dt.date(1999, 11, 26)  # the day after Thanksgiving 1999: 13:00
    s = sessions.session("XNYS", old)
    assert s is not None
    assert s.close_ns == ny_ns(old, 13, 0)
    assert "XNYS" in sessions._calendars
    far = dt.date(2041, 11, 29)  # the day after Thanksgiving 2041
    s = sessions.session("XNYS", far)
    assert s is not None
    assert s.close_ns == ny_ns(far, 13, 0)
    assert s.full_day_close_ns == ny_ns(far, 16, 0)


def test_an_answer_is_kept_per_day() -> None:
    day = dt.date(2025, 11, 28)
    assert sessions.session("XNYS", day) is sessions.session("XNYS", day)


def test_an_unknown_calendar_is_refused() -> None:
    assert sessions.check("XNYS") == "XNYS"
    with pytest.raises(sessions.CalendarError, match="unknown exchange calendar 'NOPE'"):
        sessions.check("NOPE")
    with pytest.raises(sessions.CalendarError, match="unknown exchange calendar 'NOPE'"):
        sessions.session("NOPE", dt.date(2025, 11, 28))


def test_a_check_builds_a_calendar_the_table_does_not_hold() -> None:
    # A strategy's parameters are checked when they load; its callbacks
    # then ask with the calendar built (a first session() built it inside
    # the callback's watchdog time). XNYS, in the table, needs no building.
    sessions._calendars.pop("XLON", None)
    assert sessions.check("XLON") == "XLON"
    assert "XLON" in sessions._calendars
    sessions._calendars.pop("XNYS", None)
    assert sessions.check("XNYS", through=dt.date(2030, 1, 1)) == "XNYS"
    assert "XNYS" not in sessions._calendars


def test_a_holiday_just_before_the_built_range_is_no_session() -> None:
    # Widening the range to start on a holiday still starts it at the next
    # session: the holiday itself was outside it, and exchange-calendars
    # raised DateOutOfBounds rather than say it does not trade.
    sessions._calendars.pop("XNYS", None)
    sessions.session.cache_clear()
    assert sessions.session("XNYS", dt.date(1999, 1, 18)) is None  # Martin Luther King Jr. Day
    assert sessions.session("XNYS", dt.date(2099, 12, 25)) is None


def test_xnys_is_answered_without_the_library_or_pandas() -> None:
    """A service's start-up (warm_calendar) and an expiry three years ahead,
    a half day and a holiday, in a fresh interpreter: neither exchange-calendars
    nor pandas is imported (about a second and 100 MB a process)."""
    code = """
import datetime as dt, sys
from libs.contract import options, sessions
options.warm_calendar()
day = dt.date.today() + dt.timedelta(days=3 * 366)
print(sessions.session("XNYS", day) is None or sessions.session("XNYS", day).open_ns > 0)
print(options.expiry_close(dt.date(2028, 11, 24)).text)
print(sessions.session("XNYS", dt.date(2028, 11, 23)))
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
    assert done.stdout.splitlines() == ["True", "13:00", "None", "[]"]


def test_the_library_s_aliases_of_xnys_are_answered_from_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """exchange-calendars gives XNYS's calendar other codes (NYSE, XNAS, ...);
    asked by one of them, a session is the table's, as XNYS's is, not the
    library's import and build (which, not installed, refused them)."""
    import exchange_calendars  # type: ignore[import-untyped]  # no type information shipped

    aliases = exchange_calendars.names_to_aliases()["XNYS"]
    assert "NYSE" in aliases
    assert sorted(aliases) == sorted(xnys_table.ALIASES)
    half_day, holiday = dt.date(2025, 11, 28), dt.date(2025, 11, 27)
    library = {code: sessions._from_library(code, half_day) for code in aliases}

    def missing() -> None:
        raise sessions.CalendarError("exchange-calendars is not installed")

    monkeypatch.setattr(sessions, "_library", missing)
    sessions.session.cache_clear()
    for code in aliases:
        s = sessions.session(code, half_day)
        assert s == library[code], code
        assert s is not None
        assert (s.calendar, s.close_ns) == (code, ny_ns(half_day, 13, 0))
        assert sessions.session(code, holiday) is None, code
        assert sessions.check(code, through=dt.date(2030, 1, 1)) == code
    with pytest.raises(sessions.CalendarError, match="not installed"):
        sessions.session("nyse", half_day)  # the library's codes are case-sensitive


# ------------------------------------------------------------------ the table

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_matches_the_installed_library() -> None:
    """An exchange-calendars upgrade that adds a holiday or an early close
    changes the table: it is regenerated and committed, not silently stale."""
    expected = sessions.render_table()
    on_disk = sessions.TABLE_PATH.read_text(encoding="utf-8")
    if on_disk != expected:
        diff = difflib.unified_diff(
            on_disk.splitlines(), expected.splitlines(), "on disk", "generated", lineterm=""
        )
        pytest.fail(
            "libs/contract/xnys_table.py is stale, run `make calendar`\n"
            + "\n".join(list(diff)[:40])
        )


def test_the_table_answers_as_the_library_does() -> None:
    # Every half day and holiday it lists, and every day of three years.
    days = {*xnys_table.SPECIAL, *xnys_table.HOLIDAYS}
    days.update(dt.date(2025, 1, 1) + dt.timedelta(days=n) for n in range(3 * 366))
    for day in sorted(days):
        assert sessions._from_table(day) == sessions._from_library("XNYS", day), day
    assert len(xnys_table.SPECIAL) > 80
    assert dt.date(2025, 1, 9) in xnys_table.HOLIDAYS  # Carter's national day of mourning


def test_check_table_flags_a_stale_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "xnys_table.py"
    table.write_text(
        sessions.TABLE_PATH.read_text(encoding="utf-8").replace(
            "    dt.date(2025, 11, 28): (dt.time(9, 30), dt.time(13, 0)),\n", ""
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(sessions, "TABLE_PATH", table)
    # Rendered once (41 years from the library take seconds each time);
    # test_the_table_matches_the_installed_library checks the rendering.
    rendered = sessions.render_table()
    monkeypatch.setattr(sessions, "render_table", lambda: rendered)
    assert sessions.main(["--check-table"]) == 1
    assert "stale, run `make calendar`" in capsys.readouterr().err
    assert sessions.main(["--write-table"]) == 0
    assert sessions.main(["--check-table"]) == 0
    assert table.read_text(encoding="utf-8") == rendered
