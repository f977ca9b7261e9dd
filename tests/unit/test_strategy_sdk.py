"""The strategy SDK's in-memory runtime: what a strategy is shown, how what it
emits is stamped, determinism, and warm-up.

Faults and restarts: test_strategy_sdk_faults; books, fills and marks:
test_strategy_sdk_books; options, settlements and their underlyings:
test_strategy_sdk_options.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from libs.contract.envelope import CLOCK_SKEW_NS
from libs.contract.events import OrderIntentCreated, SignalGenerated, StrategyFaulted
from libs.strategy import Bar, EventClock, InMemoryRuntime, Strategy
from libs.strategy.examples.sma_crossover import SmaCrossover
from libs.strategy.testing import MINUTE_NS, bar, bars
from tests.unit.strategy_probes import Probe, ProbeParams, counter_ids, of_type, probe_seen

SMA_PARAMS = {"fast_period": 1, "slow_period": 2, "quantity": 1}


def test_a_strategy_is_shown_the_bars_of_its_interval_only() -> None:
    rt = InMemoryRuntime()
    rt.add("minute", Probe, symbols=("AAPL",), bar_interval="1m")
    rt.add("second", Probe, symbols=("AAPL",), bar_interval="1s")
    rt.add("every", Probe, symbols=("AAPL",))
    second_bar = bar("AAPL", 100, 0, interval="1s")
    minute_bar = bar("AAPL", 101, 0)
    out = rt.run([second_bar, minute_bar])
    # Only "second" and "every" saw the 1-second bar that closed at 100.
    assert sorted(e.payload.strategy for e in of_type(out, SignalGenerated)) == [
        "every",
        "second",
    ]
    assert probe_seen(rt, "minute") == [minute_bar.payload]
    assert probe_seen(rt, "second") == [second_bar.payload]
    assert probe_seen(rt, "every") == [second_bar.payload, minute_bar.payload]


def test_a_backtest_s_clock_is_not_moved_a_day_ahead_by_one_bad_stamp() -> None:
    """The in-memory runtime's clock (a backtest's) reads the latest event's
    market time, ``Event.market_ns``: a bar stamped a day ahead of when it
    was made moved it a day ahead for the rest of the run, so every later
    intent carried tomorrow's time (and the risk-gate's stale-intent check,
    its age negative, never fired)."""
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    bad = bar("AAPL", 99, 0)
    bad = bad.model_copy(update={"ts_event": bad.ts_event + 86_400 * 10**9})
    rt.run([bad])
    assert rt.clock.now_ns() == bad.ts_init + CLOCK_SKEW_NS
    good = bar("AAPL", 100, MINUTE_NS)
    [_, intent] = rt.feed(good)
    assert intent.ts_event == good.ts_event  # the next bar's time, not tomorrow's


def test_warm_up_takes_the_bars_of_its_interval_only() -> None:
    rt = InMemoryRuntime()
    host = rt.add("sma", SmaCrossover, SMA_PARAMS, symbols=("AAPL",), bar_interval="1m")
    host.remember(
        [
            bar("AAPL", 10, 0),
            bar("AAPL", 50, MINUTE_NS, interval="1s"),
            bar("AAPL", 11, MINUTE_NS),
        ]
    )
    assert [b.payload.close for b in host.recent_bars()] == [Decimal(10), Decimal(11)]


def test_intent_is_caused_by_its_signal_and_stamped_with_market_time() -> None:
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",), account="acct-a")
    b = bar("AAPL", 100, 1_700_000_000_000_000_000)
    out = rt.run([b])
    signal, intent = out
    assert isinstance(signal, SignalGenerated)
    assert isinstance(intent, OrderIntentCreated)
    assert signal.correlation_id == signal.id
    assert signal.causation_id is None
    assert intent.causation_id == signal.id
    assert intent.correlation_id == signal.id
    assert intent.payload.account == "acct-a"
    assert intent.payload.strategy == "p"
    assert intent.payload.quantity == Decimal(10)
    assert signal.ts_event == intent.ts_event == b.ts_event


def test_an_intent_carries_the_asset_class_its_symbol_names() -> None:
    """The risk-gate denies an intent whose asset class is not its symbol's
    (asset_class): the SDK sets it, so an options strategy need not."""
    option = "O:SPY241220P00720000"
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL", option))
    out = rt.run([bar("AAPL", 100, 0), bar(option, 100, MINUTE_NS)])
    intents = of_type(out, OrderIntentCreated)
    assert [(i.payload.symbol, i.payload.asset_class) for i in intents] == [
        ("AAPL", "equity"),
        (option, "option"),
    ]


def test_runs_are_deterministic_with_derived_or_injected_ids() -> None:
    data = bars("AAPL", [99, 100, 101, 100])

    def run(ids: Callable[[], uuid.UUID] | None) -> list[dict[str, object]]:
        rt = InMemoryRuntime(ids=ids)
        rt.add("p", Probe, symbols=("AAPL",))
        return [e.model_dump() for e in rt.run(data)]

    derived = run(None)
    assert len(derived) == 4
    assert derived == run(None)
    injected = run(counter_ids())
    assert injected == run(counter_ids())
    assert injected[0]["id"] == uuid.UUID(int=1)


class Warmed(Probe):
    """A probe that keeps the bars it is shown through on_warmup."""

    def on_start(self) -> None:
        super().on_start()
        self.warmed: list[Bar] = []

    def on_warmup(self, bar: Bar) -> None:
        self.warmed.append(bar)


class EmitsInWarmup(Probe):
    def on_warmup(self, bar: Bar) -> None:
        signal = self.ctx.signal(bar.symbol, "stale", "long", reason="a past bar")
        self.ctx.order(bar.symbol, "buy", Decimal(1), cause=signal)


def test_warm_up_shows_past_bars_without_books_or_emissions() -> None:
    rt = InMemoryRuntime()
    rt.add("w", Warmed, symbols=("AAPL",))
    rt.add("bad", EmitsInWarmup, symbols=("AAPL",), restart="never")
    rt.start()
    past = bar("AAPL", 100, 0)  # would make a Probe buy, were it live
    assert rt.hosts["w"].warm_up(past) == []
    assert rt.hosts["w"].warm_up(bar("MSFT", 50, 0)) == []  # not its symbol: not shown
    instance = rt.hosts["w"].instance
    assert isinstance(instance, Warmed)
    assert instance.warmed == [past.payload]
    assert instance.seen == []  # on_bar was not called
    assert rt.hosts["w"].ledger.position("AAPL").mark is None  # books untouched
    # Emitting from on_warmup is the strategy's fault; nothing it emitted leaves.
    out = rt.hosts["bad"].warm_up(past)
    assert [type(e) for e in out] == [StrategyFaulted]
    assert "on_warmup may not emit" in out[0].payload.error
    assert out[0].payload.action == "stopped"


class FlakyWarmed(Warmed):
    """Wants its last 2 bars per symbol; raises on a close of 13."""

    @classmethod
    def warmup_bars(cls, params: Any) -> int:
        return 2

    def on_bar(self, bar: Bar) -> None:
        super().on_bar(bar)
        if bar.close == 13:
            raise RuntimeError("flaky on 13")


def test_an_instance_restarted_after_a_fault_is_warmed_up_on_the_latest_bars() -> None:
    rt = InMemoryRuntime()
    rt.add("f", FlakyWarmed, symbols=("AAPL", "MSFT"), restart="always", max_restarts=1)
    data = [bar("AAPL", 10, 0), bar("MSFT", 20, 0), bar("AAPL", 11, 60_000_000_000)]
    data += [bar("AAPL", 12, 120_000_000_000), bar("AAPL", 13, 180_000_000_000)]
    out = rt.run(data)
    faults = of_type(out, StrategyFaulted)
    assert [f.payload.action for f in faults] == ["restarted"]
    fresh = rt.hosts["f"].instance
    assert isinstance(fresh, FlakyWarmed)
    # The two latest bars of each symbol, in the order they closed (the bar
    # it failed on included: it did close).
    assert [(b.symbol, int(b.close)) for b in fresh.warmed] == [
        ("MSFT", 20),
        ("AAPL", 12),
        ("AAPL", 13),
    ]
    assert fresh.seen == []  # on_bar not called for them again


class OrdersOnStartFailsAWarmup(Warmed):
    """Buys on each start (an entry at the open, say); its on_warmup raises
    on a close of 13."""

    def on_start(self) -> None:
        super().on_start()
        signal = self.ctx.signal("AAPL", "open", "long", reason="started")
        self.ctx.order("AAPL", "buy", Decimal(1), cause=signal)

    def on_warmup(self, bar: Bar) -> None:
        super().on_warmup(bar)
        if bar.close == 13:
            raise RuntimeError("flaky warm-up on 13")


def test_an_instance_restarted_after_a_fault_in_a_warm_up_may_emit_from_its_start() -> None:
    # A fault in on_warmup (the catch-up's bars) restarts the strategy; its
    # new on_start is a start, not a warm-up, and may emit as the first did.
    rt = InMemoryRuntime()
    rt.add("s", OrdersOnStartFailsAWarmup, symbols=("AAPL",), restart="always", max_restarts=3)
    host = rt.hosts["s"]
    assert [type(e) for e in host.start()] == [SignalGenerated, OrderIntentCreated]
    out = host.warm_up(bar("AAPL", 13, 0))
    assert [type(e) for e in out] == [StrategyFaulted, SignalGenerated, OrderIntentCreated]
    assert of_type(out, StrategyFaulted)[0].payload.error == "RuntimeError: flaky warm-up on 13"
    assert (host.running, host.restarts) == (True, 1)
    assert host.warm_up(bar("AAPL", 14, MINUTE_NS)) == []  # still refused from on_warmup itself


class OrdersOnStart(Strategy[ProbeParams]):
    """Buys at its start (an entry at the open, say), before any bar."""

    def on_start(self) -> None:
        signal = self.ctx.signal("AAPL", "open", "long", reason="started")
        self.ctx.order("AAPL", "buy", self.params.quantity, cause=signal)


def test_a_backtest_stamps_what_a_strategy_emits_from_its_start_at_the_first_event() -> None:
    """Live, what on_start emits is stamped with the wall clock at start-up,
    just before the first event; the in-memory runtime's clock read 0 until
    an event was fed, so a backtest's first signal and intent were stamped
    1970 (and a risk-gate fed them would find the intent fifty years stale).
    It now takes the first event's market time, or the start time the
    backtest gives its clock."""
    first = bar("AAPL", 99, 1_700_000_000_000_000_000)
    rt = InMemoryRuntime()
    rt.add("s", OrdersOnStart, symbols=("AAPL",))
    signal, intent = rt.run([first, bar("AAPL", 100, first.ts_event + MINUTE_NS)])
    assert signal.ts_event == intent.ts_event == first.market_ns
    # A start time given to the clock is the backtest's own: it stays.
    rt = InMemoryRuntime(clock=EventClock(first.ts_event - MINUTE_NS))
    rt.add("s", OrdersOnStart, symbols=("AAPL",))
    signal, intent = rt.run([first])
    assert signal.ts_event == intent.ts_event == first.ts_event - MINUTE_NS


def test_the_host_keeps_the_last_n_bars_of_each_symbol_in_order() -> None:
    history = [
        bar(s, c, i * 60_000_000_000)
        for i, (s, c) in enumerate(
            [("AAPL", 1), ("MSFT", 2), ("AAPL", 3), ("AAPL", 4), ("MSFT", 5), ("SPY", 6)]
        )
    ]
    rt = InMemoryRuntime()
    rt.add("two", FlakyWarmed, symbols=("AAPL", "MSFT"))  # warmup_bars 2
    rt.add("none", Warmed, symbols=("AAPL",))  # warmup_bars 0
    for host in rt.hosts.values():
        host.remember(history)
    picked = rt.hosts["two"].recent_bars()
    assert [(b.payload.symbol, int(b.payload.close)) for b in picked] == [
        ("MSFT", 2),
        ("AAPL", 3),
        ("AAPL", 4),
        ("MSFT", 5),
    ]
    assert rt.hosts["none"].recent_bars() == []
