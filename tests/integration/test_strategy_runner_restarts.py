"""The strategy-runner restarted on real NATS and Postgres: what it rebuilds
from the store (a flatten's fill booked to a strategy, its ledger
checkpoints, the marks of its positions, its strategies' warm-up bars)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from libs.bus.client import Bus
from libs.strategy.testing import MINUTE_NS, bar, booked_fill, settlement_fill
from libs.testing.wait import eventually
from tests.integration import strategy_runner_setup
from tests.integration.recording import sql
from tests.integration.strategy_runner_setup import (
    POSITION,
    T0,
    Start,
    Timeline,
    consumer_subjects,
    metric,
    publish_bars,
    runner_args,
    sma_x_long_10,
)

# The strategy-runner's fixture, registered in this module.
start = strategy_runner_setup.start


async def test_a_flatten_fill_booked_to_a_strategy_reaches_it_live_and_after_a_restart(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> None:
    # The risk-gate flattened the account: the broker's closing order is no
    # strategy's, but the gateway books its fill to sma-x, whose position it
    # closed. sma-x must be flat, live and in the books rebuilt from the store.
    store = Timeline(database_url)
    runner = await sma_x_long_10(tmp_path, bus, database_url, start)
    realized = 'tradebus_strategy_pnl{kind="realized",strategy="sma-x"}'

    flatten = uuid.uuid4()  # the FlattenAccount's chain, not sma-x's
    closing = booked_fill(
        "AAPL", "sell", 10, "12.05", strategy="sma-x", flatten=flatten,
        at_ns=T0 + 5 * MINUTE_NS,
    )  # fmt: skip
    await bus.publish(closing)
    await eventually(lambda: metric(runner, POSITION) == 0.0, timeout=20)
    assert metric(runner, realized) == -10.0  # (12.05 - 13.05) x 10

    async def closing_recorded() -> bool:
        return any(f["id"] == closing.id for f in await store.of("FillReceived"))

    await eventually(closing_recorded, timeout=20)
    assert runner.terminate() == 0, runner.log_text()[-3000:]
    again = start(runner_args(tmp_path), "runner2")
    await eventually(lambda: (again.health() or {}).get("ready"), timeout=30)
    await eventually(lambda: metric(again, realized) == -10.0, timeout=20)
    assert metric(again, POSITION) == 0.0
    assert again.terminate() == 0, again.log_text()[-3000:]


async def test_a_restart_writes_a_ledger_checkpoint_and_the_next_one_starts_from_it(
    tmp_path: Path,
    bus: Bus,
    database_url: str,
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADEBUS_CHECKPOINT_AFTER_FILLS", "1")
    store = Timeline(database_url)
    runner = await sma_x_long_10(tmp_path, bus, database_url, start)
    await eventually(lambda: store.of("FillReceived"), timeout=20)
    assert runner.terminate() == 0, runner.log_text()[-3000:]

    # The next start-up folds that fill and writes sma-x's checkpoint ...
    second = start(runner_args(tmp_path), "runner2")
    await eventually(lambda: (second.health() or {}).get("ready"), timeout=30)
    assert "strategy sma-x: checkpoint written at" in second.log_text()
    assert await sql(database_url, "SELECT array_agg(strategy) FROM strategy_checkpoints") == [
        "sma-x"
    ]
    seq = await sql(database_url, "SELECT seq FROM strategy_checkpoints")
    assert metric(second, POSITION) == 10.0
    assert second.terminate() == 0, second.log_text()[-3000:]

    # ... and the one after starts sma-x's ledger from it, to the same books.
    third = start(runner_args(tmp_path), "runner3")
    await eventually(lambda: (third.health() or {}).get("ready"), timeout=30)
    assert f"strategy sma-x: ledger from its checkpoint at {seq}" in third.log_text()
    assert metric(third, POSITION) == 10.0
    assert third.terminate() == 0, third.log_text()[-3000:]


async def test_a_restarted_runner_marks_a_minute_strategy_by_its_last_minute_bar(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> None:
    # sma-x (minute bars) holds 10 AAPL bought at 13.05; a minute bar closes
    # at 14, then second bars at 15, which sma-x is not shown. Live it is
    # marked at 14. After a restart the store's last price was the last bar
    # of any interval, a second bar, which the rebuild routes to minute-bar
    # strategies not at all: sma-x's position kept the fill's price as its
    # mark, and its unrealized P&L read 0 until the next minute bar.
    store = Timeline(database_url)
    runner = await sma_x_long_10(tmp_path, bus, database_url, start)
    unrealized = 'tradebus_strategy_pnl{kind="unrealized",strategy="sma-x"}'
    await publish_bars(bus, "AAPL", [14], 4)
    await eventually(lambda: metric(runner, unrealized) == 9.5, timeout=20)  # (14 - 13.05) x 10
    for i in range(3):
        await bus.publish(bar("AAPL", 15, T0 + 5 * MINUTE_NS + i * 10**9, interval="1s"))

    async def bars_recorded() -> bool:
        return len(await store.of("BarClosed")) == 8

    await eventually(bars_recorded, timeout=20)
    assert metric(runner, unrealized) == 9.5
    assert runner.terminate() == 0, runner.log_text()[-3000:]

    again = start(runner_args(tmp_path), "runner2")
    await eventually(lambda: (again.health() or {}).get("ready"), timeout=30)
    assert metric(again, POSITION) == 10.0
    assert metric(again, unrealized) == 9.5
    assert again.terminate() == 0, again.log_text()[-3000:]


async def test_shares_an_options_only_strategy_is_exercised_into_are_marked_by_the_underlying(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> None:
    """opt trades only a SPY call; it holds 2, bought at 5, and they are
    exercised: the gateway books it the contracts at 0 and 200 SPY at 600.
    SPY's minute bar closing at 604 marks the shares: its unrealized P&L is
    800, live and after a restart (the rebuild reads SPY's last prices).
    opt is not shown SPY's bars (as the echo probe it would buy on each, a
    fault in a symbol not its own): it emits nothing. The runner reads SPY's
    prices, not its quotes. Before, nothing marked the shares: 0, whatever
    SPY did, while the risk-gate and ``tradebus positions`` counted 800."""
    call = "O:SPY261211C00600000"
    config = tmp_path / "strategies.yaml"
    config.write_text(
        "strategies:\n"
        f"  - {{name: opt, kind: 'libs.strategy.testing:EchoStrategy', symbols: ['{call}'],"
        " account: paper}\n"
    )
    args = ["strategy-runner", "run", "--config", str(config)]
    store = Timeline(database_url)
    start(["recorder", "run"], "recorder")
    runner = start(args, "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    subjects = await consumer_subjects(bus)
    assert {"md.bar.1m.SPY", "md.trade.SPY", "md.mark.SPY"} <= subjects
    assert "md.quote.SPY" not in subjects

    await bus.publish_many(
        [
            booked_fill(call, "buy", 2, "5", strategy="opt", flatten=uuid.uuid4(), at_ns=T0),
            settlement_fill(call, "sell", 2, "0", strategy="opt", at_ns=T0 + MINUTE_NS),
            settlement_fill("SPY", "buy", 200, "600", strategy="opt", at_ns=T0 + MINUTE_NS),
        ]
    )
    shares = 'tradebus_strategy_position{strategy="opt",symbol="SPY"}'
    unrealized = 'tradebus_strategy_pnl{kind="unrealized",strategy="opt"}'
    await eventually(lambda: metric(runner, shares) == 200.0, timeout=20)
    assert metric(runner, unrealized) == 0.0  # the strike is no price
    await publish_bars(bus, "SPY", [604], 2)
    await eventually(lambda: metric(runner, unrealized) == 800.0, timeout=20)  # (604 - 600) x 200
    health = runner.health() or {}
    assert health["strategies"]["opt"]["emitted"] == 0, "no callback was shown SPY's bar"
    assert health["strategies"]["opt"]["faults"] == 0

    async def bar_recorded() -> bool:
        return len(await store.of("BarClosed")) == 1

    await eventually(bar_recorded, timeout=20)
    assert runner.terminate() == 0, runner.log_text()[-3000:]
    again = start(args, "runner2")
    await eventually(lambda: (again.health() or {}).get("ready"), timeout=30)
    assert metric(again, shares) == 200.0
    assert metric(again, unrealized) == 800.0
    assert again.terminate() == 0, again.log_text()[-3000:]


async def test_a_restarted_runner_warms_its_strategies_up_from_the_store(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> None:
    # sma-x (slow_period 3) asks for its last 3 bars at start (warmup_bars).
    # The first runner sees 12, 11, 10 (its averages full: below, no trade)
    # and stops. The second is shown them again through on_warmup, so the
    # very next bar, 13, is a golden cross it trades; a cold start would
    # need three new bars first.
    store = Timeline(database_url)
    start(["recorder", "run"], "recorder")
    runner = start(runner_args(tmp_path), "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    await publish_bars(bus, "AAPL", [12, 11, 10], 0)
    # Second bars too, closing far higher: sma-x takes minute bars only, live
    # and in its warm-up (were they in its averages, 13 would be no cross).
    for i, close in enumerate([20, 21, 22]):
        await bus.publish(bar("AAPL", close, T0 + 3 * MINUTE_NS + i * 10**9, interval="1s"))

    async def bars_recorded() -> bool:
        return len(await store.of("BarClosed")) == 6

    await eventually(bars_recorded, timeout=20)
    assert runner.terminate() == 0, runner.log_text()[-3000:]
    assert await store.count("OrderIntentCreated", "sma-x", 1) == []

    again = start(runner_args(tmp_path), "runner2")
    await eventually(lambda: (again.health() or {}).get("ready"), timeout=30)
    warmed = 'tradebus_strategy_warmup_bars_total{strategy="sma-x"}'
    await eventually(lambda: metric(again, warmed) == 3.0, timeout=20)
    assert metric(again, 'tradebus_strategy_warmup_bars_total{strategy="boom"}') in (None, 0.0)
    await publish_bars(bus, "AAPL", [13], 3)
    (buy,) = await eventually(lambda: store.count("OrderIntentCreated", "sma-x", 1), timeout=20)
    assert (buy["payload"]["side"], buy["payload"]["quantity"]) == ("buy", "10")
    assert again.terminate() == 0, again.log_text()[-3000:]
