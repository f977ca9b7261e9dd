"""marketdata settings: ``TRADEBUS_*`` (and ``POLYGON_API_KEY``) from the environment."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr

from libs.config import ServiceSettings


def _per_second(value: Any) -> Any:
    """``20`` or ``20/s`` -> 20."""
    return value.strip().removesuffix("/s") if isinstance(value, str) else value


Channel = Literal["trades", "quotes", "second_bars", "minute_bars"]


class MarketdataSettings(ServiceSettings):
    source: Literal["polygon", "synthetic", "cache"] = "synthetic"
    #: Comma-separated tickers, e.g. ``AAPL,MSFT`` (options as ``O:SPY241220P00720000``).
    symbols: str = Field(default="AAPL,MSFT,NVDA,SPY", min_length=1)
    channels: str = "trades,quotes,minute_bars"
    polygon_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("POLYGON_API_KEY", "TRADEBUS_POLYGON_API_KEY")
    )
    polygon_ws_url: str = "wss://socket.polygon.io/stocks"
    polygon_rest_url: str = "https://api.polygon.io"
    #: No data for this long during market hours: the feed is reported stale.
    stale_after_s: float = Field(default=30.0, gt=0)
    #: Exchange calendar for market hours (exchange-calendars code).
    calendar: str = "XNYS"
    cache_dir: str = ".tradebus/cache"

    # ---- synthetic source (``--source synthetic``; CLI options override) ----
    #: Ticks per second; each tick is one quote and one trade (plus any closed bars).
    synthetic_rate: Annotated[float, BeforeValidator(_per_second)] = Field(
        default=20.0, gt=0, le=1_000_000
    )
    #: Seed of the price path; the same seed gives the same prices and event ids.
    synthetic_seed: int = 7
    #: Salt for the synthetic ids (empty: ids depend on the seed alone, so a rerun
    #: of the same seed is deduplicated; set one per run to record every run).
    synthetic_run: str = Field(default="", max_length=64)

    # ---- cache source (``--source cache``; CLI options override) ----
    #: First and last New York day replayed from the cache.
    cache_from: dt.date | None = None
    cache_to: dt.date | None = None
    #: ``max`` (as fast as JetStream acks) or ``10x`` (ten times real time).
    cache_speed: str = Field(default="max", pattern=r"^(max|\d+(\.\d+)?x)$")
    #: Bars to replay: ``minute`` (md.bar.1m.*) or ``second`` (md.bar.1s.*).
    cache_timespan: Literal["minute", "second"] = "minute"

    @property
    def symbol_list(self) -> tuple[str, ...]:
        """``symbols`` split, trimmed and upper-cased, without repeats."""
        seen: dict[str, None] = {}
        for s in self.symbols.split(","):
            if s.strip():
                seen[s.strip().upper()] = None
        return tuple(seen)
