"""``tradebus marketdata …``: the market-data feed service."""

from __future__ import annotations

import typer

from libs.cli import add_replay_command

app = typer.Typer(help="Market data: Polygon, synthetic or cached history onto the bus.")

add_replay_command(app, "marketdata", default_subject="md.>")
