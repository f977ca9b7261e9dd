"""``tradebus strategy-runner …``: runs the strategies."""

from __future__ import annotations

import typer

from libs.cli import add_replay_command

app = typer.Typer(help="The strategy-runner: strategies in parallel, intents out.")

add_replay_command(app, "strategy-runner", default_subject="strategy.>")
