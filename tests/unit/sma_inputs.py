"""What the sma_crossover tests share: the strategy on AAPL (fast 2, slow 3,
100 shares) in an in-memory runtime, ids, and the orders it emitted."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.sma_crossover import SmaCrossover

IDS = itertools.count(1)


def next_id() -> uuid.UUID:
    return uuid.UUID(int=next(IDS))


def runtime(**params: object) -> InMemoryRuntime:
    rt = InMemoryRuntime()
    rt.add(
        "sma",
        SmaCrossover,
        {"fast_period": 2, "slow_period": 3, "quantity": 100, **params},
        symbols=("AAPL",),
    )
    return rt


def orders(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    """(the signal's direction, the order's side, its quantity) of each
    order in ``out`` a signal caused."""
    signals = {e.id: e for e in out if isinstance(e, SignalGenerated)}
    return [
        (signals[i.causation_id].payload.direction, i.payload.side, i.payload.quantity)
        for i in out
        if isinstance(i, OrderIntentCreated) and i.causation_id is not None
    ]
