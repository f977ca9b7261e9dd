"""``evolve(state, event) -> state``: fold one event into the risk state.

Pure and synchronous: the same function rebuilds the state from the event
store on start-up, keeps it current live, and runs inside the backtest.
Events it does not care about return the state unchanged.

The trading day rolls forward on the first event stamped in a new day
(exchange time, :func:`~services.risk_gate.domain.state.trading_day`): day
P&L starts again from the last marks, the daily-loss breaker re-arms. The
gate's own events (:data:`GATE_TYPES`) do not roll it: the live gate applies
them as it publishes them, ahead of the messages that reach the stream before
them, so a roll on their (wall-clock) time would move the day at another
point live than in a fold of the store. Rolled on the other events only, the
day moves at the same point of the stream in both. Their ids (decided
intents, reactions applied) are filed by the day they were made in, not the
day they are applied in (``state.file_own``), so that live and folded they
count for the same day. An event moves it by its market time
(``Event.market_ns``: its own, but no later than a few seconds after it was
made; a bar's, the last instant of its window, not its end): one bad stamp a
day ahead must not end the real day.
Trading states and the kill switch do not reset: what halted an account
holds until an operator resumes it.

The handlers live by family beside this module: ``evolve_orders`` (prices,
intents, orders, fills) and ``evolve_obligations`` (the loss checks, what
the gate owes a scope, and the events that settle it).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BreakerTripped,
    BrokerConnectionChanged,
    ClosingOrdersPlaced,
    FillReceived,
    KillSwitchEngaged,
    KillSwitchReleased,
    MarkUpdated,
    OrderCanceled,
    OrderIntentCreated,
    OrderRejected,
    RiskDecisionMade,
    SubmitOrder,
    TradePrinted,
    TradingResumeRequested,
    TradingStateChanged,
)
from services.risk_gate.domain.evolve_obligations import (
    on_breaker,
    on_connection,
    on_kill_switch,
    on_resume,
    on_state_changed,
)
from services.risk_gate.domain.evolve_orders import (
    day_time,
    on_closing_orders,
    on_decision,
    on_fill,
    on_intent,
    on_price,
    on_submit,
    order_ended,
    stamped_ahead,
)
from services.risk_gate.domain.state import (
    Carried,
    KillSwitch,
    RiskState,
    file_own,
    frozen_map,
    trading_day,
)

#: Events applied once per id. A later copy (the same event published again
#: past JetStream's duplicate window) changes nothing, as in the store, where
#: the recorder keeps it as ``DuplicateSuppressed``. The other types evolve
#: reads (``RELEVANT_TYPES``) are idempotent by what they are: an intent is
#: decided once, a fill counted once, an order opened and closed once, a
#: price marks what it marks.
ONCE_TYPES = frozenset(
    {
        "KillSwitchEngaged",
        "KillSwitchReleased",
        "TradingResumeRequested",
        "TradingStateChanged",
        "BreakerTripped",
        "BrokerConnectionChanged",
        "ClosingOrdersPlaced",
    }
)

#: The event types evolve reads; everything else leaves the state as it is.
#: ``OrderAccepted`` is not among them: an order counts from its command until
#: a fill completes it or the broker rejects or cancels it, whether or not the
#: broker has acknowledged it yet, so the gate need not wake for broker acks
#: (one delivery per order fewer, at the moment the ack is on its way). A
#: flatten's closing orders, which no command of the gate's placed, count
#: from their ``ClosingOrdersPlaced`` (in ``ONCE_TYPES``) the same way.
RELEVANT_TYPES = frozenset(
    {
        "TradePrinted",
        "BarClosed",
        "MarkUpdated",
        "OrderIntentCreated",
        "RiskDecisionMade",
        "SubmitOrder",
        "OrderRejected",
        "OrderCanceled",
        "FillReceived",
        *ONCE_TYPES,
    }
)

#: Market prices: what marks a symbol, besides fills.
PRICE_TYPES = frozenset({"TradePrinted", "BarClosed", "MarkUpdated"})

#: What the gate publishes itself (``risk.>``, ``orders.cmd.>``). Live it
#: applies them when it publishes them, i.e. before messages the stream stores
#: ahead of them; they must not roll the trading day (see the module docstring).
GATE_TYPES = frozenset({"RiskDecisionMade", "SubmitOrder", "BreakerTripped", "TradingStateChanged"})

replace = dataclasses.replace


def roll_day(state: RiskState, ts_ns: int) -> RiskState:
    """Move ``state`` to the trading day of ``ts_ns`` if that day is later."""
    day = trading_day(ts_ns, state.limits.trading_day)
    if state.day is None:
        return replace(state, day=day)
    if day <= state.day:
        return state

    def mark(symbol: str) -> Decimal | None:
        m = state.marks.get(symbol)
        return m.price if m is not None else None

    positions = frozen_map((k, p.new_day(mark(k[1]))) for k, p in state.positions.items())
    strategy_positions = frozen_map(
        (k, p.new_day(mark(k[2]))) for k, p in state.strategy_positions.items()
    )
    unpriced: dict[str, Carried] = {}
    for k, p in positions.items():
        if p.quantity and k[1] not in state.marks:
            c = unpriced.get(k[1], Carried())
            unpriced[k[1]] = replace(c, accounts=(*c.accounts, (k, p)))
    for sk, p in strategy_positions.items():
        if p.quantity and sk[2] not in state.marks:
            c = unpriced.get(sk[2], Carried())
            unpriced[sk[2]] = replace(c, strategies=(*c.strategies, (sk, p)))
    return replace(
        state,
        day=day,
        unpriced_carried=frozen_map(unpriced),
        positions=positions,
        strategy_positions=strategy_positions,
        decided=state.decided.roll(day),
        fills_seen=state.fills_seen.roll(day),
        applied=state.applied.roll(day),
    )


def evolve(state: RiskState, event: Event) -> RiskState:
    """The state after ``event``."""
    if event.type not in RELEVANT_TYPES:
        return state
    if event.type in ONCE_TYPES:
        if event.id in state.applied:
            return state
        if event.type in GATE_TYPES:  # filed where the live gate did (file_own)
            applied = file_own(state, state.applied, event.id, event.market_ns)
        else:
            applied = state.applied.add(event.id)
        state = replace(state, applied=applied)
    if event.type in PRICE_TYPES and stamped_ahead(state, event, event.payload.symbol):
        # Not a price, nor a time to roll the trading day on: see stamped_ahead.
        return state
    if event.type not in GATE_TYPES:
        # Its market time (Event.market_ns): a stamp far ahead of when it was
        # made is a bad clock, and a day ahead it would roll the gate into
        # the next trading day (day P&L from 0, the breaker armed again) in
        # the middle of the real one. A publisher whose own clock runs a day
        # ahead still moves the day; nothing in an event can tell.
        # A bar by the last instant of its window (day_time), not by its end.
        state = roll_day(state, day_time(event))
    match event:
        case TradePrinted():
            return on_price(state, event, event.payload.symbol, event.payload.price)
        case BarClosed():
            return on_price(state, event, event.payload.symbol, event.payload.close)
        case MarkUpdated():
            return on_price(state, event, event.payload.symbol, event.payload.price)
        case OrderIntentCreated():
            return on_intent(state, event)
        case RiskDecisionMade():
            return on_decision(state, event)
        case SubmitOrder():
            return on_submit(state, event)
        case ClosingOrdersPlaced():
            return on_closing_orders(state, event)
        case OrderRejected() | OrderCanceled():
            return order_ended(state, event.payload.order_id)
        case FillReceived():
            return on_fill(state, event)
        case KillSwitchEngaged():
            return on_kill_switch(state, event)
        case KillSwitchReleased():
            p = event.payload
            return replace(
                state, kill_switch=KillSwitch(False, p.operator, p.reason, event.ts_event)
            )
        case TradingResumeRequested():
            return on_resume(state, event)
        case TradingStateChanged():
            return on_state_changed(state, event)
        case BreakerTripped():
            return on_breaker(state, event)
        case BrokerConnectionChanged():
            return on_connection(state, event)
    return state


def evolve_all(state: RiskState, events: list[Event] | tuple[Event, ...]) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state
