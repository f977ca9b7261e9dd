"""``tradebus up`` (the whole stack locally), ``tradebus config check`` (its
config files, checked) and the demo event source (``tradebus demo``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from services.demo import cli as demo_cli

config_app = typer.Typer(help="The config files of the order path, checked without starting.")


@config_app.command("check")
def check(
    strategies: Annotated[
        Path | None, typer.Option(dir_okay=False, help="strategies.yaml (strategy-runner)")
    ] = None,
    risk: Annotated[Path | None, typer.Option(dir_okay=False, help="risk.yaml (risk-gate)")] = None,
    brokers: Annotated[
        Path | None, typer.Option(dir_okay=False, help="brokers.yaml (broker-gateway)")
    ] = None,
    paper: Annotated[
        Path | None, typer.Option(dir_okay=False, help="paper.yaml (paper-broker)")
    ] = None,
) -> None:
    """Validate config files, each as its service would, and check them against
    each other: every strategy has risk limits listing its symbols, a broker
    serves the account its orders go to and every account with risk limits,
    and the paper broker has each paper account of brokers.yaml, with the same
    key variables, on the port its URL names. Warns (exit code unchanged) of
    a strategy's symbol marketdata's TRADEBUS_SYMBOLS leaves out and of two
    symbols that differ only by the share-class separator (BRK.B, BRK/B).
    Any subset of the four; exits 0 if all is well, 1 with the problems
    otherwise. First, the
    TRADEBUS_* settings two services must agree on (this environment is taken
    as every service's): exits 2 if they do not."""
    from libs.cli import err, warn
    from services.stack.configs import (
        ConfigFiles,
        cross_check,
        load_configs,
        marketdata_symbols,
        settings_problems,
        summary,
        symbol_warnings,
    )
    from services.stack.wiring import SERVICES

    if strategies is None and risk is None and brokers is None and paper is None:
        raise typer.BadParameter("give at least one of --strategies, --risk, --brokers, --paper")
    # Settings that disagree are said first (up refuses them, exit 2), but the
    # files are checked all the same: one run shows everything to fix.
    settings = settings_problems(SERVICES)
    for problem in settings:
        err.print(f"[red]error:[/red] {escape(problem)}")
    loaded = load_configs(
        ConfigFiles(strategies=strategies, risk=risk, brokers=brokers, paper=paper)
    )
    # The wall clock: an option contract already expired is worth a note.
    found = cross_check(loaded, now_ns=time.time_ns())
    for line in summary(loaded):
        typer.echo(line)
    for problem in loaded.problems:
        typer.echo(problem)
    if found.problems or found.notes:
        typer.echo("across the files:")
    for problem in found.problems:
        typer.echo(f"  problem: {problem}")
    for note in found.notes:
        typer.echo(f"  note: {note}")
    # Warnings, not problems: nothing in the order path refuses them, and
    # ``up`` subscribes marketdata to the strategies' symbols itself.
    for warning in symbol_warnings(loaded.strategies, loaded.files, marketdata_symbols()):
        warn(warning)
    count = len(settings) + len(loaded.problems) + len(found.problems)
    if count:
        typer.echo(f"config check: {count} problem{'s' if count > 1 else ''}")
        raise typer.Exit(2 if settings else 1)
    typer.echo("config check: ok")


def register(app: typer.Typer) -> None:
    """Add ``up``, ``config check`` and the ``demo`` group to the root app."""
    app.add_typer(demo_cli.app, name="demo")
    app.add_typer(config_app, name="config")

    @app.command("up")
    def up(
        home: Annotated[
            Path, typer.Option(help="Where the servers keep their data (reused across runs)")
        ] = Path(".tradebus"),
        only: Annotated[
            str | None,
            typer.Option(
                help="Run only these services, comma-separated (default: all of "
                "recorder,paper-broker,broker-gateway,risk-gate,strategy-runner,marketdata)"
            ),
        ] = None,
        md_rate: Annotated[
            str, typer.Option(help="Synthetic market data ticks per second, e.g. 5/s")
        ] = "5/s",
        strategies: Annotated[
            Path | None,
            typer.Option(
                dir_okay=False,
                help="strategies.yaml for the strategy-runner (default: deploy/config/)",
            ),
        ] = None,
        risk: Annotated[
            Path | None,
            typer.Option(
                dir_okay=False, help="risk.yaml for the risk-gate (default: deploy/config/)"
            ),
        ] = None,
        paper_port: Annotated[
            int | None,
            typer.Option(help="Paper broker WebSocket port; 0 for any (default: 8765 if free)"),
        ] = None,
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
        """Run the whole order path on this machine (no Docker) until Ctrl-C.

        Starts nats-server (NATS permissions on, one user per service) and
        PostgreSQL from the Python wheels unless NATS_URL / DATABASE_URL are set,
        migrates the event store, then runs each service as its own process with
        its output prefixed by its name: recorder, paper-broker, broker-gateway,
        risk-gate, strategy-runner and synthetic marketdata.
        """
        from libs.cli import parse_rate
        from services.stack.up import UpOptions, run_up
        from services.stack.wiring import WiringError, parse_only

        if parse_rate(md_rate, "--md-rate") is None:
            raise typer.BadParameter("give a rate, e.g. 5/s", param_hint="'--md-rate'")
        try:
            names = tuple(parse_only(only))
        except WiringError as e:
            # The message names --only itself (up says it so when called directly).
            raise typer.BadParameter(str(e).removeprefix("--only: "), param_hint="'--only'") from e
        options = UpOptions(
            home=home,
            only=names,
            md_rate=md_rate,
            strategies=strategies,
            risk=risk,
            paper_port=paper_port,
            nats_port=nats_port,
            nats_monitor_port=nats_monitor_port,
            postgres_port=postgres_port,
            metrics_port=metrics_port,
            stop_timeout=stop_timeout,
        )
        raise typer.Exit(run_up(options))
