"""The demo feed: trades, 1-minute bars and, every so often, an order chain.

:class:`DemoFeed` is a pure state machine. Each :meth:`DemoFeed.tick` is one
trade of the random walk at the time it is given; it may also close that
symbol's bar, and when ``chain_every_ns`` has passed since the last chain it
appends a full signal-to-fill chain. The publishing loop (``main.py``) only
decides when to tick and sends what comes out, in order.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from decimal import Decimal

from libs.contract.envelope import Event, IdFactory
from libs.contract.events import BarClosed, BarPayload, Side, TradePayload, TradePrinted
from services.demo.domain.bars import Bar, BarBuilder
from services.demo.domain.chain import At, ChainSpec, OrderChain, build_chain
from services.demo.domain.walk import Print, RandomWalk

MARKET_SOURCE = "demo/marketdata"
STRATEGY = "demo-momentum"
ACCOUNT = "demo-paper"
MINUTE_NS = 60 * 1_000_000_000
QUANTITIES = (10, 20, 25, 50, 100)


def seeded_ids(seed: int | str) -> IdFactory:
    """Reproducible version-4 UUIDs, for tests and reproducible runs."""
    rng = random.Random(f"ids/{seed}")  # noqa: S311 - reproducible ids, not secrets

    def next_id() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    return next_id


@dataclass(frozen=True, slots=True)
class FeedConfig:
    symbols: tuple[str, ...]
    seed: int
    #: Time between two order chains; the first comes with the first tick.
    chain_every_ns: int
    #: Makes broker order ids unique across runs of the same seed.
    run: str
    bar_ns: int = MINUTE_NS
    strategy: str = STRATEGY
    account: str = ACCOUNT


class DemoFeed:
    """Seeded market data and order chains for the demo, one tick at a time."""

    def __init__(self, config: FeedConfig, *, ids: IdFactory) -> None:
        if config.chain_every_ns <= 0:
            raise ValueError("chain_every_ns must be positive")
        self.config = config
        self._ids = ids
        self._walk = RandomWalk(config.symbols, seed=config.seed)
        self._bars = {s: BarBuilder(s, config.bar_ns) for s in config.symbols}
        self._rng = random.Random(f"chains/{config.seed}")  # noqa: S311 - demo choices
        self._last_chain_price = {s: self._walk.price(s) for s in config.symbols}
        self._next_chain_ns: int | None = None
        self.chains = 0
        self.last_chain: OrderChain | None = None

    def tick(self, now_ns: int) -> list[Event]:
        """One trade at ``now_ns`` and whatever it closes or triggers, in publish order."""
        trade = self._walk.step()
        out: list[Event] = [self._trade_event(trade, now_ns)]
        bar = self._bars[trade.symbol].add(trade.price, trade.size, now_ns)
        if bar is not None:
            out.append(self._bar_event(bar, now_ns))
        if self._next_chain_ns is None or now_ns >= self._next_chain_ns:
            self._next_chain_ns = now_ns + self.config.chain_every_ns
            out.extend(self._chain(trade.symbol, now_ns).events)
        return out

    def _trade_event(self, trade: Print, now_ns: int) -> TradePrinted:
        return TradePrinted.create(
            TradePayload(
                symbol=trade.symbol,
                price=trade.price,
                size=trade.size,
                exchange=trade.exchange,
                trade_id=f"{self.config.run}-{trade.sequence}",
                sequence=trade.sequence,
                feed="demo",
            ),
            source=MARKET_SOURCE,
            clock=At(now_ns),
            ids=self._ids,
        )

    def _bar_event(self, bar: Bar, now_ns: int) -> BarClosed:
        return BarClosed.create(
            BarPayload(
                symbol=bar.symbol,
                interval="1m",
                open=bar.open,
                high=bar.high,
                low=bar.low,
                close=bar.close,
                volume=bar.volume,
                vwap=bar.vwap,
                trades=bar.trades,
                start_ns=bar.start_ns,
                end_ns=bar.end_ns,
                feed="demo",
            ),
            source=MARKET_SOURCE,
            # The bar happened at its end; we built it when the next trade came.
            clock=At(now_ns),
            ts_event=bar.end_ns,
            ids=self._ids,
        )

    def _chain(self, symbol: str, now_ns: int) -> OrderChain:
        """Buy what rose since its last chain, sell what did not."""
        price = self._walk.price(symbol)
        before = self._last_chain_price[symbol]
        self._last_chain_price[symbol] = price
        self.chains += 1
        side: Side = "buy" if price > before else "sell"
        spec = ChainSpec(
            ref=f"demo-{self.config.run}-{self.chains}",
            strategy=self.config.strategy,
            account=self.config.account,
            symbol=symbol,
            side=side,
            quantity=Decimal(self._rng.choice(QUANTITIES)),
            price=price,
            reason=f"{symbol} {before} -> {price}",
        )
        self.last_chain = build_chain(spec, now_ns=now_ns, ids=self._ids)
        return self.last_chain
