"""An order that expired (its time in force ran out: a day order at the
close) is recorded as an ``OrderCanceled``, the contract's one event for an
order's end short of a fill; its reason says ``expired``, a cancel's does
not, and what the gateway says of it later (a flatten's refusal of the
position its closing order left open) names the expiry too.

Until this, a tracker took every ``OrderCanceled`` in as "canceled": a
closing order the stream had ended by expiry before the close-all's answer
(or while a recovery asked the broker, or before a restart) was said to
have been "canceled with nothing filled". An expiry whose adapter gave
another reason than the word (the paper adapter gives its stream event's
name) was recorded with that reason alone, which did not say expired. The
broker is the paper broker's own books or a stand-in; the clock is the
test's."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal
from typing import Any, cast

from nats.aio.msg import Msg

from libs.contract.envelope import Event
from libs.contract.events import OrderCanceled, SubmitOrder, SubmitOrderPayload
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.domain.model import (
    BrokerOrder,
    BrokerPosition,
    CanceledAll,
    ClosedAll,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import Held
from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook, PaperOrder
from tests.unit.gateway_closing_inputs import closing, flatten_of, holding, outcomes, recovered
from tests.unit.gateway_doubles import Delivery, broker, outbox_into
from tests.unit.paper_books import Clock

D = Decimal
ACCOUNT = "acct"
#: Tuesday 14 November 2023, 17:13 New York: after the close.
START = 1_700_000_000 * 10**9


def as_sent(o: PaperOrder) -> BrokerOrder:
    """``o`` as the gateway reads it off the paper broker's wire."""
    return parse.order(schemas.Order.model_validate(wire.order_json(o)))


def limit_buy(tracker: OrderTracker, clock: Clock, book: PaperBook) -> tuple[SubmitOrder, Any]:
    """A day limit buy of 5 AAPL at 90, taken in by ``tracker`` and placed
    in ``book``; with no price yet it waits."""
    submit = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy="s1",
            account=ACCOUNT,
            symbol="AAPL",
            side="buy",
            quantity=D(5),
            order_type="limit",
            limit_price=D(90),
        ),
        source="risk-gate/test",
        clock=clock,
    )
    tracker.evolve(submit)
    spec = OrderSpec(
        "AAPL",
        "buy",
        D(5),
        order_type="limit",
        limit_price=D(90),
        client_order_id=str(submit.payload.order_id),
    )
    order, journal = book.submit(ACCOUNT, spec)
    return submit, (order, journal)


def streamed(tracker: OrderTracker, updates: list[Any]) -> list[Event]:
    """The paper broker's stream ``updates`` through the gateway's adapter and tracker."""
    out: list[Event] = []
    for u in updates:
        update = parse.trade_update(schemas.TradeUpdate.model_validate(wire.trade_update_json(u)))
        assert update is not None
        out += tracker.on_update(update)
    return out


def ends(events: list[Event]) -> dict[uuid.UUID, str]:
    """The reasons of the ``OrderCanceled`` among ``events``, by order."""
    return {e.payload.order_id: e.payload.reason for e in events if isinstance(e, OrderCanceled)}


def test_the_paper_brokers_expiry_and_cancel_are_told_apart() -> None:
    """Two waiting day orders: one canceled, the other expired at the
    session's close by the paper broker. Streamed, the expiry's
    OrderCanceled says ``expired``, the cancel's ``canceled``; a gateway
    that lost the stream and reconciles the expired order says
    ``expired`` as well."""
    clock = Clock(START)
    ids = itertools.count()
    book = PaperBook(
        BookConfig(day_orders_expire_at="close"), clock=clock, ids=lambda: f"p{next(ids)}"
    )
    live = OrderTracker(ACCOUNT, clock=clock, source="test")
    kept, (expiring, journal) = limit_buy(live, clock, book)
    dropped, (canceling, more) = limit_buy(live, clock, book)
    journal += more
    clock.t += 1_000_000
    journal += book.cancel(ACCOUNT, canceling.id)
    clock.t += 48 * 3600 * 10**9
    journal += book.expire_orders()
    published = streamed(live, journal)
    assert ends(published) == {
        kept.payload.order_id: "expired",
        dropped.payload.order_id: "canceled",
    }

    lost = OrderTracker(ACCOUNT, clock=clock, source="test")
    lost.evolve(kept)
    expired = book.order(ACCOUNT, expiring.id)
    assert expired is not None
    assert expired.status == "expired"
    assert ends(lost.reconcile(as_sent(expired), None)) == {kept.payload.order_id: "expired"}


def test_an_expiry_an_adapter_gives_another_reason_still_says_expired() -> None:
    """The stream's update is an expiry (its kind) whose reason is the
    venue's own words: the OrderCanceled keeps them, after ``expired``.
    A cancel's reason is the venue's words as they are."""
    tracker = OrderTracker(ACCOUNT, clock=Clock(START), source="test")
    expiry = OrderUpdate("expired", closing("expired"), 5, reason="day order ended")
    cancel = OrderUpdate("canceled", closing("canceled", oid="c-2"), 5, reason="user request")
    [expired] = tracker.on_update(expiry)[-1:]
    [canceled] = tracker.on_update(cancel)[-1:]
    assert isinstance(expired, OrderCanceled)
    assert expired.payload.reason == "expired: day order ended"
    assert isinstance(canceled, OrderCanceled)
    assert canceled.payload.reason == "user request"


def refusal(published: list[Any]) -> str:
    """The reason of the one refusal of the AAPL position."""
    [r] = [e for e in published if e.type == "OrderRejected" and "still open" in e.payload.reason]
    return cast(str, r.payload.reason)


async def test_a_closing_order_the_stream_expired_before_the_answer_is_said_expired() -> None:
    """The close-all's answer lists the AAPL closing order working; the
    stream has already brought its expiry with nothing filled. The refusal
    of the AAPL position says it expired (it said "canceled")."""
    account = f"exp-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        published.extend(w.tracker.on_update(OrderUpdate("accepted", closing("accepted"), 1)))
        ended = OrderUpdate("expired", closing("expired"), 2, reason="expired")
        published.extend(w.tracker.on_update(ended))
        return ClosedAll((closing("accepted"),))

    w.port = broker(cancel_all=cancel_all, close_all=close_all)
    w.outbox = outbox_into(published)
    async with asyncio.timeout(10):
        await w.handle(Held(flatten_of(w), cast(Msg, Delivery(1)), 1))
    reason = refusal(published)
    assert "its closing order c-1 was expired with nothing filled" in reason, reason
    assert "canceled" not in reason
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}


async def test_a_closing_order_that_expires_while_the_recovery_asks_is_said_expired() -> None:
    """After a restart the broker lists the AAPL closing order working;
    while the recovery asks for the orders its close-all created, the
    stream brings its expiry. The refusal says it expired."""
    account = f"exp-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    held = [BrokerPosition("AAPL", D(10), D(100))]
    ended = OrderUpdate("expired", closing("expired"), 5, reason="expired")
    await recovered(w, [closing("accepted")], held, published, during={"orders_created": [ended]})
    reason = refusal(published)
    assert "its closing order c-1 was expired with nothing filled" in reason, reason
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}


def test_a_rebuilt_tracker_reads_an_expiry_back_as_one() -> None:
    """A tracker rebuilt from the recorded events (a restart) knows the
    order expired from its OrderCanceled's reason, and says so of the
    closing order in a close-all's answer made before its end."""
    account = f"exp-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    flatten = flatten_of(w)
    w.tracker.evolve(flatten)
    w.tracker.flatten_started(flatten)
    recorded = w.tracker.on_update(OrderUpdate("accepted", closing("accepted"), 1))
    recorded += w.tracker.on_update(OrderUpdate("expired", closing("expired"), 2, reason=""))
    w.tracker.flatten_ended()
    assert ends(recorded) == {recorded[0].payload.order_id: "expired"}

    again = OrderTracker(account, clock=Clock(START), source="test")
    for e in [flatten, *recorded]:
        again.evolve(e)  # type: ignore[arg-type]  # recorded events: AnyEvent members
    [why] = again.left_open([closing("accepted")]).values()
    assert why == "its closing order c-1 was expired with nothing filled, and fills no more"
