"""``react(state, now) -> events``: what the gate must publish because of its state.

Two things are owed (see :mod:`~services.risk_gate.domain.state`), in this
order:

- the reaction to every obligation, in the order the obligations arose:

  ========================  ==================================================
  obligation                events, in this order
  ========================  ==================================================
  daily_loss (account)      BreakerTripped, CancelOrder per open order,
                            FlattenAccount, TradingStateChanged -> halted
  connection_lost (acct)    the same, breaker ``connection_lost``
  kill_switch (global)      per account: BreakerTripped(kill_switch), its
                            CancelOrders, FlattenAccount; then
                            TradingStateChanged(global) -> halted
  resume (scope)            TradingStateChanged -> active
  reduce (account)          CancelOrder per open order that would grow a
                            position (``growing_orders``),
                            TradingStateChanged -> reducing (none when the
                            account is halted: a halt is never lowered)
  ========================  ==================================================

- for every accepted intent whose command is not out yet (the gate stopped
  between the decision and its order): its ``SubmitOrder`` if the intent
  still passes every check now, else a denial, ``RiskDecisionMade(denied)``
  with the failing check's reason, that withdraws it (:func:`owed_order`).

Each event is folded into a working copy of the state before the next is
computed, so a reaction sees the effect of the ones before it: an owed order
is checked after the breakers, the kill switch and the halts have been
applied, and does not go out past them. The caller publishes the events in
order and evolves its own state with each; the trailing
``TradingStateChanged`` clears the obligation, the order or the denial the
owed intent. All ids derive from the trigger (the intent), so reacting twice
to the same thing repeats the same events.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal, TypeVar

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import (
    BreakerPayload,
    BreakerTripped,
    CancelOrder,
    CancelOrderPayload,
    FlattenAccount,
    FlattenAccountPayload,
    OrderIntentCreated,
    ReasonCode,
    RiskDecisionMade,
    SubmitOrder,
    TradingStateChanged,
    TradingStatePayload,
)
from services.risk_gate.domain.commands import SOURCE, make, submit_order, withdrawal
from services.risk_gate.domain.decide import check
from services.risk_gate.domain.evolve import evolve, roll_day
from services.risk_gate.domain.evolve_obligations import RESULTING_STATE
from services.risk_gate.domain.state import EXACT, ZERO, Obligation, Order, RiskState

E = TypeVar("E", bound=Event)
Breaker = Literal["daily_loss", "connection_lost", "kill_switch"]


def react(state: RiskState, now_ns: int, *, source: str = SOURCE) -> list[Event]:
    """Every event owed by ``state``, in publishing order (empty when none)."""
    out: list[Event] = []
    for obligation in state.obligations:
        for e in _reaction(state, obligation, now_ns, source):
            out.append(e)
            state = evolve(state, e)
    for intent in list(state.awaiting_order.values()):
        e = owed_order(state, intent, now_ns, source=source)
        out.append(e)
        state = evolve(state, e)
    return out


def owed_order(
    state: RiskState, intent: OrderIntentCreated, now_ns: int, *, source: str = SOURCE
) -> SubmitOrder | RiskDecisionMade:
    """The order of an accepted intent that has not gone out, if the intent
    would still pass every check now; else the denial that withdraws it.

    An order is owed only after a crash between a decision and its order, so
    it goes out late, maybe much later: after the breakers, the kill switch
    and the halts that came meanwhile (the obligations are settled first), and
    at a price that may have run away. It is checked again as a fresh intent
    would be (``decide.check``, on the state rolled to ``now_ns``).
    """
    reason, detail = check(roll_day(state, now_ns), intent, now_ns)
    if reason is ReasonCode.ACCEPTED:
        return submit_order(intent, now_ns, source=source)
    return withdrawal(intent, reason, detail, now_ns, source=source)


def _emit(
    cls: type[E], payload: Any, ob: Obligation, now_ns: int, source: str, *parts: object
) -> E:
    return make(
        cls,
        payload,
        event_id=derived_id(SOURCE, ob.kind, ob.scope, ob.trigger_id, *parts),
        now_ns=now_ns,
        source=source,
        correlation_id=ob.correlation_id,
        causation_id=ob.trigger_id,
    )


def _flatten(
    state: RiskState, ob: Obligation, account: str, now_ns: int, source: str
) -> list[Event]:
    breaker: Breaker = (
        "kill_switch"
        if ob.kind == "kill_switch"
        else ("daily_loss" if ob.kind == "daily_loss" else "connection_lost")
    )
    events: list[Event] = [
        _emit(
            BreakerTripped,
            BreakerPayload(
                account=account, breaker=breaker, limit=ob.limit, value=ob.value, detail=ob.reason
            ),
            ob,
            now_ns,
            source,
            account,
            "breaker",
        )
    ]
    events.extend(_cancels(ob, account, state.open_orders(account=account), now_ns, source))
    events.append(
        _emit(
            FlattenAccount,
            FlattenAccountPayload(account=account, reason=ob.reason),
            ob,
            now_ns,
            source,
            account,
            "flatten",
        )
    )
    return events


def _cancels(
    ob: Obligation, account: str, orders: list[Order], now_ns: int, source: str
) -> list[Event]:
    """A ``CancelOrder`` of each of ``orders``, oldest first."""
    return [
        _emit(
            CancelOrder,
            CancelOrderPayload(order_id=order.order_id, account=account, reason=ob.reason),
            ob,
            now_ns,
            source,
            account,
            "cancel",
            order.order_id,
        )
        for order in sorted(orders, key=lambda o: (o.ts_ns, o.order_id))
    ]


def growing_orders(state: RiskState, account: str) -> list[Order]:
    """The open orders of ``account`` that a reduce-only account would not
    accept now: every order on the side of its position in the symbol (both
    sides when flat), and on the other side, oldest first, those past what
    would take the position to zero (``decide.reduces_position``'s rule).
    Left working, they can fill and grow the position in reducing."""
    growing: list[Order] = []
    reducing: dict[str, Decimal] = {}
    for order in sorted(state.open_orders(account=account), key=lambda o: (o.ts_ns, o.order_id)):
        position = state.account_position(account, order.symbol)
        shrinks = position < 0 if order.side == "buy" else position > 0
        # Exact, as every cap is (state.EXACT): a sell past the position by
        # less than 28 digits hold would round to it and be left working.
        used = EXACT.add(reducing.get(order.symbol, ZERO), order.remaining)
        if shrinks and used <= position.copy_abs():
            reducing[order.symbol] = used
        else:
            growing.append(order)
    return growing


def _reaction(state: RiskState, ob: Obligation, now_ns: int, source: str) -> list[Event]:
    if ob.kind == "reduce" and state.scope_state(ob.scope).state == "halted":
        # Never lower a halt (evolve drops such a reduce; this is the backstop).
        return []
    events: list[Event] = []
    if ob.kind == "reduce":
        # Reduce-only holds for what already rests at the broker too: an order
        # placed while active that would grow a position is canceled, as a
        # halt cancels every order (the gate counts it open until the broker
        # says it is canceled or filled).
        orders = growing_orders(state, ob.scope)
        events.extend(_cancels(ob, ob.scope, orders, now_ns, source))
    elif ob.kind in ("daily_loss", "connection_lost"):
        events.extend(_flatten(state, ob, ob.scope, now_ns, source))
    elif ob.kind == "kill_switch":
        for account in state.accounts_known():
            events.extend(_flatten(state, ob, account, now_ns, source))
    events.append(
        _emit(
            TradingStateChanged,
            TradingStatePayload(
                scope=ob.scope,
                state=RESULTING_STATE[ob.kind],
                previous=state.scope_state(ob.scope).state,
                reason=ob.reason,
            ),
            ob,
            now_ns,
            source,
            "state",
        )
    )
    return events
