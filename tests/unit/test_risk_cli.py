"""The risk CLI without servers: limits-file checks, the status table, operator names."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from services import cli as root
from services.risk_gate import cli
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from services.risk_gate.domain.status import summarize

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config" / "risk.yaml"
runner = CliRunner()


def test_check_accepts_the_example() -> None:
    result = runner.invoke(root.app, ["risk-gate", "check", "--config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "ok, 2 accounts, 4 strategies" in result.output


def test_check_refuses_a_typo_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "risk.yaml"
    bad.write_text(EXAMPLE.read_text().replace("max_order_notional", "max_order_notionl", 1))
    result = runner.invoke(root.app, ["risk-gate", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert "strategies.sma-aapl.max_order_notionl: Extra inputs are not permitted" in (
        result.output
    )


def test_run_without_a_limits_file_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADEBUS_RISK_CONFIG", raising=False)
    result = runner.invoke(root.app, ["risk-gate", "run"])
    assert result.exit_code == 2
    assert "no risk limits file" in result.output


def test_operator_defaults_to_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "ann")
    assert cli._operator(None) == "ann"
    assert cli._operator("bob") == "bob"


def test_resume_refuses_a_scope_that_is_not_a_token() -> None:
    result = runner.invoke(root.app, ["risk", "resume", "acct.a", "--reason", "x"])
    assert result.exit_code == 2


def printed_status(monkeypatch: pytest.MonkeyPatch, width: int) -> str:
    """The status table of the example limits' initial state at ``width`` columns."""
    from services.risk_gate.config import load_limits

    console = Console(width=width, record=True)
    monkeypatch.setattr(cli, "out", console)
    limits: RiskLimits = load_limits(EXAMPLE)
    summary = {"as_of_seq": 7, **summarize(RiskState.initial(limits), 1_773_154_800 * 10**9)}
    cli._print_status(summary, limits_given=True)
    return console.export_text()


def test_status_table_shows_states_and_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    text = printed_status(monkeypatch, 200)
    assert "as of store sequence 7" in text
    assert "kill switch off" in text
    assert "sma-aapl" in text
    assert "60,000.00" in text  # caps and notionals to the cent, with separators


def test_status_table_in_a_narrow_terminal_wraps_and_cuts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rich's default overflow cuts a cell to an ellipsis: a trader would read
    ``30,00…`` for a cap. Every cell folds onto more lines instead."""
    assert "…" not in printed_status(monkeypatch, 60)


def test_status_shows_a_symbol_off_the_strategy_s_list_at_its_cap_of_0() -> None:
    """A strategy with a symbols list may not add to a symbol off it (decide
    caps it at 0; what it holds there may only be sold): status must show
    that cap, not the strategy's general max_position with room to spare."""
    import uuid

    from tests.unit.risk_decide_inputs import LIMITS, T0, fill, trade

    state = RiskState.initial(LIMITS)
    for e in (
        trade("NVDA", 10),
        fill(uuid.uuid4(), 50, 10, symbol="NVDA", strategy="pairs"),
        trade("AAPL", 10),
        fill(uuid.uuid4(), 60, 10, symbol="AAPL", strategy="pairs"),
    ):
        state = evolve(state, e)
    positions = summarize(state, T0)["strategies"]["pairs"]["accounts"]["acct"]["positions"]
    assert positions["AAPL"] == {"quantity": "60", "max": "120", "used": "0.5000"}
    assert positions["NVDA"]["max"] == "0"
    assert positions["NVDA"]["used"] is None  # no room at all: not a fraction


@pytest.mark.parametrize(
    "reason", ["[eod] flat before the close", "fat finger, see [/tmp/orders.csv]"]
)
def test_status_shows_the_operator_s_reason_as_written(
    monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    """The kill switch's reason is the operator's own text, and the global
    scope's state carries it too (until a resume): printed as written. rich
    read it as markup: '[eod] ...' lost '[eod]', and a '[/' in it raised
    MarkupError, so `risk status` ended in a traceback for as long as that
    reason stood."""
    from libs.contract.envelope import WallClock
    from libs.contract.events import (
        KillSwitchEngaged,
        OperatorActionPayload,
        TradingStateChanged,
        TradingStatePayload,
    )
    from services.risk_gate.config import load_limits
    from services.risk_gate.domain.evolve import evolve

    clock = WallClock()
    engaged = KillSwitchEngaged.create(
        OperatorActionPayload(operator="ann", reason=reason), source="operator/ann", clock=clock
    )
    halted = TradingStateChanged.create(
        TradingStatePayload(
            scope="global",
            state="halted",
            previous="active",
            reason=f"kill switch engaged by ann: {reason}",
        ),
        source="risk-gate/test",
        clock=clock,
        cause=engaged,
    )
    state = evolve(evolve(RiskState.initial(load_limits(EXAMPLE)), engaged), halted)
    console = Console(width=400, record=True)
    monkeypatch.setattr(cli, "out", console)
    cli._print_status({"as_of_seq": 2, **summarize(state, clock.now_ns())}, limits_given=True)
    text = console.export_text()
    assert f"KILL SWITCH ON by ann: {reason}" in text
    assert f"kill switch engaged by ann: {reason}" in text


@pytest.mark.parametrize(
    "args",
    [
        ["kill-switch", "on", "--reason", ""],
        ["kill-switch", "off", "--reason", "   "],
        ["risk", "resume", "global", "--reason", ""],
    ],
)
def test_an_operator_command_without_a_reason_is_refused(args: list[str]) -> None:
    """Refused before anything is published (no NATS here)."""
    result = runner.invoke(root.app, args)
    assert result.exit_code == 2
    assert "give the reason in words" in result.output


def test_status_shows_the_positions_marked_at_a_stale_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A price older than max_mark_age_s still marks a position's day P&L
    (and the breaker counts it: the last price is the best estimate), but
    status said nothing of it: a P&L standing still read as measured."""
    from tests.unit.risk_decide_inputs import stale_state

    state, now = stale_state()
    summary = summarize(state, now)
    accounts = summary["accounts"]
    assert accounts["acct"]["stale_marks"] == {"AAPL": {"age_s": "600.0", "max_age_s": 60.0}}
    assert accounts["paper"]["stale_marks"] == {"NVDA": {"age_s": "-120.0", "max_age_s": 60.0}}
    assert accounts["other"]["stale_marks"] == {}
    assert accounts["acct"]["day_pnl"] == "5.00"  # AAPL still at 100, MSFT up 1 on 5
    console = Console(width=400, record=True)
    monkeypatch.setattr(cli, "out", console)
    cli._print_status({"as_of_seq": 5, **summary}, limits_given=True)
    text = console.export_text()
    assert "acct: day P&L marks a position at a stale price" in text
    assert "AAPL 600.0s old (max 60s)" in text
    assert "paper: day P&L marks a position at a stale price" in text
    assert "NVDA stamped 120.0s ahead (max 60s)" in text
    assert "MSFT" not in text.split("acct: day P&L")[1].splitlines()[0]
    assert "other: day P&L" not in text
    # A position with no price at all (an exercise's shares never printed):
    # its open quantity is not counted.
    from dataclasses import replace

    from services.risk_gate.domain.state import without

    unpriced = replace(state, marks=without(state.marks, "MSFT"))
    stale = summarize(unpriced, now)["accounts"]["acct"]["stale_marks"]
    assert stale["MSFT"] == {"age_s": None, "max_age_s": 60.0}
    assert cli._stale("MSFT", stale["MSFT"]) == "MSFT no price (not counted)"


def test_kill_switch_with_no_nats_there_names_the_url_and_the_cause_at_once() -> None:
    """Nothing listens at NATS_URL: the connection is refused, and the command
    says so at once, naming the server. It kept trying for 12 s and said
    "NOT published: NATS did not store it within 10s (TimeoutError: )"."""
    import time

    from libs.local.servers import free_port

    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    result = runner.invoke(
        root.app,
        ["kill-switch", "on", "--reason", "runaway loop", "--operator", "ana"],
        env={"NATS_URL": url, "COLUMNS": "300"},
    )
    took = time.monotonic() - started
    assert result.exit_code == 1, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error.startswith(
        f"error: KillSwitchEngaged NOT published: cannot connect to NATS at {url}"
    )
    assert "connection refused" in error, error
    assert took < 5, took
