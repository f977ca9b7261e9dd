"""Set-ups of the tests of a flatten's closing orders that end short of
their quantity (test_gateway_dead_closing_open.py, at the close-all's
answer; test_gateway_dead_closing_late.py, after it;
test_gateway_dead_closing_recovered.py, while a recovery asks the broker):
a worker whose strategy holds AAPL, a closing order as the broker lists it,
a flatten run with the close-all's answer the test gives, one recovered
after a restart from what the broker lists (its stream bringing the news
the test gives while a given broker call is under way), the broker's stream
after it, and the account's flatten outcomes. The broker is a stand-in; the clock is the test's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from libs.contract.events import FlattenAccount, FlattenAccountPayload
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    CanceledAll,
    ClosedAll,
    OrderStatus,
    OrderUpdate,
)
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


class Stream:
    """The broker's stream as the worker's event task (``run_events``)
    reads it: :meth:`bring` hands it updates and returns once the task has
    taken them all in (asked for the next one)."""

    def __init__(self) -> None:
        self._updates: asyncio.Queue[OrderUpdate] = asyncio.Queue()
        self._taken = asyncio.Event()

    async def events(self) -> AsyncIterator[OrderUpdate]:
        while True:
            update = await self._updates.get()
            yield update
            if self._updates.empty():
                self._taken.set()

    async def bring(self, updates: Sequence[OrderUpdate]) -> None:
        if not updates:
            return
        self._taken.clear()
        for update in updates:
            self._updates.put_nowait(update)
        await asyncio.wait_for(self._taken.wait(), timeout=5)


async def streamed(w: AccountWorker, updates: list[OrderUpdate], published: list[Any]) -> None:
    """The broker's stream brings ``updates`` to ``w``'s event task; what it
    publishes goes to ``published``."""
    stream = Stream()
    w.port = broker(events=stream.events)
    outbox = outbox_into(published)
    w.outbox = cast(Any, SimpleNamespace(publish=outbox.publish, post=outbox.publish))
    running = asyncio.create_task(w.run_events())
    try:
        await stream.bring(updates)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def recovered(
    w: AccountWorker,
    created: list[BrokerOrder],
    held: list[BrokerPosition],
    published: list[Any],
    *,
    during: Mapping[str, Sequence[OrderUpdate]] | None = None,
    reconciled: Mapping[str, Sequence[BrokerOrder]] | None = None,
    listed: Sequence[BrokerOrder] | None = None,
    flatten: FlattenAccount | None = None,
) -> FlattenAccount:
    """A flatten delivered again after a restart: the gateway before it
    sent its close-all and died; the broker lists ``created`` in its window
    and holds ``held``. With ``during``, the worker's event task runs, and
    while the broker call named (``orders_created``, ``positions``,
    ``order_fills``, ``open_orders``) is under way the stream brings it the
    updates given, before the call answers. With ``reconciled``, while the
    call named is under way the broker's orders become those given and a
    reconciliation of the account runs (as a reconnection's does). Each
    once, at the call's first time. ``get_order`` answers as the broker's
    orders are then (else as ``created`` lists them); ``open_orders`` lists
    ``listed`` (none unless given). ``flatten`` is the one delivered (a new
    one unless given)."""
    brought = dict(during or {})
    changed = dict(reconciled or {})
    stream = Stream()
    latest = {o.broker_order_id: o for o in created}

    def answering(name: str, answer: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            updates = brought.pop(name, ())
            for update in updates:
                latest[update.order.broker_order_id] = update.order
            await stream.bring(updates)
            if name in changed:
                latest.update((o.broker_order_id, o) for o in changed.pop(name))
                assert await w.reconcile()
            return await answer(*args, **kwargs)

        return call

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return created

    async def positions() -> list[BrokerPosition]:
        return held

    async def get_order(**ids: str | None) -> BrokerOrder | None:
        return latest.get(ids.get("broker_order_id") or "")

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [
            BrokerFill(
                order.broker_order_id,
                order.client_order_id,
                order.symbol,
                order.side,
                order.filled_quantity,
                D(101),
                order.filled_quantity,
                order.quantity - order.filled_quantity,
                3,
            )
        ]

    async def open_orders() -> list[BrokerOrder]:
        return list(listed or ())

    w.port = broker(
        orders_created=answering("orders_created", orders_created),
        positions=answering("positions", positions),
        get_order=get_order,
        order_fills=answering("order_fills", order_fills),
        open_orders=answering("open_orders", open_orders),
        events=stream.events,
    )
    outbox = outbox_into(published)
    w.outbox = cast(Any, SimpleNamespace(publish=outbox.publish, post=outbox.publish))
    flatten = flatten or flatten_of(w)
    events = asyncio.create_task(w.run_events()) if during else None
    try:
        async with asyncio.timeout(10):
            await w.handle(Held(flatten, cast(Msg, Delivery(1, 2)), 1))
    finally:
        if events is not None:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
    return flatten
