"""Small operator-CLI fixes: usage errors that name what was wrong."""

from __future__ import annotations

from typer.testing import CliRunner

from services import cli as root

runner = CliRunner()


def test_resume_of_a_scope_that_is_not_a_token_names_the_account_argument() -> None:
    """It said "not a valid subject token: 'a.b'" without saying which
    argument was wrong, as the options' usage errors do."""
    result = runner.invoke(
        root.app, ["risk", "resume", "a.b", "--reason", "x"], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for 'ACCOUNT'" in result.output, result.output
    assert "not a valid subject token: 'a.b'" in result.output, result.output
