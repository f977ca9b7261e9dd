"""The strategy SDK: write a strategy once, run it live, in shadow and in backtests.

- :class:`Strategy` / :class:`StrategyParams` (``base``): the class you subclass.
- :class:`StrategyContext` (``context``): all a strategy sees — clock,
  positions, P&L, pending intents, its recent orders and signals
  (``orders()``, ``last_signal()``), ``signal()`` and ``order()``.
- :class:`StrategyHost` (``host``): one strategy with its books and fault policy.
- :class:`InMemoryRuntime` (``runtime``): strategies in-process, for tests and backtests.
- ``spec``: ``strategies.yaml``; ``registry``: kinds; ``examples``: four strategies.

Nothing here does I/O; the strategy-runner service adds the bus and the store.
"""

from libs.strategy.base import (
    Bar,
    Fill,
    OrderUpdate,
    ParamError,
    Quote,
    Strategy,
    StrategyParams,
    Trade,
)
from libs.strategy.context import (
    OrderRecord,
    OrderStatus,
    PnL,
    Position,
    SignalRecord,
    StrategyContext,
)
from libs.strategy.emitting import StrategyUsageError
from libs.strategy.host import StrategyHost
from libs.strategy.runtime import EventClock, InMemoryRuntime

__all__ = [
    "Bar",
    "EventClock",
    "Fill",
    "InMemoryRuntime",
    "OrderRecord",
    "OrderStatus",
    "OrderUpdate",
    "ParamError",
    "PnL",
    "Position",
    "Quote",
    "SignalRecord",
    "Strategy",
    "StrategyContext",
    "StrategyHost",
    "StrategyParams",
    "StrategyUsageError",
    "Trade",
]
