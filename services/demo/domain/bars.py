"""Time bars built from trades: open, high, low, close, volume, VWAP.

A bar covers ``[start, start + length)`` aligned to multiples of its length
(minutes start on the minute). It closes when the first trade at or after its
end arrives, the way a trade-driven aggregator without a timer behaves: a
quiet symbol's bar closes late, never early.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

VWAP_PLACES = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    start_ns: int
    end_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal
    trades: int


class BarBuilder:
    """Aggregates one symbol's trades into consecutive bars of ``length_ns``."""

    def __init__(self, symbol: str, length_ns: int) -> None:
        if length_ns <= 0:
            raise ValueError("a bar must have a positive length")
        self.symbol = symbol
        self.length_ns = length_ns
        self._start: int | None = None
        self._open = self._high = self._low = self._close = Decimal(0)
        self._volume = Decimal(0)
        self._notional = Decimal(0)
        self._trades = 0

    def add(self, price: Decimal, size: Decimal, ts_ns: int) -> Bar | None:
        """Add a trade; returns the bar it closed, if it closed one."""
        closed = None
        if self._start is not None and ts_ns >= self._start + self.length_ns:
            closed = self._bar()
            self._start = None
        if self._start is None:
            self._start = ts_ns - ts_ns % self.length_ns
            self._open = self._high = self._low = price
            self._volume = self._notional = Decimal(0)
            self._trades = 0
        self._high = max(self._high, price)
        self._low = min(self._low, price)
        self._close = price
        self._volume += size
        self._notional += price * size
        self._trades += 1
        return closed

    def _bar(self) -> Bar:
        assert self._start is not None
        return Bar(
            symbol=self.symbol,
            start_ns=self._start,
            end_ns=self._start + self.length_ns,
            open=self._open,
            high=self._high,
            low=self._low,
            close=self._close,
            volume=self._volume,
            vwap=(self._notional / self._volume).quantize(VWAP_PLACES),
            trades=self._trades,
        )
