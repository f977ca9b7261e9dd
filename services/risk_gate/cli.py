"""``tradebus risk-gate …`` and the risk operator commands."""

from __future__ import annotations

import typer

from libs.cli import add_replay_command

app = typer.Typer(help="The risk-gate: the only publisher of order commands.")

add_replay_command(app, "risk-gate", default_subject="risk.>")


def register(root: typer.Typer) -> None:
    """Operator commands owned by the risk side (kill-switch, risk status)."""
