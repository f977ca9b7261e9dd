"""Set-ups of the tests of a flatten's closing orders that end short of
their quantity (test_gateway_dead_closing_open.py, at the close-all's
answer; test_gateway_dead_closing_late.py, after it): a worker whose
strategy holds AAPL, a closing order as the broker lists it, a flatten run
with the close-all's answer the test gives, and the account's flatten
outcomes. The broker is a stand-in; the clock is the test's."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, cast

from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from libs.contract.events import FlattenAccount, FlattenAccountPayload
from services.broker_gateway.domain.model import BrokerOrder, CanceledAll, ClosedAll, OrderStatus
from services.broker_gateway.gateway import AccountWorker, Held
from tests.unit.gateway_doubles import CLOCK, Delivery, broker, filled_position, outbox_into, worker

D = Decimal


def closing(
    status: OrderStatus, *, filled: int = 0, symbol: str = "AAPL", oid: str = "c-1"
) -> BrokerOrder:
    """A closing sell of 10 ``symbol`` as the broker lists it."""
    price = D(101) if filled else None
    return BrokerOrder(
        oid, f"close-{oid}", symbol, "sell", D(10), D(filled), price, status, created_ns=2_000
    )


def holding(account: str) -> AccountWorker:
    """A worker whose strategy ``s`` holds 10 AAPL."""
    w = worker([1000.0], [], account=account)
    filled_position(w, 10)
    return w


def flatten_of(w: AccountWorker) -> FlattenAccount:
    return FlattenAccount.create(
        FlattenAccountPayload(account=w.account, reason="breaker"), source="test", clock=CLOCK
    )


def outcomes(account: str) -> dict[str, float]:
    """The account's flattens by outcome, and the positions they left open."""
    samples = {
        outcome: REGISTRY.get_sample_value(
            "tradebus_broker_commands_total",
            {"account": account, "type": "FlattenAccount", "outcome": outcome},
        )
        for outcome in ("flattened", "incomplete")
    }
    samples["refused"] = REGISTRY.get_sample_value(
        "tradebus_broker_flatten_refused_positions_total", {"account": account}
    )
    return {name: value or 0 for name, value in samples.items()}


async def closed_by(w: AccountWorker, answer: ClosedAll, published: list[Any]) -> FlattenAccount:
    """A flatten run on ``w``, whose close-all answers ``answer``."""

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        return answer

    w.port = broker(cancel_all=cancel_all, close_all=close_all)
    w.outbox = outbox_into(published)
    flatten = flatten_of(w)
    async with asyncio.timeout(10):
        await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
    return flatten
