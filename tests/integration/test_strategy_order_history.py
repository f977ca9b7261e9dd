"""A strategy's order history (``ctx.orders()``) after the strategy-runner's
start-up rebuild from a real store is the one it had live.

The random history of ``order_histories.strategy_chains`` (every way an
intent ends or stays working, several intents per signal, a flatten's
cancels and closing fills, old fills recorded without their strategy) is
recorded, read back by ``adapters/store.py`` as the runner reads it, and
restored; the records must equal those of the same events handed to the
books one by one as they came live. Within the rebuild window every chain is
read; with the default window the old finished chains are left out, and so
are their records, and nothing else.
"""

from __future__ import annotations

import uuid

from libs.contract.envelope import Event
from libs.contract.events import FillReceived
from libs.strategy.context import OrderRecord, SignalRecord
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.testing import EchoStrategy
from services.strategy_runner.adapters.store import History, load_history, write_checkpoints
from tests.integration.order_histories import (
    ACCOUNT,
    DAY_NS,
    NOW,
    STRATEGIES,
    SYMBOLS,
    strategy_chains,
)
from tests.integration.recording import record_events

Records = dict[str, tuple[tuple[OrderRecord, ...], SignalRecord | None]]


def _runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime()
    for name in STRATEGIES:
        rt.add(name, EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    return rt


def _records(rt: InMemoryRuntime) -> Records:
    return {
        name: (rt.hosts[name].history.orders(), rt.hosts[name].history.last_signal())
        for name in STRATEGIES
    }


def _live(events: list[Event]) -> Records:
    """The books of events handed over one by one, as the runner's tasks get them."""
    rt = _runtime()
    for event in events:
        rt.feed(event)
    return _records(rt)


async def _rebuilt(url: str, before_ns: int) -> tuple[History, InMemoryRuntime]:
    history = await load_history(url, list(STRATEGIES), list(SYMBOLS), finished_before_ns=before_ns)
    rt = _runtime()
    history.restore_into(rt)
    return history, rt


async def test_the_order_history_rebuilt_from_the_store_is_the_live_one(
    database_url: str,
) -> None:
    c = strategy_chains(seed=3)
    await record_events(database_url, c.events)
    live = _live(c.events)
    for orders, signal in live.values():
        # Not trivially alike: every way an order ends, several working.
        assert {r.status for r in orders} == {"working", "filled", "denied", "rejected", "canceled"}
        assert any(r.status == "canceled" and r.filled > 0 for r in orders)
        assert any(r.working and r.filled > 0 for r in orders)
        assert signal is not None

    # Every chain read (a window reaching back past the oldest).
    history, rebuilt = await _rebuilt(database_url, 0)
    assert _records(rebuilt) == live

    # With a ledger checkpoint written by that rebuild, the next start-up's
    # ledgers start from it: the history is the same.
    folded = {name: rebuilt.hosts[name].ledger.fills_applied for name in STRATEGIES}
    written = await write_checkpoints(database_url, history, rebuilt, folded, after_fills=1)
    assert sorted(written) == sorted(STRATEGIES)
    again, rebuilt = await _rebuilt(database_url, 0)
    assert set(again.checkpoints) == set(STRATEGIES)
    assert _records(rebuilt) == live

    # The runner's default window: old finished chains are read as fills only,
    # and their records are not there; all others are, as live.
    windowed, rebuilt = await _rebuilt(database_url, NOW - 7 * DAY_NS)
    read: set[uuid.UUID] = {
        e.correlation_id for e in windowed.events if not isinstance(e, FillReceived)
    }
    left_out = 0
    for name, (orders, signal) in _records(rebuilt).items():
        kept = tuple(r for r in live[name][0] if r.signal_id in read)
        assert orders == kept
        assert not any(r.working for r in live[name][0] if r.signal_id not in read)
        left_out += len(live[name][0]) - len(kept)
        assert signal == live[name][1]  # the newest is within the window
    assert left_out > 20
