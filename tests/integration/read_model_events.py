"""Events for the read models of migration 0002 (fills, orders, positions,
P&L), shared by test_broker_read_models*.py and test_migrations.py: a
realistic order path (``Orders``), prices at chosen times, and ``query`` to
read the views back."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from libs.contract.envelope import Clock, Event, WallClock
from libs.contract.events import (
    BarClosed,
    BarPayload,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderAccepted,
    OrderAcceptedPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.store.urls import asyncpg_url

D = Decimal
CLOCK = WallClock()
ACCOUNT = "acct"


class Orders:
    """Builds a realistic order path: commands, acks, fills with cumulative
    quantities; at ``clock``'s times (the wall clock unless told)."""

    def __init__(self, clock: Clock = CLOCK) -> None:
        self.clock = clock
        self.events: list[Event] = []
        self.commands: dict[uuid.UUID, SubmitOrder] = {}
        self.filled: dict[uuid.UUID, Decimal] = {}

    def submit(self, strategy: str, symbol: str, side: str, qty: str) -> uuid.UUID:
        oid = uuid.uuid4()
        cmd = SubmitOrder.create(
            SubmitOrderPayload(
                order_id=oid,
                strategy=strategy,
                account=ACCOUNT,
                symbol=symbol,
                side=side,
                quantity=D(qty),
            ),
            source="test",
            clock=self.clock,
        )
        self.commands[oid] = cmd
        self.filled[oid] = D(0)
        self.events.append(cmd)
        return oid

    def accept(self, oid: uuid.UUID) -> None:
        cmd = self.commands[oid]
        payload = OrderAcceptedPayload(
            order_id=oid, account=ACCOUNT, broker_order_id=f"b-{oid}", symbol=cmd.payload.symbol
        )
        self.events.append(
            OrderAccepted.create(payload, source="test", clock=self.clock, cause=cmd)
        )

    def fill(self, oid: uuid.UUID, qty: str, price: str, commission: str = "0") -> FillReceived:
        cmd = self.commands[oid]
        self.filled[oid] += D(qty)
        leaves = cmd.payload.quantity - self.filled[oid]
        event = FillReceived.create(
            FillPayload(
                order_id=oid,
                account=ACCOUNT,
                broker_order_id=f"b-{oid}",
                fill_id=f"{oid}:{self.filled[oid]}",
                symbol=cmd.payload.symbol,
                side=cmd.payload.side,
                quantity=D(qty),
                price=D(price),
                cumulative_quantity=self.filled[oid],
                leaves_quantity=leaves,
                status="complete" if leaves == 0 else "partial",
                commission=D(commission),
            ),
            source="test",
            clock=self.clock,
            cause=cmd,
        )
        self.events.append(event)
        return event


def trade(symbol: str, price: str) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="synthetic"),
        source="test",
        clock=CLOCK,
    )


def bar(symbol: str, close: str) -> BarClosed:
    p = D(close)
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=p,
            high=p,
            low=p,
            close=p,
            volume=D(1),
            start_ns=0,
            end_ns=60_000_000_000,
            feed="synthetic",
        ),
        source="test",
        clock=CLOCK,
    )


async def query(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


S = 1_000_000_000
T0 = 1_773_154_800 * S
OPTION = "O:SPY241220P00720000"
#: Orders filled an hour before T0: the prices of the tests below are newer.
BEFORE_T0 = At(T0 - 3600 * S)


def trade_at(symbol: str, price: str, t: int) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="polygon"),
        source="test",
        clock=At(t),
    )


def bar_at(symbol: str, close: str, t: int) -> BarClosed:
    return bar(symbol, close).model_copy(update={"ts_event": t})


def mark_at(symbol: str, price: str, t: int) -> MarkUpdated:
    """marketdata's mark of a quote 0.10 wide around ``price``, quoted at ``t``."""
    return MarkUpdated.create(
        MarkPayload(
            symbol=symbol,
            price=D(price),
            bid_price=D(price) - D("0.05"),
            ask_price=D(price) + D("0.05"),
            feed="polygon",
        ),
        source="test",
        clock=At(t),
    )


def late(price: Event) -> Event:
    """``price`` recorded late: made (``ts_init``) a minute after everything
    else of a test, its own time (``ts_event``) kept, as Polygon delivers an
    out-of-sequence or late-reported trade."""
    return price.model_copy(update={"ts_init": T0 + 60 * S})
