"""After the strategy-runner's rebuild from a real store, a strategy's order
history says from when it is complete (``ctx.orders_complete_since_ns``):
the rebuild's cut-off; every order created from then on is there, as live,
and orders before it were left out (so the reach is no formality)."""

from __future__ import annotations

from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.testing import EchoStrategy
from services.strategy_runner.adapters.store import load_history
from tests.integration.order_histories import (
    ACCOUNT,
    DAY_NS,
    NOW,
    STRATEGIES,
    SYMBOLS,
    strategy_chains,
)
from tests.integration.recording import record_events


def _runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime()
    for name in STRATEGIES:
        rt.add(name, EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    return rt


async def test_every_order_from_the_cut_off_on_is_rebuilt_and_the_history_says_so(
    database_url: str,
) -> None:
    c = strategy_chains(seed=5)
    await record_events(database_url, c.events)
    live = _runtime()
    for event in c.events:
        live.feed(event)

    cut_off = NOW - 7 * DAY_NS  # the runner's default window
    history = await load_history(
        database_url, list(STRATEGIES), list(SYMBOLS), finished_before_ns=cut_off
    )
    assert history.complete_since_ns == cut_off
    rebuilt = _runtime()
    history.restore_into(rebuilt)
    missing = 0
    for name in STRATEGIES:
        books = rebuilt.hosts[name].history
        assert books.complete_since_ns == cut_off
        everything = live.hosts[name].history
        assert books.orders(since_ns=cut_off) == everything.orders(since_ns=cut_off)
        assert books.orders(since_ns=cut_off)  # not trivially alike
        missing += len(everything.orders()) - len(books.orders())
    assert missing > 10  # older finished orders were left out

    # Every chain read: complete from the beginning.
    whole = await load_history(database_url, list(STRATEGIES), list(SYMBOLS))
    assert whole.complete_since_ns == 0
