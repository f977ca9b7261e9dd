"""A seeded synthetic market: trades, quotes and time bars for any symbols.

:class:`SyntheticMarket` is a pure state machine. Each :meth:`~SyntheticMarket.tick`
at a time it is given first closes every bar whose window has ended by then
(a symbol with no trades in a window gets no bar, as with Polygon), then
moves the next symbol in turn one step of a Gaussian random walk and prints
its quote and its trade.

Invariants the tests hold it to:

- Prices live in integer ticks and become ``Decimal`` only as
  ``ticks * tick_size``, so every price is exactly on the tick grid; the draw
  is a float, the price never is.
- One seed gives one path: the same seed, symbols and tick times give the
  same events, ids included.
- Ids derive from the record (:func:`record_id`: seed, symbol, channel,
  per-symbol sequence), never from the clock, so a rerun with the same seed
  publishes the same ids and JetStream deduplicates what it already holds.
- A bar's open is its first trade, its close the last, and low <= open,
  close <= high.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from libs.contract.codec import derived_id
from libs.contract.envelope import Event, Symbol
from libs.contract.events import (
    BarClosed,
    BarPayload,
    QuotePayload,
    QuoteUpdated,
    TradePayload,
    TradePrinted,
)

SOURCE = "marketdata/synthetic"
SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS

SyntheticChannel = Literal["trades", "quotes", "second_bars", "minute_bars"]
ALL_CHANNELS: tuple[SyntheticChannel, ...] = ("trades", "quotes", "second_bars", "minute_bars")

#: Where well-known symbols start, in dollars; others start at a seeded price.
START_PRICES = {
    "AAPL": Decimal("190.00"),
    "MSFT": Decimal("420.00"),
    "NVDA": Decimal("120.00"),
    "SPY": Decimal("560.00"),
    "QQQ": Decimal("480.00"),
    "AMZN": Decimal("185.00"),
    "TSLA": Decimal("250.00"),
    "META": Decimal("500.00"),
}

#: Exchange ids the synthetic tape prints on (Polygon numbering).
EXCHANGES = (1, 4, 10, 11, 12, 15)
TRADE_SIZES = (1, 5, 10, 25, 50, 100, 100, 100, 200, 500)
VWAP_PLACES = Decimal("0.0001")
_SYMBOL: TypeAdapter[str] = TypeAdapter(Symbol)


def record_id(seed: int, run: str, symbol: str, channel: str, sequence: int) -> uuid.UUID:
    """The id of one synthetic record: the same record always gets the same id."""
    return derived_id("synthetic", seed, run, symbol, channel, sequence)


class _At:
    """A clock stopped at one instant (events are built at the tick's time)."""

    def __init__(self, now_ns: int) -> None:
        self._now = now_ns

    def now_ns(self) -> int:
        return self._now


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """What to generate. ``run`` salts the ids (empty: ids depend on the seed alone)."""

    symbols: tuple[str, ...]
    seed: int
    channels: frozenset[SyntheticChannel] = frozenset({"trades", "quotes", "minute_bars"})
    tick_size: Decimal = Decimal("0.01")
    #: Standard deviation of one step as a fraction of the price (4 bp).
    volatility: float = 0.0004
    run: str = ""

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("the synthetic market needs at least one symbol")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols repeat: {list(self.symbols)}")
        for symbol in self.symbols:
            # Refused here, not by the first tick's event (a crash after start-up).
            try:
                _SYMBOL.validate_python(symbol)
            except ValidationError:
                raise ValueError(f"{symbol!r} is not a symbol the event contract takes") from None
        if not self.channels:
            raise ValueError("no channels to generate")
        unknown = set(self.channels) - set(ALL_CHANNELS)
        if unknown:
            raise ValueError(f"unknown channels: {sorted(unknown)}")
        if not self.tick_size.is_finite() or self.tick_size <= 0:
            raise ValueError("tick_size must be a positive decimal")
        if self.volatility < 0:
            raise ValueError("volatility must not be negative")


@dataclass(slots=True)
class _Bar:
    """One symbol's bar in progress, prices in ticks."""

    start_ns: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    notional: int = 0  # sum of ticks x size: the VWAP without rounding
    trades: int = 0

    def add(self, price: int, size: int) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += size
        self.notional += price * size
        self.trades += 1


@dataclass(slots=True)
class _Symbol:
    name: str
    ticks: int
    sequence: int = 0
    bars: dict[str, _Bar] = field(default_factory=dict)  # interval -> bar in progress
    bar_count: dict[str, int] = field(default_factory=dict)  # interval -> bars closed


#: (interval name, length, channel) of the bars the market can build.
_INTERVALS: tuple[tuple[Literal["1s", "1m"], int, SyntheticChannel], ...] = (
    ("1s", SECOND_NS, "second_bars"),
    ("1m", MINUTE_NS, "minute_bars"),
)


class SyntheticMarket:
    """Seeded trades, quotes and bars, one tick at a time."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        # Synthetic market data, not cryptography: a seeded generator is the point.
        self._rng = random.Random(f"synthetic/{config.seed}")  # noqa: S311
        self._symbols = [_Symbol(s, self._start_ticks(s, config.tick_size)) for s in config.symbols]
        self._intervals = [i for i in _INTERVALS if i[2] in config.channels]
        self._turn = 0
        self._last_ns: int | None = None
        #: Records generated so far, per channel.
        self.counts: dict[SyntheticChannel, int] = dict.fromkeys(ALL_CHANNELS, 0)

    def _start_ticks(self, symbol: str, tick_size: Decimal) -> int:
        price = START_PRICES.get(symbol) or Decimal(self._rng.randint(20, 600))
        return max(1, int(price / tick_size))

    def price(self, symbol: str) -> Decimal:
        """The last trade price of ``symbol``."""
        for s in self._symbols:
            if s.name == symbol:
                return s.ticks * self.config.tick_size
        raise KeyError(symbol)

    def tick(self, now_ns: int) -> list[Event]:
        """Everything that happens at ``now_ns``: closed bars, then one quote and trade.

        Time must not go backwards (a bar, once closed, stays closed).
        """
        if self._last_ns is not None and now_ns < self._last_ns:
            raise ValueError(f"time went backwards: {now_ns} < {self._last_ns}")
        self._last_ns = now_ns
        out: list[Event] = list(self.close_bars(now_ns))
        sym = self._symbols[self._turn % len(self._symbols)]
        self._turn += 1
        self._step(sym)
        spread = self._rng.randint(1, 3)
        bid = max(1, sym.ticks - self._rng.randint(0, spread))
        ask = bid + spread
        bid_size = self._rng.randint(1, 20)
        ask_size = self._rng.randint(1, 20)
        size = self._rng.choice(TRADE_SIZES)
        exchange = self._rng.choice(EXCHANGES)
        if "quotes" in self.config.channels:
            sym.sequence += 1
            out.append(self._quote(sym, now_ns, bid, ask, bid_size, ask_size, exchange))
        sym.sequence += 1
        if "trades" in self.config.channels:
            out.append(self._trade(sym, now_ns, size, exchange))
        for interval, length, _ in self._intervals:
            bar = sym.bars.get(interval)
            if bar is None:
                start = now_ns - now_ns % length
                bar = sym.bars[interval] = _Bar(start, sym.ticks, sym.ticks, sym.ticks, sym.ticks)
            bar.add(sym.ticks, size)
        return out

    def close_bars(self, now_ns: int) -> Iterable[Event]:
        """The bars of every symbol whose window ended at or before ``now_ns``."""
        for interval, length, channel in self._intervals:
            for sym in self._symbols:
                bar = sym.bars.get(interval)
                if bar is not None and bar.start_ns + length <= now_ns:
                    del sym.bars[interval]
                    yield self._bar(sym, interval, length, channel, bar, now_ns)

    def _step(self, sym: _Symbol) -> None:
        sigma = max(1.0, sym.ticks * self.config.volatility)
        sym.ticks = max(1, sym.ticks + round(self._rng.gauss(0.0, sigma)))

    def _id(self, sym: _Symbol, channel: str, sequence: int) -> uuid.UUID:
        return record_id(self.config.seed, self.config.run, sym.name, channel, sequence)

    def _quote(
        self,
        sym: _Symbol,
        now_ns: int,
        bid: int,
        ask: int,
        bid_size: int,
        ask_size: int,
        exchange: int,
    ) -> QuoteUpdated:
        self.counts["quotes"] += 1
        tick = self.config.tick_size
        return QuoteUpdated.create(
            QuotePayload(
                symbol=sym.name,
                bid_price=bid * tick,
                bid_size=Decimal(bid_size),
                ask_price=ask * tick,
                ask_size=Decimal(ask_size),
                bid_exchange=exchange,
                ask_exchange=exchange,
                sequence=sym.sequence,
                feed="synthetic",
            ),
            source=SOURCE,
            clock=_At(now_ns),
            event_id=self._id(sym, "quote", sym.sequence),
        )

    def _trade(self, sym: _Symbol, now_ns: int, size: int, exchange: int) -> TradePrinted:
        self.counts["trades"] += 1
        return TradePrinted.create(
            TradePayload(
                symbol=sym.name,
                price=sym.ticks * self.config.tick_size,
                size=Decimal(size),
                exchange=exchange,
                trade_id=str(sym.sequence),
                sequence=sym.sequence,
                feed="synthetic",
            ),
            source=SOURCE,
            clock=_At(now_ns),
            event_id=self._id(sym, "trade", sym.sequence),
        )

    def _bar(
        self,
        sym: _Symbol,
        interval: Literal["1s", "1m"],
        length: int,
        channel: SyntheticChannel,
        bar: _Bar,
        now_ns: int,
    ) -> BarClosed:
        self.counts[channel] += 1
        count = sym.bar_count.get(interval, 0) + 1
        sym.bar_count[interval] = count
        tick = self.config.tick_size
        vwap = (Decimal(bar.notional) / Decimal(bar.volume) * tick).quantize(VWAP_PLACES)
        return BarClosed.create(
            BarPayload(
                symbol=sym.name,
                interval=interval,
                open=bar.open * tick,
                high=bar.high * tick,
                low=bar.low * tick,
                close=bar.close * tick,
                volume=Decimal(bar.volume),
                vwap=vwap,
                trades=bar.trades,
                start_ns=bar.start_ns,
                end_ns=bar.start_ns + length,
                feed="synthetic",
            ),
            source=SOURCE,
            clock=_At(now_ns),
            # The bar happened at its end; it is built when time passes it.
            ts_event=bar.start_ns + length,
            event_id=self._id(sym, interval, count),
        )


def parse_channels(value: str | Sequence[str]) -> frozenset[SyntheticChannel]:
    """``trades,quotes,minute_bars`` -> the channels the synthetic market builds.

    Channels it cannot build (none today) are refused with a clear message.
    """
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    out: set[SyntheticChannel] = set()
    for name in filter(None, names):
        match name:
            case "trades" | "quotes" | "second_bars" | "minute_bars":
                out.add(name)
            case _:
                raise ValueError(f"unknown channel {name!r}; known: {', '.join(ALL_CHANNELS)}")
    return frozenset(out)
