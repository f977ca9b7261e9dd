"""A seeded random walk of trade prices, kept in integer cents.

Prices never pass through a float: each step draws a move in whole cents
(the draw is a float, the price is not), so every price is an exact
``Decimal`` with two places, and one seed always gives one path.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

#: Where well-known symbols start (cents); others start at a seeded price.
START_CENTS = {
    "AAPL": 19_000,
    "MSFT": 42_000,
    "NVDA": 12_000,
    "SPY": 56_000,
    "QQQ": 48_000,
    "AMZN": 18_500,
    "TSLA": 25_000,
    "META": 50_000,
}

#: Exchange ids the demo tape prints on (Polygon numbering: NYSE, Nasdaq, ARCA...).
EXCHANGES = (1, 4, 10, 11, 12, 15)

CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Print:
    """One trade of the walk: which symbol, at what price and size."""

    sequence: int
    symbol: str
    price: Decimal
    size: Decimal
    exchange: int


class RandomWalk:
    """Trades round-robin over ``symbols``, each price a Gaussian walk in cents.

    ``volatility`` is the standard deviation of one step as a fraction of the
    price (0.0004 is 4 basis points); a price never falls below one cent.
    """

    def __init__(self, symbols: Sequence[str], *, seed: int, volatility: float = 0.0004) -> None:
        if not symbols:
            raise ValueError("the walk needs at least one symbol")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"symbols repeat: {list(symbols)}")
        # Demo market data, not cryptography: a seeded generator is the point.
        self._rng = random.Random(seed)  # noqa: S311
        self._volatility = volatility
        self.symbols = tuple(symbols)
        self._cents = {s: START_CENTS.get(s) or self._rng.randint(2_000, 60_000) for s in symbols}
        self._count = 0

    def price(self, symbol: str) -> Decimal:
        """The last price of ``symbol``."""
        return Decimal(self._cents[symbol]) * CENT

    def step(self) -> Print:
        """The next trade: the next symbol in turn moves and prints."""
        symbol = self.symbols[self._count % len(self.symbols)]
        cents = self._cents[symbol]
        move = round(self._rng.gauss(0.0, max(1.0, cents * self._volatility)))
        cents = max(1, cents + move)
        self._cents[symbol] = cents
        size = Decimal(self._rng.choice((1, 5, 10, 25, 50, 100, 100, 100, 200, 500)))
        self._count += 1
        return Print(
            sequence=self._count,
            symbol=symbol,
            price=Decimal(cents) * CENT,
            size=size,
            exchange=self._rng.choice(EXCHANGES),
        )
