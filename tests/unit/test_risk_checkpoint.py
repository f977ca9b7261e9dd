"""Risk-state checkpoints: the codec, and the fold from a checkpoint being
exactly the fold from the start.

The timelines are made the way the live gate makes its store: market data,
intents decided by ``decide``, broker fills and cancels of the orders that
are open, operator commands and connection changes, and after every event
the reactions ``react`` owes (breakers, flattens, halts), all folded by
``evolve`` across a trading-day change.
"""

from __future__ import annotations

import importlib.metadata
import random
import zlib
from decimal import Decimal

import pytest

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
from services.risk_gate.adapters.checkpoint import (
    CODE_DIGEST,
    FIELDS,
    FORMAT,
    decode,
    encode,
    field_names,
    limits_digest,
    risk_code_digest,
)
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import LIMITS, T0, S, bar, conn, ev, fill, intent, op, trade

D = Decimal
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


#: Seeds whose timelines trip a breaker and a reduce-only level too (see the guard below).
TIMELINES = {seed: timeline(seed) for seed in (8, 9, 15)}


def test_the_timelines_reach_what_a_checkpoint_must_carry() -> None:
    """Guards the test below: its timelines do hold every kind of state."""
    seen: dict[str, bool] = {name: False for name in FIELDS}
    days = set()
    for events in TIMELINES.values():
        state = RiskState.initial(LIMITS)
        for e in events:
            state = evolve(state, e)
            for name in FIELDS:
                value = getattr(state, name)
                if name == "kill_switch":
                    seen[name] |= value.engaged
                elif name in ("decided", "fills_seen", "applied"):
                    seen[name] |= len(value.yesterday) > 0 and len(value.today) > 0
                elif name == "day":
                    days.add(value)
                    seen[name] = len(days - {None}) > 1
                else:
                    seen[name] |= bool(value)
    # Symbols carried into a day unpriced need a position no price ever
    # marked (a settlement's): test_risk_first_price round-trips one.
    seen["unpriced_carried"] = True
    assert [name for name, was in seen.items() if not was] == []


def test_every_state_field_is_in_the_checkpoint() -> None:
    assert set(FIELDS) == field_names()


def test_a_calendar_upgrade_ignores_the_old_checkpoints() -> None:
    """The digest names the installed exchange-calendars: a version that adds
    a holiday or an early close moves an option's expiry, so a state folded
    under another version is not used."""
    installed = importlib.metadata.version("exchange-calendars")
    assert risk_code_digest(installed) == CODE_DIGEST
    assert risk_code_digest("4.13.2") != risk_code_digest("4.13.3")
    assert risk_code_digest(None) != risk_code_digest(installed)


@pytest.mark.parametrize("seed", sorted(TIMELINES))
def test_folding_on_from_a_checkpoint_is_folding_from_the_start(seed: int) -> None:
    events = TIMELINES[seed]
    initial = RiskState.initial(LIMITS)
    full = fold(initial, events)
    state = initial
    for k, event in enumerate(events):
        # The checkpoint after the first k events, read back...
        restored = decode(encode(state), LIMITS)
        assert restored == state, f"round trip at {k}"
        # ...then the rest of the timeline folded on from it.
        assert fold(restored, events[k:]) == full, f"split at {k}"
        state = evolve(state, event)
    assert decode(encode(full), LIMITS) == full


def test_a_checkpoint_is_read_under_the_given_limits() -> None:
    state = fold(RiskState.initial(LIMITS), TIMELINES[8][:50])
    other = RiskLimits()
    restored = decode(encode(state), other)
    assert restored.limits is other
    assert limits_digest(other) != limits_digest(LIMITS)
    assert limits_digest(LIMITS) == limits_digest(RiskLimits.model_validate(LIMITS.model_dump()))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not zlib", "unreadable checkpoint: error"),
        (zlib.compress(b"[1, 2"), "unreadable checkpoint: JSONDecodeError"),
        (zlib.compress(b'{"format": 99, "state": {}}'), "format 99, expected"),
        (
            zlib.compress(f'{{"format": {FORMAT}, "state": {{}}}}'.encode()),
            "unreadable checkpoint: KeyError",
        ),
    ],
)
def test_an_unreadable_checkpoint_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(data, LIMITS)
