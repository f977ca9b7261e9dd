"""``tradebus paper-broker …``: a paper broker that speaks WebSocket."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from libs.cli import err, settings_or_exit

app = typer.Typer(help="The paper broker: a WebSocket broker with a documented fill model.")


@app.command("run")
def run(
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port to listen on (default: paper.yaml's)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="paper.yaml (accounts, fill model); env TRADEBUS_PAPER_CONFIG"
        ),
    ] = None,
) -> None:
    """Serve paper accounts over WebSocket (Alpaca-style) until SIGTERM."""
    from libs.config import ConfigError
    from services.paper_broker.config import PaperBrokerSettings, load_paper_config
    from services.paper_broker.main import main

    settings = settings_or_exit(PaperBrokerSettings)
    try:
        paper = load_paper_config(config or settings.paper_config)
        overrides = {k: v for k, v in (("port", port), ("host", host)) if v is not None}
        paper = paper.model_copy(update=overrides)
        paper.credentials()  # fail now, naming the variable, if a key is missing
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    raise typer.Exit(main(settings, paper))
