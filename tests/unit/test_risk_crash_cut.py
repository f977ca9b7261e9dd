"""A gate that stops partway, rebuilt from the store, ends where one that
never stopped does.

The live gate publishes its answer to a message (a decision and its order,
a breaker's trip, a flatten, a halt) after it has folded the message in; it
can stop in between, and then the stream holds the cause without (some of)
its answer. Whatever was published before the stop reaches the stream. The
gate started again folds the stream up to there and goes live: it owes the
answers that never went out (``react``), and decides the intents left
undecided, with the same derived ids. Here random traffic runs through a
gate that never stops and through one that stops at random points, before,
between or after its answers to a message, each time replaced by a new
gate rebuilt from what the stream holds then: after each rebuild, and at
the end, the two states are the same, and the last gate's state is the fold
of its stream.
"""

from __future__ import annotations

import dataclasses
import os
import random
import uuid

import pytest

from libs.contract.envelope import Event
from services.risk_gate.domain.state import DayIds, RiskState
from services.risk_gate.gate import RiskGate
from tests.unit.risk_evolve_inputs import LIMITS, T0, S, fill, trade
from tests.unit.risk_live_gates import FakeBus, deliver, live_gate, random_message
from tests.unit.risk_timelines import fold

MS = S // 1000
#: 04:00 New York on 2026-03-11: the next trading day starts.
DAY_START = T0 + 17 * 3600 * S
DAY = 24 * 3600 * S


def differ(live: RiskState, rebuilt: RiskState) -> list[str]:
    """The fields in which ``rebuilt`` (a fold, or a gate rebuilt by one)
    does not agree with ``live``.

    Ids remembered per day (``DayIds``) need not be the same: both file the
    gate's own events under the day they were made, but one that reaches a
    fold after a roll the live gate applied it before is filed under the
    earlier day there, and with more than one roll a fold may still keep an
    id the live gate has forgotten (``DayIds``' docstring). It must remember
    every id the live gate does; one more only turns away a copy longer.
    """
    out = []
    for f in dataclasses.fields(RiskState):
        a, b = getattr(live, f.name), getattr(rebuilt, f.name)
        if isinstance(a, DayIds):
            if not set(a) <= set(b):
                out.append(f.name)
        elif a != b:
            out.append(f.name)
    return out


class Run:
    """One gate's stream: the messages and its own publications, landing
    ``delay`` messages after the one they answer (in their order)."""

    def __init__(self, gate: RiskGate, bus: FakeBus, store: list[Event]) -> None:
        self.gate, self.bus, self.store = gate, bus, store
        self.landing: list[tuple[int, list[Event]]] = []
        self.last = 0

    async def handle(self, event: Event, k: int, now_ns: int, delay: int) -> list[list[Event]]:
        """Deliver message ``k``; what the gate published for it, not landed yet."""
        self.gate.clock.ns = now_ns  # type: ignore[attr-defined]
        await deliver(self.gate, event, len(self.store) + 1, k + 1)
        self.store.append(event)
        published = list(self.bus.batches)
        self.bus.batches.clear()
        self.last = max(k + delay, self.last)
        self.landing += [(self.last, batch) for batch in published]
        return published

    def land(self, k: int) -> None:
        """What lands in the stream after message ``k``."""
        self.store += [e for at, batch in self.landing if at == k for e in batch]
        self.landing = [(at, batch) for at, batch in self.landing if at != k]

    def land_all(self) -> None:
        """Everything still in flight, in its order (the gate stopped, or the traffic ended)."""
        self.store += [e for _, batch in self.landing for e in batch]
        self.landing.clear()


async def _run(seed: int, settlements: bool, closing: bool) -> int:
    rng = random.Random(seed)
    settling: list[Event] | None = [] if settlements else None
    # Both accounts hold AAPL from the start, few enough that the day's own
    # prints (85 to 110) take neither past its limit, but the slide around
    # the day start does, on either side of it.
    before: list[Event] = [
        trade("AAPL", 100),
        trade("MSFT", 50),
        fill(uuid.uuid4(), 30, 100, strategy="sma"),
        fill(uuid.uuid4(), 15, 100, account="b", strategy="mr"),
    ]
    ref_gate, _, ref_bus = await live_gate(before, T0)
    ref = Run(ref_gate, ref_bus, list(before))
    gate, _, bus = await live_gate(before, T0)
    run = Run(gate, bus, list(before))
    t, count, rebuilds, crossed = T0, 90, 0, -10
    for k in range(count):
        # Mostly a few hundred ms apart; twice, to a second or two before the
        # next day's start, so that the gate crosses it with answers in flight.
        if k in (count // 3, 2 * count // 3):
            t = DAY_START + (k // (count // 3) - 1) * DAY - rng.randint(0, 3000) * MS
            crossed = k
        else:
            t += rng.randint(1, 2000) * MS
        if k - crossed < 6 and rng.random() < 0.7:
            # Around the day start mostly a slide of AAPL in wide steps:
            # losses past the limits on both sides of it, trips still landing.
            mark = ref.gate.state.mark("AAPL")
            last = int(mark.price) if mark is not None else 100
            event: Event = trade("AAPL", max(1, last + rng.randint(-40, 15)), t)
        else:
            event = random_message(rng, ref.gate, ref.store, t, closing=closing, settling=settling)
        now = t + rng.randint(0, 5) * MS
        near = k - crossed < 6
        delay = rng.choice([2, 3, 4] if near else [0, 0, 1, 2])
        await ref.handle(event, k, now, delay)
        ref.land(k)
        published = await run.handle(event, k, now, delay)
        if rng.random() < (0.25 if near else 0.1):
            # The gate stops after ``kept`` of its answers to this message
            # went out: the rest never do. What it published reaches the stream.
            kept = 0 if near else rng.randint(0, len(published))
            lost = [id(b) for b in published[kept:]]
            run.landing = [(at, b) for at, b in run.landing if id(b) not in lost]
            run.land_all()
            gate, _, bus = await live_gate(run.store, now)
            rebuilt = Run(gate, bus, run.store)
            # What the new gate owed and published going live lands first.
            rebuilt.landing = [(k, batch) for batch in bus.batches]
            bus.batches.clear()
            rebuilt.last = k
            run = rebuilt
            rebuilds += 1
            assert differ(ref.gate.state, run.gate.state) == [], (seed, k, kept)
        run.land(k)
    ref.land_all()
    run.land_all()
    assert differ(ref.gate.state, run.gate.state) == [], seed
    assert differ(run.gate.state, fold(RiskState.initial(LIMITS), run.store)) == [], seed
    return rebuilds


VARIANTS = {"": (False, False), "settlements": (True, False), "closing orders": (False, True)}


def _cases(seeds: int) -> list[object]:
    # Seed 28 with settlements found a fold forgetting decided intents the
    # live gate remembered (test_risk_day_ids_fold; fixed by state.file_own).
    return [
        pytest.param(seed, *flags, id=f"{seed}-{name}")
        for seed in range(seeds)
        for name, flags in VARIANTS.items()
    ]


@pytest.mark.parametrize(
    ("seed", "settlements", "closing"), _cases(int(os.environ.get("RISK_CRASH_SEEDS", "40")))
)
async def test_a_gate_rebuilt_after_a_stop_ends_where_the_live_one_does(
    seed: int, settlements: bool, closing: bool
) -> None:
    """90 random messages over three trading days (prints, intents, fills and
    cancels, the kill switch, resumes, connection changes; option
    settlements or flattens' closing orders in two of the variants), the
    gate's own publications landing 0 to 2 messages late, the gate stopping
    after about one message in ten. Around each day start a slide of AAPL
    takes both accounts past their limits on both sides of it, the gate's
    answers land 2 to 4 messages late, and it stops after one message in
    four, none of its answers to it out. With d504b38's fix (a trip owed
    for the day gone no longer skips the new day's) reverted, 4 more of the
    120 cases fail: the rebuilt gate owed no trip for the new day."""
    rebuilds = await _run(seed, settlements, closing)
    assert rebuilds > 0
