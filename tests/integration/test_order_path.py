"""The whole order path, every service a real process, on real NATS and Postgres.

strategy-runner -> risk-gate -> broker-gateway -> paper broker (WebSocket),
with the recorder writing everything to the store. The test plays market
data: it publishes ``BarClosed`` on ``md.bar.1m.<symbol>``. Three strategies
run the echo probe (one signal and one market buy per bar): ``steady`` on
AAPL buys 1, ``typo`` on MSFT buys 100 where its caps allow 10 (the
parameter typo: 100x the meant size of 1), ``berkshire`` on BRK.B (a share
class: a dot in the symbol, ``~`` in its subjects) buys 2.

What is asserted is what the store holds and what the paper broker itself
says (asked over its own WebSocket API).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from libs import trace
from libs.bus.client import Bus
from libs.contract.envelope import WallClock
from libs.contract.events import BarClosed, BarPayload
from libs.local.servers import NatsServer, free_port
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.wait import eventually

ACCOUNT = "paper"
KEYS = {"TEST_PAPER_KEY_ID": "key-paper", "TEST_PAPER_SECRET_KEY": "secret-paper"}
CLOCK = WallClock()

STRATEGIES = f"""
strategies:
  - name: steady
    kind: libs.strategy.testing:EchoStrategy
    symbols: [AAPL]
    account: {ACCOUNT}
    inbox_size: 10000
    overflow: block
    params: {{quantity: 1}}
  - name: typo
    kind: libs.strategy.testing:EchoStrategy
    symbols: [MSFT]
    account: {ACCOUNT}
    params: {{quantity: 100}}
  - name: berkshire
    kind: libs.strategy.testing:EchoStrategy
    symbols: [BRK.B]
    account: {ACCOUNT}
    params: {{quantity: 2}}
"""

RISK = f"""
max_intent_age_s: 120
accounts:
  {ACCOUNT}:
    daily_loss_limit: "1000000"
    rate_limit: {{max_orders: 10000, per_seconds: 1}}
    flatten_on_disconnect: false
strategies:
  steady:
    account: {ACCOUNT}
    max_gross_notional: "100000000"
    max_position: 100000
    max_order_quantity: 10
    max_order_notional: "10000"
    rate_limit: {{max_orders: 10000, per_seconds: 1}}
  typo:
    account: {ACCOUNT}
    max_gross_notional: "50000"
    max_position: 20
    max_order_quantity: 10
    max_order_notional: "5000"
  berkshire:
    account: {ACCOUNT}
    max_gross_notional: "100000"
    max_position: 100
    max_order_quantity: 10
    max_order_notional: "10000"
    symbols: {{BRK.B: {{max_position: 10}}}}
"""


@dataclass
class Path_:
    """The five services, each a process; gate and gateway can be killed and restarted."""

    tmp: Path
    env: dict[str, str]
    broker_port: int = field(default_factory=free_port)
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    everything: list[ServiceProcess] = field(default_factory=list)
    starts: int = 0

    def start(self, role: str) -> ServiceProcess:
        args = {
            "recorder": ["recorder", "run"],
            "paper": [
                "paper-broker", "run", "--config", str(self.tmp / "paper.yaml"),
                "--port", str(self.broker_port),
            ],
            "gateway": ["broker-gateway", "run", "--config", str(self.tmp / "brokers.yaml")],
            "gate": ["risk-gate", "run", "--config", str(self.tmp / "risk.yaml")],
            "runner": ["strategy-runner", "run", "--config", str(self.tmp / "strategies.yaml")],
        }[role]  # fmt: skip
        self.starts += 1
        name = f"{role}-{self.starts}"
        env = dict(self.env)
        if role == "gateway":
            env |= {"TRADEBUS_COMMAND_ACK_WAIT_S": "2", "TRADEBUS_REBUILD_WAIT_S": "20"}
        proc = ServiceProcess(args, env=env, log_path=self.tmp / f"{name}.log", name=name).start()
        self.procs[role] = proc
        self.everything.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_text()[-2500:]}" for p in self.everything)

    async def ready(self) -> None:
        for role in ("recorder", "paper", "gate", "runner"):
            # Healthy, not merely answering: a strategy-runner that answers 503
            # has not yet fixed where its catch-up ends, and bars published
            # before that are replayed quietly as history.
            await eventually(self.procs[role].healthy, timeout=60, message=self.logs)
        await eventually(self.connected, timeout=60, message=self.logs)

    def connected(self) -> bool:
        health = self.procs["gateway"].health()
        return bool(health and health["accounts"][ACCOUNT]["connected"])


@contextlib.asynccontextmanager
async def running_path(
    tmp_path: Path, nats_url: str, database_url: str, **env: str
) -> AsyncIterator[Path_]:
    """The five services on ``nats_url``, healthy; terminated on the way out."""
    (tmp_path / "strategies.yaml").write_text(STRATEGIES)
    (tmp_path / "risk.yaml").write_text(RISK)
    p = Path_(tmp_path, {"NATS_URL": nats_url, "DATABASE_URL": database_url, **KEYS, **env})
    (tmp_path / "paper.yaml").write_text(
        f"accounts:\n  {ACCOUNT}:\n"
        "    key_id_env: TEST_PAPER_KEY_ID\n    secret_key_env: TEST_PAPER_SECRET_KEY\n"
        # No order expires should a run cross 16:00 New York (see test_paper_book_expiry).
        "day_orders_expire_at: null\n"
        f"journal: {tmp_path / 'journal.jsonl'}\n"
    )
    (tmp_path / "brokers.yaml").write_text(
        f"accounts:\n  {ACCOUNT}:\n    adapter: paper\n"
        f"    url: ws://127.0.0.1:{p.broker_port}/stream\n"
        "    credentials:\n"
        "      key_id_env: TEST_PAPER_KEY_ID\n      secret_key_env: TEST_PAPER_SECRET_KEY\n"
        "    reconnect: {initial_s: 0.1, max_s: 0.5}\n"
    )
    for role in ("recorder", "paper", "gateway", "gate", "runner"):
        p.start(role)
    try:
        await p.ready()
        yield p
    finally:
        for proc in reversed(p.everything):
            proc.terminate(timeout=10)


@pytest.fixture
async def path(tmp_path: Path, bus: Bus, nats_url: str, database_url: str) -> AsyncIterator[Path_]:
    async with running_path(tmp_path, nats_url, database_url) as p:
        yield p


# ------------------------------------------------------------------ helpers


def bar(symbol: str, close: str) -> BarClosed:
    now = CLOCK.now_ns()
    c = Decimal(close)
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=c,
            high=c,
            low=c,
            close=c,
            volume=Decimal(1000),
            start_ns=now - 60_000_000_000,
            end_ns=now,
            feed="synthetic",
        ),
        source="test/marketdata",
        clock=CLOCK,
    )


async def recorded(db: str, type_: str) -> list[dict[str, Any]]:
    found = await rows(db, f"WHERE type = '{type_}' ORDER BY seq")
    return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in found]


async def of_strategy(db: str, type_: str, strategy: str) -> list[dict[str, Any]]:
    return [e for e in await recorded(db, type_) if e["payload"].get("strategy") == strategy]


async def at_least(db: str, type_: str, strategy: str, n: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        got = await of_strategy(db, type_, strategy)
        return got if len(got) >= n else None

    result: list[dict[str, Any]] = await eventually(
        enough, timeout=60, message=f"{n} x {type_} of {strategy}"
    )
    return result


async def broker_orders(port: int) -> list[dict[str, Any]]:
    """Every order the paper broker holds, asked over its WebSocket as a client would."""
    async with connect(f"ws://127.0.0.1:{port}/stream") as ws:
        auth = {"key_id": KEYS["TEST_PAPER_KEY_ID"], "secret_key": KEYS["TEST_PAPER_SECRET_KEY"]}
        await ws.send(json.dumps({"action": "authenticate", "data": auth}))
        assert json.loads(await ws.recv())["data"]["status"] == "authorized"
        path = "/v2/orders?status=all&limit=500&direction=asc"  # all, not the newest 50
        request = {"id": "t", "method": "GET", "path": path}
        await ws.send(json.dumps({"action": "request", "data": request}))
        while True:
            message = json.loads(await ws.recv())
            if message["stream"] == "response":
                body = message["data"]["body"]
                assert isinstance(body, list)
                return body


async def audit_json(env: dict[str, str], event_id: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "audit", event_id, "--json",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


# ------------------------------------------------------------------ the test


async def test_order_path_caps_audit_and_crashes(path: Path_, bus: Bus, database_url: str) -> None:
    """One stack, three properties (each start of five processes costs seconds)."""
    await typo_never_reaches_the_broker(path, bus, database_url)
    await audit_walks_a_fill_back_to_its_signal(path, bus, database_url)
    await a_share_class_trades_like_any_symbol(path, bus, database_url)
    await kill_9_gate_and_gateway_mid_stream(path, bus, database_url)


async def typo_never_reaches_the_broker(path: Path_, bus: Bus, db: str) -> None:
    await bus.publish_many([bar("MSFT", "200") for _ in range(3)])
    decisions = await at_least(db, "RiskDecisionMade", "typo", 3)
    intents = await of_strategy(db, "OrderIntentCreated", "typo")
    assert len(intents) == 3
    assert {i["payload"]["quantity"] for i in intents} == {"100"}
    assert {d["payload"]["intent_id"] for d in decisions} == {str(i["id"]) for i in intents}
    assert {d["payload"]["decision"] for d in decisions} == {"denied"}
    assert {d["payload"]["reason"] for d in decisions} == {"max_order_quantity"}
    assert all(d["payload"]["detail"] for d in decisions), "every denial says why"
    assert await of_strategy(db, "SubmitOrder", "typo") == []
    assert [o for o in await broker_orders(path.broker_port) if o["symbol"] == "MSFT"] == []


async def audit_walks_a_fill_back_to_its_signal(path: Path_, bus: Bus, db: str) -> None:
    await bus.publish(bar("AAPL", "100"))
    (fill,) = await eventually(lambda: recorded(db, "FillReceived"), timeout=60, message=path.logs)
    chain = await audit_json(path.env, str(fill["id"]))
    by_id = {e["id"]: e for e in chain}
    walked = [by_id[str(fill["id"])]]
    while walked[-1]["causation_id"] is not None and walked[-1]["type"] != "SignalGenerated":
        walked.append(by_id[walked[-1]["causation_id"]])
    # The gateway chains a fill to the order command (acks and fills are siblings).
    assert [e["type"] for e in walked] == [
        "FillReceived",
        "SubmitOrder",
        "RiskDecisionMade",
        "OrderIntentCreated",
        "SignalGenerated",
    ]
    signal = walked[-1]
    assert signal["payload"]["strategy"] == "steady"
    assert {e["correlation_id"] for e in walked} == {signal["id"]}
    command = walked[1]
    acks = [e for e in chain if e["type"] == "OrderAccepted"]
    assert [a["causation_id"] for a in acks] == [command["id"]]


async def a_share_class_trades_like_any_symbol(path: Path_, bus: Bus, db: str) -> None:
    # BRK.B is in strategies.yaml and risk.yaml as the contract and Polygon
    # name it; its bar goes on md.bar.1m.BRK~B, which the runner subscribes to.
    await bus.publish(bar("BRK.B", "480"))
    (fill,) = await eventually(
        lambda: of_strategy(db, "FillReceived", "berkshire"), timeout=60, message=path.logs
    )
    assert (fill["payload"]["symbol"], fill["payload"]["quantity"]) == ("BRK.B", "2")
    (decision,) = await of_strategy(db, "RiskDecisionMade", "berkshire")
    assert decision["payload"]["decision"] == "accepted"
    bars = [b for b in await recorded(db, "BarClosed") if b["payload"]["symbol"] == "BRK.B"]
    assert [b["subject"] for b in bars] == ["md.bar.1m.BRK~B"]
    held = [o for o in await broker_orders(path.broker_port) if o["symbol"] == "BRK.B"]
    assert [(o["qty"], o["status"]) for o in held] == [("2", "filled")]


async def kill_9_gate_and_gateway_mid_stream(path: Path_, bus: Bus, db: str) -> None:
    before = len(await of_strategy(db, "OrderIntentCreated", "steady"))
    n = 120

    async def market_data() -> None:
        for k in range(n):
            await bus.publish(bar("AAPL", str(100 + k % 5)))
            await asyncio.sleep(0.02)  # pacing the feed (~50 bars/s), not synchronisation

    feed = asyncio.create_task(market_data())
    await at_least(db, "SubmitOrder", "steady", before + 20)
    path.procs["gate"].kill()
    path.procs["gateway"].kill()
    killed_at = len(await of_strategy(db, "RiskDecisionMade", "steady"))
    path.start("gate")
    path.start("gateway")
    await feed
    await path.ready()

    total = before + n
    intents = await at_least(db, "OrderIntentCreated", "steady", total)
    decisions = await at_least(db, "RiskDecisionMade", "steady", total)
    assert killed_at < total, "killed mid-stream"
    per_intent: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        per_intent.setdefault(d["payload"]["intent_id"], []).append(d)
    assert set(per_intent) == {str(i["id"]) for i in intents}, "no intent lost"
    assert all(len(ds) == 1 for ds in per_intent.values()), "exactly one decision per intent"
    assert {ds[0]["payload"]["decision"] for ds in per_intent.values()} == {"accepted"}
    orders = await at_least(db, "SubmitOrder", "steady", total)
    assert len(orders) == total, "one order per accepted intent"
    order_ids = {o["payload"]["order_id"] for o in orders}
    assert len(order_ids) == total

    async def broker_has_all() -> list[dict[str, Any]] | None:
        held = [o for o in await broker_orders(path.broker_port) if o["symbol"] == "AAPL"]
        return held if len(held) >= total else None

    held = await eventually(broker_has_all, timeout=60, message=path.logs)
    client_ids = [o["client_order_id"] for o in held]
    assert len(client_ids) == len(set(client_ids)) == len(orders), "no duplicate at the broker"
    assert {str(uuid.UUID(c)) for c in client_ids} == order_ids


async def test_order_path_rides_out_a_nats_restart(tmp_path: Path, database_url: str) -> None:
    """NATS killed (-9) mid-stream and started again on its own store: every
    service rides it out, every bar published before and after becomes
    exactly one decision and one order at the broker, and the store stays
    gapless. On its own nats-server: the shared one must not go away."""
    server = NatsServer(tmp_path / "own-nats").start()
    try:
        bus = await Bus.connect(server.url, name="test-feed")
        await bus.ensure_stream()
        async with running_path(tmp_path, server.url, database_url) as path:
            before, after = 30, 30
            for k in range(before):
                await bus.publish(bar("AAPL", str(100 + k % 5)))
            await at_least(database_url, "SubmitOrder", "steady", 10)
            server.stop(kill=True)
            server.start()
            await path.ready()
            for k in range(after):
                await bus.publish(bar("AAPL", str(100 + k % 5)))
            total = before + after
            intents = await at_least(database_url, "OrderIntentCreated", "steady", total)
            decisions = await at_least(database_url, "RiskDecisionMade", "steady", total)
            orders = await at_least(database_url, "SubmitOrder", "steady", total)
            assert len(intents) == len(decisions) == len(orders) == total, path.logs()
            assert {d["payload"]["intent_id"] for d in decisions} == {str(i["id"]) for i in intents}
            order_ids = {o["payload"]["order_id"] for o in orders}

            async def broker_has_all() -> list[dict[str, Any]] | None:
                held = [o for o in await broker_orders(path.broker_port) if o["symbol"] == "AAPL"]
                return held if len(held) >= total else None

            held = await eventually(broker_has_all, timeout=60, message=path.logs)
            assert sorted(str(uuid.UUID(o["client_order_id"])) for o in held) == sorted(order_ids)
            seqs = [r["seq"] for r in await rows(database_url)]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the store is gapless"
            for proc in path.everything:
                assert proc.alive, proc.log_text()[-2000:]
        await bus.close()
    finally:
        server.stop()


async def test_traced_services_mark_every_hop_of_an_order(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """With TRADEBUS_TRACE set, runner, gate, gateway and paper broker mark
    each order's hops (bench/order_path.py --trace reads them); the marks are
    written as the services exit on SIGTERM."""
    traced = tmp_path / "trace"
    async with running_path(tmp_path, nats_url, database_url, **{trace.ENV: str(traced)}) as p:
        await bus.publish_many([bar("AAPL", "100") for _ in range(3)])
        accepted = await eventually(
            lambda: _at_least(database_url, "OrderAccepted", 3), timeout=60, message=p.logs
        )
    orders = {str(a["payload"]["order_id"]) for a in accepted}
    marks = trace.read(traced)
    assert orders <= set(marks)
    hops = trace.hop_table({o: marks[o] for o in orders}, trace.ORDER_PATH)
    assert [(h.start, h.end) for h in hops] == list(itertools.pairwise(trace.ORDER_PATH))
    assert all(h.count == 3 for h in hops)
    # From the intent leaving the runner to OrderAccepted leaving the gateway.
    for o in orders:
        first = {label: at for at, label in reversed(marks[o])}
        took = first["OrderAccepted written"] - first["OrderIntentCreated written"]
        assert 0 < took < 30 * 1_000_000_000


async def _at_least(db: str, type_: str, n: int) -> list[dict[str, Any]] | None:
    found = await recorded(db, type_)
    return found if len(found) >= n else None
