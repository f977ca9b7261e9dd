"""A long-running ledger's fill guard is bounded: the keys of fills seen
longer ago than the runner's rebuild window (``forget_after_ns``, by their
``ts_init``) are forgotten, as the ids of finished chains are
(``libs/strategy/books.py``, "Fills"); a copy within the window, live or
restored, is still dropped; ``fills_applied`` still counts every fill a
start-up folded, forgotten ones too (its checkpoint's decision).

Before, ``Ledger._seen_fills`` kept the key of every fill for the runner's
life (and ``fills_applied`` was its size).
"""

from __future__ import annotations

from libs.contract.envelope import Event
from libs.contract.events import FillReceived, OrderIntentCreated
from libs.strategy import InMemoryRuntime
from libs.strategy.host import StrategyHost
from libs.strategy.ledger import FillKey
from libs.strategy.testing import At, EchoStrategy, bar, fill_chain
from services.strategy_runner.adapters.store import History
from tests.unit.strategy_probes import counter_ids, of_type

#: A Monday, 00:00 UTC.
DAY0 = 1_700_438_400 * 10**9
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
WINDOW_NS = 7 * DAY_NS


def key(fill: FillReceived) -> FillKey:
    p = fill.payload
    return (p.account, p.broker_order_id, p.fill_id)


def _trade_for_20_days(rt: InMemoryRuntime) -> list[Event]:
    """Echo buys 1 AAPL every 6 hours for 20 days, each filled an hour later:
    everything fed to ``rt`` and made, in order."""
    ids = rt.ids
    assert ids is not None
    events: list[Event] = []
    for k in range(80):
        t = DAY0 + k * 6 * HOUR_NS
        closed = bar("AAPL", 100, t)
        out = rt.run([closed])
        (intent,) = of_type(out, OrderIntentCreated)
        chain = fill_chain(intent, 100, ids=ids, at_ns=t + HOUR_NS)
        for event in chain:
            rt.feed(event)
        events += [closed, *out, *chain]
    return events


def _host(rt: InMemoryRuntime) -> StrategyHost:
    return rt.add("echo", EchoStrategy, symbols=("AAPL",))


def test_the_ledger_keeps_only_the_windows_fills_and_drops_a_copy_within_it() -> None:
    rt = InMemoryRuntime(ids=counter_ids())
    host = _host(rt)
    assert host.forget_after_ns == WINDOW_NS
    fills = of_type(_trade_for_20_days(rt), FillReceived)
    assert len(fills) == 80
    ledger = host.ledger
    assert ledger.position("AAPL").quantity == 80
    assert ledger.fills_applied == 80
    now = rt.clock.now_ns()
    recent = [f for f in fills if f.ts_init >= now - WINDOW_NS]
    assert 20 < len(recent) < 40
    # Known: the window's fills, no other.
    assert ledger._seen_fills == {key(f) for f in recent}

    # A copy within the window (the gateway made it again after a restart:
    # the same event, a new ts_init), live or restored, is dropped.
    position = ledger.position("AAPL")
    copy = recent[0].model_copy(update={"ts_init": now})
    rt.feed(copy)
    rt.restore(copy)
    rt.restore(recent[-1])
    assert ledger.position("AAPL") == position
    assert ledger.fills_applied == 80


def test_a_rebuild_counts_every_fill_it_folded_and_keeps_only_the_windows_keys() -> None:
    live = InMemoryRuntime(ids=counter_ids())
    _host(live)
    events = _trade_for_20_days(live)
    fills = of_type(events, FillReceived)
    # A start-up a day after the last fill, by the wall clock, as the runner's.
    now = live.clock.now_ns() + DAY_NS
    rt = InMemoryRuntime(clock=At(now))
    host = _host(rt)
    folded = History(events, seqs=list(range(1, len(events) + 1))).restore_into(rt)
    # Every fill taken counts toward the checkpoint's decision, forgotten or not.
    assert folded == {"echo": 80}
    assert host.ledger.position("AAPL").quantity == 80
    recent = [f for f in fills if f.ts_init >= now - WINDOW_NS]
    assert 15 < len(recent) < 35
    assert host.ledger._seen_fills == {key(f) for f in recent}
    # The catch-up reading one of them again (made again, past JetStream's
    # duplicate window) does not book it twice.
    rt.restore(recent[0].model_copy(update={"ts_init": now}))
    assert host.ledger.position("AAPL").quantity == 80
    assert host.ledger.fills_applied == 80
