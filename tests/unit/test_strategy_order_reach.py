"""How far back a strategy's order history reaches (``ctx.orders_complete_since_ns``):
from the beginning live and in a backtest, from the runner's rebuild cut-off
after a restart, and from past the newest finished order the cap dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated
from libs.strategy import InMemoryRuntime, StrategyContext
from libs.strategy.history import OrderHistory
from libs.strategy.spec import load_strategies
from libs.strategy.testing import MINUTE_NS, At, EchoStrategy, bar, deny, fill_chain
from services.strategy_runner.adapters.store import History
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import Runner
from tests.unit.strategy_probes import Probe, counter_ids, of_type

#: A Monday, 00:00 UTC.
DAY0 = 1_700_438_400 * 10**9


def ctx_of(rt: InMemoryRuntime, name: str) -> StrategyContext:
    instance = rt.hosts[name].instance
    assert instance is not None
    return instance.ctx


def probe_runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("a", Probe, symbols=("AAPL",))
    return rt


def three_filled_orders() -> list[Event]:
    """Probe's three orders, a minute apart, each filled: what a store holds."""
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("a", Probe, symbols=("AAPL",))
    store: list[Event] = []
    for k in range(3):
        b = bar("AAPL", 100, DAY0 + k * MINUTE_NS)
        out = rt.run([b])
        store += [b, *out]
        for intent in of_type(out, OrderIntentCreated):
            store += fill_chain(intent, 100, ids=ids)
    return store


def test_live_from_the_start_and_in_a_backtest_it_reaches_back_to_the_beginning() -> None:
    rt = probe_runtime()
    rt.run([bar("AAPL", 100, DAY0 + k * MINUTE_NS) for k in range(5)])
    ctx = ctx_of(rt, "a")
    assert len(ctx.orders()) == 5
    assert ctx.orders_complete_since_ns == 0
    # Every order is there: asking from 0 and from the reach give them all.
    assert ctx.orders(since_ns=ctx.orders_complete_since_ns) == ctx.orders()


def test_after_a_restart_it_reaches_back_to_the_runner_s_cut_off() -> None:
    """The runner's rebuild leaves out the chains finished before its cut-off
    (``rebuild_finished_s``): orders made before it may be missing, and the
    history says so; those from it on are all there."""
    store = three_filled_orders()
    intents = of_type(store, OrderIntentCreated)
    cut_off = intents[1].ts_event  # the first order's chain is left out
    read = [e for e in store if e.correlation_id != intents[0].correlation_id]
    rt = probe_runtime()
    History(read, seqs=list(range(1, len(read) + 1)), complete_since_ns=cut_off).restore_into(rt)
    rt.start()
    ctx = ctx_of(rt, "a")
    assert ctx.orders_complete_since_ns == cut_off
    assert [r.intent_id for r in ctx.orders(since_ns=cut_off)] == [i.id for i in intents[1:]]

    # A rebuild that read every chain (a cut-off of 0) reaches back to the beginning.
    whole = probe_runtime()
    History(store, seqs=list(range(1, len(store) + 1))).restore_into(whole)
    whole.start()
    assert ctx_of(whole, "a").orders_complete_since_ns == 0


def test_a_finished_order_the_cap_drops_moves_the_reach_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(OrderHistory, "MAX_FINISHED", 2)
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("echo", EchoStrategy, symbols=("AAPL",))
    out = rt.run([bar("AAPL", 100 + k, DAY0 + k * MINUTE_NS) for k in range(5)])
    intents = of_type(out, OrderIntentCreated)
    ctx = ctx_of(rt, "echo")
    # The first stays working (kept, whatever its age); the others are denied.
    for intent in intents[1:3]:
        rt.feed(deny(intent, ids=ids))
    assert ctx.orders_complete_since_ns == 0  # two finished: none dropped yet
    rt.feed(deny(intents[3], ids=ids))
    # The second (the oldest finished) is dropped: from just past it on, all there.
    assert ctx.orders_complete_since_ns == intents[1].ts_event + 1
    assert [r.intent_id for r in ctx.orders(since_ns=ctx.orders_complete_since_ns)] == [
        i.id for i in intents[2:]
    ]
    rt.feed(deny(intents[4], ids=ids))
    assert ctx.orders_complete_since_ns == intents[2].ts_event + 1
    # The working one, older than the reach, is still there.
    assert intents[0].id in {r.intent_id for r in ctx.orders()}


def test_the_reach_never_moves_back() -> None:
    history = OrderHistory()
    history.missing_before(DAY0)
    history.missing_before(DAY0 - MINUTE_NS)
    assert history.complete_since_ns == DAY0


STRATEGIES = """
strategies:
  - name: fresh
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    params: {fast_period: 5, slow_period: 20, quantity: 100}
"""


async def test_a_runner_that_does_not_rebuild_reaches_back_to_its_start(tmp_path: Path) -> None:
    """``rebuild_from_store`` off: nothing is read back, so the orders made
    before the runner started are not in the history (its catch-up may hold
    some): complete from its start."""
    path = tmp_path / "strategies.yaml"
    path.write_text(STRATEGIES)
    runner = Runner(
        RunnerSettings(instance="reach", rebuild_from_store=False),
        load_strategies(path),
        clock=At(DAY0),
    )
    assert await runner._rebuild() is not None
    assert runner.tasks["fresh"].host.history.complete_since_ns == DAY0
