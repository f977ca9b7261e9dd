"""Orders the broker answered 404 for (``OrderTracker.forgotten``) across a
gateway restart.

Nothing published records a 404, so a tracker rebuilt from the recorded
events has forgotten nothing. These tests show that this is enough: the
start-up's reconciliation asks the broker for such an order once, as for
every unsettled order, learns the 404 again and publishes nothing for it;
what a forgotten order let through before the restart (an expired
contract's settlement) is not published again meanwhile."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from libs.contract.envelope import Event
from libs.contract.events import (
    FillPayload,
    FillReceived,
    OrderAccepted,
    OrderAcceptedPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity, BrokerOrder
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import settlement_events
from tests.unit.gateway_doubles import broker, outbox_into, worker

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
CALL = "O:SPY261211C00600000"
PAST = parse_option(CALL).expires_at_ns + 1


class PastClock:
    """After the contract's expiry: the broker has ended every order in it."""

    def now_ns(self) -> int:
        return PAST


CLOCK = PastClock()


def first_life() -> list[Event]:
    """s1 bought 2 calls (filled) and then 1 more, which the broker
    acknowledged: the events recorded before anything was asked."""
    opened = FillReceived.create(
        FillPayload(
            order_id=uuid.uuid4(),
            account=ACCOUNT,
            broker_order_id="b-0",
            fill_id="f-0",
            symbol=CALL,
            side="buy",
            quantity=D(2),
            price=D("2.5"),
            cumulative_quantity=D(2),
            leaves_quantity=D(0),
            status="complete",
            strategy="s1",
        ),
        source=SOURCE,
        clock=CLOCK,
    )
    late = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy="s1",
            account=ACCOUNT,
            symbol=CALL,
            side="buy",
            quantity=D(1),
            asset_class="option",
        ),
        source=SOURCE,
        clock=CLOCK,
    )
    accepted = OrderAccepted.create(
        OrderAcceptedPayload(
            order_id=late.payload.order_id, account=ACCOUNT, broker_order_id="b-late", symbol=CALL
        ),
        source=SOURCE,
        clock=CLOCK,
        cause=late,
    )
    return [opened, late, accepted]


def rebuilt(events: list[Event]) -> OrderTracker:
    t = OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)
    for e in events:
        t.evolve(e)  # type: ignore[arg-type]
    return t


EXPIRED = [
    BrokerActivity(activity_id="a1", activity_type="OPEXP", symbol=CALL, quantity=D(-2), price=None)
]


def forgetful_worker(t: OrderTracker, published: list[Any], asked: list[str | None]) -> Any:
    """A worker over ``t`` whose broker answers every order 404."""

    async def get_order(**ids: str | None) -> BrokerOrder | None:
        asked.append(ids.get("broker_order_id"))
        return None

    w = worker([0.0], [], account=ACCOUNT, tracker=t)
    w.port = broker(get_order=get_order)
    w.outbox = outbox_into(published)
    return w


async def test_a_restart_asks_a_forgotten_order_once_again_and_publishes_nothing_twice() -> None:
    """First life: the start-up's reconciliation gets the broker's 404 for
    s1's late buy (forgotten), so past the expiry the contract's settlement
    goes on and s1's 2 are booked expired. The gateway restarts: the
    rebuilt tracker has forgotten nothing (no event says 404), and the read
    of the activities before the reconciliation publishes nothing (the
    settlement is recorded). The reconciliation asks the broker for the
    order once, gets the 404 again, and the order is forgotten as it was
    before, publishing nothing; the settlement is not made again."""
    recorded = first_life()
    late_id = recorded[1].payload.order_id
    live = rebuilt(recorded)
    published: list[Any] = []
    asked: list[str | None] = []
    w = forgetful_worker(live, published, asked)
    assert await w.reconcile() is True
    assert live.forgotten == {late_id}
    assert asked == ["b-late"]
    settled = settlement_events(live, EXPIRED)
    assert [(e.payload.symbol, e.payload.quantity) for e in settled] == [(CALL, D(2))]
    recorded += published + settled

    again = rebuilt(recorded)
    assert not again.forgotten, "nothing recorded says 404"
    assert again.position(CALL, "s1") == 0
    assert settlement_events(again, EXPIRED) == [], "recorded already: not made again"
    published2: list[Any] = []
    asked2: list[str | None] = []
    w2 = forgetful_worker(again, published2, asked2)
    assert await w2.reconcile() is True
    assert asked2 == ["b-late"], "asked once, as every unsettled order is"
    assert again.forgotten == {late_id}, "forgotten again, as before the restart"
    assert published2 == []
    assert settlement_events(again, EXPIRED) == []
    assert [u.order_id for u in again.unsettled()] == [late_id], "still said unknown"
    assert sorted(again.orders) == sorted(live.orders)
    assert again.positions == live.positions
