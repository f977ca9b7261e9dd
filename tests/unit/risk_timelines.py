"""Timelines of the risk gate's store, and the fold of one: what the
checkpoint, redelivery, live-fold and crash-cut tests build on.

The timelines are made the way the live gate makes its store: market data,
intents decided by ``decide``, broker fills and cancels of the orders that
are open, operator commands and connection changes, and after every event
the reactions ``react`` owes (breakers, flattens, halts), all folded by
``evolve`` across a trading-day change.
"""

from __future__ import annotations

import random

from libs.contract.envelope import Event
from libs.contract.events import (
    KillSwitchEngaged,
    KillSwitchReleased,
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
    TradingResumeRequested,
)
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import LIMITS, T0, D, S, bar, conn, ev, fill, intent, op, trade

HOUR = 3600 * S


def fold(state: RiskState, events: list[Event]) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state


def timeline(seed: int, steps: int = 120) -> list[Event]:
    """A store's worth of events for the gate, ``steps`` causes long."""
    rng = random.Random(seed)
    state = RiskState.initial(LIMITS)
    events: list[Event] = []

    def add(*new: Event) -> None:
        nonlocal state
        for e in new:
            state = evolve(state, e)
            events.append(e)

    t = T0
    add(trade("AAPL", 100, t), trade("MSFT", 50, t))
    for step in range(steps):
        # A few seconds apart; halfway, past 04:00 New York: a new trading day.
        t += (18 * HOUR) if step == steps // 2 else rng.randint(1, 5) * S
        roll = rng.random()
        open_orders = sorted(state.orders.values(), key=lambda o: o.ts_ns)
        if roll < 0.25:
            price = D(rng.randint(9000, 11000)) / 100
            add(
                trade("AAPL", str(price), t)
                if rng.random() < 0.7
                else bar("MSFT", str(price / 2), t)
            )
        elif roll < 0.5:
            i = intent(
                rng.choice([5, 10, 50, 400]),
                rng.choice(["buy", "sell"]),
                t,
                **rng.choice([{}, {"strategy": "mr", "account": "b"}]),
            )
            add(i)
            add(*decide(state, i, t).events)
        elif roll < 0.7 and open_orders:
            o = rng.choice(open_orders)
            part = o.remaining if rng.random() < 0.6 else max(o.remaining // 2, D(1))
            price = D(rng.randint(8000, 12000)) / 100
            add(
                fill(
                    o.order_id,
                    str(part),
                    str(price),
                    side=o.side,
                    leaves=str(o.remaining - part),
                    account=o.account,
                    symbol=o.symbol,
                    commission=rng.choice([0, 1]),
                    t=t,
                )
            )
        elif roll < 0.75 and open_orders:
            o = rng.choice(open_orders)
            if rng.random() < 0.5:
                add(
                    ev(
                        OrderCanceled,
                        OrderCanceledPayload(order_id=o.order_id, account=o.account),
                        t,
                    )
                )
            else:
                payload = OrderRejectedPayload(order_id=o.order_id, account=o.account, reason="no")
                add(ev(OrderRejected, payload, t))
        elif roll < 0.8:
            add(op(rng.choice([KillSwitchEngaged, KillSwitchReleased]), t=t))
        elif roll < 0.85:
            add(op(TradingResumeRequested, rng.choice(["global", "acct", "b"]), t))
        elif roll < 0.9:
            add(conn(rng.choice(["disconnected", "connected"]), rng.choice(["acct", "b"]), t))
        add(*react(state, t))
    return events


#: Seeds whose timelines trip a breaker and a reduce-only level too (guarded by
#: test_risk_checkpoint's test_the_timelines_reach_what_a_checkpoint_must_carry).
TIMELINES = {seed: timeline(seed) for seed in (8, 9, 15)}
