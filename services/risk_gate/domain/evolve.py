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
day moves at the same point of the stream in both. An event moves it by its
market time (``Event.market_ns``: its own, but no later than a few seconds
after it was made): one bad stamp a day ahead must not end the real day.
Trading states and the kill switch do not reset: what halted an account
holds until an operator resumes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from decimal import Context, Decimal
from typing import Literal

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BreakerTripped,
    BrokerConnectionChanged,
    ClosingOrdersPlaced,
    FillPayload,
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
    TradingState,
    TradingStateChanged,
    contract_multiplier,
)
from services.risk_gate.domain.limits import GLOBAL
from services.risk_gate.domain.state import (
    CLOSED_KEPT,
    NS,
    ZERO,
    KillSwitch,
    Mark,
    Obligation,
    ObligationKind,
    Order,
    Position,
    RiskState,
    ScopeState,
    frozen_map,
    in_window,
    trading_day,
    with_item,
    with_open,
    without,
)

#: What each obligation kind leaves the scope in once its reaction is applied.
RESULTING_STATE: dict[ObligationKind, TradingState] = {
    "daily_loss": "halted",
    "connection_lost": "halted",
    "kill_switch": "halted",
    "resume": "active",
    "reduce": "reducing",
}

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

#: The places an event can carry of an amount (the contract's ``Money``).
MONEY_QUANTUM = Decimal("1e-12")
_WIDE = Context(prec=60)


def reportable(amount: Decimal) -> Decimal:
    """``amount`` as an event can carry it. A day P&L marked against an
    average cost (a division) can have 28 significant digits; the contract
    takes 12 decimal places, and a breaker's event must not fail to build."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -12:
        return amount
    return amount.quantize(MONEY_QUANTUM, context=_WIDE)


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

    return replace(
        state,
        day=day,
        positions=frozen_map((k, p.new_day(mark(k[1]))) for k, p in state.positions.items()),
        strategy_positions=frozen_map(
            (k, p.new_day(mark(k[2]))) for k, p in state.strategy_positions.items()
        ),
        decided=state.decided.roll(),
        fills_seen=state.fills_seen.roll(),
        applied=state.applied.roll(),
    )


def evolve(state: RiskState, event: Event) -> RiskState:
    """The state after ``event``."""
    if event.type not in RELEVANT_TYPES:
        return state
    if event.type in ONCE_TYPES:
        if event.id in state.applied:
            return state
        state = replace(state, applied=state.applied.add(event.id))
    if event.type in PRICE_TYPES and stamped_ahead(state, event, event.payload.symbol):
        # Not a price, nor a time to roll the trading day on: see stamped_ahead.
        return state
    if event.type not in GATE_TYPES:
        # Its market time (Event.market_ns): a stamp far ahead of when it was
        # made is a bad clock, and a day ahead it would roll the gate into
        # the next trading day (day P&L from 0, the breaker armed again) in
        # the middle of the real one. A publisher whose own clock runs a day
        # ahead still moves the day; nothing in an event can tell.
        state = roll_day(state, event.market_ns)
    match event:
        case TradePrinted():
            return _on_price(state, event, event.payload.symbol, event.payload.price)
        case BarClosed():
            return _on_price(state, event, event.payload.symbol, event.payload.close)
        case MarkUpdated():
            return _on_price(state, event, event.payload.symbol, event.payload.price)
        case OrderIntentCreated():
            return _on_intent(state, event)
        case RiskDecisionMade():
            return _on_decision(state, event)
        case SubmitOrder():
            return _on_submit(state, event)
        case ClosingOrdersPlaced():
            return _on_closing_orders(state, event)
        case OrderRejected() | OrderCanceled():
            return _order_ended(state, event.payload.order_id)
        case FillReceived():
            return _on_fill(state, event)
        case KillSwitchEngaged():
            return _on_kill_switch(state, event)
        case KillSwitchReleased():
            p = event.payload
            return replace(
                state, kill_switch=KillSwitch(False, p.operator, p.reason, event.ts_event)
            )
        case TradingResumeRequested():
            return _on_resume(state, event)
        case TradingStateChanged():
            return _on_state_changed(state, event)
        case BreakerTripped():
            return _on_breaker(state, event)
        case BrokerConnectionChanged():
            return _on_connection(state, event)
    return state


def evolve_all(state: RiskState, events: list[Event] | tuple[Event, ...]) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state


# ------------------------------------------------------------ market data


def stamped_ahead(state: RiskState, event: Event, symbol: str) -> bool:
    """Whether ``event``, a price of ``symbol``, is stamped further ahead of the
    time it was seen (``ts_init``, its publisher's clock) than a price may be
    old (``max_mark_age_s``; never, when its age is not checked).

    A bad stamp (a feed's clock, a corrupt print) hours ahead would hold the
    mark, the newest by market time, until the clock caught up: every later
    price older than it, and its age under the limit all along. Its own
    ``ts_init`` is the clock the gate has here: evolve reads none, and a fold
    of the store must reach what the live gate did.
    """
    max_age = state.limits.price_band.of(symbol).max_mark_age_s
    return max_age is not None and event.ts_event - event.ts_init > max_age * NS


def _on_price(state: RiskState, event: Event, symbol: str, price: Decimal) -> RiskState:
    """A market price of ``symbol``: a trade, a bar's close, a quote's mark
    (``MarkUpdated``, an option's quote midpoint); fills mark too (``_on_fill``).

    The newest wins, by the market's own time (``Event.market_ns``: its
    ``ts_event``, but no later than a few seconds after it was made) whatever
    the kind: a quote's mark newer than the last trade replaces it, a trade
    newer than the mark replaces that, and neither moves the mark back. At
    the same time the one later in the stream wins. The mark's age (for
    ``max_mark_age_s``) is that of the price it holds. By the raw
    ``ts_event``, one print stamped a day ahead held the mark for a day with
    no ``max_mark_age_s`` (``stamped_ahead`` drops it only with one).
    """
    current = state.marks.get(symbol)
    ts_ns = event.market_ns
    if current is not None and current.ts_ns > ts_ns:
        return state  # an older print arriving late does not move the mark back
    state = replace(state, marks=with_item(state.marks, symbol, Mark(price, ts_ns)))
    holders = {acct for (acct, sym), p in state.positions.items() if sym == symbol and p.quantity}
    return _check_loss(state, event, holders)


def _check_loss(state: RiskState, trigger: Event, accounts: set[str]) -> RiskState:
    """Record a daily-loss (or reduce-only) obligation for accounts past their limit."""
    for account in sorted(accounts):
        limits = state.limits.accounts.get(account)
        if limits is None:
            continue
        pending = {o.kind for o in state.obligations if o.scope == account}
        pnl = state.day_pnl(account)
        if pnl <= -limits.daily_loss_limit:
            if state.loss_tripped.get(account) == state.day or "daily_loss" in pending:
                continue
            shown = reportable(pnl)
            state = _oblige(
                state,
                Obligation(
                    "daily_loss",
                    account,
                    trigger.id,
                    trigger.correlation_id,
                    f"day P&L {shown} reached the daily loss limit -{limits.daily_loss_limit}",
                    limit=limits.daily_loss_limit,
                    value=shown,
                    day=state.day,
                ),
            )
        elif limits.reduce_only_at_loss is not None and pnl <= -limits.reduce_only_at_loss:
            # Only from active, as the account is once what is owed to it is
            # reacted to: the stream holds the causes the gate saw before its
            # reactions to them, so a fold reaches this with a halt still owed
            # where the live gate had already halted (a reduce reacted to after
            # it would lower it to reducing), or with a resume still owed where
            # the live gate had already resumed and reduced.
            if (
                state.loss_reduced.get(account) == state.day
                or any(
                    o.kind == "reduce" and o.scope == account and o.day == state.day
                    for o in state.obligations
                )
                or _owed_state(state, account) != "active"
            ):
                continue
            shown = reportable(pnl)
            state = _oblige(
                state,
                Obligation(
                    "reduce",
                    account,
                    trigger.id,
                    trigger.correlation_id,
                    f"day P&L {shown} reached the reduce-only level -{limits.reduce_only_at_loss}",
                    limit=limits.reduce_only_at_loss,
                    value=shown,
                    day=state.day,
                ),
            )
    return state


def _oblige(state: RiskState, obligation: Obligation) -> RiskState:
    return replace(state, obligations=(*state.obligations, obligation))


def _owed_state(state: RiskState, scope: str) -> TradingState:
    """The state ``scope`` is in once what is owed to it has been reacted to.

    Live, the gate reacts before it reads the next message, so every event
    finds the reactions to the ones before it applied; a fold of the store can
    reach an event ahead of reactions the live gate had already published
    (they land in the stream after it). Read this, not the state folded so
    far, where the answer must be the one the live gate gave.
    """
    owed = [o for o in state.obligations if o.scope == scope]
    return RESULTING_STATE[owed[-1].kind] if owed else state.scope_state(scope).state


# ---------------------------------------------------------------- intents


def _on_intent(state: RiskState, event: OrderIntentCreated) -> RiskState:
    if event.id in state.decided or event.id in state.pending_intents:
        return state  # a redelivered intent: decided (or about to be) once only
    return replace(state, pending_intents=with_item(state.pending_intents, event.id, event))


def _on_decision(state: RiskState, event: RiskDecisionMade) -> RiskState:
    p = event.payload
    if p.decision == "denied" and p.intent_id in state.awaiting_order:
        # The withdrawal of an accepted intent whose order had not gone out
        # (react.owed_order): no order is owed any more, nor ever made. Known
        # by what is owed, not by ``decided``, which forgets an intent after
        # two trading days with decisions (an order can be owed that long).
        return replace(
            state,
            decided=state.decided.add(p.intent_id),
            awaiting_order=without(state.awaiting_order, p.intent_id),
        )
    if p.intent_id in state.decided:
        return state
    intent = state.pending_intents.get(p.intent_id)
    awaiting = state.awaiting_order
    if p.decision == "accepted" and p.order_id is not None and intent is not None:
        awaiting = with_item(awaiting, p.intent_id, intent)
    return replace(
        state,
        decided=state.decided.add(p.intent_id),
        pending_intents=without(state.pending_intents, p.intent_id),
        awaiting_order=awaiting,
    )


def _on_submit(state: RiskState, event: SubmitOrder) -> RiskState:
    p = event.payload
    if p.intent_id is not None:
        state = replace(
            state,
            decided=state.decided.add(p.intent_id),
            pending_intents=without(state.pending_intents, p.intent_id),
            awaiting_order=without(state.awaiting_order, p.intent_id),
        )
    if p.order_id in state.orders or p.order_id in state.closed_orders:
        return state
    order = Order(
        order_id=p.order_id,
        intent_id=p.intent_id,
        strategy=p.strategy,
        account=p.account,
        symbol=p.symbol,
        side=p.side,
        quantity=p.quantity,
        remaining=p.quantity,
        limit_price=p.limit_price,
        ts_ns=event.ts_event,
    )
    windows = dict(state.rate_windows)
    for key, limit in (
        (f"strategy:{p.strategy}", state.limits.strategies.get(p.strategy)),
        (f"account:{p.account}", state.limits.accounts.get(p.account)),
    ):
        if limit is None or limit.rate_limit is None:
            continue
        windows[key] = in_window(windows.get(key, ()), event.ts_event, limit.rate_limit.window_ns)
    return replace(
        state,
        orders=with_item(state.orders, p.order_id, order),
        open_quantity=with_open(state.open_quantity, order, order.remaining),
        rate_windows=frozen_map(windows),
    )


# ----------------------------------------------------------------- broker


def _on_closing_orders(state: RiskState, event: ClosingOrdersPlaced) -> RiskState:
    """A flatten's closing orders are open orders of the account until they
    fill or the broker ends them, as the gate's own are: the reduce-only check
    and the position and exposure caps count them (an account flattened and
    resumed while its closing sell works must not sell a second time).

    What still works (``leaves_quantity``) is what the gateway had not yet
    published fills of: the fills before the event are already in the
    positions. An order the gate knows already (the event again, after
    ``applied`` forgot its id) is not opened twice; one with nothing left is
    not opened at all. No rate window counts them: no strategy sent them.
    """
    account = event.payload.account
    orders, open_quantity = state.orders, state.open_quantity
    for c in event.payload.orders:
        if c.leaves_quantity <= 0 or c.order_id in orders or c.order_id in state.closed_orders:
            continue
        order = Order(
            order_id=c.order_id,
            intent_id=None,
            strategy=c.strategy,
            account=account,
            symbol=c.symbol,
            side=c.side,
            quantity=c.quantity,
            remaining=c.leaves_quantity,
            limit_price=None,
            ts_ns=event.ts_event,
            closing=True,
        )
        orders = with_item(orders, c.order_id, order)
        open_quantity = with_open(open_quantity, order, order.remaining)
    return replace(state, orders=orders, open_quantity=open_quantity)


def _order_ended(state: RiskState, order_id: uuid.UUID) -> RiskState:
    """The broker rejected or canceled ``order_id``."""
    order = state.orders.get(order_id)
    return state if order is None else _close(state, order)


def _close(state: RiskState, order: Order) -> RiskState:
    """Move ``order`` from the open orders to the (bounded) closed ones."""
    closed = with_item(state.closed_orders, order.order_id, replace(order, remaining=ZERO))
    if len(closed) > CLOSED_KEPT:
        closed = without(closed, next(iter(closed)))
    return replace(
        state,
        orders=without(state.orders, order.order_id),
        open_quantity=with_open(state.open_quantity, order, -order.remaining),
        closed_orders=closed,
    )


def _on_fill(state: RiskState, event: FillReceived) -> RiskState:
    p = event.payload
    key = f"{p.account}/{p.fill_id}"
    if key in state.fills_seen:
        return state  # the same execution reported twice
    order = state.orders.get(p.order_id) or state.closed_orders.get(p.order_id)
    if order is not None and order.is_open:
        if p.status == "complete" or p.leaves_quantity == 0:
            state = _close(state, order)
        else:
            remaining = min(order.remaining, p.leaves_quantity)
            state = replace(
                state,
                orders=with_item(state.orders, order.order_id, replace(order, remaining=remaining)),
                open_quantity=with_open(state.open_quantity, order, remaining - order.remaining),
            )
    mult = contract_multiplier(p.symbol)
    account_key = (p.account, p.symbol)
    position = state.positions.get(account_key, Position()).fill(
        p.side, p.quantity, p.price, p.commission, mult
    )
    strategy_positions = state.strategy_positions
    # A fill naming no strategy is its order's, unless the order is a closing
    # order: the gateway books each of its fills to the strategies whose
    # positions it closes as they stand then, and says so; the strategy the
    # event named may hold nothing by the time it fills.
    strategy = p.strategy
    if strategy is None and order is not None and not order.closing:
        strategy = order.strategy
    if strategy is not None:
        skey = (strategy, p.account, p.symbol)
        sp = strategy_positions.get(skey, Position()).fill(
            p.side, p.quantity, p.price, p.commission, mult
        )
        strategy_positions = with_item(strategy_positions, skey, sp)
    marks = state.marks
    current = marks.get(p.symbol)
    accounts = {p.account}
    # A settlement (an option's expiry: the contract at 0, the underlying at
    # the strike) is booked, but it is no market price.
    if (
        p.settlement is None
        and (current is None or current.ts_ns <= event.market_ns)
        and not stamped_ahead(state, event, p.symbol)
    ):
        marks = with_item(marks, p.symbol, Mark(p.price, event.market_ns))
        # The fill's price marks the symbol for every account holding it, as
        # a print would: their day P&L moved too.
        accounts.update(
            acct
            for (acct, sym), held in state.positions.items()
            if sym == p.symbol and held.quantity
        )
    state = replace(
        state,
        positions=with_item(state.positions, account_key, position),
        strategy_positions=strategy_positions,
        marks=marks,
        fills_seen=state.fills_seen.add(key),
    )
    if p.settlement is not None and not _settles_whole(p):
        return state
    return _check_loss(state, event, accounts)


def _settles_whole(p: FillPayload) -> bool:
    """Whether ``p``, a settlement's fill (an option's expiry), is the last
    of its leg: the day P&L is checked against the daily-loss breaker then.

    A leg comes as consecutive fills, one per strategy (``leaves_quantity``
    counts down to 0); between them the day P&L is part of the leg's. An
    exercise or assignment has two legs, the contracts at 0 and the shares
    at the strike, in the order that leaves a gain between them
    (``services/broker_gateway/domain/settlement.py``: an exercise's shares first,
    an assignment's contracts first), so a check there, or at a print that
    comes between them, never sees a loss the account does not have. (The
    contracts of an exercise first, 2 calls last at 10 made the day -2,000
    until the shares came, and a 1,000 breaker flattened and halted the
    account for it.) A settlement is booked in the trading day the gate is
    in when it comes (its ``ts_event``, the expiry, may be a day gone, which
    is never opened again), measured from that day's basis, so its legs
    together leave the day P&L with the underlying's move since the close.
    """
    return p.leaves_quantity == 0


def _on_breaker(state: RiskState, event: BreakerTripped) -> RiskState:
    """A daily-loss breaker is recorded as tripped on the day of the loss (its
    obligation's), not the day its reaction came on: a loss late on one day
    reacted to after the next day began must not disarm that day's breaker."""
    p = event.payload
    if p.breaker != "daily_loss":
        return state
    day = state.day
    for o in state.obligations:
        if o.kind == "daily_loss" and o.scope == p.account and o.trigger_id == event.causation_id:
            day = o.day or day
    return _record_day(state, "loss_tripped", p.account, day)


def _record_day(
    state: RiskState,
    name: Literal["loss_tripped", "loss_reduced"],
    account: str,
    day: dt.date | None,
) -> RiskState:
    """``state.<name>[account]`` moved forward to ``day`` (never back)."""
    days: Mapping[str, dt.date] = getattr(state, name)
    current = days.get(account)
    if day is None or (current is not None and current >= day):
        return state
    return replace(state, **{name: with_item(days, account, day)})


def _on_connection(state: RiskState, event: BrokerConnectionChanged) -> RiskState:
    p = event.payload
    previous = state.connections.get(p.account)
    state = replace(state, connections=with_item(state.connections, p.account, p.state))
    limits = state.limits.accounts.get(p.account)
    if p.state != "disconnected" or previous == "disconnected" or limits is None:
        return state
    if not limits.flatten_on_disconnect:
        return state
    return _oblige(
        state,
        Obligation(
            "connection_lost",
            p.account,
            event.id,
            event.correlation_id,
            f"broker connection lost ({p.broker}): {p.detail}".rstrip(": "),
        ),
    )


# ---------------------------------------------------------------- control


def _on_kill_switch(state: RiskState, event: KillSwitchEngaged) -> RiskState:
    p = event.payload
    if state.kill_switch.engaged:
        # Already on: who engaged it, why and when stay those of the first
        # (the halt it caused says so too); the repeat is in the store.
        return state
    state = replace(state, kill_switch=KillSwitch(True, p.operator, p.reason, event.ts_event))
    return _oblige(
        state,
        Obligation(
            "kill_switch",
            GLOBAL,
            event.id,
            event.correlation_id,
            f"kill switch engaged by {p.operator}: {p.reason}",
            operator=p.operator,
        ),
    )


def _on_resume(state: RiskState, event: TradingResumeRequested) -> RiskState:
    p = event.payload
    if _owed_state(state, p.scope) == "active":
        # Nothing to resume, or a resume is owed already: a second one would
        # stay owed past the first one's reaction in a fold of the store, and
        # raise the scope again on a restart, whatever halted it since.
        return state
    kept = tuple(o for o in state.obligations if not (o.kind == "resume" and o.scope == p.scope))
    state = replace(
        state,
        obligations=(
            *kept,
            Obligation(
                "resume",
                p.scope,
                event.id,
                event.correlation_id,
                f"resumed by {p.operator}: {p.reason}",
                operator=p.operator,
            ),
        ),
    )
    # A loss that passed the reduce-only level while the account was halted
    # owed no reduce (a halt is never lowered); resumed, the account is past
    # it, and reduces now rather than at the next print of a symbol it holds
    # (none, if the halt flattened it). The reduce follows the resume.
    return _check_loss(state, event, {p.scope})


def _on_state_changed(state: RiskState, event: TradingStateChanged) -> RiskState:
    p = event.payload
    states = with_item(state.states, p.scope, ScopeState(p.state, p.reason, event.ts_event))
    done = [
        o
        for o in state.obligations
        if o.trigger_id == event.causation_id
        and o.scope == p.scope
        and RESULTING_STATE[o.kind] == p.state
    ]
    # A halt makes a reduce owed to the same scope moot: reacting to it after
    # the halt would lower the scope to reducing, which only a resume may do.
    moot = [
        o
        for o in state.obligations
        if p.state == "halted" and o.kind == "reduce" and o.scope == p.scope
    ]
    state = replace(
        state,
        states=states,
        obligations=tuple(o for o in state.obligations if o not in done and o not in moot),
    )
    for o in done:
        if o.kind == "reduce":
            state = _record_day(state, "loss_reduced", p.scope, o.day or state.day)
    return state
