"""The strategy base class, its parameter models and what its callbacks receive.

A strategy is a plain, synchronous class::

    class MyParams(StrategyParams):
        period: int = Field(default=20, ge=2)

    class MyStrategy(Strategy[MyParams]):
        def on_bar(self, bar: Bar) -> None:
            ...
            signal = self.ctx.signal(bar.symbol, "breakout", "long", reason="...")
            self.ctx.order(bar.symbol, "buy", Decimal(100), cause=signal)

It is built with its validated params and a :class:`~libs.strategy.context.StrategyContext`
and only ever talks to that context: it never sees NATS, a broker or the wall
clock, which is what lets the same class run live, in shadow mode and in a
backtest. An exception escaping a callback is the strategy's fault: whoever
hosts it (:class:`~libs.strategy.host.StrategyHost`) stops or restarts it and
records a ``StrategyFaulted`` event; nothing else is affected.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from libs.contract.events import BarPayload, FillPayload, QuotePayload, TradePayload
from libs.strategy.context import StrategyContext

#: What the callbacks receive: the event payloads, exactly as on the bus.
Bar = BarPayload
Trade = TradePayload
Quote = QuotePayload
Fill = FillPayload


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamError(ValueError):
    """A parameter is invalid; ``field`` names it (for cross-field checks).

    Raise it from a params model's ``model_validator`` so that the config
    error names the field (``strategies[2].params.fast_period: must be <
    slow_period``) rather than the whole params block.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


OrderUpdateKind = Literal["accepted", "rejected", "canceled", "denied"]


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """Something happened to one of the strategy's orders (other than a fill).

    ``denied`` comes from the risk-gate (the intent never became an order);
    ``accepted``, ``rejected`` and ``canceled`` from the broker. ``intent_id``
    and ``symbol`` are filled in when the intent is known to the host.
    """

    kind: OrderUpdateKind
    signal_id: uuid.UUID
    intent_id: uuid.UUID | None
    order_id: uuid.UUID | None
    symbol: str | None
    reason: str = ""


P = TypeVar("P", bound=StrategyParams)


class Strategy(Generic[P]):
    """Subclass as ``Strategy[MyParams]`` and override the callbacks you need.

    Callbacks are synchronous and must not block: they run on the runner's
    event loop. Every callback may call ``self.ctx.signal`` / ``self.ctx.order``.
    """

    #: The params model, taken from the generic argument (``Strategy[MyParams]``).
    params_model: ClassVar[type[StrategyParams]] = StrategyParams
    #: How many symbols the strategy trades, when it needs an exact number (a pair: 2).
    symbol_count: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Strategy:
                (model,) = get_args(base)
                if isinstance(model, type) and issubclass(model, StrategyParams):
                    cls.params_model = model

    def __init__(self, params: P, ctx: StrategyContext) -> None:
        self.params = params
        self.ctx = ctx

    @classmethod
    def warmup_bars(cls, params: Any) -> int:
        """How many of each symbol's latest recorded bars the strategy is shown
        through :meth:`on_warmup` when the runner starts (0, the default:
        none), so that its indicators do not start empty. ``params`` are its
        validated params (say, the longest lookback)."""
        return 0

    @classmethod
    def warmup_bars_for(cls, params: Any, bar_interval: str | None) -> int:
        """:meth:`warmup_bars` for a strategy shown bars of ``bar_interval``
        (``1m``, ``1s``; None: every interval, mixed). What the runner asks
        for. Override it when the history needed is a span of time rather
        than a number of bars."""
        return cls.warmup_bars(params)

    def on_start(self) -> None:
        """Called once before any data (and again after a restart, on a fresh instance)."""

    def on_warmup(self, bar: Bar) -> None:
        """A past bar of one of the strategy's symbols, oldest first, to rebuild
        indicators from: the latest :meth:`warmup_bars` per symbol from the
        event store, then those that closed while the runner was down (or,
        for a fresh instance after a fault, the latest ones the failed
        instance was shown). It runs after :meth:`on_start` and before any
        live data. It may not emit a
        signal or an order (that is a fault): the market it describes is gone.
        The positions in ``ctx`` are the current ones, not the bar's."""

    def on_bar(self, bar: Bar) -> None:
        """A bar of one of the strategy's symbols closed."""

    def on_trade(self, trade: Trade) -> None:
        """A trade of one of the strategy's symbols printed."""

    def on_quote(self, quote: Quote) -> None:
        """The best bid/offer of one of the strategy's symbols changed."""

    def on_fill(self, fill: Fill) -> None:
        """One of the strategy's orders (partly) filled; ``ctx`` positions already include it."""

    def on_order_update(self, update: OrderUpdate) -> None:
        """One of the strategy's orders was denied, accepted, rejected or canceled."""

    def on_stop(self) -> None:
        """Called once when the runner stops (not after a fault)."""
