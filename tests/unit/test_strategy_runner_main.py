"""The strategy-runner's start-up, before it connects anything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine
from typing import Any

import pytest

from libs.contract import options, sessions
from services.strategy_runner import main as runner_main
from services.strategy_runner.config import RunnerSettings


def test_the_runner_warms_the_calendar_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy asking ctx.expired about a contract its config does not
    list paid the calendar's import and build (about 0.5 s) inside that
    callback's 1 s watchdog; main builds it before the service runs, as the
    risk-gate's does."""
    monkeypatch.setattr(sessions, "_calendars", {})
    warm_when_run: list[bool] = []

    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()  # never started: this test connects nothing
        calendar = sessions._calendars.get(options.EXPIRY_CALENDAR)
        three_years = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3 * 366)
        warm_when_run.append(calendar is not None and calendar.last_session.date() >= three_years)

    monkeypatch.setattr(runner_main, "run_service", run_service)
    assert runner_main.main(RunnerSettings(instance="warm"), []) == 0
    assert warm_when_run == [True]


def test_without_exchange_calendars_the_runner_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing() -> None:
        raise sessions.CalendarError("exchange-calendars is not installed")

    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()
        raise AssertionError("the runner ran without a calendar")

    monkeypatch.setattr(sessions, "_calendars", {})
    monkeypatch.setattr(sessions, "_library", missing)
    monkeypatch.setattr(runner_main, "run_service", run_service)
    assert runner_main.main(RunnerSettings(instance="bare"), []) == 2
    said = capsys.readouterr().err  # main's logging goes to stderr
    assert "strategy-runner cannot start: exchange-calendars is not installed" in said
