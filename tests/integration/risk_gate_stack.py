"""The risk-gate as a real process, with the recorder, on real NATS and Postgres:
the ``stack`` and ``limits_file`` fixtures of the test_risk_gate_* files, and
what their tests publish and read back from the event store.

The tests play the strategy-runner (they publish signals and intents) and,
where needed, the broker-gateway (acks, fills, connection state). What is
asserted is what the event store holds."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.bus.client import Bus
from libs.contract.envelope import Event, WallClock
from libs.contract.events import (
    EVENT_ADAPTER,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    TradePayload,
    TradePrinted,
)
from libs.store import queries
from libs.store.urls import asyncpg_url
from libs.testing.procs import ServiceProcess
from libs.testing.wait import eventually

CLOCK = WallClock()
D = Decimal

LIMITS = """
max_intent_age_s: 120
accounts:
  acct-a:
    daily_loss_limit: 1000
    rate_limit: {max_orders: 50, per_seconds: 1}
  acct-b:
    daily_loss_limit: 1000000
strategies:
  good:
    account: acct-a
    max_gross_notional: 100000
    max_position: 500
    max_order_quantity: 100
    max_order_notional: 20000
  typo:
    account: acct-a
    max_gross_notional: 50000
    max_position: 200
    max_order_quantity: 50
    max_order_notional: 10000
    rate_limit: {max_orders: 5, per_seconds: 1}
  bulk:
    account: acct-b
    max_gross_notional: 100000000
    max_position: 100000
    max_order_quantity: 1000
    max_order_notional: 1000000
"""


@dataclass
class Stack:
    """A recorder and a risk-gate, started; ``gate`` can be killed and restarted."""

    tmp: Path
    env: dict[str, str]
    database_url: str
    recorder: ServiceProcess
    gate: ServiceProcess
    starts: int = 1

    def new_gate(self) -> ServiceProcess:
        self.starts += 1
        self.gate = gate_process(self.tmp, self.env, f"risk-gate-{self.starts}")
        return self.gate.start()

    def logs(self) -> str:
        return self.gate.log_text()[-3000:]


def gate_process(tmp: Path, env: dict[str, str], name: str) -> ServiceProcess:
    return ServiceProcess(
        ["risk-gate", "run", "--config", str(tmp / "risk.yaml")],
        env=env,
        log_path=tmp / f"{name}.log",
        name=name,
    )


async def gate_live(gate: ServiceProcess) -> None:
    await eventually(
        lambda: (gate.health() or {}).get("ok"),
        timeout=30,
        message=f"risk-gate live; log: {gate.log_text()[-2000:]}",
    )


@pytest.fixture
def limits_file(tmp_path: Path) -> Path:
    path = tmp_path / "risk.yaml"
    path.write_text(LIMITS)
    return path


@pytest.fixture
async def stack(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str, limits_file: Path
) -> AsyncIterator[Stack]:
    env = {"NATS_URL": nats_url, "DATABASE_URL": database_url}
    recorder = ServiceProcess(
        ["recorder", "run"], env=env, log_path=tmp_path / "recorder.log", name="recorder"
    ).start()
    s = Stack(
        tmp_path, env, database_url, recorder, gate_process(tmp_path, env, "risk-gate-1").start()
    )
    try:
        await gate_live(s.gate)
        yield s
    finally:
        code = s.gate.terminate()
        recorder.terminate()
        assert code == 0, s.logs()


# ------------------------------------------------------------------ helpers


async def recorded(database_url: str, type_: str) -> list[Any]:
    """Recorded events of one type, decoded (typed loosely: each test knows its type)."""
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        rows = await queries.list_events(conn, type_=type_, limit=100_000)
    finally:
        await conn.close()
    return [EVENT_ADAPTER.validate_python(r.envelope()) for r in rows]


async def wait_recorded(database_url: str, type_: str, n: int, timeout: float = 20) -> list[Any]:
    async def enough() -> list[Any] | None:
        got = await recorded(database_url, type_)
        return got if len(got) >= n else None

    result: list[Any] = await eventually(enough, timeout=timeout, message=f"{n} x {type_}")
    return result


def mark(symbol: str, price: str) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(100), feed="synthetic"),
        source="test/marketdata",
        clock=CLOCK,
    )


#: Expiring far ahead of the wall clock the gate runs on: an expired contract's
#: orders are denied contract_expired.
OPTION = "O:SPY391216P00720000"


def quote_mark(symbol: str, bid: str, ask: str) -> MarkUpdated:
    """What marketdata publishes on md.mark.<symbol> for an option's quote."""
    return MarkUpdated.create(
        MarkPayload(
            symbol=symbol,
            price=(D(bid) + D(ask)) / 2,
            bid_price=D(bid),
            ask_price=D(ask),
            feed="polygon",
        ),
        source="test/marketdata",
        clock=CLOCK,
    )


def option_intent(strategy: str, quantity: int, limit: str) -> list[Event]:
    """A signal and its intent to buy ``quantity`` contracts of OPTION at ``limit``."""
    sig = SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol=OPTION, name="test", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )
    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=strategy,
            account="acct-a",
            symbol=OPTION,
            side="buy",
            quantity=D(quantity),
            order_type="limit",
            limit_price=D(limit),
            asset_class="option",
        ),
        source="test/strategy-runner",
        clock=CLOCK,
        cause=sig,
    )
    return [sig, intent]


def signal_and_intent(
    strategy: str, quantity: int | str, side: str = "buy", account: str = "acct-a", **kw: Any
) -> tuple[SignalGenerated, OrderIntentCreated]:
    sig = SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol="AAPL", name="test", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )
    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=strategy,
            account=account,
            symbol="AAPL",
            side=side,
            quantity=D(quantity),
            **kw,
        ),
        source="test/strategy-runner",
        clock=CLOCK,
        cause=sig,
    )
    return sig, intent


async def submit_intent(bus: Bus, strategy: str, quantity: int | str, **kw: Any) -> uuid.UUID:
    sig, intent = signal_and_intent(strategy, quantity, **kw)
    await bus.publish_many([sig, intent])
    return intent.id


async def decision_for(database_url: str, intent_id: uuid.UUID) -> Any:
    async def find() -> Any:
        for d in await recorded(database_url, "RiskDecisionMade"):
            if d.payload.intent_id == intent_id:
                return d
        return None

    return await eventually(find, timeout=20, message=f"decision for {intent_id}")


async def tradebus(env: dict[str, str], *args: str) -> str:
    """Run ``tradebus ARGS`` as the operator would; returns stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def broker_ack_and_fill(
    order: SubmitOrder, price: str, quantity: Decimal | None = None
) -> list[Event]:
    p = order.payload
    ack = OrderAccepted.create(
        OrderAcceptedPayload(
            order_id=p.order_id,
            account=p.account,
            broker_order_id="b-" + p.order_id.hex[:8],
            symbol=p.symbol,
        ),
        source="test/broker-gateway",
        clock=CLOCK,
        cause=order,
    )
    qty = quantity or p.quantity
    fill = FillReceived.create(
        FillPayload(
            order_id=p.order_id,
            account=p.account,
            broker_order_id="b-" + p.order_id.hex[:8],
            fill_id=uuid.uuid4().hex,
            symbol=p.symbol,
            side=p.side,
            quantity=qty,
            price=D(price),
            cumulative_quantity=qty,
            leaves_quantity=p.quantity - qty,
            status="complete" if qty == p.quantity else "partial",
            strategy=p.strategy,
        ),
        source="test/broker-gateway",
        clock=CLOCK,
        cause=ack,
    )
    return [ack, fill]


def by_intent(events: list[Any]) -> dict[uuid.UUID, list[Any]]:
    out: dict[uuid.UUID, list[Any]] = {}
    for e in events:
        out.setdefault(e.payload.intent_id, []).append(e)
    return out


async def accepted_order(db: str, bus: Bus, strategy: str, quantity: int, **kw: Any) -> SubmitOrder:
    intent_id = await submit_intent(bus, strategy, quantity, **kw)
    decision = await decision_for(db, intent_id)
    assert decision.payload.decision == "accepted", decision.payload.detail

    async def order() -> SubmitOrder | None:
        for o in await recorded(db, "SubmitOrder"):
            if o.payload.intent_id == intent_id:
                assert isinstance(o, SubmitOrder)
                return o
        return None

    result: SubmitOrder = await eventually(order, timeout=20, message="the order command")
    return result
