"""``tradebus strategy-runner …``: run the strategies, replay their events."""

from __future__ import annotations

from typing import Annotated

import typer

from libs.cli import add_replay_command, err, settings_or_exit

app = typer.Typer(help="The strategy-runner: strategies in parallel, intents out.")


@app.command("run")
def run(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="strategies.yaml to run (default: TRADEBUS_STRATEGIES_CONFIG, "
            "else deploy/config/strategies.yaml)",
        ),
    ] = None,
) -> None:
    """Run every strategy in the file until stopped (SIGTERM); a bad file exits 2."""
    from libs.strategy.spec import StrategyConfigError, load_strategies
    from services.strategy_runner.config import RunnerSettings
    from services.strategy_runner.main import main

    settings = settings_or_exit(RunnerSettings)
    path = config or settings.strategies_config
    try:
        strategies = load_strategies(path)
    except StrategyConfigError as e:
        err.print(f"[red]error:[/red] {e.source} is invalid:", highlight=False)
        for problem in e.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(2) from e
    raise typer.Exit(main(settings, strategies))


add_replay_command(app, "strategy-runner", default_subject="strategy.>")
