"""The four example strategies under random markets: none of them faults.

Each run is one example with one of two parameter sets, 200 minutes of bars
wandering up to 10 % a minute (a penny now and then, a flat minute now and
then), its intents filled at the market (most), denied (some) or left alone.
A fault is a strategy stopped by its own bug (it once was: the pairs trade
on a ratio held exactly, ``test_strategy_pairs.py``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, StrategyFaulted
from libs.strategy import InMemoryRuntime
from libs.strategy.registry import resolve
from libs.strategy.testing import MINUTE_NS, bar, deny, fill_chain, ny_ns

PARAMS: dict[str, list[dict[str, Any]]] = {
    "sma_crossover": [
        {"fast_period": 2, "slow_period": 3, "quantity": 10},
        {"fast_period": 1, "slow_period": 2, "quantity": 1, "allow_short": True},
    ],
    "bollinger_reversion": [
        {"period": 3, "num_std": 1, "quantity": 5},
        {"period": 2, "num_std": "0.5", "quantity": 1},
    ],
    "opening_range_breakout": [
        {"range_minutes": 2, "quantity": 5},
        {"range_minutes": 1, "quantity": 1, "allow_short": True},
    ],
    "pairs_trade": [
        {"lookback": 3, "entry_z": 1, "exit_z": "0.2", "leg_notional": 1000},
        {"lookback": 4, "entry_z": "0.5", "exit_z": "0.1", "leg_notional": 100},
    ],
}


def run(seed: int) -> tuple[str, list[Event]]:
    rng = random.Random(seed)
    kind = sorted(PARAMS)[seed % len(PARAMS)]
    symbols = ("AAA", "BBB") if kind == "pairs_trade" else ("AAA",)
    ids = itertools.count(1)

    def next_id() -> uuid.UUID:
        return uuid.UUID(int=next(ids))

    rt = InMemoryRuntime(ids=next_id)
    rt.add("s", resolve(kind), rng.choice(PARAMS[kind]), symbols=symbols)
    out = rt.run([])
    t = ny_ns(dt.date(2026, 3, 10), 9, 28)
    price = dict.fromkeys(symbols, Decimal(100))
    for _ in range(200):
        t += MINUTE_NS
        for s in symbols:
            move = rng.random()
            if move < 0.05:
                price[s] = Decimal("0.01")
            elif move > 0.1:
                wandered = price[s] * Decimal(rng.uniform(0.9, 1.1))
                price[s] = max(Decimal("0.01"), wandered.quantize(Decimal("0.01")))
            answered = rt.feed(bar(s, price[s], t))
            out += answered
            for e in answered:
                if not isinstance(e, OrderIntentCreated):
                    continue
                fate = rng.random()
                if fate < 0.7:
                    at = str(price[e.payload.symbol])
                    for broker_event in fill_chain(e, at, ids=next_id, at_ns=t):
                        out += rt.feed(broker_event)
                elif fate < 0.85:
                    out += rt.feed(deny(e, ids=next_id))
    return kind, out


@pytest.mark.parametrize("first", range(0, 300, 25))
def test_no_example_strategy_faults_on_a_random_market(first: int) -> None:
    traded = 0
    for seed in range(first, first + 25):
        kind, out = run(seed)
        faults = [e.payload.error for e in out if isinstance(e, StrategyFaulted)]
        assert faults == [], (seed, kind)
        traded += sum(isinstance(e, OrderIntentCreated) for e in out)
    assert traded > 0  # the runs did trade
