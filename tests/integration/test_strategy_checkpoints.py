"""Strategy-runner checkpoints (``services/strategy_runner/adapters/checkpoint.py``).

A random history of two strategies (every way an intent ends, partial fills
at several prices, a flatten's closing fills, trades that mark the
positions) is recorded up to a split point; a rebuild there writes each
strategy's checkpoint; the rest is recorded; the rebuild that loads the
checkpoints must give the books a rebuild from the first event gives:
positions, average prices, realized P&L, marks, working intents. At several
split points, with and without the finished-chain window. A checkpoint of
other code, of another store or unreadable is ignored.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import TradePayload, TradePrinted
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.testing import At, EchoStrategy
from services.strategy_runner.adapters.store import History, load_history, write_checkpoints
from tests.conftest import make_database
from tests.integration.order_histories import ACCOUNT, DAY_NS, STRATEGIES, SYMBOLS, strategy_chains
from tests.integration.recording import record_events, sql

NOW = time.time_ns()


def _timeline(seed: int, trades_until: int | None = None) -> list[Event]:
    """The chains of ``strategy_chains`` with trades among them (only
    among the first ``trades_until`` events, if given)."""
    rng = random.Random(seed)
    out: list[Event] = []
    for e in strategy_chains(seed).events:
        out.append(e)
        if (trades_until is None or len(out) < trades_until) and rng.random() < 0.15:
            trade = TradePayload(
                symbol=rng.choice(SYMBOLS),
                price=Decimal(rng.randint(9_000, 11_000)) / 100,
                size=Decimal(1),
                feed="synthetic",
            )
            out.append(TradePrinted.create(trade, source="test/marketdata", clock=At(e.ts_init)))
    return out


async def _rebuild(url: str, window: bool) -> tuple[History, InMemoryRuntime, dict[str, int]]:
    before = NOW - 7 * DAY_NS if window else 0
    history = await load_history(url, list(STRATEGIES), list(SYMBOLS), finished_before_ns=before)
    runtime = InMemoryRuntime()
    for name in STRATEGIES:
        runtime.add(name, EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    folded = history.restore_into(runtime)
    return history, runtime, folded


def _books(runtime: InMemoryRuntime) -> dict[str, Any]:
    return {
        name: (
            dict(host.ledger.positions),
            dict(host.intents._open),
            {s: host.intents.pending(s) for s in SYMBOLS},
        )
        for name, host in runtime.hosts.items()
    }


@pytest.mark.parametrize(
    ("window", "trades_until"),
    [(False, None), (True, None), (True, 40)],
    ids=["every chain", "finished chains windowed", "no trade after the first fills"],
)
async def test_rebuilding_from_checkpoints_gives_the_books_of_the_whole_fold(
    pg_admin_url: str, template_db: str, window: bool, trades_until: int | None
) -> None:
    events = _timeline(seed=4, trades_until=trades_until)
    whole = await make_database(pg_admin_url, template_db)
    await record_events(whole, events)
    _, runtime, folded_whole = await _rebuild(whole, window=False)
    expected = _books(runtime)
    marked = [p for books in expected.values() for p in books[0].values() if p.mark is not None]
    assert marked
    assert all(sum(1 for p in b[0].values() if p.realized_pnl) for b in expected.values())
    rng = random.Random(9)
    for split in sorted(rng.sample(range(50, len(events) - 50), 5)):
        url = await make_database(pg_admin_url, template_db)
        await record_events(url, events[:split])
        first, runtime, folded = await _rebuild(url, window)
        assert first.checkpoints == {}
        written = await write_checkpoints(url, first, runtime, folded)
        assert set(written) == {n for n, f in folded.items() if f}
        assert written
        await record_events(url, events[split:])
        second, runtime, folded = await _rebuild(url, window)
        assert {n: cp.seq for n, cp in second.checkpoints.items()} == dict.fromkeys(written, split)
        assert _books(runtime) == expected, split
        assert sum(folded.values()) < sum(folded_whole.values())
        # Fills up to the checkpoint are read only with a chain read whole
        # (for its working intents), not for the ledger.
        chains = {e.correlation_id for e in second.events if e.type != "FillReceived"}
        for seq, e in zip(second.seqs, second.events, strict=True):
            if e.type == "FillReceived" and seq <= split:
                assert e.correlation_id in chains, (split, seq)


async def test_a_checkpoint_that_does_not_fit_is_ignored(database_url: str) -> None:
    events = _timeline(seed=6)
    half = len(events) // 2
    await record_events(database_url, events[:half])
    at_half = await _rebuild(database_url, window=False)
    await record_events(database_url, events[half:])
    _, runtime, folded_whole = await _rebuild(database_url, window=False)
    expected = _books(runtime)
    for spoil in (
        "UPDATE strategy_checkpoints SET code_digest = 'another release'",
        "UPDATE strategy_checkpoints SET event_id = gen_random_uuid()",
        "UPDATE strategy_checkpoints SET positions = '{\"AAPL\": 1}'::jsonb",
    ):
        await sql(database_url, "DELETE FROM strategy_checkpoints")
        assert await write_checkpoints(database_url, *at_half)
        used, _, _ = await _rebuild(database_url, window=False)
        assert {cp.seq for cp in used.checkpoints.values()} == {half}
        await sql(database_url, spoil)
        history, runtime, folded = await _rebuild(database_url, window=False)
        assert history.checkpoints == {}, spoil
        assert folded == folded_whole
        assert _books(runtime) == expected


async def test_only_the_newest_checkpoints_are_kept(database_url: str) -> None:
    events = _timeline(seed=8)
    step = len(events) // 6
    for k in range(1, 7):
        await record_events(database_url, events[(k - 1) * step : k * step])
        history, runtime, folded = await _rebuild(database_url, window=False)
        await write_checkpoints(database_url, history, runtime, folded)
    kept = await sql(
        database_url,
        "SELECT array_agg(DISTINCT seq ORDER BY seq) FROM strategy_checkpoints",
    )
    assert kept == [k * step for k in (4, 5, 6)]
