"""What the tests of the gateway's order tracker
(services/broker_gateway/domain/tracker.py) feed it: a tracker on a clock of
their own, the commands strategies send, the orders and fills the broker
reports, and the fills the tracker publishes, as tuples to compare."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    FillReceived,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker

D = Decimal


ACCOUNT = "acct"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000

    def now_ns(self) -> int:
        self.t += 1
        return self.t


CLOCK = Clock()


def tracker() -> OrderTracker:
    return OrderTracker(ACCOUNT, clock=Clock(), source="broker-gateway/test")


def command(
    symbol: str = "AAPL", side: str = "buy", qty: str = "10", strategy: str = "s1"
) -> SubmitOrder:
    signal = SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol=symbol, name="x", direction="long"),
        source="test",
        clock=CLOCK,
    )
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy=strategy,
            account=ACCOUNT,
            symbol=symbol,
            side=side,
            quantity=D(qty),
        ),
        source="test",
        clock=CLOCK,
        cause=signal,
    )


def order(
    cmd: SubmitOrder | None,
    filled: str = "0",
    avg: str | None = None,
    status: str = "accepted",
    *,
    broker_id: str = "b-1",
    symbol: str = "AAPL",
    side: str = "buy",
    qty: str = "10",
    client_id: str | None = None,
) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=broker_id,
        client_order_id=client_id or (str(cmd.payload.order_id) if cmd else "theirs"),
        symbol=cmd.payload.symbol if cmd else symbol,
        side=cmd.payload.side if cmd else side,  # type: ignore[arg-type]
        quantity=cmd.payload.quantity if cmd else D(qty),
        filled_quantity=D(filled),
        filled_avg_price=D(avg) if avg else None,
        status=status,  # type: ignore[arg-type]
    )


def fill_update(o: BrokerOrder, qty: str, price: str, exec_id: str) -> OrderUpdate:
    f = BrokerFill(
        broker_order_id=o.broker_order_id,
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        side=o.side,
        quantity=D(qty),
        price=D(price),
        cumulative_quantity=o.filled_quantity,
        leaves_quantity=o.quantity - o.filled_quantity,
        ts_ns=5,
        execution_id=exec_id,
    )
    return OrderUpdate("fill", o, 5, fill=f)


def fills_of(events: Sequence[Event]) -> list[tuple[str, str, str, str, str | None]]:
    out = []
    for e in events:
        assert isinstance(e, FillReceived)
        p = e.payload
        out.append(
            (
                str(p.quantity),
                str(p.price),
                str(p.cumulative_quantity),
                str(p.leaves_quantity),
                p.strategy,
            )
        )
    return out


def submitted(t: OrderTracker, cmd: SubmitOrder) -> list[Event]:
    assert t.plan_submit(cmd)
    request = t.request(cmd.payload.order_id)
    assert request.client_order_id == str(cmd.payload.order_id)
    return t.submitted(cmd.payload.order_id, order(cmd))
