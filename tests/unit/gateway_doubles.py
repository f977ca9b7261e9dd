"""Stand-ins for the tests of the gateway's AccountWorker without servers:
a JetStream delivery that records what the worker answered (ack, nak), a
worker on the test's clock, a broker port and an outbox made of the test's
functions, and the orders and positions the tests start from."""

from __future__ import annotations

import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from nats.aio.msg import Msg

from libs.contract.envelope import WallClock
from libs.contract.events import AnyEvent, SubmitOrder, SubmitOrderPayload
from services.broker_gateway.domain.model import BrokerOrder
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import TIMINGS, AccountWorker, Timings

CLOCK = WallClock()


class Delivery:
    """A JetStream delivery of stream sequence ``seq`` (its ``delivered``-th)."""

    def __init__(self, seq: int, delivered: int = 1) -> None:
        self.subject = "orders.cmd.acct"
        self.reply = f"$JS.ACK.TRADEBUS.broker-gateway.{delivered}.{seq}.{seq}.0.0"
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.answers: list[str] = []

    async def nak(self, delay: float | None = None) -> None:
        self.answers.append("nak")

    async def ack(self) -> None:
        self.answers.append("ack")

    async def in_progress(self) -> None:
        self.answers.append("in_progress")


def submit() -> SubmitOrder:
    payload = SubmitOrderPayload(
        order_id=uuid.uuid4(),
        strategy="s",
        account="acct",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
    )
    return SubmitOrder.create(payload, source="test/risk-gate", clock=CLOCK)


def worker(
    now: list[float],
    dead: list[str],
    max_held: int = 1,
    account: str = "acct",
    tracker: OrderTracker | None = None,
    timings: Timings = TIMINGS,
) -> AccountWorker:
    """A worker on the test's clock; ``tracker`` as rebuilt on start-up (else
    a new one); ``timings`` shorter than the service's where a test waits
    out a backoff."""

    async def dead_letter(msg: Msg, error: str) -> None:
        dead.append(error)

    w = AccountWorker(
        account,
        cast(Any, None),  # the broker is never called here
        tracker or OrderTracker(account, clock=CLOCK, source="test"),
        cast(Any, None),
        clock=CLOCK,
        source="test",
        max_submit_delay_s=30,
        ack_wait_s=1.0,
        dead_letter=dead_letter,
        max_held=max_held,
        timings=timings,
    )
    w.monotonic = lambda: now[0]
    return w


async def offer(w: AccountWorker, command: AnyEvent, msg: Delivery) -> None:
    await w.offer(command, cast(Msg, msg))


def accepted_order(w: AccountWorker, quantity: int) -> uuid.UUID:
    """A buy of ``quantity`` AAPL the broker acknowledged (b-1), nothing filled."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    command = submit()
    command = command.model_copy(
        update={
            "payload": command.payload.model_copy(
                update={"account": w.account, "quantity": Decimal(quantity)}
            )
        }
    )
    oid = command.payload.order_id
    w.tracker.evolve(command)
    accepted = OrderAcceptedPayload(
        order_id=oid, account=w.account, broker_order_id="b-1", symbol="AAPL"
    )
    w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    return oid


def broker(**calls: Any) -> Any:
    """A stand-in broker port, connected, named ``paper``: ``calls`` are its
    methods; ``open_orders`` lists none and ``order_fills`` lists nothing
    (a fill is then inferred from the order's totals) unless given."""

    async def open_orders() -> list[BrokerOrder]:
        return []

    async def order_fills(order: BrokerOrder) -> None:
        return None

    defaults = {"connected": True, "broker": "paper", "open_orders": open_orders}
    return cast(Any, SimpleNamespace(**(defaults | {"order_fills": order_fills} | calls)))


def outbox_into(published: list[Any]) -> Any:
    """A stand-in outbox that keeps what it is handed, in order."""

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    return cast(Any, SimpleNamespace(publish=publish))


def filled_position(w: AccountWorker, quantity: int) -> None:
    """Strategy ``s`` bought ``quantity`` AAPL at 100 (order b-1, filled)."""
    from libs.contract.events import FillPayload, FillReceived

    oid = accepted_order(w, quantity)
    t = w.tracker.get(oid)
    assert t is not None
    assert isinstance(t.cause, SubmitOrder)
    w.tracker.evolve(
        FillReceived.create(
            FillPayload(
                order_id=oid,
                account=w.account,
                broker_order_id="b-1",
                fill_id="f-1",
                symbol="AAPL",
                side="buy",
                quantity=Decimal(quantity),
                price=Decimal(100),
                cumulative_quantity=Decimal(quantity),
                leaves_quantity=Decimal(0),
                status="complete",
                strategy="s",
            ),
            source="test",
            clock=CLOCK,
            cause=t.cause,
        )
    )


def said_fills(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type == "FillReceived"]
