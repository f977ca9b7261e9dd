"""``tradebus up`` (the whole stack locally) and the demo event source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.demo import cli as demo_cli


def register(app: typer.Typer) -> None:
    """Add ``up`` and the ``demo`` group to the root app."""
    app.add_typer(demo_cli.app, name="demo")

    @app.command("up")
    def up(
        home: Annotated[
            Path, typer.Option(help="Where the servers keep their data (reused across runs)")
        ] = Path(".tradebus"),
        demo: Annotated[bool, typer.Option(help="Run the demo event source")] = True,
        demo_rate: Annotated[str, typer.Option(help="Demo trades per second, e.g. 20/s")] = "20/s",
        nats_port: Annotated[
            int | None,
            typer.Option(help="nats-server port; 0 for any (default: 14222 if free, else any)"),
        ] = None,
        nats_monitor_port: Annotated[
            int | None, typer.Option(help="nats-server monitoring port (default: any)")
        ] = None,
        postgres_port: Annotated[
            int | None,
            typer.Option(help="PostgreSQL port; 0 for any (default: 15432 if free, else any)"),
        ] = None,
        metrics_port: Annotated[
            int | None,
            typer.Option(
                help="First service's /metrics port, the next services count up; "
                "0 for any (default: 19100 if free)"
            ),
        ] = None,
        stop_timeout: Annotated[
            float, typer.Option(min=0.1, help="Seconds a service gets to stop before SIGKILL")
        ] = 10.0,
    ) -> None:
        """Run the whole stack on this machine (no Docker) until Ctrl-C.

        Starts nats-server and PostgreSQL from the Python wheels unless NATS_URL /
        DATABASE_URL are set, migrates the event store, then runs each service as
        its own process with its output prefixed by its name.
        """
        from libs.cli import parse_rate
        from services.stack.up import UpOptions, run_up

        if parse_rate(demo_rate) is None:
            raise typer.BadParameter("the demo needs a rate, e.g. 20/s", param_hint="--demo-rate")
        options = UpOptions(
            home=home,
            demo=demo,
            demo_rate=demo_rate,
            nats_port=nats_port,
            nats_monitor_port=nats_monitor_port,
            postgres_port=postgres_port,
            metrics_port=metrics_port,
            stop_timeout=stop_timeout,
        )
        raise typer.Exit(run_up(options))
