"""Bollinger-band mean reversion."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.bollinger import BollingerReversion
from libs.strategy.testing import bars, fill_chain

IDS = itertools.count(1)


def next_id() -> uuid.UUID:
    return uuid.UUID(int=next(IDS))


def runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime()
    rt.add(
        "bb",
        BollingerReversion,
        {"period": 5, "num_std": "1.5", "quantity": 100},
        symbols=("NVDA",),
    )
    return rt


def trades(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    signals = {e.id: e for e in out if isinstance(e, SignalGenerated)}
    return [
        (signals[e.causation_id].payload.name, e.payload.side, e.payload.quantity)
        for e in out
        if isinstance(e, OrderIntentCreated) and e.causation_id is not None
    ]


def test_buys_below_the_lower_band_and_exits_at_the_middle() -> None:
    rt = runtime()
    data = bars("NVDA", [100, 100, 100, 100, 95, 97, 100])
    # [100 x4, 95]: mean 99, sd 2, lower band 96 -> 95 buys (z = -2).
    out = rt.run(data[:5])
    assert trades(out) == [("bb_entry", "buy", Decimal(100))]
    signal = next(e for e in out if isinstance(e, SignalGenerated))
    assert signal.payload.direction == "long"
    assert signal.payload.strength == Decimal("-2.0000")
    intent = next(e for e in out if isinstance(e, OrderIntentCreated))
    for event in fill_chain(intent, 95, ids=next_id):
        rt.feed(event)
    assert trades(rt.run(data[5:6])) == []  # 97 < mean 98.4: hold
    assert trades(rt.run(data[6:])) == [("bb_exit", "sell", Decimal(100))]


def test_sells_short_above_the_upper_band() -> None:
    rt = runtime()
    out = rt.run(bars("NVDA", [100, 100, 100, 100, 105]))
    assert trades(out) == [("bb_entry", "sell", Decimal(100))]


def test_no_entry_while_an_entry_is_pending_or_prices_are_flat() -> None:
    rt = runtime()
    assert rt.run(bars("NVDA", [100] * 8)) == []
    rt = runtime()
    out = rt.run(bars("NVDA", [100, 100, 100, 100, 95, 90]))
    assert trades(out) == [("bb_entry", "buy", Decimal(100))]  # 90 would buy again


def test_warmed_up_on_past_bars_it_trades_on_the_first_live_bar() -> None:
    # Four past closes of 100 (shown through on_warmup after a restart) fill
    # the bands but one: the first live close, 95, is below the lower band.
    data = bars("NVDA", [100, 100, 100, 100, 95])
    warm = runtime()
    warm.start()
    assert all(warm.hosts["bb"].warm_up(b) == [] for b in data[:4])
    assert trades(warm.run(data[4:])) == [("bb_entry", "buy", Decimal(100))]
    cold = runtime()  # the same live bar, bands not full: nothing
    assert trades(cold.run(data[4:])) == []


def test_a_long_exits_when_the_closes_settle_flat_at_the_middle_band() -> None:
    # Bought at 95, then the price settles at 94 and stays there: once the
    # window is five 94s the bands collapse onto the mean (sd 0) and the close
    # is at the middle band, which exits a long. The zero deviation (no
    # z-score) once skipped the bar: the long was held through the flat stretch.
    rt = runtime()
    data = bars("NVDA", [100, 100, 100, 100, 95, 94, 94, 94, 94, 94])
    out = rt.run(data[:5])
    intent = next(e for e in out if isinstance(e, OrderIntentCreated))
    for event in fill_chain(intent, 95, ids=next_id):
        rt.feed(event)
    assert trades(rt.run(data[5:9])) == []  # 94 below the mean each time: hold
    out = rt.run(data[9:])
    assert trades(out) == [("bb_exit", "sell", Decimal(100))]
    signal = next(e for e in out if isinstance(e, SignalGenerated))
    assert signal.payload.strength == 0
