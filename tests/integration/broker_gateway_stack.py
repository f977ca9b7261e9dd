"""The broker-gateway with the paper broker and the recorder, each a real
process: the ``stack`` fixture of the test_broker_gateway* files, and what
their tests publish and read back.

The tests play the risk-gate: they publish order commands on
``orders.cmd.paper`` (and prices on ``md.trade.*``) and check what the
gateway publishes (read back from the event store), what the paper broker
holds (asked over its own WebSocket), and what ``tradebus positions`` says."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from libs.bus.client import Bus
from libs.contract.envelope import Clock, Event, WallClock
from libs.contract.events import (
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.local.servers import free_port
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.wait import eventually

D = Decimal
CLOCK = WallClock()
ACCOUNT = "paper"
KEY_ENV = {"TEST_PAPER_KEY_ID": "key-paper", "TEST_PAPER_SECRET_KEY": "secret-paper"}
HEARTBEAT_INTERVAL_S = 0.3
HEARTBEAT_TIMEOUT_S = 0.5


# ------------------------------------------------------------------ the stack


@dataclass
class Stack:
    tmp: Path
    nats_url: str
    database_url: str
    broker_port: int = field(default_factory=free_port)
    procs: list[ServiceProcess] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        return {"NATS_URL": self.nats_url, "DATABASE_URL": self.database_url, **KEY_ENV}

    def _start(self, args: list[str], name: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(
            args, env={**self._env(), **env}, log_path=self.tmp / f"{name}.log", name=name
        ).start()
        self.procs.append(proc)
        return proc

    def recorder(self) -> ServiceProcess:
        return self._start(["recorder", "run"], "recorder", TRADEBUS_BATCH_SIZE="200")

    def paper(self) -> ServiceProcess:
        config = self.tmp / "paper.yaml"
        config.write_text(
            "accounts:\n"
            f"  {ACCOUNT}:\n"
            "    key_id_env: TEST_PAPER_KEY_ID\n"
            "    secret_key_env: TEST_PAPER_SECRET_KEY\n"
            "fill_model:\n"
            '  max_fill_quantity: "100"\n'
            "untradable_symbols: [HALT]\n"
            "halted_symbols: [LULD]\n"
            # Resting limit orders here must not expire should a run cross
            # 16:00 New York; expiry has tests of its own (test_paper_book_expiry).
            "day_orders_expire_at: null\n"
            f"journal: {self.tmp / 'journal.jsonl'}\n"
        )
        return self._start(
            ["paper-broker", "run", "--config", str(config), "--port", str(self.broker_port)],
            "paper",
        )

    def gateway(self) -> ServiceProcess:
        config = self.tmp / "brokers.yaml"
        config.write_text(
            "accounts:\n"
            f"  {ACCOUNT}:\n"
            "    adapter: paper\n"
            f"    url: ws://127.0.0.1:{self.broker_port}/stream\n"
            "    credentials:\n"
            "      key_id_env: TEST_PAPER_KEY_ID\n"
            "      secret_key_env: TEST_PAPER_SECRET_KEY\n"
            "    heartbeat:\n"
            f"      interval_s: {HEARTBEAT_INTERVAL_S}\n"
            f"      timeout_s: {HEARTBEAT_TIMEOUT_S}\n"
            "    reconnect: {initial_s: 0.1, max_s: 0.5}\n"
            "    request_timeout_s: 2\n"
        )
        return self._start(
            ["broker-gateway", "run", "--config", str(config)],
            "gateway",
            TRADEBUS_COMMAND_ACK_WAIT_S="2",
            TRADEBUS_REBUILD_WAIT_S="10",
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_text()[-3000:]}" for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.proc is not None and p.proc.poll() is None:
                with contextlib.suppress(OSError):
                    p.proc.send_signal(signal.SIGCONT)
            p.terminate(timeout=10)


@pytest.fixture
async def stack(tmp_path: Path, bus: Bus, nats_url: str, database_url: str) -> AsyncIterator[Stack]:
    s = Stack(tmp_path, nats_url, database_url)
    try:
        yield s
    finally:
        s.stop()


async def up(stack: Stack) -> tuple[ServiceProcess, ServiceProcess, ServiceProcess]:
    recorder, paper, gateway = stack.recorder(), stack.paper(), stack.gateway()
    await eventually(lambda: broker_connected(gateway), timeout=30, message=stack.logs())
    return recorder, paper, gateway


def broker_connected(gateway: ServiceProcess) -> bool:
    health = gateway.health()
    return bool(health and health["accounts"][ACCOUNT]["connected"])


# ------------------------------------------------------------------- helpers


def trade(symbol: str, price: str) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(100), feed="synthetic"),
        source="test/marketdata",
        clock=CLOCK,
    )


def signal_for(symbol: str, strategy: str = "s1") -> SignalGenerated:
    return SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol=symbol, name="test", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )


class Ago:
    """A clock running ``seconds`` behind: a command created that long ago."""

    def __init__(self, seconds: float) -> None:
        self.behind = int(seconds * 1e9)

    def now_ns(self) -> int:
        return time.time_ns() - self.behind


def submit(
    cause: Event,
    symbol: str,
    side: str,
    qty: str,
    strategy: str = "s1",
    clock: Clock = CLOCK,
    **kw: Any,
) -> SubmitOrder:
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy=strategy,
            account=ACCOUNT,
            symbol=symbol,
            side=side,
            quantity=D(qty),
            **kw,
        ),
        source="test/risk-gate",
        clock=clock,
        cause=cause,
    )


def again(command: SubmitOrder) -> SubmitOrder:
    """The same command re-published as a new message (a new event id)."""
    return command.model_copy(update={"id": uuid.uuid4()})


async def recorded(database_url: str, type_: str) -> list[dict[str, Any]]:
    out = []
    for r in await rows(database_url, f"WHERE type = '{type_}' ORDER BY seq"):
        out.append({**dict(r), "payload": orjson.loads(r["payload"])})
    return out


async def for_order(database_url: str, type_: str, order_id: uuid.UUID) -> list[dict[str, Any]]:
    return [
        e for e in await recorded(database_url, type_) if e["payload"]["order_id"] == str(order_id)
    ]


async def broker_request(port: int, method: str, path: str) -> Any:
    """Ask the paper broker directly, as any client would."""
    async with connect(f"ws://127.0.0.1:{port}/stream") as ws:
        auth = {
            "key_id": KEY_ENV["TEST_PAPER_KEY_ID"],
            "secret_key": KEY_ENV["TEST_PAPER_SECRET_KEY"],
        }
        await ws.send(json.dumps({"action": "authenticate", "data": auth}))
        assert json.loads(await ws.recv())["data"]["status"] == "authorized"
        await ws.send(
            json.dumps({"action": "request", "data": {"id": "t", "method": method, "path": path}})
        )
        while True:
            message = json.loads(await ws.recv())
            if message["stream"] == "response":
                return message["data"]["body"]


async def broker_orders(port: int) -> list[dict[str, Any]]:
    body = await broker_request(port, "GET", "/v2/orders?status=all&limit=500&direction=asc")
    assert isinstance(body, list)
    return body


def positions_cli(database_url: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "positions", "--account", ACCOUNT, "--json"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]
