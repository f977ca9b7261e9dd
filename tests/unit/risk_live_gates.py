"""The real :class:`~services.risk_gate.gate.RiskGate` gone live on a fake bus
and a set clock, messages handed to it as JetStream delivers them, random
traffic for it, and the comparison of its state with a fold of the store:
what the live-fold, redelivery, bar-day, first-price and crash-cut tests
build on; and the gate handed a stream with its own events landing in it
late (:func:`lagged_store`).
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

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
from tests.unit.risk_timelines import fold

MS = S // 1000


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


def same(live: RiskState, folded: RiskState) -> list[str]:
    """The fields in which the two differ. Ids remembered per day are compared
    as sets (all of ``DayIds``: today's, the earlier day's, those ahead): an
    id of the gate's own event that reaches a fold after a roll the live gate
    applied it before is filed there under the earlier day (``file_own``),
    live under today; either keeps it a day."""
    differ = []
    for f in dataclasses.fields(RiskState):
        a, b = getattr(live, f.name), getattr(folded, f.name)
        if isinstance(a, DayIds):
            a, b = set(a), set(b)
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


async def lagged_store(
    before: list[Event], stream: list[Event], now_ns: int, lag_ms: int
) -> tuple[RiskGate, list[Event]]:
    """The real gate with ``before`` folded in, gone live at ``now_ns``, handed
    ``stream`` one message at a time, each ``lag_ms`` after it was published
    (``ts_init``). What the gate publishes in answer lands in the stream one
    message late: after the next message. Returns the gate and the store
    that makes (``before``, ``stream`` and the gate's events, in stream order)."""
    gate, clock, bus = await live_gate(before, now_ns)
    store = list(before)
    owed: list[Event] = []
    for k, event in enumerate(stream):
        clock.ns = event.ts_init + lag_ms * MS
        await deliver(gate, event, len(store) + 1, k + 1)
        store.append(event)
        store += owed
        owed = [e for batch in bus.batches for e in batch]
        bus.batches.clear()
    store += owed
    return gate, store


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


def random_message(
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
