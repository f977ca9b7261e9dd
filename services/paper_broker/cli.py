"""``tradebus paper-broker …``: a paper broker that speaks WebSocket."""

from __future__ import annotations

import typer

app = typer.Typer(help="The paper broker: a WebSocket broker with a documented fill model.")
