"""The strategy-runner as a real process on real NATS and Postgres: it emits,
isolates a faulty strategy (one that raises, one that loops for ever),
routes fills back and rebuilds its books on a restart. The set-up
(CONFIG's ``sma-x`` and ``boom``): tests/integration/strategy_runner_setup.py."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from pathlib import Path

from libs.bus.client import Bus
from libs.contract.events import OrderIntentCreated
from libs.strategy.testing import MINUTE_NS, fill_chain
from libs.testing.wait import eventually
from tests.integration import strategy_runner_setup
from tests.integration.strategy_runner_setup import (
    ENVELOPE,
    LIVE_SUBJECTS,
    SMA_X,
    T0,
    Start,
    Timeline,
    consumer_subjects,
    metric,
    publish_bars,
    runner_args,
)

# The strategy-runner's fixture, registered in this module.
start = strategy_runner_setup.start


async def test_runner_emits_isolates_faults_routes_fills_and_rebuilds(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> None:
    await _scenario(bus, start, runner_args(tmp_path), Timeline(database_url))


async def _scenario(
    bus: Bus,
    start: Start,
    run_args: list[str],
    store: Timeline,
) -> None:
    ids = itertools.count(1)
    recorder = start(["recorder", "run"], "recorder")
    runner = start(run_args, "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    # Nothing to catch up on: live at once, its own signals and intents not read back.
    assert (runner.health() or {})["consuming"] == "live"
    assert await consumer_subjects(bus) == LIVE_SUBJECTS
    # Phase 1: sma-x warms up on AAPL; boom faults on MSFT 13 (restarted), emits on 11,
    # faults on 13 again (stopped).
    await publish_bars(bus, "AAPL", [12, 11, 10], 0)
    await publish_bars(bus, "MSFT", [10, 13, 11, 13], 0)
    faults = await eventually(lambda: store.count("StrategyFaulted", "boom", 2), timeout=20)
    assert [f["payload"]["action"] for f in faults] == ["restarted", "stopped"]
    assert "echo: told to fail on close 13" in faults[0]["payload"]["error"]
    health = runner.health()
    assert health is not None
    assert health["strategies"]["boom"]["state"] == "stopped"
    assert health["strategies"]["sma-x"]["state"] == "running"

    # Phase 2: after boom stopped, sma-x still trades: golden cross on 13.
    await publish_bars(bus, "AAPL", [13], 3)
    await publish_bars(bus, "MSFT", [12], 4)  # boom is stopped: no answer
    (buy,) = await eventually(lambda: store.count("OrderIntentCreated", "sma-x", 1), timeout=20)
    assert (buy["payload"]["side"], buy["payload"]["quantity"]) == ("buy", "10")
    assert buy["payload"]["account"] == "paper"

    # Every intent is caused by a signal of its own strategy, in the same chain.
    signals = {s["id"]: s for s in await store.of("SignalGenerated")}
    intents = await store.of("OrderIntentCreated")
    for row in intents:
        signal = signals[row["causation_id"]]
        assert signal["correlation_id"] == signal["id"] == row["correlation_id"]
        assert signal["strategy"] == row["strategy"]
        assert signal["subject"] == f"strategy.signal.{row['strategy']}"
        assert row["subject"] == f"strategy.intent.{row['strategy']}"
    # boom answered bars 10 and 11 only, in shadow mode (its paper account).
    boom = [i for i in intents if i["strategy"] == "boom"]
    assert len(boom) == 2
    assert {i["payload"]["account"] for i in boom} == {"paper-shadow"}
    boom_bars = 'tradebus_strategy_events_in_total{strategy="boom",type="BarClosed"}'
    await eventually(
        lambda: (
            metric(runner, boom_bars) == 5.0
            and (runner.health() or {})["strategies"]["boom"]["inbox"] == 0
        ),
        timeout=10,
    )
    assert len(await store.count("OrderIntentCreated", "boom", 0)) == 2

    # Phase 3: play risk-gate and broker for sma-x's buy: the fill reaches sma-x.
    intent = OrderIntentCreated.model_validate({k: buy[k] for k in ENVELOPE})
    await bus.publish_many(
        fill_chain(intent, "13.05", ids=lambda: uuid.UUID(int=next(ids)), at_ns=T0)
    )
    position = 'tradebus_strategy_position{strategy="sma-x",symbol="AAPL"}'
    await eventually(lambda: metric(runner, position) == 10.0, timeout=20)
    # A death cross now sells the filled position.
    await publish_bars(bus, "AAPL", [9, 8], 4)
    sells = await eventually(lambda: store.count("OrderIntentCreated", "sma-x", 2), timeout=20)
    assert (sells[1]["payload"]["side"], sells[1]["payload"]["quantity"]) == ("sell", "10")
    assert metric(runner, 'tradebus_strategy_faults_total{action="stopped",strategy="boom"}')
    assert runner.terminate() == 0, runner.log_text()[-3000:]

    # Restart. The buy's fill is in the store; the recorder is then stopped and
    # the sell's fill is published, so it is only in the stream: the new runner
    # must take the first from the store and the second from catch-up, once each.
    sell = OrderIntentCreated.model_validate({k: sells[1][k] for k in ENVELOPE})
    await eventually(lambda: _fill_recorded(store), timeout=20)
    assert recorder.terminate() == 0, recorder.log_text()[-3000:]
    await bus.publish_many(
        fill_chain(sell, "8", ids=lambda: uuid.UUID(int=next(ids)), at_ns=T0 + 6 * MINUTE_NS)
    )
    again = start(run_args, "runner2")
    await eventually(lambda: (again.health() or {}).get("ready"), timeout=30)
    realized = 'tradebus_strategy_pnl{kind="realized",strategy="sma-x"}'
    # Bought 10 at 13.05 (store), sold 10 at 8 (catch-up): flat, realized -50.5.
    await eventually(lambda: metric(again, realized) == -50.5, timeout=20)
    assert metric(again, position) == 0.0
    restored = metric(again, "tradebus_strategy_runner_restored_events_total")
    catch_up = metric(again, "tradebus_strategy_runner_catch_up_events_total")
    assert restored is not None
    assert restored >= 6  # the buy's chain: signal, intent, decision, command, ack, fill
    assert catch_up is not None
    assert catch_up >= 2  # the sell's ack and fill (not its accepted decision: not read)
    # Catch-up events update the books only: sma-x emitted nothing on restart.
    assert (again.health() or {})["strategies"]["sma-x"]["emitted"] == 0

    # The catch-up read (own signals and intents included), the consumer is
    # recreated live without them; a new chain still routes back to sma-x.
    await eventually(lambda: (again.health() or {}).get("consuming") == "live", timeout=20)
    assert await consumer_subjects(bus) == LIVE_SUBJECTS
    start(["recorder", "run"], "recorder2")
    await publish_bars(bus, "AAPL", [8, 7, 6, 12], 10)  # a golden cross on 12
    buys = await eventually(lambda: store.count("OrderIntentCreated", "sma-x", 3), timeout=20)
    rebuy = OrderIntentCreated.model_validate({k: buys[2][k] for k in ENVELOPE})
    assert (rebuy.payload.side, rebuy.payload.quantity) == ("buy", Decimal(10))
    await bus.publish_many(
        fill_chain(rebuy, "12", ids=lambda: uuid.UUID(int=next(ids)), at_ns=T0 + 14 * MINUTE_NS)
    )
    await eventually(lambda: metric(again, position) == 10.0, timeout=20)
    assert again.terminate() == 0, again.log_text()[-3000:]


async def _fill_recorded(store: Timeline) -> bool:
    return bool(await store.of("FillReceived"))


HANG_CONFIG = (
    "\nstrategies:"
    + SMA_X
    + """
  - name: hang
    kind: libs.strategy.testing:EchoStrategy
    symbols: [MSFT]
    account: paper
    max_callback_s: 0.5
    params: {quantity: 1, hang_on_close: ["13"]}
"""
)


async def test_an_endless_loop_in_one_strategy_is_stopped_and_the_others_trade(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> None:
    # hang loops for ever on MSFT 13. All the runner's strategies share one
    # thread: without the watchdog, sma-x would never see another bar.
    store = Timeline(database_url)
    config = tmp_path / "hang.yaml"
    config.write_text(HANG_CONFIG)
    start(["recorder", "run"], "recorder")
    runner = start(["strategy-runner", "run", "--config", str(config)], "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    await publish_bars(bus, "MSFT", [13], 0)
    await publish_bars(bus, "AAPL", [12, 11, 10, 13], 0)  # a golden cross on 13
    (fault,) = await eventually(lambda: store.count("StrategyFaulted", "hang", 1), timeout=20)
    assert fault["payload"]["action"] == "stopped"
    assert fault["payload"]["error"] == "CallbackOverrun: the callback ran past its budget of 0.5s"
    (buy,) = await eventually(lambda: store.count("OrderIntentCreated", "sma-x", 1), timeout=20)
    assert (buy["payload"]["side"], buy["payload"]["quantity"]) == ("buy", "10")
    # What hang emitted before it hung was dropped with it.
    assert await store.count("OrderIntentCreated", "hang", 0) == []
    health = runner.health()
    assert health is not None
    assert health["strategies"]["hang"]["state"] == "stopped"
    assert health["strategies"]["sma-x"]["state"] == "running"
    assert runner.terminate() == 0, runner.log_text()[-3000:]
