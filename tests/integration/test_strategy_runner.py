"""The strategy-runner as a real process on real NATS and Postgres.

Two strategies: ``sma-x`` (moving-average crossover on AAPL, live) and
``boom`` (the echo probe on MSFT, shadow mode, raises on a close of 13,
restarted once then stopped). The test plays market data, risk-gate and
broker; a recorder process writes everything to the store.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from nats.aio.msg import Msg

from libs.bus.client import Bus
from libs.contract.events import MarkPayload, MarkUpdated, OrderIntentCreated
from libs.contract.subjects import DEADLETTER_ALL, RECORDED_SUBJECTS, STREAM
from libs.local.servers import NatsServer
from libs.strategy.spec import validate_strategies
from libs.strategy.testing import (
    MINUTE_NS,
    At,
    bar,
    booked_fill,
    fill_chain,
    settlement_fill,
)
from libs.testing.natsauth import config_users
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from services.strategy_runner import metrics
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import SERVICE, Runner
from tests.integration.recording import record_stream, sql, wipe_nats

T0 = 1_700_000_000 * 1_000_000_000
ENVELOPE = (
    "id",
    "type",
    "ts_event",
    "ts_init",
    "source",
    "correlation_id",
    "causation_id",
    "payload",
)
#: The moving-average crossover every runner here trades on AAPL.
SMA_X = """
  - name: sma-x
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    params: {fast_period: 2, slow_period: 3, quantity: 10}"""
CONFIG = (
    "\nstrategies:"
    + SMA_X
    + """
  - name: boom
    kind: libs.strategy.testing:EchoStrategy
    symbols: [MSFT]
    account: alpaca
    mode: shadow
    shadow_account: paper-shadow
    restart: always
    max_restarts: 1
    params: {quantity: 1, fail_on_close: ["13"]}
"""
)


def service(
    args: list[str], tmp_path: Path, nats_url: str, database_url: str, name: str
) -> ServiceProcess:
    return ServiceProcess(
        args,
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / f"{name}.log",
        name=name,
    )


def runner_args(tmp_path: Path) -> list[str]:
    """``strategy-runner run`` on CONFIG (written to ``tmp_path``)."""
    config = tmp_path / "strategies.yaml"
    config.write_text(CONFIG)
    return ["strategy-runner", "run", "--config", str(config)]


class Timeline:
    """The store's events of the given types, payloads decoded."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    async def of(self, *types: str) -> list[dict[str, Any]]:
        quoted = ",".join(f"'{t}'" for t in types)
        found = await rows(self.database_url, f"WHERE type IN ({quoted}) ORDER BY seq")
        return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in found]

    async def count(self, type_: str, strategy: str, at_least: int) -> list[dict[str, Any]]:
        found = [e for e in await self.of(type_) if e["strategy"] == strategy]
        return found if len(found) >= at_least else []


async def publish_bars(bus: Bus, symbol: str, closes: list[int], first_minute: int) -> None:
    for i, close in enumerate(closes):
        await bus.publish(bar(symbol, close, T0 + (first_minute + i) * MINUTE_NS))


def metric(proc: ServiceProcess, line_start: str) -> float | None:
    for line in proc.metrics().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


Start = Callable[[list[str], str], ServiceProcess]


@pytest.fixture
def start(tmp_path: Path, nats_url: str, database_url: str) -> Iterator[Start]:
    """Starts a service process on the test's NATS and store; at the end, kills
    what a failed assertion left running."""
    started: list[ServiceProcess] = []

    def start_service(args: list[str], name: str) -> ServiceProcess:
        proc = service(args, tmp_path, nats_url, database_url, name).start()
        started.append(proc)
        return proc

    yield start_service
    for proc in started:
        proc.kill()


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


POSITION = 'tradebus_strategy_position{strategy="sma-x",symbol="AAPL"}'


async def sma_x_long_10(
    tmp_path: Path, bus: Bus, database_url: str, start: Start
) -> ServiceProcess:
    """A recorder and a runner whose sma-x bought 10 AAPL at 13.05 (a golden
    cross, its order filled); the runner, once its books show the position."""
    ids = itertools.count(1)
    store = Timeline(database_url)
    start(["recorder", "run"], "recorder")
    runner = start(runner_args(tmp_path), "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    await publish_bars(bus, "AAPL", [12, 11, 10, 13], 0)  # a golden cross on 13
    (buy,) = await eventually(lambda: store.count("OrderIntentCreated", "sma-x", 1), timeout=20)
    intent = OrderIntentCreated.model_validate({k: buy[k] for k in ENVELOPE})
    await bus.publish_many(
        fill_chain(intent, "13.05", ids=lambda: uuid.UUID(int=next(ids)), at_ns=T0)
    )
    await eventually(lambda: metric(runner, POSITION) == 10.0, timeout=20)
    return runner


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


#: The runner's filter once live: the market data of its symbols, the
#: denials of its strategies' intents (and the subject both verdicts went to
#: before the verdict was in it), the broker's answers.
LIVE_SUBJECTS = {
    # Minute bars only: both strategies take the default bar_interval.
    *(
        f"md.{kind}.{sym}"
        for kind in ("bar.1m", "trade", "quote", "mark")
        for sym in ("AAPL", "MSFT")
    ),
    *(f"risk.decision.{name}{kind}" for name in ("sma-x", "boom") for kind in ("", ".denied")),
    *("broker.ack.>", "broker.reject.>", "broker.fill.>", "broker.cancel.>"),
}


async def consumer_subjects(bus: Bus) -> set[str]:
    info = await bus.js.consumer_info(STREAM, "strategy-runner")
    return set(info.config.filter_subjects or [])


async def _fill_recorded(store: Timeline) -> bool:
    return bool(await store.of("FillReceived"))


NATS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
NATS_USERS = config_users()  # every user the config declares


async def test_runner_works_under_its_own_nats_user(tmp_path: Path, database_url: str) -> None:
    """With deploy/nats permissions on, the runner starts on a store that is not
    empty (its start-up reads the stream's message at the store's last
    sequence), creates its consumer and emits."""
    passwords = {u: f"pw{secrets.token_hex(12)}" for u in NATS_USERS}
    server = NatsServer(tmp_path / "nats", config_file=NATS_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        for user, password in passwords.items():
            mp.setenv(f"NATS_{user.upper().replace('-', '_')}_PASSWORD", password)
        server.start()
    runner: ServiceProcess | None = None
    try:
        async with await Bus.connect(
            server.url, name="test-admin", user="admin", password=passwords["admin"]
        ) as admin:
            await admin.ensure_stream()
            async with await Bus.connect(
                server.url, name="test-md", user="marketdata", password=passwords["marketdata"]
            ) as md:
                await md.publish(bar("NVDA", 99, T0))
            assert await record_stream(admin, database_url) == 1
        config = tmp_path / "strategies.yaml"
        # An option contract too: its consumer also reads SPY's prices (the
        # underlying's, which mark the shares an exercise would book to it).
        config.write_text(
            "strategies:\n"
            "  - {name: echo, kind: 'libs.strategy.testing:EchoStrategy',"
            " symbols: [NVDA, 'O:SPY261211C00600000'], account: paper}\n"
        )
        runner = ServiceProcess(
            ["strategy-runner", "run", "--config", str(config)],
            env={
                "NATS_URL": server.url,
                "TRADEBUS_NATS_USER": "strategy-runner",
                "TRADEBUS_NATS_PASSWORD": passwords["strategy-runner"],
                "DATABASE_URL": database_url,
            },
            log_path=tmp_path / "runner.log",
            name="runner-perm",
        ).start()
        await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
        async with await Bus.connect(
            server.url, name="test-admin", user="admin", password=passwords["admin"]
        ) as admin:
            assert "md.trade.SPY" in await consumer_subjects(admin)
        async with await Bus.connect(
            server.url, name="test-md", user="marketdata", password=passwords["marketdata"]
        ) as md:
            await md.publish(bar("NVDA", 100, T0 + MINUTE_NS))
            # A mark (as marketdata makes of quotes) reaches it too: it marks its ledger.
            await md.publish(
                MarkUpdated.create(
                    MarkPayload(
                        symbol="NVDA",
                        price=Decimal(101),
                        bid_price=Decimal(100),
                        ask_price=Decimal(102),
                        feed="synthetic",
                    ),
                    source="test/marketdata",
                    clock=At(T0 + 2 * MINUTE_NS),
                )
            )
        emitted = (
            'tradebus_strategy_events_emitted_total{strategy="echo",type="OrderIntentCreated"}'
        )
        await eventually(lambda: metric(runner, emitted) == 1.0, timeout=20)
        marks_in = 'tradebus_strategy_events_in_total{strategy="echo",type="MarkUpdated"}'
        await eventually(lambda: metric(runner, marks_in) == 1.0, timeout=20)
        assert runner.terminate() == 0, runner.log_text()[-3000:]
    finally:
        if runner is not None:
            runner.kill()
        server.stop()


async def refuses_and_signals_nothing(runner: ServiceProcess, bus: Bus) -> dict[str, Any]:
    """The runner reports the reset stream it refuses, and nothing went out:
    the one bar published since waits alone in the stream. Returns /health."""
    health: dict[str, Any] = await eventually(
        lambda: (h := runner.health()) is not None and "problem" in h and h, timeout=30
    )
    assert not health["ok"]
    assert "the stream was reset; not trading" in health["problem"], health
    info = await bus.js.stream_info(STREAM)
    assert info.state.messages == 1, "no signal went out; the bar waits"
    return health


async def test_a_reset_stream_is_refused_not_read_past(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """The NATS data wiped while the store is kept: a runner reading on from
    the store's next sequence would skip the new stream's first bars. It
    refuses: not ready, the reason under /health's problem, no signal made."""
    run_args = runner_args(tmp_path)
    recorder = service(["recorder", "run"], tmp_path, nats_url, database_url, "rec").start()
    runner = service(run_args, tmp_path, nats_url, database_url, "runner").start()
    try:
        await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
        await publish_bars(bus, "MSFT", [10, 11], first_minute=0)  # the echo probe signals
        await eventually(lambda: Timeline(database_url).count("SignalGenerated", "boom", 2))
        runner.kill()
        recorder.kill()
        await delete_stream(bus.js, STREAM)
        await bus.ensure_stream()
        await publish_bars(bus, "MSFT", [12], first_minute=2)
        runner = service(run_args, tmp_path, nats_url, database_url, "runner-2").start()
        health = await refuses_and_signals_nothing(runner, bus)
        assert not health["ready"]
        assert runner.alive
        assert runner.terminate() == 0, runner.log_text()[-2000:]
    finally:
        runner.kill()
        recorder.kill()


async def test_a_stream_reset_under_a_running_runner_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    """NATS restarted with its data wiped while the runner runs: its consumer
    is gone with the stream (the runner notices: its pull requests go
    unanswered), and recreating it at the next sequence would skip the new
    stream's first bars. It refuses: unhealthy with the reason, no signal.
    On its own nats-server (it is wiped)."""
    server = NatsServer(tmp_path / "own-nats").start()
    runner = service(runner_args(tmp_path), tmp_path, server.url, database_url, "runner").start()
    try:
        async with await Bus.connect(server.url, name="test-feed") as feed:
            await feed.ensure_stream()
            await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
            await publish_bars(feed, "MSFT", [10, 11], first_minute=0)
            emitted = (
                'tradebus_strategy_events_emitted_total{strategy="boom",type="SignalGenerated"}'
            )
            await eventually(lambda: metric(runner, emitted) == 2.0, timeout=20)
            await wipe_nats(server, feed)
            await publish_bars(feed, "MSFT", [12], first_minute=2)
            await refuses_and_signals_nothing(runner, feed)
            assert metric(runner, emitted) == 2.0
        assert runner.terminate() == 0, runner.log_text()[-2000:]
    finally:
        runner.kill()
        server.stop()


ECHO_CONFIG = """
strategies:
  - name: echo
    kind: libs.strategy.testing:EchoStrategy
    symbols: [MSFT]
    account: paper
    params: {quantity: 1}
"""


async def test_a_bar_the_server_sent_elsewhere_is_read_again_not_lost(
    tmp_path: Path, bus: Bus, start: Start
) -> None:
    """The runner's consumer takes no acks, so the server never sends a message
    twice: one it sent and the runner never got (into a dropped connection,
    past the client's limits) was lost for good. Here another reader of the
    same durable takes a bar; the runner sees the hole in the consumer
    sequence and recreates the consumer where it left off."""
    config = tmp_path / "echo.yaml"
    config.write_text(ECHO_CONFIG)
    signals: list[str] = []

    async def on_signal(msg: Msg) -> None:
        signals.append(orjson.loads(msg.data)["payload"]["reason"])

    await bus.nc.subscribe("strategy.signal.echo", cb=on_signal)
    runner = start(["strategy-runner", "run", "--config", str(config)], "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    await publish_bars(bus, "MSFT", [1], 0)
    await eventually(lambda: signals == ["bar close 1"], timeout=20)

    async def waiting(n: int) -> bool:
        info = await bus.js.consumer_info(STREAM, "strategy-runner")
        return (info.num_waiting or 0) >= n

    # A pull of one message on the runner's durable, answered to an inbox of
    # its own (JetStream answers with the bar's own subject).
    theft: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_stolen(msg: Msg) -> None:
        if not theft.done():
            theft.set_result(msg)

    inbox = bus.nc.new_inbox()
    await bus.nc.subscribe(inbox, cb=on_stolen)
    request = orjson.dumps({"batch": 1, "expires": 20_000_000_000})
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.strategy-runner", request, inbox)
    await eventually(lambda: waiting(2), timeout=10)  # the runner's pull and the thief's
    # The server shares new messages out among the waiting pulls: bars go out
    # one by one until the thief's pull has taken one.
    closes = [1]
    while not theft.done():
        close = closes[-1] + 1
        assert close < 5000, "the thief's pull was never served"
        closes.append(close)
        await publish_bars(bus, "MSFT", [close], close)
        await eventually(lambda: theft.done() or len(signals) == len(closes), timeout=20)
    stolen = theft.result()
    assert stolen.subject == "md.bar.1m.MSFT"
    await publish_bars(bus, "MSFT", [close + 1], close + 1)  # shows the hole
    want = [f"bar close {c}" for c in range(1, close + 2)]
    await eventually(lambda: sorted(signals) == sorted(want), timeout=20)
    assert len(signals) == len(want)  # and none twice
    assert (
        metric(runner, 'tradebus_strategy_runner_consumer_recreated_total{cause="DeliveryGap"}')
        or 0
    ) >= 1
    assert runner.terminate() == 0, runner.log_text()[-3000:]


async def test_a_dead_letter_that_cannot_be_published_is_retried_not_fatal(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A message that does not decode is dead-lettered before the runner reads
    on. A dead letter the stream will not take (here: no stream captures
    deadletter.>) ends in PublishFailed once its deadline runs out, which
    escaped the consume loop and stopped the runner. The loop now logs it and
    recreates the consumer where it left off, as for a lost connection: once
    the stream takes dead letters the message is dead-lettered, once, and
    the bar after it is read. In-process, through the runner's own consumer
    (_serve), whose dead-letter deadline is its setting: it passed none, so
    each attempt waited the bus's 30 s before the consumer was recreated."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        async with await Bus.connect(server.url, name="test-deadletter") as bus:
            await bus.ensure_stream(subjects=[s for s in RECORDED_SUBJECTS if s != DEADLETTER_ALL])
            await bus.js.publish("md.bar.1m.MSFT", b"not an event")
            await bus.publish(bar("MSFT", 1, T0))
            settings = RunnerSettings(
                nats_url=server.url,
                database_url=database_url,
                retry_backoff_s=0.05,
                dead_letter_deadline_s=0.2,
            )
            runner = Runner(settings, validate_strategies(yaml.safe_load(ECHO_CONFIG)))
            runner.live = True
            recreated = metrics.CONSUMER_RECREATED.labels(cause="PublishFailed")
            before = recreated._value.get()
            consuming = asyncio.create_task(runner._serve(bus))
            try:
                # Two attempts, each within the 0.2 s deadline and a publish's
                # own ack timeout (2 s) of the other.
                await eventually(
                    lambda: consuming.done() or recreated._value.get() >= before + 2, timeout=8
                )
                assert not consuming.done(), consuming.exception()
                assert "consuming failed (PublishFailed" in caplog.text
                assert runner.next_seq == 1  # nothing read past the undecodable message

                await bus.ensure_stream()  # dead letters are taken now
                await eventually(lambda: runner.next_seq == 3, timeout=20)
                dead = await bus.js.get_last_msg(STREAM, f"deadletter.{SERVICE}")
                assert orjson.loads(dead.data or b"")["payload"]["stream_seq"] == 1
                # The two and one dead letter (and the echo strategy's answers to the bar).
                info = await bus.js.stream_info(STREAM, subjects_filter=">")
                counts = info.state.subjects or {}
                assert counts["md.bar.1m.MSFT"] == 2
                assert counts[f"deadletter.{SERVICE}"] == 1
            finally:
                runner.stop()
                await asyncio.wait_for(consuming, timeout=10)
    finally:
        server.stop()
