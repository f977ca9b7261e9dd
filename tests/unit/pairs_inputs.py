"""What the pairs_trade tests share: the strategy on MSFT/AAPL in an
in-memory runtime, a minute of both legs' bars, ids, and readers of what it
emitted and holds."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.pairs import PairsTrade
from libs.strategy.testing import MINUTE_NS, bar

IDS = itertools.count(1)
T0 = 1_700_000_000 * 1_000_000_000
#: Where the tests fill each leg.
PRICES = {"MSFT": Decimal(105), "AAPL": Decimal(100)}


def next_id() -> uuid.UUID:
    return uuid.UUID(int=next(IDS))


def runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=("MSFT", "AAPL"),
    )
    return rt


def minute(i: int, msft: str, aapl: str = "100") -> list[Event]:
    return [bar("MSFT", msft, T0 + i * MINUTE_NS), bar("AAPL", aapl, T0 + i * MINUTE_NS)]


def intents(out: list[Event]) -> dict[str, OrderIntentCreated]:
    """The orders in ``out`` by leg: at most one per leg."""
    found = [e for e in out if isinstance(e, OrderIntentCreated)]
    by_symbol = {e.payload.symbol: e for e in found}
    assert len(by_symbol) == len(found)  # at most one order per leg
    return by_symbol


def legs(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    return [(e.payload.symbol, e.payload.side, e.payload.quantity) for e in intents(out).values()]


def position(rt: InMemoryRuntime, symbol: str) -> Decimal:
    return rt.hosts["pair"].ledger.position(symbol).quantity
