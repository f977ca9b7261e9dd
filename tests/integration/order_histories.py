"""Recorded histories of the order path, shared by the rebuild-from-the-store
tests (test_broker_history, test_strategy_history, test_strategy_checkpoints):
a flatten whose closing fills the gateway books to strategies, and random
chains of two strategies' signals and intents taken to a broker."""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    OrderIntentCreated,
    ReasonCode,
    Side,
)
from libs.strategy.testing import At, accept, deny, market_intent, signal
from services.broker_gateway.domain.model import BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker
from tests.integration.tracker_inputs import fill_update, order

D = Decimal
ACCOUNT = "acct"
DAY_NS = 86_400 * 10**9
#: What the strategy chains are dated from: the tests' now.
NOW = time.time_ns()
STRATEGIES = ("s1", "s2")
SYMBOLS = ("AAPL", "MSFT")
SIDES: tuple[Side, ...] = ("buy", "sell")
OUTCOMES = (
    "denied",
    "undecided",
    "not_yet_at_the_broker",
    "working",
    "working_partly_filled",
    "filled",
    "filled_in_parts",
    "canceled",
    "canceled_after_a_fill",
    "rejected",
)


class Clock:
    """Set by the test: every order's events carry its own time."""

    def __init__(self) -> None:
        self.t = 0

    def now_ns(self) -> int:
        return self.t


def flatten_and_close(live: OrderTracker, clock: Clock) -> list[Event]:
    """Close-all while positions are held: the closing fills go to strategies."""
    net = {sym: sum((q for (_, s), q in live.positions.items() if s == sym), D(0))
           for sym in ("AAPL", "MSFT")}  # fmt: skip
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="test"),
        source="test/risk-gate",
        clock=At(clock.t),
    )
    live.flatten_started(flatten)
    closing = [
        BrokerOrder(
            broker_order_id=f"close-{sym}-{flatten.id.hex[:8]}",
            client_order_id=f"close-{sym}-{flatten.id.hex[:8]}",
            symbol=sym,
            side="sell" if q > 0 else "buy",
            quantity=abs(q),
            filled_quantity=D(0),
            filled_avg_price=None,
            status="accepted",
        )
        for sym, q in net.items()
        if q != 0
    ]
    out: list[Event] = [flatten, *live.flatten_done(closing)]
    for o in closing:
        done = dataclasses.replace(
            o, filled_quantity=o.quantity, filled_avg_price=D(99), status="filled"
        )
        out += live.on_update(fill_update(done, str(o.quantity), "99", f"x-{o.broker_order_id}"))
    return out


class Chains:
    """Signals and their intents, decided and taken to a broker as told."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.broker = OrderTracker(ACCOUNT, clock=self.clock, source="broker-gateway/test")
        self.events: list[Event] = []
        #: Per chain (signal id): finished or not, and when it last changed.
        self.chains: dict[uuid.UUID, tuple[bool, int]] = {}

    def chain(self, strategy: str, outcomes: list[str]) -> None:
        cause = signal(strategy, self.rng.choice(SYMBOLS), at_ns=self.clock.t)
        self.events.append(cause)
        for outcome in outcomes:
            side = self.rng.choice(SIDES)
            made = market_intent(cause, ACCOUNT, side, self.rng.randint(2, 9))
            self.events.append(made)
            self._take(made, outcome)
        working = any(o in WORKING for o in outcomes)
        self.chains[cause.id] = (not working, self.clock.t)

    def _take(self, intent: OrderIntentCreated, outcome: str) -> None:
        if outcome == "undecided":
            return
        if outcome == "denied":
            self.events.append(deny(intent, reason=ReasonCode.MAX_STRATEGY_POSITION))
            return
        decision, cmd = accept(intent)
        self.events += [decision, cmd]
        oid = cmd.payload.order_id
        p = cmd.payload
        self.broker.plan_submit(cmd)
        self.broker.request(oid)
        if outcome == "not_yet_at_the_broker":
            return
        bid = f"b-{oid.hex[:12]}"
        if outcome == "rejected":
            self.events += self.broker.submitted(oid, order(cmd, status="rejected", broker_id=bid))
            return
        self.events += self.broker.submitted(oid, order(cmd, broker_id=bid))
        q = int(p.quantity)
        parts = {
            "working": [],
            "canceled": [],
            "working_partly_filled": [1],
            "canceled_after_a_fill": [1],
            "filled": [q],
        }.get(outcome, [1, q - 1])
        cum = 0
        for k, part in enumerate(parts):
            cum += part
            status = "filled" if cum == q else "partially_filled"
            o = order(cmd, str(cum), str(100 + k), status, broker_id=bid)
            self.events += self.broker.on_update(
                fill_update(o, str(part), str(100 + k), f"{bid}-{k}")
            )
        if outcome.startswith("canceled"):
            o = order(cmd, str(cum), "100" if cum else None, "canceled", broker_id=bid)
            self.events += self.broker.on_update(OrderUpdate("canceled", o, self.clock.t))


WORKING = {"undecided", "not_yet_at_the_broker", "working", "working_partly_filled"}


def strategy_chains(seed: int) -> Chains:
    """160 chains over ten days (the last 40 within the hour), a flatten among
    them; some old fills recorded without their strategy."""
    c = Chains(seed)
    for i in range(160):
        c.clock.t = NOW - (10 * DAY_NS if i < 120 else 3600 * 10**9) + i * 10**9
        n = c.rng.choice([1, 1, 2])
        outcomes = [OUTCOMES[(i + k) % len(OUTCOMES)] for k in range(n)]
        c.chain(c.rng.choice([*STRATEGIES, "not-ours"]), outcomes)
        if i == 90:
            # A flatten's closing fills, booked by the gateway to strategies.
            c.events += flatten_and_close(c.broker, c.clock)
    # Some old fills recorded without the strategy they are booked to (as
    # before fills named it): the books find them through their chains.
    for k, e in enumerate(c.events[:300]):
        if isinstance(e, FillReceived) and k % 3 == 0:
            c.events[k] = e.model_copy(
                update={"payload": e.payload.model_copy(update={"strategy": None})}
            )
    return c
