"""Moving-average crossover through the in-memory runtime."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.sma_crossover import SmaCrossover
from libs.strategy.testing import bars, fill_chain

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


def pairs(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    signals = {e.id: e for e in out if isinstance(e, SignalGenerated)}
    return [
        (signals[i.causation_id].payload.direction, i.payload.side, i.payload.quantity)
        for i in out
        if isinstance(i, OrderIntentCreated) and i.causation_id is not None
    ]


def test_golden_cross_buys_and_death_cross_goes_flat() -> None:
    rt = runtime()
    # 12, 11, 10: fast below slow (first reading: sets the side, no trade);
    # 13: fast 11.5 > slow 11.33 -> golden cross; 9: still above; 8: death cross.
    out = rt.run(bars("AAPL", [12, 11, 10, 13, 9, 8]))
    assert pairs(out) == [("long", "buy", Decimal(100)), ("flat", "sell", Decimal(100))]
    signal = next(e for e in out if isinstance(e, SignalGenerated))
    assert signal.payload.name == "sma_cross"
    assert signal.payload.reason == "SMA(2)=11.5000 crossed above SMA(3)=11.3333"
    assert signal.payload.strength == Decimal("0.0147")


def test_no_trade_before_the_slow_average_is_warm_or_without_a_cross() -> None:
    rt = runtime()
    assert rt.run(bars("AAPL", [10, 11, 12, 13, 14, 15])) == []


def test_death_cross_reverses_a_filled_long_when_shorting_is_allowed() -> None:
    rt = runtime(allow_short=True)
    data = bars("AAPL", [12, 11, 10, 13, 9, 8])
    out = rt.run(data[:4])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    for event in fill_chain(intent, 13, ids=next_id):
        rt.feed(event)
    assert rt.hosts["sma"].ledger.position("AAPL").quantity == 100
    out = rt.run(data[4:])
    assert pairs(out) == [("short", "sell", Decimal(200))]
