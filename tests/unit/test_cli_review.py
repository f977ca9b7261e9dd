"""Operator-facing CLI mistakes end in one line with the right exit code,
naming what was wrong (a fresh-eyes review of the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services import cli as root

runner = CliRunner()
#: Nothing listens there: a command that reaches for the store fails on it.
NO_STORE = "postgresql://postgres@127.0.0.1:1/tradebus"


def test_db_upgrade_refuses_an_unknown_revision_before_touching_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It used to create the database first, then end in alembic's traceback.
    monkeypatch.setenv("DATABASE_URL", NO_STORE)
    result = runner.invoke(root.app, ["db", "upgrade", "bogus"])
    assert result.exit_code == 2, result.output
    assert "REVISION: no migration has revision 'bogus'" in result.output
    assert "cannot reach" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("revision", ["head", "0003"])
def test_db_upgrade_takes_a_known_revision_to_the_store(
    monkeypatch: pytest.MonkeyPatch, revision: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", NO_STORE)
    result = runner.invoke(root.app, ["db", "upgrade", revision])
    assert result.exit_code == 1, result.output
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in result.output


@pytest.mark.parametrize("inside", [False, True])
def test_up_refuses_a_home_it_cannot_make_in_one_line(tmp_path: Path, inside: bool) -> None:
    # A file where the home should be (or under it): up ended in mkdir's traceback.
    taken = tmp_path / "taken"
    taken.write_text("")
    home = taken / "home" if inside else taken
    result = runner.invoke(root.app, ["up", "--home", str(home)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"!!! --home {home}: cannot use it as the stack's home" in result.output


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["marketdata", "run", "--rate", "abc"], "--rate (TRADEBUS_SYNTHETIC_RATE): "),
        (["marketdata", "run", "--source", "bogus"], "--source (TRADEBUS_SOURCE): "),
        (["demo", "run", "--rate", "abc"], "--rate (TRADEBUS_DEMO_RATE): "),
    ],
)
def test_a_bad_option_value_is_named_by_its_option(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], named: str
) -> None:
    # It was named only by the variable the option overrides, which the
    # operator never set.
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    result = runner.invoke(root.app, argv)
    assert result.exit_code == 2, result.output
    assert named in result.output


def test_a_bad_variable_is_still_named_by_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("TRADEBUS_SYNTHETIC_RATE", "abc")
    result = runner.invoke(root.app, ["marketdata", "run"])
    assert result.exit_code == 2, result.output
    assert "error: invalid configuration: TRADEBUS_SYNTHETIC_RATE: " in result.output


@pytest.mark.parametrize("rate", ["abc", "0"])
def test_up_names_md_rate_when_it_is_bad(tmp_path: Path, rate: str) -> None:
    result = runner.invoke(root.app, ["up", "--home", str(tmp_path), "--md-rate", rate])
    assert result.exit_code == 2, result.output
    assert "'--md-rate'" in result.output


def test_up_names_only_once_when_it_is_bad(tmp_path: Path) -> None:
    result = runner.invoke(root.app, ["up", "--home", str(tmp_path), "--only", "bogus"])
    assert result.exit_code == 2, result.output
    assert result.output.count("--only") == 1, result.output
    assert "unknown service bogus" in result.output
