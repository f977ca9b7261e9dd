"""The risk-gate's, broker-gateway's and paper broker's start-up calendar:
each ``main`` warms the XNYS calendar before its service runs, and exits 2
without exchange-calendars once the committed table no longer reaches four
years ahead (the strategy-runner's: test_strategy_runner_main.py). The
service itself is never started: ``run_service`` is replaced."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from libs.contract import options, sessions
from services.broker_gateway import main as gateway_main
from services.broker_gateway.config import GatewaySettings
from services.paper_broker import main as paper_main
from services.paper_broker.config import PaperBrokerSettings, PaperConfig
from services.risk_gate import main as risk_main
from services.risk_gate.config import RiskGateSettings

RISK_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config" / "risk.yaml"


def run_risk_gate() -> int:
    return risk_main.main(RiskGateSettings(instance="calendar"), RISK_EXAMPLE)


def run_gateway() -> int:
    return gateway_main.main(GatewaySettings(instance="calendar"), [])


def run_paper_broker() -> int:
    return paper_main.main(PaperBrokerSettings(instance="calendar"), PaperConfig())


#: (its main module, how its main is called, the name its refusal starts with)
SERVICES = [
    pytest.param(risk_main, run_risk_gate, "risk-gate", id="risk-gate"),
    pytest.param(gateway_main, run_gateway, "broker-gateway", id="broker-gateway"),
    pytest.param(paper_main, run_paper_broker, "paper broker", id="paper-broker"),
]


def missing() -> None:
    raise sessions.CalendarError("exchange-calendars is not installed")


def table_ends_in_a_year(monkeypatch: pytest.MonkeyPatch) -> dt.date:
    """The committed table reaching only a year ahead (as it will in time):
    warming then needs the library. Returns today."""
    today = dt.datetime.now(dt.UTC).date()
    monkeypatch.setattr(sessions, "TABLE_LAST", today + dt.timedelta(days=366))
    monkeypatch.setattr(sessions, "_calendars", {})
    return today


@pytest.mark.parametrize(("module", "run", "name"), SERVICES)
def test_the_service_starts_on_the_table_without_the_library(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, run: Callable[[], int], name: str
) -> None:
    """While the table reaches four years ahead, main neither imports nor
    needs exchange-calendars: the service runs."""
    monkeypatch.setattr(sessions, "_calendars", {})
    monkeypatch.setattr(sessions, "_library", missing)
    ran: list[bool] = []

    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()  # never started: this test connects nothing
        ran.append(True)

    monkeypatch.setattr(module, "run_service", run_service)
    assert run() == 0, name
    assert ran == [True]
    assert sessions._calendars == {}


@pytest.mark.parametrize(("module", "run", "name"), SERVICES)
def test_past_the_table_the_service_warms_the_calendar_before_it_runs(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, run: Callable[[], int], name: str
) -> None:
    """Past the table, main builds the library's calendar through three
    years ahead before the service runs, not at the first order in a LEAPS."""
    today = table_ends_in_a_year(monkeypatch)
    warm_when_run: list[bool] = []

    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()  # never started: this test connects nothing
        calendar = sessions._calendars.get(options.EXPIRY_CALENDAR)
        three_years = today + dt.timedelta(days=3 * 366)
        warm_when_run.append(calendar is not None and calendar.last_session.date() >= three_years)

    monkeypatch.setattr(module, "run_service", run_service)
    assert run() == 0, name
    assert warm_when_run == [True]


@pytest.mark.parametrize(("module", "run", "name"), SERVICES)
def test_past_the_table_without_exchange_calendars_the_service_exits_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: ModuleType,
    run: Callable[[], int],
    name: str,
) -> None:
    def run_service(service: Coroutine[Any, Any, None]) -> None:
        service.close()
        raise AssertionError(f"{name} ran without a calendar")

    table_ends_in_a_year(monkeypatch)
    monkeypatch.setattr(sessions, "_library", missing)
    monkeypatch.setattr(module, "run_service", run_service)
    assert run() == 2
    said = capsys.readouterr().err  # main's logging goes to stderr
    assert f"{name} cannot start: exchange-calendars is not installed" in said
