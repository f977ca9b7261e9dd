"""marketdata settings: ``TRADEBUS_*`` (and ``POLYGON_API_KEY``) from the environment."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr

from libs.config import ServiceSettings

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
