"""What the tests of the gateway's option settlements (test_gateway_settlement_*)
start from: an account's fills opening holdings, a tracker rebuilt from
events, the broker's activities, the fills booked as tuples, and the
clock, outbox and ``cross_events`` call the tests share."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal

from libs.contract.envelope import Clock as EventClock
from libs.contract.envelope import Event
from libs.contract.events import (
    FillPayload,
    FillReceived,
    Side,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import (
    cross_events,
    settlement_events,
)

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
CALL = "O:SPY261211C00600000"  # SPY 600 call, expires Friday 2026-12-11
PUT = "O:SPY261211P00600000"
EXPIRY = dt.date(2026, 12, 11)
T0 = 1_797_000_000_000_000_000


class Clock:
    """A fixed time, T0: before the contracts' expiry."""

    def now_ns(self) -> int:
        return T0


CLOCK = Clock()


def opened(
    holdings: Sequence[tuple[str | None, str, str]], account: str = ACCOUNT
) -> list[FillReceived]:
    """The fills that opened ``holdings`` ((strategy, symbol, signed quantity))
    in ``account``, one order each."""
    out = []
    for i, (strategy, symbol, qty) in enumerate(holdings):
        side: Side = "buy" if D(qty) > 0 else "sell"
        out.append(
            FillReceived.create(
                FillPayload(
                    order_id=uuid.UUID(int=i + 1),
                    account=account,
                    broker_order_id=f"b-{i}",
                    fill_id=f"f-{i}",
                    symbol=symbol,
                    side=side,
                    quantity=abs(D(qty)),
                    price=D("2.5"),
                    cumulative_quantity=abs(D(qty)),
                    leaves_quantity=D(0),
                    status="complete",
                    strategy=strategy,
                ),
                source=SOURCE,
                clock=CLOCK,
            )
        )
    return out


def tracker(
    events: Sequence[Event], account: str = ACCOUNT, clock: EventClock = CLOCK
) -> OrderTracker:
    """``account``'s tracker on ``clock``, rebuilt from ``events`` as the
    gateway's start-up does."""
    t = OrderTracker(account, clock=clock, source=SOURCE)
    for e in events:
        t.evolve(e)  # type: ignore[arg-type]
    return t


def activity(
    activity_id: str, kind: str, symbol: str, qty: str, price: str | None = None
) -> BrokerActivity:
    """The broker's non-trade activity ``kind`` (OPEXC, OPASN, OPEXP, OPTRD)."""
    return BrokerActivity(
        activity_id=activity_id,
        activity_type=kind,
        symbol=symbol,
        quantity=D(qty),
        price=None if price is None else D(price),
    )


Booked = tuple[str, str, str, str, str, str | None]


def booked(events: Sequence[Event]) -> list[Booked]:
    """(symbol, side, quantity, price, settlement, strategy) of each fill."""
    out: list[Booked] = []
    for e in events:
        assert isinstance(e, FillReceived)
        p = e.payload
        assert p.settlement is not None
        out.append((p.symbol, p.side, str(p.quantity), str(p.price), p.settlement, p.strategy))
    return out


def settle(t: OrderTracker, activities: Sequence[BrokerActivity]) -> list[Event]:
    """The fills ``t`` books for the broker's ``activities``."""
    return settlement_events(t, activities)


PAST = parse_option(CALL).expires_at_ns + 1  # just past CALL's (and PUT's) expiry


def cross(
    t: OrderTracker,
    activities: Sequence[BrokerActivity] = (),
    broker: dict[str, Decimal] | None = None,
    now_ns: int = PAST,
) -> list[Event]:
    """The offsetting fills ``t`` books at ``now_ns``, the broker holding
    ``broker`` (None: not read)."""
    return cross_events(t, activities, broker, now_ns=now_ns)


def buy_one_call(t: OrderTracker) -> SubmitOrder:
    """s1's buy of 1 more call, placed before the close, taken in by ``t``:
    its fill is not published yet (the gateway away over the close)."""
    working = SubmitOrder.create(
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
    t.evolve(working)
    return working


def filled(order: SubmitOrder) -> FillReceived:
    """``order``'s fill, late: whole, at 2.50."""
    return FillReceived.create(
        FillPayload(
            order_id=order.payload.order_id,
            account=ACCOUNT,
            broker_order_id="b-late",
            fill_id="f-late",
            symbol=order.payload.symbol,
            side=order.payload.side,
            quantity=order.payload.quantity,
            price=D("2.5"),
            cumulative_quantity=order.payload.quantity,
            leaves_quantity=D(0),
            status="complete",
            strategy=order.payload.strategy,
        ),
        source=SOURCE,
        clock=CLOCK,
    )


class Published:
    """An outbox that keeps what is published."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> None:
        self.events += events


class PastClock:
    """The wall clock at PAST."""

    def now_ns(self) -> int:
        return PAST
