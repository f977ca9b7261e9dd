"""The strategy-runner does not hold what its start-up read once it has used it.

The rebuild reads every event of the strategies' chains, their fills and
their symbols' last prices from the store (``History``): for a big store,
hundreds of MB. Start-up folds it into the books and takes its tail (where
the stream must continue); the runner then serves for days. ``Runner._run``
kept the whole ``History`` referenced for all that time, every event read
back with it. In-process here, on real NATS and Postgres: once the runner is
ready, not one restored event is alive.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import weakref
from decimal import Decimal

import yaml

from libs.bus.client import Bus
from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.spec import validate_strategies
from libs.strategy.testing import MINUTE_NS, EchoStrategy, bar, fill_chain
from libs.testing.wait import eventually
from services.strategy_runner.adapters.store import History
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import Runner
from tests.integration.recording import record_stream
from tests.integration.strategy_runner_setup import ECHO_CONFIG


class WatchedRunner(Runner):
    """A runner that keeps a weak reference to every event its rebuild read."""

    restored: list[weakref.ref[Event]]

    async def _rebuild(self) -> History | None:
        history = await super()._rebuild()
        if history is not None:
            self.restored = [weakref.ref(e) for e in history.events]
        return history


async def _a_filled_chain_on_the_bus(bus: Bus) -> None:
    """Echo's answer to two MSFT bars (signals, intents), the first intent
    filled: published, as the services would have, minutes ago."""
    now = time.time_ns()
    n = iter(range(1, 1000))
    rt = InMemoryRuntime(ids=lambda: uuid.UUID(int=next(n)))
    rt.add("echo", EchoStrategy, {"quantity": 1}, symbols=("MSFT",), account="paper")
    events: list[Event] = []
    for k, close in enumerate((20, 21)):
        closed = bar("MSFT", close, now - (10 - k) * MINUTE_NS)
        events += [closed, *rt.run([closed])]
    first = next(e for e in events if isinstance(e, OrderIntentCreated))
    events += fill_chain(
        first, Decimal("20.5"), ids=lambda: uuid.UUID(int=next(n)), at_ns=now - 5 * MINUTE_NS
    )
    for event in events:
        await bus.publish(event)


async def test_the_runner_holds_no_restored_event_once_started(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    await _a_filled_chain_on_the_bus(bus)
    assert await record_stream(bus, database_url) > 0
    runner = WatchedRunner(
        RunnerSettings(nats_url=nats_url, database_url=database_url, retry_backoff_s=0.05),
        validate_strategies(yaml.safe_load(ECHO_CONFIG)),
    )
    running = asyncio.create_task(runner._run())
    try:
        await eventually(lambda: running.done() or runner.ready, timeout=30)
        assert not running.done(), running.exception()
        host = runner.tasks["echo"].host
        # The rebuild read the chains: the fill is in the books, the second
        # intent is working.
        assert host.ledger.position("MSFT").quantity == 1
        assert host.pending("MSFT") == 1
        assert len(runner.restored) >= 8
        gc.collect()
        alive = [ref() for ref in runner.restored if ref() is not None]
        assert alive == []
    finally:
        runner.stop()
        await asyncio.wait_for(running, timeout=20)
