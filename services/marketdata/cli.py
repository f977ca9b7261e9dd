"""``tradebus marketdata …``: run the feed, fill the history cache, replay from the store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from libs.cli import add_replay_command, err
from libs.config import ConfigError, load_settings

if TYPE_CHECKING:
    from services.marketdata.config import MarketdataSettings
    from services.marketdata.domain.cache import Timespan

app = typer.Typer(help="Market data: Polygon, synthetic or cached history onto the bus.")


#: The option that gives each setting on the command line, which a bad
#: value's error names.
OPTIONS = {
    "source": "--source",
    "symbols": "--symbols",
    "cache_from": "--from",
    "cache_to": "--to",
    "cache_speed": "--speed",
    "cache_dir": "--cache-dir",
    "synthetic_rate": "--rate",
    "synthetic_seed": "--seed",
}


def _settings(**given: Any) -> MarketdataSettings:
    """Settings from the environment, the given (non-None) options overriding them."""
    from services.marketdata.config import MarketdataSettings

    try:
        return load_settings(
            MarketdataSettings, OPTIONS, **{k: v for k, v in given.items() if v is not None}
        )
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


def _date(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise typer.BadParameter(f"not a date (YYYY-MM-DD): {value!r}", param_hint=option) from e


def _timespan(value: str) -> Timespan:
    if value == "minute":
        return "minute"
    if value == "second":
        return "second"
    raise typer.BadParameter("must be minute or second", param_hint="--timespan")


@app.command("run")
def run(
    source: Annotated[
        str | None,
        typer.Option(help="polygon, synthetic or cache (default: TRADEBUS_SOURCE, synthetic)"),
    ] = None,
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated symbols (default: TRADEBUS_SYMBOLS)")
    ] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="cache: first New York day, YYYY-MM-DD")
    ] = None,
    to: Annotated[
        str | None, typer.Option(help="cache: last New York day (default: --from)")
    ] = None,
    speed: Annotated[
        str | None, typer.Option(help="cache: 10x (ten times real time) or max (default)")
    ] = None,
    rate: Annotated[
        str | None, typer.Option(help="synthetic: ticks per second, e.g. 20/s (default: 20/s)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="synthetic: seed of the path (default: 7)")
    ] = None,
) -> None:
    """Publish market data onto the bus until SIGTERM/SIGINT (the cache: until replayed)."""
    from services.marketdata.main import main

    settings = _settings(
        source=source,
        symbols=symbols,
        cache_from=_date(from_, "--from"),
        cache_to=_date(to, "--to"),
        cache_speed=speed,
        synthetic_rate=rate,
        synthetic_seed=seed,
    )
    raise typer.Exit(main(settings))


@app.command("fetch")
def fetch(
    from_: Annotated[str, typer.Option("--from", help="First New York day, YYYY-MM-DD")],
    to: Annotated[str | None, typer.Option(help="Last New York day (default: --from)")] = None,
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated symbols (default: TRADEBUS_SYMBOLS)")
    ] = None,
    timespan: Annotated[str, typer.Option(help="minute or second")] = "minute",
    cache_dir: Annotated[
        str | None, typer.Option(help="Cache directory (default: TRADEBUS_CACHE_DIR)")
    ] = None,
) -> None:
    """Download aggregates from Polygon's REST API into the local cache (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from libs.contract.envelope import WallClock
    from services.marketdata.adapters.cache import ParquetCache, fetch, rest_client
    from services.marketdata.domain.cache import CacheError, days_between, new_york_day

    span = _timespan(timespan)
    settings = _settings(symbols=symbols, cache_dir=cache_dir)
    start = _date(from_, "--from")
    assert start is not None
    end = _date(to, "--to") or start
    if end < start:
        raise typer.BadParameter(f"{end} is before --from {start}", param_hint="--to")
    key = settings.polygon_api_key.get_secret_value().strip() if settings.polygon_api_key else ""
    if not key:
        err.print("[red]error:[/red] POLYGON_API_KEY is not set")
        raise typer.Exit(2)
    cache = ParquetCache(settings.cache_dir)
    client = rest_client(key, settings.polygon_rest_url)
    symbol_list = settings.symbol_list
    today = new_york_day(WallClock().now_ns() // 1_000_000)
    total = len(symbol_list) * len(days_between(start, end))
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "{task.fields[bars]} bars",
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("fetch", total=total, bars=0)
        try:
            result = fetch(
                cache,
                client,
                symbol_list,
                start,
                end,
                timespan=span,
                today=today,
                progress=lambda label, bars: bar.update(
                    task, advance=1, description=label, bars=bars
                ),
            )
        except CacheError as e:
            bar.stop()
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from e
    for symbol, day in result.incomplete:
        err.print(f"[yellow]skipped[/yellow] {symbol} {day}: the day is not over in New York")
    print(
        json.dumps(
            {
                "fetched_days": result.fetched_days,
                "skipped_days": result.skipped_days,
                "refetched_days": result.refetched_days,
                "incomplete_days": len(result.incomplete),
                "bars": result.bars,
                "cache_dir": str(cache.root),
            }
        )
    )


@app.command("import-flatfiles")
def import_flatfiles_cmd(
    files: Annotated[list[Path], typer.Argument(help="Flat-file CSVs (.csv or .csv.gz)")],
    symbols: Annotated[
        str | None, typer.Option(help="Import only these comma-separated tickers (default: all)")
    ] = None,
    timespan: Annotated[str, typer.Option(help="minute or second")] = "minute",
    replace: Annotated[bool, typer.Option(help="Overwrite days already cached")] = False,
    cache_dir: Annotated[
        str | None, typer.Option(help="Cache directory (default: TRADEBUS_CACHE_DIR)")
    ] = None,
) -> None:
    """Import Polygon flat files (us_stocks_sip/minute_aggs_v1) into the local cache."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from services.marketdata.adapters.cache import ParquetCache
    from services.marketdata.adapters.flatfiles import import_flatfiles
    from services.marketdata.domain.cache import CacheError

    span = _timespan(timespan)
    settings = _settings(cache_dir=cache_dir)
    wanted = (
        {s.strip().upper() for s in symbols.split(",") if s.strip()}
        if symbols is not None
        else None
    )
    cache = ParquetCache(settings.cache_dir)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), console=err
    ) as bar:
        task = bar.add_task("import", total=len(files))
        try:
            result = import_flatfiles(
                cache,
                files,
                timespan=span,
                symbols=wanted,
                replace=replace,
                progress=lambda path, _r: bar.update(task, advance=1, description=path.name),
            )
        except (CacheError, OSError) as e:
            bar.stop()
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from e
    print(json.dumps({**result.__dict__, "cache_dir": str(cache.root)}))


add_replay_command(app, "marketdata", default_subject="md.>")
