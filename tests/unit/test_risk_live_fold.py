"""The live gate's state is the fold of the store, across a trading-day start.

The gate applies what it publishes as it publishes it, while the stream
stores it after whatever other messages got there first; and it decides on
its wall clock, which runs behind or ahead of the events' own times. Here
the real :class:`~services.risk_gate.gate.RiskGate` (a fake bus, a set
clock) goes live and handles messages a few milliseconds either side of
04:00 New York, and its state is compared with the fold of the store those
messages and its publications make, whatever the clock's lag and wherever
the publications land.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest

from libs.contract.codec import encode
from libs.contract.envelope import Event
from libs.contract.events import (
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    FillPayload,
    FillReceived,
    KillSwitchEngaged,
    KillSwitchReleased,
    OrderCanceled,
    OrderCanceledPayload,
    TradingResumeRequested,
)
from services.risk_gate.config import RiskGateSettings
from services.risk_gate.domain.state import DayIds, RiskState
from services.risk_gate.gate import RiskGate
from tests.unit.risk_evolve_inputs import LIMITS, T0, At, S, conn, ev, fill, intent, op, trade
from tests.unit.test_risk_checkpoint import fold

MS = S // 1000
#: 04:00 New York on 2026-03-11: the next trading day starts.
DAY_START = T0 + 17 * 3600 * S


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


class FakeBus:
    """Keeps what the gate publishes, one batch per call."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []

    async def publish_together(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))

    async def publish(self, event: Event) -> None:
        self.batches.append([event])


class FakeStream:
    async def go_live(self, seq: int) -> None:
        pass


def preamble() -> list[Event]:
    """Day D: marks, and 100 AAPL bought at 100."""
    return [trade("AAPL", 100), trade("MSFT", 50), fill(uuid.uuid4(), 100, 100)]


def messages() -> list[Event]:
    """What other services publish around the day start (by their own clocks)."""
    return [
        intent(10, t=DAY_START - 50 * MS),
        trade("AAPL", 89, DAY_START - 10 * MS),  # day P&L -1,100 on D: the breaker
        intent(10, "sell", t=DAY_START - 5 * MS),
        trade("AAPL", 90, DAY_START + 30 * MS),  # the first event of D + 1
        intent(5, "sell", t=DAY_START + 40 * MS),
        conn("disconnected", t=DAY_START + 45 * MS),
        trade("AAPL", 91, DAY_START + 50 * MS),
    ]


def same(live: RiskState, folded: RiskState) -> list[str]:
    """The fields in which the two differ. Ids remembered per day are compared
    as sets: the live gate files an id of its own event under the day it
    applied it, a fold under the day it reached it; either keeps it a day."""
    differ = []
    for f in dataclasses.fields(RiskState):
        a, b = getattr(live, f.name), getattr(folded, f.name)
        if isinstance(a, DayIds):
            a, b = {*a.today, *a.yesterday}, {*b.today, *b.yesterday}
        if a != b:
            differ.append(f.name)
    return differ


async def live_gate(before: list[Event], now_ns: int) -> tuple[RiskGate, Clock, FakeBus]:
    """The real gate with ``before`` folded in, gone live at ``now_ns``."""
    clock, bus = Clock(), FakeBus()
    gate = RiskGate(RiskGateSettings(instance="test"), LIMITS, clock=clock)
    gate.state = fold(RiskState.initial(LIMITS), before)
    gate.last_seq = len(before)
    gate.bus = cast(Any, bus)
    clock.ns = now_ns
    await gate._go_live(cast(Any, FakeStream()))
    return gate, clock, bus


async def deliver(gate: RiskGate, event: Event, seq: int, delivered: int) -> None:
    """Hand ``event`` to the gate as JetStream delivers stream sequence ``seq``."""
    assert isinstance(gate.clock, Clock)
    msg = SimpleNamespace(
        reply=f"$JS.ACK.TRADEBUS.risk-gate.1.{seq}.{delivered}.{gate.clock.ns}.0",
        data=encode(event),
        subject="test",
        headers=None,
    )
    await gate._on_message(cast(Any, msg))


@pytest.mark.parametrize("lag_ms", [-20, 0, 20, 70])
@pytest.mark.parametrize("delay", [0, 1, 2])
async def test_the_live_state_is_the_fold_of_the_store_across_the_day_start(
    lag_ms: int, delay: int
) -> None:
    """``lag_ms``: the gate's clock minus the message's time when it handles it;
    ``delay``: how many later messages reach the stream before what the gate
    published in answer to one."""
    before = preamble()
    stream = messages()
    gate, clock, bus = await live_gate(before, stream[0].ts_event + lag_ms * MS)
    assert bus.batches == []
    store = list(before)
    landing: list[tuple[int, list[Event]]] = []
    for k, event in enumerate(stream):
        clock.ns = event.ts_event + lag_ms * MS
        await deliver(gate, event, len(before) + k + 1, k + 1)
        store.append(event)
        landing += [(k + delay, batch) for batch in bus.batches]
        bus.batches.clear()
        store += [e for at, batch in landing if at == k for e in batch]
    store += [e for at, batch in landing if at >= len(stream) for e in batch]
    published = {e.type for _, batch in landing for e in batch}
    assert {"RiskDecisionMade", "SubmitOrder", "BreakerTripped"} <= published
    folded = fold(RiskState.initial(LIMITS), store)
    assert same(gate.state, folded) == []
    assert folded.day is not None
    assert folded.day.isoformat() == "2026-03-11"
    assert folded.loss_tripped["acct"].isoformat() == "2026-03-10"


def _closing_orders(rng: random.Random, gate: RiskGate, t: int) -> Event | None:
    """A flatten's closing orders for the positions an account holds now
    (booked to a strategy holding it, or to none), some partly filled
    already; None when no account holds any."""
    held = [(k, p.quantity) for k, p in sorted(gate.state.positions.items()) if p.quantity]
    if not held:
        return None
    account = rng.choice(held)[0][0]
    orders = []
    for (acct, symbol), quantity in held:
        if acct != account:
            continue
        size = abs(quantity)
        holders = sorted(
            st
            for (st, a, sym), p in gate.state.strategy_positions.items()
            if a == acct and sym == symbol and p.quantity
        )
        orders.append(
            ClosingOrder(
                order_id=uuid.uuid4(),
                symbol=symbol,
                side="sell" if quantity > 0 else "buy",
                quantity=size,
                leaves_quantity=rng.choice([size, size // 2, Decimal(0)]),
                strategy=rng.choice([None, *holders]),
            )
        )
    return ev(ClosingOrdersPlaced, ClosingOrdersPayload(account=account, orders=tuple(orders)), t)


#: An AAPL 100 call expiring on T0's day (2026-03-10).
CALL = "O:AAPL260310C00100000"


def _settlement(rng: random.Random, t: int) -> list[Event]:
    """An option settlement as the broker-gateway publishes it, one fill per
    strategy (leaves counting down), stamped at the expiry: a call held long
    or short by ``acct`` expired worthless, or exercised / assigned with its
    shares of AAPL at the strike (before an exercise's contracts, after an
    assignment's, as the gateway publishes them)."""
    account = "acct"
    contracts = rng.randint(1, 4)
    long = rng.random() < 0.5
    outcome = rng.choice(["expired", "exercised" if long else "assigned"])
    strategies: list[str | None] = rng.choice([["sma"], [None], ["sma", None]])
    expiry = T0 + 5 * 3600 * S
    legs: list[tuple[str, str, Decimal, Decimal]] = [
        (CALL, "sell" if long else "buy", Decimal(contracts), Decimal(0))
    ]
    if outcome != "expired":
        shares = ("AAPL", "buy" if long else "sell", Decimal(100 * contracts), Decimal(100))
        # In the gateway's order: an exercise's shares first, an assignment's after.
        legs.insert(0 if long else 1, shares)
    out: list[Event] = []
    for symbol, side, quantity, price in legs:
        order_id, done = uuid.uuid4(), Decimal(0)
        parts = [quantity] if len(strategies) == 1 or quantity < 2 else [quantity - 1, Decimal(1)]
        for strategy, part in zip(strategies, parts, strict=False):
            done += part
            out.append(
                FillReceived.create(
                    FillPayload(
                        order_id=order_id,
                        account=account,
                        broker_order_id="activity",
                        fill_id=uuid.uuid4().hex,
                        symbol=symbol,
                        side=side,
                        quantity=part,
                        price=price,
                        cumulative_quantity=done,
                        leaves_quantity=quantity - done,
                        status="complete" if done == quantity else "partial",
                        strategy=strategy,
                        settlement=outcome,
                    ),
                    source="test/broker-gateway",
                    clock=At(t),
                    ts_event=min(expiry, t),
                )
            )
    return out


def _cross(rng: random.Random, t: int) -> list[Event]:
    """An internal cross as the broker-gateway publishes it
    (``settlement.cross_events``): ``sma`` long and ``pairs`` short of the
    same call in ``acct``, each leg of each strategy one order of one
    complete fill, stamped at the expiry: expired (the short's contracts
    bought back at 0, then the long's sold at 0), or exercised (the long's
    shares bought at the strike, the short's sold, the short's contracts,
    the long's)."""
    contracts = Decimal(rng.randint(1, 4))
    shares = 100 * contracts
    expiry = T0 + 5 * 3600 * S
    legs: list[tuple[str, str, str, Decimal, Decimal, str]] = []
    if rng.random() < 0.5:
        legs += [("pairs", CALL, "buy", contracts, Decimal(0), "expired")]
        legs += [("sma", CALL, "sell", contracts, Decimal(0), "expired")]
    else:
        legs += [("sma", "AAPL", "buy", shares, Decimal(100), "exercised")]
        legs += [("pairs", "AAPL", "sell", shares, Decimal(100), "assigned")]
        legs += [("pairs", CALL, "buy", contracts, Decimal(0), "assigned")]
        legs += [("sma", CALL, "sell", contracts, Decimal(0), "exercised")]
    out: list[Event] = []
    for strategy, symbol, side, quantity, price, outcome in legs:
        name = f"cross/{symbol}/{strategy}/{uuid.uuid4().hex}"
        out.append(
            FillReceived.create(
                FillPayload(
                    order_id=uuid.uuid4(),
                    account="acct",
                    broker_order_id=name,
                    fill_id=name,
                    symbol=symbol,
                    side=side,
                    quantity=quantity,
                    price=price,
                    cumulative_quantity=quantity,
                    leaves_quantity=Decimal(0),
                    status="complete",
                    strategy=strategy,
                    settlement=outcome,
                ),
                source="test/broker-gateway",
                clock=At(t),
                ts_event=min(expiry, t),
            )
        )
    return out


def _random_message(
    rng: random.Random,
    gate: RiskGate,
    stored: list[Event],
    t: int,
    *,
    closing: bool = False,
    settling: list[Event] | None = None,
    crosses: bool = False,
) -> Event:
    """One message another service could publish at ``t``: a print, an
    intent (two strategies, two accounts), a fill or cancel of an order the
    store holds, the kill switch, a resume, a broker connection change; with
    ``closing``, also a flatten's closing orders (``_closing_orders``); with
    ``settling`` (a list), also option settlements' fills (``_settlement``),
    the legs of one kept in ``settling`` and taken from it one at a time,
    other messages landing between them; with ``crosses``, internal
    crosses' fills (``_cross``) instead."""
    if settling is not None:
        if settling and rng.random() < 0.5:
            return settling.pop(0)
        if not settling and rng.random() < 0.05:
            settling.extend(_cross(rng, t) if crosses else _settlement(rng, t))
            return settling.pop(0)
    if closing and rng.random() < 0.1:
        placed = _closing_orders(rng, gate, t)
        if placed is not None:
            return placed
    ordered = {e.payload.order_id for e in stored if e.type == "SubmitOrder"}
    ordered.update(
        o.order_id for e in stored if isinstance(e, ClosingOrdersPlaced) for o in e.payload.orders
    )
    working = sorted(
        (o for o in gate.state.orders.values() if o.order_id in ordered), key=lambda o: o.ts_ns
    )
    r = rng.random()
    if r < 0.3:
        return trade("AAPL", str(Decimal(rng.randint(8500, 11000)) / 100), t)
    if r < 0.5:
        where: dict[str, Any] = rng.choice([{}, {"strategy": "mr", "account": "b"}])
        return intent(rng.choice([5, 10, 50, 100]), rng.choice(["buy", "sell"]), t, **where)
    if r < 0.65 and working:
        o = rng.choice(working)
        part = o.remaining if rng.random() < 0.6 else max(o.remaining // 2, Decimal(1))
        price = str(Decimal(rng.randint(8500, 11000)) / 100)
        return fill(
            o.order_id,
            str(part),
            price,
            side=o.side,
            leaves=str(o.remaining - part),
            account=o.account,
            symbol=o.symbol,
            t=t,
        )
    if r < 0.7 and working:
        o = rng.choice(working)
        payload = OrderCanceledPayload(order_id=o.order_id, account=o.account)
        return ev(OrderCanceled, payload, t)
    if r < 0.75:
        return cast(Event, op(rng.choice([KillSwitchEngaged, KillSwitchReleased]), t=t))
    if r < 0.87:
        return cast(Event, op(TradingResumeRequested, rng.choice(["global", "acct", "b"]), t))
    return conn(rng.choice(["disconnected", "connected"]), rng.choice(["acct", "b"]), t)


@pytest.mark.parametrize(
    ("closing", "settlements", "crosses"),
    [(False, False, False), (True, False, False), (False, True, False), (False, True, True)],
    ids=["", "closing orders", "settlements", "crosses"],
)
@pytest.mark.parametrize("seed", range(200))
async def test_the_live_state_is_the_fold_of_the_store_under_random_traffic(
    seed: int, closing: bool, settlements: bool, crosses: bool
) -> None:
    """100 random messages over two trading days (prints, intents, fills and
    cancels, the kill switch, resumes, connection changes), the gate's own
    publications landing in the stream 0 to 2 messages late: the live
    state and the fold of the store are the same. Before the folds of a
    repeated resume, of a reduce level reached as a resume lands and of a
    fill marking a symbol other accounts hold were fixed, 12 of these 200
    seeds differed. With ``closing``, flattens' closing orders come too, and
    are filled and canceled like the gate's own. With ``settlements``, option
    settlements' fills come too (no price, no loss check between their legs);
    with ``crosses``, internal crosses' fills (one complete fill per
    strategy and leg, each checked)."""
    rng = random.Random(seed)
    settling: list[Event] | None = [] if settlements else None
    before: list[Event] = [trade("AAPL", 100), trade("MSFT", 50)]
    gate, clock, bus = await live_gate(before, T0)
    store = list(before)
    landing: list[tuple[int, list[Event]]] = []
    last, t, count = 0, T0, 100
    for k in range(count):
        # Mostly a few hundred ms apart; once, across the next day's start.
        t += (17 * 3600 * S - 30 * S) if k == count // 2 else rng.randint(1, 2000) * MS
        event = _random_message(
            rng, gate, store, t, closing=closing, settling=settling, crosses=crosses
        )
        clock.ns = t + rng.randint(0, 5) * MS
        await deliver(gate, event, len(store) + 1, k + 1)
        store.append(event)
        last = max(k + rng.choice([0, 0, 1, 2]), last)  # publications keep their order
        landing += [(last, batch) for batch in bus.batches]
        bus.batches.clear()
        store += [e for at, batch in landing if at == k for e in batch]
    store += [e for at, batch in landing if at >= count for e in batch]
    folded = fold(RiskState.initial(LIMITS), store)
    assert same(gate.state, folded) == [], [e.type for e in store]
