"""The strategy-runner's start-up, before it connects anything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine
from typing import Any

import pytest

from libs.contract import options, sessions
from services.strategy_runner import main as runner_main
from services.strategy_runner.config import RunnerSettings


def missing() -> None:
    raise sessions.CalendarError("exchange-calendars is not installed")


def test_the_runner_starts_on_the_table_without_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the committed XNYS table reaches four years ahead, every expiry
    a strategy asks ctx.expired about is a lookup: main neither imports nor
    needs exchange-calendars."""
    monkeypatch.setattr(sessions, "_calendars", {})
    monkeypatch.setattr(sessions, "_library", missing)

    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()  # never started: this test connects nothing

    monkeypatch.setattr(runner_main, "run_service", run_service)
    assert runner_main.main(RunnerSettings(instance="table"), []) == 0
    assert sessions._calendars == {}


def test_past_the_table_the_runner_warms_the_calendar_before_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A strategy asking ctx.expired about a contract its config does not
    list paid the calendar's import and build (about 0.5 s) inside that
    callback's 1 s watchdog; once the table no longer reaches four years
    ahead, main builds it before the service runs, as the risk-gate's does."""
    today = dt.datetime.now(dt.UTC).date()
    monkeypatch.setattr(sessions, "TABLE_LAST", today + dt.timedelta(days=366))
    monkeypatch.setattr(sessions, "_calendars", {})
    warm_when_run: list[bool] = []

    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()  # never started: this test connects nothing
        calendar = sessions._calendars.get(options.EXPIRY_CALENDAR)
        three_years = today + dt.timedelta(days=3 * 366)
        warm_when_run.append(calendar is not None and calendar.last_session.date() >= three_years)

    monkeypatch.setattr(runner_main, "run_service", run_service)
    assert runner_main.main(RunnerSettings(instance="warm"), []) == 0
    assert warm_when_run == [True]


def test_past_the_table_without_exchange_calendars_the_runner_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()
        raise AssertionError("the runner ran without a calendar")

    today = dt.datetime.now(dt.UTC).date()
    monkeypatch.setattr(sessions, "TABLE_LAST", today + dt.timedelta(days=366))
    monkeypatch.setattr(sessions, "_calendars", {})
    monkeypatch.setattr(sessions, "_library", missing)
    monkeypatch.setattr(runner_main, "run_service", run_service)
    assert runner_main.main(RunnerSettings(instance="bare"), []) == 2
    said = capsys.readouterr().err  # main's logging goes to stderr
    assert "strategy-runner cannot start: exchange-calendars is not installed" in said
