"""A long-running host's replay guards are bounded: the ids of its intents
finished, and of its signals made, longer ago than the runner's rebuild
window (``forget_after_ns``) are forgotten, as a restart would forget them;
working chains are kept whatever their age, and their late events still
route and apply; a copy read back within the window is still dropped; a
strategy still holding an old signal may still order with it.

Before, ``IntentBook._seen`` and ``StrategyHost._signals`` kept every id the
host ever saw: about 100 bytes per signal and per intent, for as long as the
runner ran.
"""

from __future__ import annotations

import gc
from decimal import Decimal
from pathlib import Path

from libs.contract.events import OrderIntentCreated, SignalGenerated, StrategyFaulted
from libs.strategy import Bar, InMemoryRuntime, Strategy
from libs.strategy.host import DEFAULT_FORGET_AFTER_NS
from libs.strategy.spec import load_strategies
from libs.strategy.testing import EchoStrategy, bar, deny, fill_chain
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import Runner
from tests.unit.strategy_probes import ProbeParams, counter_ids, of_type

#: A Monday, 00:00 UTC.
DAY0 = 1_700_438_400 * 10**9
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS


def test_the_guards_forget_what_finished_before_the_window_and_keep_working_chains() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    host = rt.add("echo", EchoStrategy, symbols=("AAPL",))
    assert host.forget_after_ns == DEFAULT_FORGET_AFTER_NS == 7 * DAY_NS
    # An order every 6 hours for 20 days; the first rests (working), every
    # other one is denied at once.
    intents: list[OrderIntentCreated] = []
    signals: list[SignalGenerated] = []
    for k in range(80):
        out = rt.run([bar("AAPL", 100, DAY0 + k * 6 * HOUR_NS)])
        (intent,) = of_type(out, OrderIntentCreated)
        intents.append(intent)
        signals += of_type(out, SignalGenerated)
        if k > 0:
            rt.feed(deny(intent, ids=ids))
    now = rt.clock.now_ns()
    cut_off = now - DAY_NS * 7
    recent = [i for i in intents[1:] if i.ts_event >= cut_off]
    assert 20 < len(recent) < 40
    # Known: the working one and what finished within the window; no other.
    assert host.intents._seen == {intents[0].id, *(i.id for i in recent)}
    assert host._signals == {intents[0].correlation_id, *(i.correlation_id for i in recent)}

    # A late fill of the working chain (its signal 20 days old) still routes and applies.
    for event in fill_chain(intents[0], 101, ids=ids, at_ns=now):
        rt.feed(event)
    assert host.ledger.position("AAPL").quantity == 1
    assert host.pending("AAPL") == 0
    record = next(r for r in host.history.orders() if r.intent_id == intents[0].id)
    assert (record.status, record.filled) == ("filled", Decimal(1))

    # A copy read back within the window (a catch-up's read-back) is still dropped.
    before = host.history.orders()
    last_signal = host.history.last_signal()
    rt.restore(signals[-2])
    rt.restore(intents[-2])
    rt.restore(deny(intents[-2], ids=ids))
    assert host.history.orders() == before
    assert host.history.last_signal() == last_signal
    assert host.pending("AAPL") == 0


class OrdersOnItsFirstSignal(Strategy[ProbeParams]):
    """Orders on every bar, caused by the first signal it made (kept)."""

    def on_start(self) -> None:
        self.first: SignalGenerated | None = None

    def on_bar(self, bar: Bar) -> None:
        if self.first is None:
            self.first = self.ctx.signal(bar.symbol, "first", "long")
        self.ctx.order(bar.symbol, "buy", Decimal(1), cause=self.first)


def test_a_strategy_still_holding_an_old_signal_may_order_with_it() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    host = rt.add("f", OrdersOnItsFirstSignal, symbols=("AAPL",))
    made: list[OrderIntentCreated] = []
    first: SignalGenerated | None = None
    for d in range(12):
        out = rt.run([bar("AAPL", 100, DAY0 + d * DAY_NS)])
        assert not of_type(out, StrategyFaulted)
        first = first or of_type(out, SignalGenerated)[0]
        for intent in of_type(out, OrderIntentCreated):
            made.append(intent)
            rt.feed(deny(intent, ids=ids))
    assert first is not None
    assert len(made) == 12
    assert {i.correlation_id for i in made} == {first.id}
    # Made 11 days ago, its chain finished: forgotten by the replay guard,
    # and the strategy (which holds it) still orders with it.
    assert first.id not in host._signals
    first_id = first.id
    del out, first, made
    gc.collect()  # nothing holds it now but the strategy
    out = rt.run([bar("AAPL", 100, DAY0 + 12 * DAY_NS)])
    assert not of_type(out, StrategyFaulted)
    assert [i.correlation_id for i in of_type(out, OrderIntentCreated)] == [first_id]


STRATEGIES = """
strategies:
  - name: bounded
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    params: {fast_period: 5, slow_period: 20, quantity: 100}
"""


def test_the_runner_forgets_after_its_rebuild_window(tmp_path: Path) -> None:
    path = tmp_path / "strategies.yaml"
    path.write_text(STRATEGIES)
    runner = Runner(
        RunnerSettings(instance="bounded", rebuild_finished_s=3600), load_strategies(path)
    )
    assert runner.tasks["bounded"].host.forget_after_ns == HOUR_NS
