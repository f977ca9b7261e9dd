"""Demo settings: the shared ones plus ``TRADEBUS_DEMO_*`` (CLI options override)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode

from libs.config import ServiceSettings
from libs.contract.envelope import SymbolToken

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")


def _rate(value: Any) -> Any:
    """``20``, ``20/s`` -> 20 (events per second)."""
    return value.strip().removesuffix("/s") if isinstance(value, str) else value


def _symbols(value: Any) -> Any:
    """``aapl, msft`` -> ("AAPL", "MSFT")."""
    if isinstance(value, str):
        return tuple(s.strip().upper() for s in value.split(",") if s.strip())
    return value


class DemoSettings(ServiceSettings):
    #: Trades per second (each may bring a bar or an order chain with it).
    demo_rate: Annotated[float, BeforeValidator(_rate)] = Field(default=20.0, gt=0, le=100_000)
    #: Symbols of the random walk, comma-separated.
    demo_symbols: Annotated[tuple[SymbolToken, ...], NoDecode, BeforeValidator(_symbols)] = Field(
        default=DEFAULT_SYMBOLS, min_length=1, max_length=100
    )
    #: Seed of the price path and of the chains' choices.
    demo_seed: int = 7
    #: Seconds between two signal-to-fill order chains.
    demo_chain_every_s: float = Field(default=5.0, gt=0, le=3600)
