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

import random
import uuid

import pytest

from libs.contract.envelope import Event
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import LIMITS, T0, S, conn, fill, intent, trade
from tests.unit.risk_live_gates import MS, deliver, live_gate, random_message, same
from tests.unit.risk_timelines import fold

#: 04:00 New York on 2026-03-11: the next trading day starts.
DAY_START = T0 + 17 * 3600 * S


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
        event = random_message(
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
