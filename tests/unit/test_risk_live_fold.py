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
import uuid
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from libs.contract.codec import encode
from libs.contract.envelope import Event
from services.risk_gate.config import RiskGateSettings
from services.risk_gate.domain.state import DayIds, RiskState
from services.risk_gate.gate import RiskGate
from tests.unit.test_risk_checkpoint import fold
from tests.unit.test_risk_evolve import LIMITS, T0, S, conn, fill, intent, trade

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


@pytest.mark.parametrize("lag_ms", [-20, 0, 20, 70])
@pytest.mark.parametrize("delay", [0, 1, 2])
async def test_the_live_state_is_the_fold_of_the_store_across_the_day_start(
    lag_ms: int, delay: int
) -> None:
    """``lag_ms``: the gate's clock minus the message's time when it handles it;
    ``delay``: how many later messages reach the stream before what the gate
    published in answer to one."""
    before = preamble()
    clock, bus = Clock(), FakeBus()
    gate = RiskGate(RiskGateSettings(instance="test"), LIMITS, clock=clock)
    gate.state = fold(RiskState.initial(LIMITS), before)
    gate.last_seq = len(before)
    gate.bus = cast(Any, bus)
    stream = messages()
    clock.ns = stream[0].ts_event + lag_ms * MS
    await gate._go_live(cast(Any, FakeStream()))
    assert bus.batches == []
    store = list(before)
    landing: list[tuple[int, list[Event]]] = []
    for k, event in enumerate(stream):
        clock.ns = event.ts_event + lag_ms * MS
        seq = len(before) + k + 1
        msg = SimpleNamespace(
            reply=f"$JS.ACK.TRADEBUS.risk-gate.1.{seq}.{k + 1}.{clock.ns}.0",
            data=encode(event),
            subject="test",
            headers=None,
        )
        await gate._on_message(cast(Any, msg))
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
