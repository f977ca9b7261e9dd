"""A flatten whose closing order ended without closing its position (a
"dead" one: canceled, expired or rejected with nothing filled, final
statuses: it never fills) leaves that position open, and says so as it says
a position the broker refused to close: an ``OrderRejected`` caused by the
flatten naming the status, the refused positions counted, the outcome
``incomplete``. On the close-all's answer and on the recovery of a close-all
whose answer was lost (after a restart). The broker is a stand-in; the clock
is the test's."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from libs.contract.codec import derived_id
from libs.contract.events import FlattenAccount
from services.broker_gateway.domain.model import (
    BrokerPosition,
    CanceledAll,
    ClosedAll,
    OrderStatus,
    OrderUpdate,
)
from services.broker_gateway.gateway import Held
from tests.unit.gateway_closing_inputs import (
    closed_by,
    closing,
    flatten_of,
    holding,
    outcomes,
    recovered,
)
from tests.unit.gateway_doubles import Delivery, broker, outbox_into

D = Decimal


def said_open(published: list[Any], flatten: FlattenAccount, account: str, status: str) -> None:
    """The flatten said AAPL is still open, its closing order ``status``."""
    [rejected] = [e for e in published if e.type == "OrderRejected"]
    assert rejected.causation_id == flatten.id
    assert rejected.payload.order_id == derived_id("broker.close", account, flatten.id, "AAPL")
    assert "AAPL position, which is still open" in rejected.payload.reason
    assert f"c-1 was {status} with nothing filled" in rejected.payload.reason
    placed = [e for e in published if e.type == "ClosingOrdersPlaced"]
    assert all(o.symbol != "AAPL" for e in placed for o in e.payload.orders)


@pytest.mark.parametrize("status", ["canceled", "expired", "rejected"])
async def test_a_dead_closing_order_in_the_answer_leaves_its_position_open(
    status: OrderStatus,
) -> None:
    """The close-all's answer lists the AAPL closing order as ``status``
    with nothing filled. It was left out of ClosingOrdersPlaced, nothing
    said AAPL was still open, and the flatten said ``flattened`` while the
    broker held the 10 (the recorded fills agree with it, so no positions
    check says so either). Now AAPL is published as left open and the
    flatten is ``incomplete``; the MSFT closing order that works is placed."""
    account = f"dead-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    working = closing("accepted", symbol="MSFT", oid="c-2")
    published: list[Any] = []
    flatten = await closed_by(w, ClosedAll((closing(status), working)), published)
    said_open(published, flatten, account, status)
    [placed] = [e for e in published if e.type == "ClosingOrdersPlaced"]
    assert [o.symbol for o in placed.payload.orders] == ["MSFT"]
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}
    assert w.tracker.flattened(flatten.id)
    assert w.tracker.position("AAPL", "s") == D(10)


async def test_a_closing_order_the_stream_ended_before_the_answer_leaves_its_position_open() -> (
    None
):
    """The answer lists the closing order as accepted, but the stream has
    already brought its rejection (nothing filled): the position is open."""
    account = f"dead-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        published.extend(w.tracker.on_update(OrderUpdate("accepted", closing("accepted"), 1)))
        ended = OrderUpdate("rejected", closing("rejected"), 2, reason="halted")
        published.extend(w.tracker.on_update(ended))
        return ClosedAll((closing("accepted"),))

    w.port = broker(cancel_all=cancel_all, close_all=close_all)
    w.outbox = outbox_into(published)
    flatten = flatten_of(w)
    async with asyncio.timeout(10):
        await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
    rejections = [e for e in published if e.type == "OrderRejected"]
    assert [e.causation_id for e in rejections] == [flatten.id, flatten.id]
    assert "AAPL position, which is still open" in rejections[-1].payload.reason
    assert "c-1 was rejected with nothing filled" in rejections[-1].payload.reason
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}


async def test_a_closing_order_that_ended_part_filled_leaves_its_position_open() -> None:
    """Canceled with 4 of its 10 filled: 6 are still open."""
    account = f"dead-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    flatten = await closed_by(w, ClosedAll((closing("canceled", filled=4),)), published)
    [rejected] = [e for e in published if e.type == "OrderRejected"]
    assert rejected.causation_id == flatten.id
    assert "AAPL position, which is still open" in rejected.payload.reason
    assert "c-1 was canceled with 4 of 10 filled" in rejected.payload.reason
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}


async def test_closing_orders_that_filled_or_work_leave_the_account_flattened() -> None:
    """The rule does not touch a close that closes: one filled whole, one
    still working (not yet filled) are the flatten's closing orders, and it
    says ``flattened``."""
    account = f"dead-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    answer = ClosedAll(
        (closing("filled", filled=10), closing("accepted", symbol="MSFT", oid="c-2"))
    )
    await closed_by(w, answer, published)
    assert [e for e in published if e.type == "OrderRejected"] == []
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 0}


@pytest.mark.parametrize("status", ["canceled", "expired"])
async def test_a_recovered_flatten_whose_closing_order_died_leaves_its_position_open(
    status: OrderStatus,
) -> None:
    """After the restart the broker lists the close-all's AAPL closing order
    as ``status`` with nothing filled, and still holds the 10. It was counted
    as closing AAPL, so nothing was refused and the flatten said
    ``flattened``. Now AAPL is published as left open, naming the status,
    and the flatten is ``incomplete``."""
    account = f"dead-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    held = [BrokerPosition("AAPL", D(10), D(100))]
    flatten = await recovered(w, [closing(status)], held, published)
    said_open(published, flatten, account, status)
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}
    assert w.tracker.flattened(flatten.id)
    assert w.tracker.position("AAPL", "s") == D(10)


async def test_a_recovered_flatten_whose_dead_closing_order_a_later_attempt_replaced_is_done() -> (
    None
):
    """An attempt of the close-all (its answer unread) canceled the closing
    order of the attempt before, and its own filled: the dead one closes
    nothing, but AAPL is closed, and the flatten says ``flattened``."""
    account = f"dead-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    again = closing("filled", filled=10, oid="c-2")
    flatten = await recovered(w, [closing("canceled"), again], [], published)
    assert [e for e in published if e.type == "OrderRejected"] == []
    fills = [e for e in published if e.type == "FillReceived"]
    assert [(f.payload.broker_order_id, f.causation_id) for f in fills] == [("c-2", flatten.id)]
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 0}
    assert w.tracker.position("AAPL", "s") == 0
