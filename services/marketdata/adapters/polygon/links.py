"""The Polygon source's connections: which markets, channels and bar ledgers.

One :class:`Link` per WebSocket connection the configured symbols need
(``stocks``; ``options`` for ``O:`` symbols), with the channels it subscribes
and, per bar interval subscribed, the gap-fill ledger
(:class:`~services.marketdata.domain.gapfill.GapFiller`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from libs.config import ConfigError
from services.marketdata.adapters.polygon.parse import (
    INTERVAL_MS,
    INTERVAL_OF_PREFIX,
    MS,
    PREFIX_OF_CHANNEL,
)
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.gapfill import GapFiller

#: The length of each bar interval, in ns.
INTERVAL_NS = {interval: ms * MS for interval, ms in INTERVAL_MS.items()}


@dataclass
class Link:
    """One WebSocket connection: a market and what it subscribes to."""

    market: str
    url: str
    channels: list[str]
    #: Per bar interval subscribed (``1m``, ``1s``): its ledger and open gaps.
    fillers: dict[str, GapFiller]
    state: str = "idle"
    last_status: str = ""
    sessions: int = 0


def parse_channels(value: str) -> list[str]:
    """``trades,quotes,minute_bars`` -> Polygon prefixes ``T``, ``Q``, ``AM``."""
    prefixes: list[str] = []
    for name in (c.strip() for c in value.split(",")):
        if not name:
            continue
        if name not in PREFIX_OF_CHANNEL:
            known = ", ".join(PREFIX_OF_CHANNEL)
            raise ConfigError(f"TRADEBUS_CHANNELS: unknown channel {name!r} (known: {known})")
        prefixes.append(PREFIX_OF_CHANNEL[name])
    if not prefixes:
        raise ConfigError("TRADEBUS_CHANNELS: no channels")
    return list(dict.fromkeys(prefixes))


def _market_url(url: str, market: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"TRADEBUS_POLYGON_WS_URL: not a ws:// or wss:// URL for {market}")
    return url


def links_of(settings: MarketdataSettings) -> list[Link]:
    """The connections ``settings`` asks for, each with its channels and bar ledgers."""
    prefixes = parse_channels(settings.channels)
    symbols = settings.symbol_list
    stocks = [s for s in symbols if not s.startswith("O:")]
    options = [s for s in symbols if s.startswith("O:")]
    links: list[Link] = []
    max_gap_ns = int(settings.polygon_gapfill_max_s * 1e9)
    for market, url, syms in (
        ("stocks", settings.polygon_ws_url, stocks),
        ("options", settings.polygon_options_ws_url, options),
    ):
        if syms:
            subs = [f"{p}.{s}" for p in prefixes for s in syms]
            bar_symbols = [s for s in syms if s != "*"]
            fillers = {
                interval: GapFiller(
                    bar_symbols,
                    interval_ns=INTERVAL_NS[interval],
                    max_gap_ns=max_gap_ns,
                    # The ledger need reach no further back than a gap can.
                    retention_ns=max_gap_ns + INTERVAL_NS[interval],
                    settle_ns=int(settings.polygon_gapfill_settle_s * 1e9),
                    lag_ns=int(settings.polygon_gapfill_lag_s * 1e9),
                    recheck_ns=int(settings.polygon_gapfill_recheck_s * 1e9),
                )
                for prefix, interval in INTERVAL_OF_PREFIX.items()
                if prefix in prefixes and bar_symbols
            }
            links.append(Link(market, _market_url(url, market), subs, fillers))
    return links
