"""``tradebus demo run``: the demo event source."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from libs.cli import err
from libs.config import ConfigError, load_settings

app = typer.Typer(help="A demo event source: seeded market data and order chains.")


@app.command("run")
def run(
    rate: Annotated[
        str | None, typer.Option(help="Trades per second, e.g. 20/s (default: 20/s)")
    ] = None,
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated symbols (default: AAPL,MSFT,NVDA,SPY)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the price path (default: 7)")] = None,
    chain_every: Annotated[
        float | None, typer.Option(help="Seconds between order chains (default: 5)")
    ] = None,
) -> None:
    """Publish a seeded random walk (trades, 1m bars) and signal-to-fill chains until stopped."""
    from services.demo.config import DemoSettings
    from services.demo.main import main

    given: dict[str, Any] = {
        "demo_rate": rate,
        "demo_symbols": symbols,
        "demo_seed": seed,
        "demo_chain_every_s": chain_every,
    }
    options = {
        "demo_rate": "--rate",
        "demo_symbols": "--symbols",
        "demo_seed": "--seed",
        "demo_chain_every_s": "--chain-every",
    }
    try:
        settings = load_settings(
            DemoSettings, options, **{k: v for k, v in given.items() if v is not None}
        )
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    raise typer.Exit(main(settings))
