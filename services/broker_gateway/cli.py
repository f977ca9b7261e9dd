"""``tradebus broker-gateway …``: order commands to brokers, broker events back."""

from __future__ import annotations

import typer

from libs.cli import add_replay_command

app = typer.Typer(help="The broker-gateway: one adapter per broker account.")

add_replay_command(app, "broker-gateway", default_subject="broker.>")


def register(root: typer.Typer) -> None:
    """Operator commands owned by the broker side (positions)."""
