"""Moving-average crossover through the in-memory runtime."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.contract.options import parse_option
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.sma_crossover import SmaCrossover, SmaCrossoverParams
from libs.strategy.testing import bars, fill_chain
from tests.unit.sma_inputs import next_id, orders, runtime


def test_golden_cross_buys_and_death_cross_goes_flat() -> None:
    rt = runtime()
    # 12, 11, 10: fast below slow (first reading: sets the side, no trade);
    # 13: fast 11.5 > slow 11.33 -> golden cross; 9: still above; 8: death cross.
    out = rt.run(bars("AAPL", [12, 11, 10, 13, 9, 8]))
    assert orders(out) == [("long", "buy", Decimal(100)), ("flat", "sell", Decimal(100))]
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
    assert orders(out) == [("short", "sell", Decimal(200))]


def test_warmed_up_on_past_bars_it_trades_on_the_first_live_cross() -> None:
    # After a restart the runner shows it the latest slow_period bars
    # (warmup_bars) through on_warmup: its averages are full at once, and a
    # cross that happened in those past bars trades nothing.
    assert SmaCrossover.warmup_bars(SmaCrossoverParams(fast_period=2, slow_period=3)) == 3
    # Past: above after 10 (11.5 > 11.33), a death cross on 9 (9.5 < 10.67).
    past = bars("AAPL", [12, 11, 13, 10, 9])
    # Live: 14 crosses above again (11.5 > 11).
    live = bars("AAPL", [14], start_ns=past[-1].payload.end_ns)
    warm = runtime()
    warm.start()
    host = warm.hosts["sma"]
    assert all(host.warm_up(b) == [] for b in past)
    assert orders(warm.run(live)) == [("long", "buy", Decimal(100))]
    assert host.ledger.position("AAPL").is_flat  # past bars move no books
    # The same live bar to a cold instance: its averages are not full yet.
    cold = runtime()
    assert cold.run(live) == []


def test_a_cross_after_its_option_contract_expired_orders_nothing_and_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The examples move to a target through ``trade_to``: past the contract's
    expiry no venue takes an order in it, so the emit refuses one (a fault
    that stops the strategy). ``trade_to`` leaves it, says so once, and the
    strategy runs on; the same bars a day earlier trade."""
    option = "O:SPY241220C00500000"
    close = parse_option(option).expires_at_ns
    closes = [12, 11, 10, 13, 9, 8]
    rt = InMemoryRuntime()
    rt.add(
        "sma", SmaCrossover, {"fast_period": 2, "slow_period": 3, "quantity": 1}, symbols=(option,)
    )
    before = rt.run(bars(option, closes, start_ns=close - 86_400 * 10**9))
    assert orders(before) == [("long", "buy", Decimal(1)), ("flat", "sell", Decimal(1))]

    rt = InMemoryRuntime()
    rt.add(
        "sma", SmaCrossover, {"fast_period": 2, "slow_period": 3, "quantity": 1}, symbols=(option,)
    )
    with caplog.at_level(logging.WARNING):
        after = rt.run(bars(option, [*closes, 13, 9], start_ns=close))
    assert after == []  # no signal, no intent, no fault
    assert rt.hosts["sma"].running
    said = [r.getMessage() for r in caplog.records if "has expired" in r.getMessage()]
    assert said == [
        f"sma: {option} has expired: no order in it (wanted 1, holding 0); "
        "what is held is the broker's to settle"
    ]
