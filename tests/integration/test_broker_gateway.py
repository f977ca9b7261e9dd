"""The broker-gateway with the paper broker and the recorder, each a real process.

The test plays the risk-gate: it publishes order commands on
``orders.cmd.paper`` (and prices on ``md.trade.*``) and checks what the
gateway publishes (read back from the event store), what the paper broker
holds (asked over its own WebSocket), and what ``tradebus positions`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js import api as js_api
from websockets.asyncio.client import connect

from libs.bus.client import Bus
from libs.contract.envelope import Clock, Event, WallClock
from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    FlattenAccount,
    FlattenAccountPayload,
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
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from services.paper_broker.adapters.market import NatsPriceFeed

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


# --------------------------------------------------------------------- tests


async def test_acks_fills_partials_duplicates_rejects_and_positions(stack: Stack, bus: Bus) -> None:
    _, _, gateway = await up(stack)
    db = stack.database_url
    await bus.publish_many([trade("AAPL", "100"), trade("MSFT", "200")])
    sig = signal_for("AAPL")
    buy_aapl = submit(sig, "AAPL", "buy", "50")
    big_msft = submit(sig, "MSFT", "buy", "250")
    halted = submit(sig, "HALT", "buy", "1")
    await bus.publish_many([sig, buy_aapl, big_msft, halted])

    # Ack and fill, each caused by the command and correlated to the signal.
    fills = await eventually(
        lambda: for_order(db, "FillReceived", buy_aapl.payload.order_id),
        timeout=20,
        message=stack.logs(),
    )
    [ack] = await for_order(db, "OrderAccepted", buy_aapl.payload.order_id)
    [fill] = fills
    for event in (ack, fill):
        assert event["causation_id"] == buy_aapl.id
        assert event["correlation_id"] == sig.id
        assert event["source"].startswith("broker-gateway/")
    assert ack["seq"] < fill["seq"]
    p = fill["payload"]
    assert (p["quantity"], p["price"], p["cumulative_quantity"], p["leaves_quantity"]) == (
        "50",
        "100",
        "50",
        "0",
    )
    assert (p["status"], p["strategy"], p["side"]) == ("complete", "s1", "buy")

    # The big order: 100 now, then 100 and 50 as MSFT trades.
    await eventually(lambda: for_order(db, "FillReceived", big_msft.payload.order_id), timeout=20)
    await bus.publish(trade("MSFT", "201"))
    await eventually(
        lambda: _count(for_order(db, "FillReceived", big_msft.payload.order_id), 2), timeout=20
    )
    await bus.publish(trade("MSFT", "202"))
    partials = await eventually(
        lambda: _count(for_order(db, "FillReceived", big_msft.payload.order_id), 3), timeout=20
    )
    assert [
        (
            f["payload"]["quantity"],
            f["payload"]["price"],
            f["payload"]["cumulative_quantity"],
            f["payload"]["leaves_quantity"],
            f["payload"]["status"],
        )
        for f in partials
    ] == [
        ("100", "200", "100", "150", "partial"),
        ("100", "201", "200", "50", "partial"),
        ("50", "202", "250", "0", "complete"),
    ]
    assert {f["causation_id"] for f in partials} == {big_msft.id}

    # The refused order: rejected with the broker's code, caused by its command.
    [rejected] = await eventually(
        lambda: for_order(db, "OrderRejected", halted.payload.order_id), timeout=20
    )
    assert rejected["payload"]["code"] == "42210000"
    assert "not tradable" in rejected["payload"]["reason"]
    assert rejected["causation_id"] == halted.id
    # Accepted, then rejected by the venue: both published, in that order.
    luld = submit(sig, "LULD", "buy", "1")
    await bus.publish(luld)
    [venue_rejected] = await eventually(
        lambda: for_order(db, "OrderRejected", luld.payload.order_id), timeout=20
    )
    [luld_ack] = await for_order(db, "OrderAccepted", luld.payload.order_id)
    assert luld_ack["seq"] < venue_rejected["seq"]
    assert venue_rejected["causation_id"] == luld.id

    # A duplicate SubmitOrder (new message id, same order id): one order at the broker.
    handled = gateway.health()["accounts"][ACCOUNT]["commands"]  # type: ignore[index]
    await bus.publish(again(buy_aapl))
    await eventually(
        lambda: gateway.health()["accounts"][ACCOUNT]["commands"] > handled,  # type: ignore[index]
        timeout=20,
    )
    orders = await broker_orders(stack.broker_port)
    assert [o["client_order_id"] for o in orders].count(str(buy_aapl.payload.order_id)) == 1
    assert len(orders) == 3  # AAPL, MSFT, LULD (rejected); the refused one was never created
    assert len(await for_order(db, "OrderAccepted", buy_aapl.payload.order_id)) == 1
    assert len(await for_order(db, "FillReceived", buy_aapl.payload.order_id)) == 1

    # A resting order canceled by a CancelOrder: the cancel is caused by that command.
    resting = submit(sig, "AAPL", "buy", "5", order_type="limit", limit_price=D(90))
    await bus.publish(resting)
    await eventually(lambda: for_order(db, "OrderAccepted", resting.payload.order_id), timeout=20)
    cancel = CancelOrder.create(
        CancelOrderPayload(order_id=resting.payload.order_id, account=ACCOUNT, reason="test"),
        source="test/risk-gate",
        clock=CLOCK,
        cause=resting,
    )
    await bus.publish(cancel)
    [canceled] = await eventually(
        lambda: for_order(db, "OrderCanceled", resting.payload.order_id), timeout=20
    )
    assert canceled["causation_id"] == cancel.id
    # A command that sat too long (older than max_submit_delay_s) is not sent.
    stale = submit(sig, "AAPL", "buy", "1", clock=Ago(120))
    await bus.publish(stale)
    [refused] = await eventually(
        lambda: for_order(db, "OrderRejected", stale.payload.order_id), timeout=20
    )
    assert (refused["payload"]["code"], refused["causation_id"]) == ("stale", stale.id)
    assert str(stale.payload.order_id) not in {
        o["client_order_id"] for o in await broker_orders(stack.broker_port)
    }

    # Realized P&L: sell 20 AAPL at 110.
    await bus.publish(trade("AAPL", "110"))
    # A limit at 110: filled at 110 whether the broker has seen that trade yet or not.
    sell = submit(sig, "AAPL", "sell", "20", order_type="limit", limit_price=D(110))
    await bus.publish(sell)
    await eventually(lambda: for_order(db, "FillReceived", sell.payload.order_id), timeout=20)
    await eventually(lambda: _marked(db, "AAPL", "110"), timeout=20)
    by_symbol = {r["symbol"]: r for r in positions_cli(db)}
    assert by_symbol["AAPL"] | {"last_fill_ns": 0} == {
        "account": ACCOUNT,
        "strategy": "s1",
        "symbol": "AAPL",
        "quantity": "30",
        "avg_price": "100",
        "realized_pnl": "200",
        "last_price": "110",
        "unrealized_pnl": "300",
        "fills": 2,
        "last_fill_ns": 0,
    }
    msft = by_symbol["MSFT"]
    # (100*200 + 100*201 + 50*202) / 250 = 200.8; marked at 202.
    assert (msft["quantity"], msft["avg_price"], msft["unrealized_pnl"]) == ("250", "200.8", "300")
    # SIGTERM stops each of them cleanly.
    for proc in reversed(stack.procs):
        assert proc.terminate() == 0, proc.log_text()[-2000:]


async def _count(rows_: Any, n: int) -> list[dict[str, Any]] | None:
    got = await rows_
    return got if len(got) >= n else None


async def _marked(database_url: str, symbol: str, price: str) -> bool:
    trades = await recorded(database_url, "TradePrinted")
    return any(t["payload"]["symbol"] == symbol and t["payload"]["price"] == price for t in trades)


async def test_gateway_killed_mid_stream_loses_nothing_and_duplicates_nothing(
    stack: Stack, bus: Bus
) -> None:
    _, _, gateway = await up(stack)
    db = stack.database_url
    await bus.publish(trade("SPY", "500"))
    sig = signal_for("SPY")
    # A limit order resting at the broker: it will fill while the gateway is dead.
    resting = submit(sig, "SPY", "buy", "7", order_type="limit", limit_price=D(499))
    await bus.publish_many([sig, resting])
    await eventually(lambda: for_order(db, "OrderAccepted", resting.payload.order_id), timeout=20)
    commands = [submit(sig, "SPY", "buy", "1") for _ in range(100)]
    await bus.publish_many(commands)
    # Kill it while it works through them.
    await eventually(lambda: _handled(gateway, 4), timeout=20, interval=0.005)
    gateway.kill()
    done_before = len(await broker_orders(stack.broker_port))
    assert done_before < len(commands) + 1, "the gateway finished before it was killed"
    await bus.publish(trade("SPY", "498.5"))  # fills the resting order, nobody listening
    await eventually(
        lambda: _positions_are(stack.broker_port, {"SPY": str(done_before + 6)}), timeout=20
    )
    stack.gateway()
    ids = {str(c.payload.order_id) for c in commands}

    async def all_filled() -> bool:
        fills = await recorded(db, "FillReceived")
        return {f["payload"]["order_id"] for f in fills} >= ids | {str(resting.payload.order_id)}

    await eventually(all_filled, timeout=40)
    orders = await broker_orders(stack.broker_port)
    everything = ids | {str(resting.payload.order_id)}
    assert sorted(o["client_order_id"] for o in orders) == sorted(everything)  # each once
    for type_ in ("OrderAccepted", "FillReceived"):
        events = await recorded(db, type_)
        per_order = [e["payload"]["order_id"] for e in events]
        assert sorted(per_order) == sorted(everything), type_
    # Every command got its broker answer with the right cause, the missed fill too.
    causes = {e["causation_id"] for e in await recorded(db, "OrderAccepted")}
    assert causes == {c.id for c in [*commands, resting]}
    [missed] = await for_order(db, "FillReceived", resting.payload.order_id)
    assert missed["causation_id"] == resting.id
    # The limit at 499, crossed by a trade at 498.5: filled at the better price.
    assert (missed["payload"]["quantity"], missed["payload"]["price"]) == ("7", "498.5")


def _handled(gateway: ServiceProcess, n: int) -> bool:
    health = gateway.health()
    return bool(health and health["accounts"][ACCOUNT]["commands"] >= n)


@contextlib.contextmanager
def _stopped(proc: ServiceProcess) -> Iterator[None]:
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.proc.send_signal(signal.SIGCONT)


async def test_broker_loss_is_reported_in_time_and_flatten_waits_for_it(
    stack: Stack, bus: Bus
) -> None:
    _, paper, gateway = await up(stack)
    db = stack.database_url
    await bus.publish_many([trade("AAPL", "100"), trade("MSFT", "50")])
    sig1, sig2 = signal_for("AAPL", "s1"), signal_for("MSFT", "s2")
    long_aapl = submit(sig1, "AAPL", "buy", "10", "s1")
    short_msft = submit(sig2, "MSFT", "sell", "5", "s2")
    await bus.publish_many([sig1, sig2, long_aapl, short_msft])
    await eventually(
        lambda: _positions_are(stack.broker_port, {"AAPL": "10", "MSFT": "-5"}), timeout=20
    )

    conn = await bus.js.subscribe(
        f"broker.conn.{ACCOUNT}", ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.NEW
    )
    states: list[tuple[str, float]] = []

    async def watch() -> None:
        async for msg in conn.messages:
            states.append((orjson.loads(msg.data)["payload"]["state"], time.monotonic()))

    watcher = asyncio.create_task(watch())
    try:
        # A hung broker (SIGSTOP: the socket stays open, nothing answers).
        with _stopped(paper):
            hung_at = time.monotonic()
            await eventually(lambda: _state_seen(states, "disconnected"), timeout=10)
            detected = _state_seen(states, "disconnected") - hung_at
        limit = HEARTBEAT_INTERVAL_S + HEARTBEAT_TIMEOUT_S
        assert detected <= limit + 1.0, f"hang noticed after {detected:.2f}s (limit {limit}s)"
        await eventually(
            lambda: _last_state(states) == "connected", timeout=20, message=stack.logs()
        )

        # A dead broker: noticed at once; a flatten is held until it is back.
        states.clear()
        paper.kill()
        await eventually(lambda: _state_seen(states, "reconnecting"), timeout=10)
        flatten = FlattenAccount.create(
            FlattenAccountPayload(account=ACCOUNT, reason="connection_lost"),
            source="test/risk-gate",
            clock=CLOCK,
        )
        await bus.publish(flatten)
        await eventually(lambda: _gateway_took_it(gateway), timeout=10)
        assert not broker_connected(gateway)
        stack.paper()  # back, on the same port, with its journal
        await eventually(
            lambda: _last_state(states) == "connected", timeout=20, message=stack.logs()
        )
        await eventually(
            lambda: _positions_are(stack.broker_port, {}), timeout=20, message=stack.logs()
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await conn.unsubscribe()
    assert [s for s, _ in states] == ["disconnected", "reconnecting", "connected"]

    # The closing fills are caused by the flatten and booked to each strategy.
    async def closing_fills() -> list[dict[str, Any]]:
        fills = await recorded(db, "FillReceived")
        return [f for f in fills if f["causation_id"] == flatten.id]

    closing = await eventually(lambda: _count(closing_fills(), 2), timeout=20)
    assert sorted(
        (
            f["payload"]["strategy"],
            f["payload"]["symbol"],
            f["payload"]["side"],
            f["payload"]["quantity"],
        )
        for f in closing
    ) == [("s1", "AAPL", "sell", "10"), ("s2", "MSFT", "buy", "5")]
    assert {f["correlation_id"] for f in closing} == {flatten.id}
    flat = {(r["strategy"], r["symbol"]): r["quantity"] for r in positions_cli(db)}
    assert flat == {("s1", "AAPL"): "0", ("s2", "MSFT"): "0"}


def _state_seen(states: list[tuple[str, float]], state: str) -> float:
    return next((t for s, t in states if s == state), 0.0)


def _last_state(states: list[tuple[str, float]]) -> str | None:
    return states[-1][0] if states else None


def _gateway_took_it(gateway: ServiceProcess) -> bool:
    # It tried the flatten's first call and found the broker away: the command is held.
    return (
        'tradebus_broker_call_errors_total{account="paper",call="cancel_all",error="unavailable"}'
        in gateway.metrics()
    )


async def _positions_are(port: int, expected: dict[str, str]) -> bool:
    body = await broker_request(port, "GET", "/v2/positions")
    return {p["symbol"]: p["qty"] for p in body} == expected


async def test_a_command_consumer_deleted_under_the_gateway_is_made_again(
    stack: Stack, bus: Bus
) -> None:
    """Its pull requests go unanswered, so the gateway looks, finds its consumer
    gone and makes it again: the next command still reaches the broker."""
    _, _, gateway = await up(stack)
    db = stack.database_url
    await bus.publish(trade("AAPL", "100"))
    await bus.js.delete_consumer("TRADEBUS", "broker-gateway")
    sig = signal_for("AAPL")
    buy = submit(sig, "AAPL", "buy", "5")
    await bus.publish_many([sig, buy])
    await eventually(
        lambda: for_order(db, "FillReceived", buy.payload.order_id),
        timeout=30,
        message=stack.logs(),
    )
    assert "command consumer broker-gateway is gone; recreating it" in gateway.log_text()
    assert (await bus.js.consumer_info("TRADEBUS", "broker-gateway")).config.durable_name


def price_feed(nats_url: str, subjects: list[str], linger_s: float = 0.0) -> NatsPriceFeed:
    """The paper broker's price feed on the test's NATS (no user: no permissions)."""
    return NatsPriceFeed(
        url=nats_url,
        name="test-paper-feed",
        user=None,
        password=None,
        subjects=subjects,
        consumer="paper-feed-test",
        linger_s=linger_s,
    )


async def test_paper_price_feed_with_a_linger_applies_every_price_in_order(
    bus: Bus, nats_url: str
) -> None:
    """The paper broker takes prices in lingering pulls: the last price of
    each symbol from before it started, then every later print in stream
    order (a resting limit order needs every one), none lost between pulls."""
    from services.paper_broker.domain.fill_model import MarketUpdate

    await bus.publish_many([trade("AAPL", "99"), trade("AAPL", "100"), trade("MSFT", "50")])
    updates: list[MarketUpdate] = []
    stop = asyncio.Event()
    feed = price_feed(nats_url, ["md.trade.>"], linger_s=0.05)
    running = asyncio.create_task(feed.run(updates.append, stop))
    try:

        async def started() -> bool:
            return len(updates) >= 2

        await eventually(started, timeout=10, message="the last price of each symbol")
        assert sorted((u.symbol, str(u.last)) for u in updates) == [
            ("AAPL", "100"),
            ("MSFT", "50"),
        ]
        prices = [f"{100 + k / 100:.2f}" for k in range(1, 301)]
        for chunk in range(0, 300, 50):  # in bursts, while pulls linger
            await bus.publish_many([trade("AAPL", p) for p in prices[chunk : chunk + 50]])

        async def all_in() -> bool:
            return len(updates) >= 302

        await eventually(all_in, timeout=10, message="every later print")
        assert [str(u.last) for u in updates[2:]] == prices
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)


async def test_paper_price_feed_does_not_apply_a_price_again_after_a_reconnection(
    bus: Bus, nats_url: str
) -> None:
    """Each (re)connection starts with the last message of each subject; what
    the broker has taken in already is skipped, so an order placed after a
    price is not filled by it. A stream made anew starts the count over."""
    from libs.contract.subjects import STREAM
    from services.paper_broker.domain.fill_model import MarketUpdate

    await bus.publish_many([trade("AAPL", "99"), trade("AAPL", "100"), trade("MSFT", "50")])
    updates: list[MarketUpdate] = []
    feed = price_feed(nats_url, ["md.trade.>", "md.bar.>"])

    async def connected_until(n: int) -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(feed.run(updates.append, stop))
        try:
            await eventually(lambda: feed.connected, timeout=10)
            published = trade("AAPL", str(n))
            await bus.publish(published)
            await eventually(lambda: updates and updates[-1].last == D(n), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=10)

    await connected_until(101)
    await connected_until(102)  # a reconnection: AAPL 101 and MSFT 50 come again
    assert [(u.symbol, str(u.last)) for u in updates] == [
        ("AAPL", "100"),
        ("MSFT", "50"),
        ("AAPL", "101"),
        ("AAPL", "102"),
    ]
    await delete_stream(bus.js, STREAM)
    await bus.ensure_stream()
    await bus.publish(trade("MSFT", "40"))
    await connected_until(103)
    assert [(u.symbol, str(u.last)) for u in updates[4:]] == [("MSFT", "40"), ("AAPL", "103")]


async def test_paper_price_feed_takes_prices_stored_before_it_as_history_not_trades(
    bus: Bus, nats_url: str
) -> None:
    """A paper broker (re)started with resting orders: the last price of each
    symbol, stored while it was away, sets its last price but fills no limit
    (it may predate the order; the broker was not there to trade on it); a
    market order waiting for a price fills at it. What comes after the feed
    connected trades as before. A resting buy limit at 96 with a stored print
    at 95 stays open; a live print at 95 fills it."""
    from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook, TradeUpdate

    book = PaperBook(BookConfig(), clock=WallClock(), ids=lambda: str(uuid.uuid4()))
    book.set_last("AAPL", D(100), ts_ns=CLOCK.now_ns())
    order, _ = book.submit(
        "acct",
        OrderSpec(
            symbol="AAPL",
            side="buy",
            qty=D(10),
            order_type="limit",
            limit_price=D(96),
            client_order_id="resting",
        ),
    )
    waiting, _ = book.submit("acct", OrderSpec(symbol="MSFT", side="sell", qty=D(5)))
    assert waiting.is_open  # no MSFT price yet
    fills: list[TradeUpdate] = []
    await bus.publish_many([trade("AAPL", "95"), trade("MSFT", "50")])
    feed = price_feed(nats_url, ["md.trade.>"])
    stop = asyncio.Event()
    running = asyncio.create_task(
        feed.run(
            lambda u: fills.extend(book.on_market(u)),
            stop,
            on_price=lambda u: fills.extend(book.set_last(u.symbol, u.last, ts_ns=u.ts_ns)),
        )
    )
    try:
        await eventually(lambda: book.last_price("MSFT") == D(50), timeout=10)
        assert book.last_price("AAPL") == D(95)
        assert [(f.order.symbol, f.price) for f in fills] == [("MSFT", D(50))]
        current = book.order("acct", order.id)
        assert current is not None
        assert current.is_open
        await bus.publish(trade("AAPL", "95"))
        await eventually(lambda: len(fills) == 2, timeout=10)
        assert (fills[1].order.symbol, fills[1].price) == ("AAPL", D(95))
        current = book.order("acct", order.id)
        assert current is not None
        assert not current.is_open
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)


async def test_every_price_stored_before_the_feed_is_history_however_many_subjects(
    bus: Bus, nats_url: str
) -> None:
    """A symbol stores its last price on several subjects (a bar and a trade):
    the feed starts with one stored message per subject. Only the first was
    taken as history; the second was traded on as a live print, and filled a
    resting limit at a price the broker was not there for."""
    from libs.contract.events import BarClosed, BarPayload
    from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook, TradeUpdate

    book = PaperBook(BookConfig(), clock=WallClock(), ids=lambda: str(uuid.uuid4()))
    book.set_last("AAPL", D(100), ts_ns=CLOCK.now_ns())
    order, _ = book.submit(
        "acct",
        OrderSpec(symbol="AAPL", side="buy", qty=D(10), order_type="limit", limit_price=D(96)),
    )
    bar = BarClosed.create(
        BarPayload(
            symbol="AAPL",
            interval="1m",
            **dict.fromkeys(("open", "high", "low", "close"), D(99)),
            volume=D(100),
            start_ns=0,
            end_ns=60_000_000_000,
            feed="synthetic",
        ),
        source="test/marketdata",
        clock=CLOCK,
    )
    await bus.publish_many([bar, trade("AAPL", "95")])  # both stored before the feed
    fills: list[TradeUpdate] = []
    feed = price_feed(nats_url, ["md.trade.>", "md.bar.>"])
    stop = asyncio.Event()
    running = asyncio.create_task(
        feed.run(
            lambda u: fills.extend(book.on_market(u)),
            stop,
            on_price=lambda u: fills.extend(book.set_last(u.symbol, u.last, ts_ns=u.ts_ns)),
        )
    )
    try:
        await eventually(lambda: book.last_price("AAPL") == D(95), timeout=10)
        current = book.order("acct", order.id)
        assert current is not None
        assert current.is_open, fills
        assert fills == []
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
