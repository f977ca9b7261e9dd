"""The strategy-runner as a real process on real NATS and Postgres: what the
test_strategy_runner* files share (the ``start`` fixture, the strategies'
configs, reading the store and the runner's metrics back).

CONFIG has two strategies: ``sma-x`` (moving-average crossover on AAPL,
live) and ``boom`` (the echo probe on MSFT, shadow mode, raises on a close
of 13, restarted once then stopped). The tests play market data, risk-gate
and broker; a recorder process writes everything to the store."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from libs.bus.client import Bus
from libs.contract.events import OrderIntentCreated
from libs.contract.subjects import STREAM
from libs.strategy.testing import MINUTE_NS, bar, fill_chain
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.wait import eventually

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


#: sma-x's AAPL position, as its metric line starts.
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


#: The echo probe alone, on MSFT: a signal and an intent for every bar.
ECHO_CONFIG = """
strategies:
  - name: echo
    kind: libs.strategy.testing:EchoStrategy
    symbols: [MSFT]
    account: paper
    params: {quantity: 1}
"""
