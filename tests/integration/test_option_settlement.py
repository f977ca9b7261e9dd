"""Option positions held past expiry, settled end to end.

Real NATS and PostgreSQL, the recorder as a process, the paper broker's
server (its real code over a real WebSocket, in this process so that its
clock can be moved past the close) and the gateway's account worker with
the real paper adapter. The risk-gate's state is its fold of the store (what
its start-up rebuild does), the positions read model is ``tradebus
positions``, the audit ``tradebus audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from nats.aio.msg import Msg
from pydantic import SecretStr

from libs.bus.client import Bus
from libs.contract.codec import derived_id
from libs.contract.envelope import WallClock
from libs.contract.events import (
    AnyEvent,
    Side,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.local.servers import free_port
from libs.store.queries import stored_event
from libs.testing.procs import ServiceProcess
from libs.testing.store import rows
from libs.testing.wait import eventually
from services.broker_gateway.adapters.commands import CommandConsumer
from services.broker_gateway.adapters.history import order_path_history
from services.broker_gateway.adapters.paper.client import PaperBroker
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import AccountWorker, Outbox
from services.broker_gateway.positions import read_positions
from services.paper_broker.adapters.server import Credentials, PaperBrokerServer
from services.paper_broker.domain.book import BookConfig, PaperBook
from services.paper_broker.domain.fill_model import MarketUpdate
from services.risk_gate.domain.evolve import evolve_all
from services.risk_gate.domain.state import RiskState

D = Decimal
NY = ZoneInfo("America/New_York")
ACCOUNT = "settle"
ITM = "O:SPY261204C00600000"  # SPY 600 call, expired Friday 2026-12-04
OTM = "O:SPY261204C00650000"  # SPY 650 call
WALL = WallClock()


def ny_ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * 1_000_000_000


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def submit(symbol: str, qty: str, strategy: str = "s1", side: Side = "buy") -> SubmitOrder:
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy=strategy,
            account=ACCOUNT,
            symbol=symbol,
            side=side,
            quantity=D(qty),
            asset_class="option",
        ),
        source="test/risk-gate",
        clock=WALL,
    )


def worker(port: int, outbox: Outbox, tracker: OrderTracker) -> AccountWorker:
    async def dead(msg: Msg, error: str) -> None:
        raise AssertionError(f"dead-lettered: {error}")

    return AccountWorker(
        ACCOUNT,
        PaperBroker(
            account=ACCOUNT,
            url=f"ws://127.0.0.1:{port}/stream",
            key_id="key",
            secret_key=SecretStr("secret"),
            heartbeat_interval_s=0.2,
            heartbeat_timeout_s=0.3,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.2,
        ),
        tracker,
        outbox,
        clock=WALL,
        source="broker-gateway/test",
        max_submit_delay_s=120,
        ack_wait_s=1.0,
        dead_letter=dead,
        max_held=100,
        position_check_every_s=0,
    )


@contextlib.asynccontextmanager
async def running(bus: Bus, w: AccountWorker, *, commands: bool) -> AsyncIterator[None]:
    outbox = w.outbox
    assert isinstance(outbox, Outbox)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(outbox.run()), asyncio.create_task(w.run_events())]
    if commands:
        consumer = CommandConsumer(
            bus,
            durable="broker-gateway-settle",
            service="broker-gateway",
            ack_wait_s=1.0,
            start_back_s=60,
            max_bytes=1 << 20,
        )

        async def dispatch(command: AnyEvent, msg: Msg) -> None:
            await w.offer(command, msg)

        tasks += [
            asyncio.create_task(w.run_commands()),
            asyncio.create_task(consumer.run(dispatch, stop)),
        ]
    await w.port.start()
    try:
        assert await w.port.wait_connected(timeout=10)
        yield
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await w.port.close()


async def recorded(database_url: str, type_: str) -> list[dict[str, Any]]:
    return [
        {**dict(r), "payload": orjson.loads(r["payload"])}
        for r in await rows(database_url, f"WHERE type = '{type_}' ORDER BY seq")
    ]


async def settlements(database_url: str, n: int) -> list[dict[str, Any]] | None:
    fills = [f for f in await recorded(database_url, "FillReceived") if f["payload"]["settlement"]]
    return fills if len(fills) >= n else None


def cli(database_url: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return out.stdout.decode()


@pytest.fixture
async def recorder(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "recorder.log",
        name="recorder",
    ).start()
    try:
        yield proc
    finally:
        proc.terminate(timeout=10)


async def test_options_held_past_expiry_end_as_shares_or_a_lost_premium_everywhere(
    bus: Bus, database_url: str, recorder: ServiceProcess
) -> None:
    """s1 buys 2 SPY 600 calls at 11 and 1 SPY 650 call at 0.40 on their
    expiry day; SPY last trades at 610 before the close. Past the close the
    paper broker exercises the 600s (200 SPY bought at 600) and lets the 650
    expire. The gateway reads the activities and publishes them as fills:
    in the broker, the risk-gate's fold of the store, ``tradebus positions``
    and ``tradebus audit``, s1 ends with 200 SPY at 600 (valued at 610, not
    at the strike) and flat in both contracts, the 650's 40 premium lost. A
    gateway rebuilt from the store afterwards publishes nothing again.
    Before this the contracts stayed open everywhere, for ever."""
    clock = SetClock(ny_ns("2026-12-04 10:00"))
    counter = itertools.count(1)
    book = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    book.on_market(MarketUpdate.trade(ITM, D(11), ny_ns("2026-12-04 10:00")))
    book.on_market(MarketUpdate.trade(OTM, D("0.4"), ny_ns("2026-12-04 10:00")))
    spy = TradePrinted.create(
        TradePayload(symbol="SPY", price=D(610), size=D(100), feed="synthetic"),
        source="test/marketdata",
        clock=WALL,
        ts_event=ny_ns("2026-12-04 15:59"),
    )
    book.on_market(MarketUpdate.trade("SPY", D(610), spy.ts_event))
    await bus.publish(spy)  # what marks SPY for the gate and the read model
    port = free_port()
    creds = [Credentials("key", SecretStr("secret"), ACCOUNT)]
    outbox = Outbox(bus)
    w = worker(port, outbox, OrderTracker(ACCOUNT, clock=WALL, source="broker-gateway/test"))
    async with PaperBrokerServer(book, creds, port=port) as server, running(bus, w, commands=True):
        for command in (submit(ITM, "2"), submit(OTM, "1")):
            await bus.publish(command)
        await eventually(
            lambda: _count(database_url, "FillReceived", 2), timeout=20, message="the buys"
        )
        # The close passes at the broker: it settles, and the gateway reads it.
        clock.ns = ny_ns("2026-12-04 16:00")
        server.expire_orders()
        fills = await eventually(lambda: settlements(database_url, 3), timeout=30)
    assert {p.symbol: (p.qty, p.avg_entry_price) for p in book.positions(ACCOUNT)} == {
        "SPY": (D(200), D(600))
    }
    assert sorted(a.activity_type for a in book.activities(ACCOUNT)) == ["OPEXC", "OPEXP", "OPTRD"]
    got = sorted(
        (
            f["payload"]["symbol"],
            f["payload"]["side"],
            f["payload"]["quantity"],
            f["payload"]["price"],
            f["payload"]["settlement"],
            f["payload"]["strategy"],
        )
        for f in fills
    )
    assert got == [
        (ITM, "sell", "2", "0", "exercised", "s1"),
        (OTM, "sell", "1", "0", "expired", "s1"),
        ("SPY", "buy", "200", "600", "exercised", "s1"),
    ]

    # The risk-gate, folding the store as its start-up does.
    stored = [e for e in map(stored_event, await rows(database_url)) if e is not None]
    gate = evolve_all(RiskState.initial(), tuple(stored))
    spy_gate = gate.strategy_positions[("s1", ACCOUNT, "SPY")]
    assert (spy_gate.quantity, spy_gate.avg_price) == (D(200), D(600))
    for symbol in (ITM, OTM):
        assert gate.strategy_positions[("s1", ACCOUNT, symbol)].quantity == 0
        assert gate.positions[(ACCOUNT, symbol)].quantity == 0
    assert gate.positions[(ACCOUNT, OTM)].realized_total == D(-40)
    assert gate.marks["SPY"].price == D(610), "a strike is no market price"

    # The positions read model.
    positions = {r.symbol: r for r in await read_positions(database_url, ACCOUNT)}
    assert (positions["SPY"].quantity, positions["SPY"].avg_price) == (D(200), D(600))
    assert (positions["SPY"].last_price, positions["SPY"].unrealized_pnl) == (D(610), D(2000))
    assert (positions[OTM].quantity, positions[OTM].realized_pnl) == (D(0), D(-40))
    assert (positions[ITM].quantity, positions[ITM].realized_pnl) == (D(0), D(-2200))

    # The audit of the exercise's trade says what it was.
    [trade] = [f for f in fills if f["payload"]["symbol"] == "SPY"]
    audit = cli(database_url, "audit", str(trade["id"]))
    assert "option exercised at expiry" in audit, audit

    # A gateway started again, rebuilt from the store, publishes nothing more.
    history = await order_path_history(
        database_url,
        [ACCOUNT],
        stream_last_seq=0,
        wait_s=0,
        pending_from_seq=1 << 40,
        settled_before_ns=time.time_ns() - 7 * 86_400 * 1_000_000_000,
    )
    [rebuilt] = history.trackers([ACCOUNT], clock=WALL, source="broker-gateway/test").values()
    again = worker(port, Outbox(bus), rebuilt)
    before = len(await recorded(database_url, "FillReceived"))
    async with PaperBrokerServer(book, creds, port=port), running(bus, again, commands=False):
        assert await again.settlements.read(dt.date(2026, 12, 4)) == 0
    assert len(await recorded(database_url, "FillReceived")) == before
    order_id = derived_id("broker.settlement", ACCOUNT, book.activities(ACCOUNT)[0].id)
    assert rebuilt.get(order_id) is not None

    # Nor one started after TRADEBUS_REBUILD_SETTLED_S, which leaves settled
    # orders out of its rebuild (here every order is older than its window),
    # reading the last week's activities as its first read does (no contract
    # held is past its expiry). Before, the settlements left out were not
    # known, and every fill of them was published again: the risk-gate,
    # which forgets fill ids after a day, booked each twice.
    history = await order_path_history(
        database_url,
        [ACCOUNT],
        stream_last_seq=0,
        wait_s=0,
        pending_from_seq=1 << 40,
        settled_before_ns=time.time_ns(),
    )
    [rebuilt] = history.trackers([ACCOUNT], clock=WALL, source="broker-gateway/test").values()
    later = worker(port, Outbox(bus), rebuilt)
    async with PaperBrokerServer(book, creds, port=port), running(bus, later, commands=False):
        assert await later.settlements.read(None) == 0
    assert len(await recorded(database_url, "FillReceived")) == before


async def _count(database_url: str, type_: str, n: int) -> bool:
    return len(await recorded(database_url, type_)) >= n


async def test_opposite_positions_of_two_strategies_are_settled_inside_tradebus(
    bus: Bus, database_url: str, recorder: ServiceProcess
) -> None:
    """s1 buys 3 SPY 600 calls and s2 sells 1; s1 buys 1 SPY 650 call and
    s2 sells 1. The paper broker holds the net: 2 of the 600s, none of the
    650s. Past the close it exercises the 2 (200 SPY at 600, booked to s1)
    and lists nothing of the 650. The gateway settles the rest inside
    tradebus: the offsetting 600 is exercised by s1 (100 SPY bought at 600)
    and assigned to s2 (100 sold), the 650s closed at 0 on both sides. In
    the risk-gate's fold of the store and ``tradebus positions`` nobody
    holds a contract, s1 holds 300 SPY, s2 -100, the account 200 as the
    broker does, and the account's realized P&L is the broker's. A gateway
    rebuilt from the store publishes nothing more. Before, s1 +1 / s2 -1 of
    the 600 and s1 +1 / s2 -1 of the 650 stayed everywhere, for ever."""
    clock = SetClock(ny_ns("2026-12-04 10:00"))
    counter = itertools.count(1)
    book = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    book.on_market(MarketUpdate.trade(ITM, D(11), ny_ns("2026-12-04 10:00")))
    book.on_market(MarketUpdate.trade(OTM, D("0.4"), ny_ns("2026-12-04 10:00")))
    spy = TradePrinted.create(
        TradePayload(symbol="SPY", price=D(610), size=D(100), feed="synthetic"),
        source="test/marketdata",
        clock=WALL,
        ts_event=ny_ns("2026-12-04 15:59"),
    )
    book.on_market(MarketUpdate.trade("SPY", D(610), spy.ts_event))
    await bus.publish(spy)
    port = free_port()
    creds = [Credentials("key", SecretStr("secret"), ACCOUNT)]
    w = worker(port, Outbox(bus), OrderTracker(ACCOUNT, clock=WALL, source="broker-gateway/test"))
    async with PaperBrokerServer(book, creds, port=port) as server, running(bus, w, commands=True):
        # The buys first: the broker never holds a short contract.
        for command in (submit(ITM, "3"), submit(OTM, "1")):
            await bus.publish(command)
        await eventually(lambda: _count(database_url, "FillReceived", 2), timeout=20)
        for command in (submit(ITM, "1", "s2", "sell"), submit(OTM, "1", "s2", "sell")):
            await bus.publish(command)
        await eventually(lambda: _count(database_url, "FillReceived", 4), timeout=20)
        clock.ns = ny_ns("2026-12-04 16:00")
        server.expire_orders()
        # The broker's 2 (contracts, shares), the 600's cross (4), the 650's (2).
        fills = await eventually(lambda: settlements(database_url, 8), timeout=30)
    assert {p.symbol: p.qty for p in book.positions(ACCOUNT)} == {"SPY": D(200)}
    assert sorted(a.activity_type for a in book.activities(ACCOUNT)) == ["OPEXC", "OPTRD"]
    got = sorted(
        (
            f["payload"]["symbol"],
            f["payload"]["side"],
            f["payload"]["quantity"],
            f["payload"]["price"],
            f["payload"]["settlement"],
            f["payload"]["strategy"],
        )
        for f in fills
    )
    assert got == [
        (ITM, "buy", "1", "0", "assigned", "s2"),
        (ITM, "sell", "1", "0", "exercised", "s1"),
        (ITM, "sell", "2", "0", "exercised", "s1"),
        (OTM, "buy", "1", "0", "expired", "s2"),
        (OTM, "sell", "1", "0", "expired", "s1"),
        ("SPY", "buy", "100", "600", "exercised", "s1"),
        ("SPY", "buy", "200", "600", "exercised", "s1"),
        ("SPY", "sell", "100", "600", "assigned", "s2"),
    ]

    stored = [e for e in map(stored_event, await rows(database_url)) if e is not None]
    gate = evolve_all(RiskState.initial(), tuple(stored))
    for strategy in ("s1", "s2"):
        for symbol in (ITM, OTM):
            assert gate.strategy_positions[(strategy, ACCOUNT, symbol)].quantity == 0
    assert gate.strategy_positions[("s1", ACCOUNT, "SPY")].quantity == D(300)
    assert gate.strategy_positions[("s2", ACCOUNT, "SPY")].quantity == D(-100)
    spy_gate = gate.positions[(ACCOUNT, "SPY")]
    assert (spy_gate.quantity, spy_gate.avg_price) == (D(200), D(600))
    assert gate.positions[(ACCOUNT, ITM)].quantity == gate.positions[(ACCOUNT, OTM)].quantity == 0
    # The account lost what the broker says: the 2 calls it held, exercised.
    assert gate.positions[(ACCOUNT, ITM)].realized_total == D(-2200)
    assert gate.positions[(ACCOUNT, OTM)].realized_total == D(0)

    rows_ = await read_positions(database_url, ACCOUNT)
    held = {(r.strategy, r.symbol): (r.quantity, r.avg_price) for r in rows_ if r.quantity}
    assert held == {("s1", "SPY"): (D(300), D(600)), ("s2", "SPY"): (D(-100), D(600))}
    assert sum((r.realized_pnl for r in rows_ if r.symbol in (ITM, OTM)), D(0)) == D(-2200)

    history = await order_path_history(
        database_url,
        [ACCOUNT],
        stream_last_seq=0,
        wait_s=0,
        pending_from_seq=1 << 40,
        settled_before_ns=time.time_ns(),
    )
    [rebuilt] = history.trackers([ACCOUNT], clock=WALL, source="broker-gateway/test").values()
    assert rebuilt.positions[("s1", ITM)] == rebuilt.positions[("s2", OTM)] == 0
    later = worker(port, Outbox(bus), rebuilt)
    before = len(await recorded(database_url, "FillReceived"))
    async with PaperBrokerServer(book, creds, port=port), running(bus, later, commands=False):
        assert await later.settlements.read(dt.date(2026, 12, 4)) == 0
    assert len(await recorded(database_url, "FillReceived")) == before
