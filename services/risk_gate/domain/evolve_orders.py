"""The risk fold's prices, intents, orders and fills: what marks a symbol,
what the gate has still to decide or to send, which orders work, and the
positions the fills make. Part of :func:`~services.risk_gate.domain.evolve.evolve`,
which dispatches to these; pure and synchronous as it is.
"""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    ClosingOrdersPlaced,
    FillPayload,
    FillReceived,
    OrderIntentCreated,
    RiskDecisionMade,
    SubmitOrder,
    contract_multiplier,
)
from services.risk_gate.domain.evolve_obligations import check_loss
from services.risk_gate.domain.state import (
    CLOSED_KEPT,
    NS,
    ZERO,
    Mark,
    Order,
    Position,
    RiskState,
    exact,
    file_own,
    frozen_map,
    in_window,
    of_a_day_gone,
    with_item,
    with_open,
    without,
)

replace = dataclasses.replace

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


def day_time(event: Event) -> int:
    """The instant that puts ``event`` in a trading day: its
    ``Event.market_ns``, and for a bar the last instant of its window.

    A bar is stamped at its window's end, the first instant not in it: every
    trade of the 03:59-04:00 bar, its close too, printed before 04:00, in the
    trading day that ends there. By its stamp it would roll the trading day
    and be the new day's price, moving the new day's P&L by the old day's
    last minute. (Its mark keeps the stamp: which price is the newest, and
    how old it is, are as before.)
    """
    if isinstance(event, BarClosed):
        return min(event.market_ns, event.payload.end_ns - 1)
    return event.market_ns


def first_price(state: RiskState, symbol: str, price: Decimal) -> RiskState:
    """``state`` with ``symbol``'s carried positions started from ``price``,
    a price of a day gone, ``symbol``'s first (it has no mark).

    The day rolled without a close of ``symbol``: each position carried into
    it kept its cost as its day basis (``Position.new_day``). A price of the
    day before that comes after the roll is that close; had it come on time
    the roll would have started them from it. A fill since (a settlement,
    which is no price) is measured from its own price as before: only the
    carried part starts from the close (``Position.from_close``).
    """
    carried = state.unpriced_carried.get(symbol)
    if carried is None:
        return state
    mult = contract_multiplier(symbol)
    positions = state.positions
    for key, at_start in carried.accounts:
        p = positions.get(key, Position())
        positions = with_item(positions, key, p.from_close(at_start, price, mult))
    strategy_positions = state.strategy_positions
    for skey, at_start in carried.strategies:
        p = strategy_positions.get(skey, Position())
        strategy_positions = with_item(
            strategy_positions, skey, p.from_close(at_start, price, mult)
        )
    return replace(
        state,
        unpriced_carried=without(state.unpriced_carried, symbol),
        positions=positions,
        strategy_positions=strategy_positions,
    )


def to_mark(
    state: RiskState, symbol: str, price: Decimal, ts_ns: int, day_ns: int
) -> RiskState | None:
    """Whether ``price`` (at market time ``ts_ns``, in the trading day of
    ``day_ns``: see ``day_time``) may mark ``symbol``: None if not, else
    ``state`` ready for its mark. An older price than the mark's does not
    move it back; one of a day gone (``of_a_day_gone``) marks only a symbol
    with no mark, its first price (``first_price``)."""
    current = state.marks.get(symbol)
    if current is not None and current.ts_ns > ts_ns:
        return None  # an older print arriving late does not move the mark back
    if of_a_day_gone(state, day_ns):
        if current is not None:
            return None
        return first_price(state, symbol, price)
    return state


def on_price(state: RiskState, event: Event, symbol: str, price: Decimal) -> RiskState:
    """A market price of ``symbol``: a trade, a bar's close, a quote's mark
    (``MarkUpdated``, an option's quote midpoint); fills mark too (``on_fill``).

    The newest wins, by the market's own time (``Event.market_ns``: its
    ``ts_event``, but no later than a few seconds after it was made) whatever
    the kind: a quote's mark newer than the last trade replaces it, a trade
    newer than the mark replaces that, and neither moves the mark back. At
    the same time the one later in the stream wins. The mark's age (for
    ``max_mark_age_s``) is that of the price it holds. By the raw
    ``ts_event``, one print stamped a day ahead held the mark for a day with
    no ``max_mark_age_s`` (``stamped_ahead`` drops it only with one).

    A price of a day gone (``of_a_day_gone``) marks only a symbol with no
    mark at all: it is the last price before the day began, what the price
    band and a carried position's day start (``first_price``) take; a symbol
    with a mark keeps it.
    """
    ts_ns = event.market_ns
    priced = to_mark(state, symbol, price, ts_ns, day_time(event))
    if priced is None:
        return state
    state = priced
    marks = with_item(state.marks, symbol, Mark(price, ts_ns))
    if symbol in state.unpriced_carried:  # priced now, by a price of the new day
        state = replace(
            state, marks=marks, unpriced_carried=without(state.unpriced_carried, symbol)
        )
    else:
        state = replace(state, marks=marks)
    holders = {acct for (acct, sym), p in state.positions.items() if sym == symbol and p.quantity}
    return check_loss(state, event, holders)


# ---------------------------------------------------------------- intents


def on_intent(state: RiskState, event: OrderIntentCreated) -> RiskState:
    if event.id in state.decided or event.id in state.pending_intents:
        return state  # a redelivered intent: decided (or about to be) once only
    return replace(state, pending_intents=with_item(state.pending_intents, event.id, event))


def on_decision(state: RiskState, event: RiskDecisionMade) -> RiskState:
    p = event.payload
    if p.decision == "denied" and p.intent_id in state.awaiting_order:
        # The withdrawal of an accepted intent whose order had not gone out
        # (react.owed_order): no order is owed any more, nor ever made. Known
        # by what is owed, not by ``decided``, which forgets an intent after
        # two trading days with decisions (an order can be owed that long).
        return replace(
            state,
            decided=file_own(state, state.decided, p.intent_id, event.market_ns),
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
        decided=file_own(state, state.decided, p.intent_id, event.market_ns),
        pending_intents=without(state.pending_intents, p.intent_id),
        awaiting_order=awaiting,
    )


def on_submit(state: RiskState, event: SubmitOrder) -> RiskState:
    p = event.payload
    if p.intent_id is not None:
        state = replace(
            state,
            decided=file_own(state, state.decided, p.intent_id, event.market_ns),
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


def on_closing_orders(state: RiskState, event: ClosingOrdersPlaced) -> RiskState:
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


def order_ended(state: RiskState, order_id: uuid.UUID) -> RiskState:
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


def on_fill(state: RiskState, event: FillReceived) -> RiskState:
    # Positions and P&L exact (state.EXACT), entered once for both books.
    with exact():
        return _on_fill(state, event)


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
    # A settlement (an option's expiry: the contract at 0, the underlying at
    # the strike) is booked, but it is no market price; nor is a fill of a
    # day gone (booked in today's P&L, at its cost), unless it is the first
    # price of its symbol (to_mark): then the positions carried into the day
    # start from it, before the fill adds to them.
    marking = False
    if p.settlement is None and not stamped_ahead(state, event, p.symbol):
        priced = to_mark(state, p.symbol, p.price, event.market_ns, event.market_ns)
        if priced is not None:
            state, marking = priced, True
    if marking and p.symbol in state.unpriced_carried:
        # Priced now, by a fill of the new day: no close will start the day.
        # A fill that prices nothing (a settlement) leaves the carried part
        # to start from a late close all the same (first_price).
        state = replace(state, unpriced_carried=without(state.unpriced_carried, p.symbol))
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
    accounts = {p.account}
    if marking:
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
    return check_loss(state, event, accounts)


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
