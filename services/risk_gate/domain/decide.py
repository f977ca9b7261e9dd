"""``decide(state, intent, now) -> Decision``: every pre-trade check, in order.

A denial is a value carrying a :class:`~libs.contract.events.ReasonCode` and
a human-readable detail, never an exception. The first failing check wins,
in this order (operator and breaker states before limits, so a halted
account reports ``halted`` rather than whichever cap it would also break):

==========================  =================================================
reason                      denied when
==========================  =================================================
unknown_strategy            the strategy is not in the limits
unknown_account             the account is not configured, or not the
                            strategy's (its account or shadow account)
asset_class                 the intent's asset class is not the one its
                            symbol names (options are ``O:`` + OCC symbol):
                            its notional would take the wrong multiplier
fractional_quantity         an option order for part of a contract: every
                            venue trades them whole (a close included)
contract_expired            an option past the close of its expiry day
                            (16:00 New York, 13:00 on a half day): no
                            venue takes an order in it, a close included
contract_unsupported        an option tradebus cannot settle (cash-settled
                            index options, adjusted contracts), unless the
                            order only reduces the strategy's position
stale_intent                the intent is older than ``max_intent_age_s``
kill_switch                 the global kill switch is engaged
halted                      the account or everything is halted
reduce_only                 reducing, and the order would not reduce the
                            account's position in the symbol
daily_loss                  the account's day P&L is at or past its limit
                            (its breaker has not tripped yet)
no_market_price             no last price for the symbol (or too old, or
                            stamped too far ahead of now)
price_band                  a limit/stop price too far from the last price
                            (further than both max_deviation of it and
                            max_deviation_ticks ticks), a limit/stop
                            order without its price, or a price its order
                            type does not take (a market order's limit or
                            stop price, a limit order's stop price, a stop
                            order's limit price)
max_order_quantity          fat finger: the order's quantity
max_order_notional          fat finger: quantity x price x multiplier, at
                            the most it can fill at now (order_price)
max_strategy_position       the strategy's position in the symbol, with its
                            open orders on the same side, past its cap
max_symbol_position         past the strategy's per-symbol cap (a symbol
                            outside its list has a cap of 0), or the
                            account's net cap
max_gross_notional          the strategy's gross exposure (positions + open
                            orders + this order, at market) past its cap
strategy_rate_limit         too many orders from the strategy in the window
account_rate_limit          too many orders on the account in the window
==========================  =================================================

Position and exposure caps stop only what makes things bigger: an order that
reduces an exposure above a (since lowered) cap passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    OPTION_PREFIX,
    OrderIntentCreated,
    OrderIntentPayload,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    Side,
    SubmitOrder,
    asset_class_of,
    contract_multiplier,
)
from libs.contract.options import parse_option
from services.risk_gate.domain.commands import (
    SOURCE,
    decision_id_for,
    make,
    order_id_for,
    submit_order,
)
from services.risk_gate.domain.evolve import roll_day
from services.risk_gate.domain.limits import (
    GLOBAL,
    AccountLimits,
    StrategyLimits,
    SymbolBand,
    price_tick,
)
from services.risk_gate.domain.state import NS, ZERO, Mark, RiskState, exact

Verdict = tuple[ReasonCode, str]
#: Where a detail's percentage is worked out (a quotient: never in EXACT).
_SHOWN = Context()
ACCEPT: Verdict = (ReasonCode.ACCEPTED, "")


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one intent and the events that carry it."""

    intent: OrderIntentCreated
    reason: ReasonCode
    detail: str
    event: RiskDecisionMade
    order: SubmitOrder | None

    @property
    def accepted(self) -> bool:
        return self.reason is ReasonCode.ACCEPTED

    @property
    def events(self) -> tuple[Event, ...]:
        """The decision, then (if accepted) its order command: publish in this order."""
        return (self.event,) if self.order is None else (self.event, self.order)


def decide(
    state: RiskState, intent: OrderIntentCreated, now_ns: int, *, source: str = SOURCE
) -> Decision:
    """Check ``intent`` against ``state`` at time ``now_ns``."""
    state = roll_day(state, now_ns)
    reason, detail = check(state, intent, now_ns)
    accepted = reason is ReasonCode.ACCEPTED
    decision = make(
        RiskDecisionMade,
        RiskDecisionPayload.for_intent(
            intent, reason, detail, order_id_for(intent.id) if accepted else None
        ),
        event_id=decision_id_for(intent.id),
        now_ns=now_ns,
        source=source,
        correlation_id=intent.correlation_id,
        causation_id=intent.id,
    )
    order = submit_order(intent, now_ns, source=source) if accepted else None
    return Decision(intent, reason, detail, decision, order)


def check(state: RiskState, intent: OrderIntentCreated, now_ns: int) -> Verdict:
    """The first check ``intent`` fails, or ``(ACCEPTED, "")``.

    Every amount a cap is compared with is exact (``EXACT``): in Decimal's
    default 28 digits a notional past its cap by less than they hold (two
    12-place numbers make 24 places) rounded to the cap and passed.
    """
    with exact():
        return _check(state, intent, now_ns)


def _check(state: RiskState, intent: OrderIntentCreated, now_ns: int) -> Verdict:
    p = intent.payload
    limits = state.limits
    strategy = limits.strategies.get(p.strategy)
    if strategy is None:
        return ReasonCode.UNKNOWN_STRATEGY, f"strategy {p.strategy} has no risk limits"
    account = limits.accounts.get(p.account)
    if account is None:
        return ReasonCode.UNKNOWN_ACCOUNT, f"account {p.account} has no risk limits"
    if p.account not in (strategy.account, strategy.shadow_account):
        return ReasonCode.UNKNOWN_ACCOUNT, (
            f"strategy {p.strategy} trades account {strategy.account}, not {p.account}"
        )
    named = asset_class_of(p.symbol)
    if p.asset_class != named:
        return ReasonCode.ASSET_CLASS, (
            f"{p.symbol} is an {named} symbol, the intent says {p.asset_class} "
            f"(options are named {OPTION_PREFIX}<OCC symbol>)"
        )
    if named == "option":
        if p.quantity != p.quantity.to_integral_value():
            # The SDK refuses it and so does every broker (the paper broker:
            # 422); sent past the SDK, it took a place in the rate windows
            # and went to the broker only to be refused.
            return ReasonCode.FRACTIONAL_QUANTITY, (
                f"an option's quantity is a whole number of contracts, not {p.quantity:f} "
                f"of {p.symbol}: no venue takes part of one"
            )
        for verdict in (_expiry(state, p, now_ns), _unsupported(state, p)):
            if verdict is not ACCEPT:
                return verdict
    if limits.max_intent_age_s is not None:
        # ts_init: when the strategy made the intent (ts_event may be market time).
        age_ns = now_ns - intent.ts_init
        if age_ns > limits.max_intent_age_s * NS:
            return ReasonCode.STALE_INTENT, (
                f"intent is {age_ns / NS:.1f}s old (max {limits.max_intent_age_s:g}s)"
            )
    for verdict in (
        _control(state, p),
        _daily_loss(state, p, account),
    ):
        if verdict is not ACCEPT:
            return verdict
    mark = state.mark(p.symbol)
    band = limits.price_band.of(p.symbol)
    max_age = band.max_mark_age_s
    if mark is None:
        return ReasonCode.NO_MARKET_PRICE, f"no market price for {p.symbol}"
    if max_age is not None and now_ns - mark.ts_ns > max_age * NS:
        return ReasonCode.NO_MARKET_PRICE, (
            f"last price of {p.symbol} is {(now_ns - mark.ts_ns) / NS:.1f}s old (max {max_age:g}s)"
        )
    if max_age is not None and mark.ts_ns - now_ns > max_age * NS:
        # Stamped ahead of our clock by more than a price may be old (its
        # publisher's clock, or ours, is wrong): its age cannot be told.
        return ReasonCode.NO_MARKET_PRICE, (
            f"last price of {p.symbol} is stamped {(mark.ts_ns - now_ns) / NS:.1f}s ahead of "
            f"now (max {max_age:g}s)"
        )
    for verdict in (
        _price_band(p, mark, band),
        _order_size(p, strategy, mark),
        _positions(state, p, strategy, account),
        _gross_notional(state, p, strategy, mark),
        _rates(state, p, strategy, account, now_ns),
    ):
        if verdict is not ACCEPT:
            return verdict
    return ACCEPT


# ------------------------------------------------------------------ checks


def _control(state: RiskState, p: OrderIntentPayload) -> Verdict:
    ks = state.kill_switch
    if ks.engaged:
        return ReasonCode.KILL_SWITCH, f"kill switch engaged by {ks.operator}: {ks.reason}"
    scopes = (GLOBAL, p.account)
    for scope in scopes:
        s = state.scope_state(scope)
        if s.state == "halted":
            return ReasonCode.HALTED, f"{scope} is halted: {s.reason}"
    reducing = [scope for scope in scopes if state.scope_state(scope).state == "reducing"]
    if reducing and not reduces_position(state, p.account, p.symbol, p.side, p.quantity):
        return ReasonCode.REDUCE_ONLY, (
            f"{reducing[0]} is reducing; {p.side} {p.quantity} {p.symbol} does not reduce "
            f"the position of {state.account_position(p.account, p.symbol)}"
        )
    return ACCEPT


def _expiry(state: RiskState, p: OrderIntentPayload, now_ns: int) -> Verdict:
    # The symbol parsed when the intent was made (the contract's Symbol).
    contract = parse_option(p.symbol)
    if not contract.expired_by(now_ns):
        return ACCEPT
    # A close too: no exchange lists the contract any more and every broker
    # refuses it (the paper broker: 422 "not tradable"); the position is
    # settled by the broker (exercise or lapse), not by an order. Accepted,
    # it was only a broker refusal, after its command had taken a place in
    # the strategy's and the account's rate windows; a strategy answering
    # the refusal by closing again (pairs_trade did, every minute) used up
    # the account's rate limit and denied the other strategies' orders.
    return ReasonCode.CONTRACT_EXPIRED, (
        f"{p.symbol} {contract.expired_text}: no venue takes an order in it, a close "
        f"included; the account's position of {state.account_position(p.account, p.symbol)} "
        f"is the broker's to settle"
    )


def _unsupported(state: RiskState, p: OrderIntentPayload) -> Verdict:
    why = parse_option(p.symbol).unsupported
    if why is None:
        return ACCEPT
    # The last line: the strategies.yaml check and the SDK's refusal stop
    # it before, unless bypassed. What is held already (taken before this
    # check) may still be closed before its expiry: settled, it would be
    # booked wrong. Anything that opens or adds to it is denied.
    pos = state.strategy_position(p.strategy, p.account, p.symbol)
    buys, sells = state.open_by_side(p.account, p.symbol, p.strategy)
    if not _past(_worst_after(pos, buys, sells, p.side, p.quantity), ZERO, p.side):
        return ACCEPT
    return ReasonCode.CONTRACT_UNSUPPORTED, (
        f"{p.symbol} is not supported: {why}. An order in it may only reduce the position "
        f"{p.strategy} holds ({pos}, open orders {buys if p.side == 'buy' else sells}), "
        f"not {p.side} {p.quantity}"
    )


def _daily_loss(state: RiskState, p: OrderIntentPayload, account: AccountLimits) -> Verdict:
    pnl = state.day_pnl(p.account)
    # Once the breaker has tripped (and halted the account) an operator's resume
    # overrides it for the rest of the day; until then the loss itself denies.
    if pnl <= -account.daily_loss_limit and state.loss_tripped.get(p.account) != state.day:
        return ReasonCode.DAILY_LOSS, (
            f"day P&L of {p.account} is {pnl}, limit -{account.daily_loss_limit}"
        )
    return ACCEPT


#: The prices each order type takes: any other one an intent carries is denied.
_TAKES: dict[str, tuple[str, ...]] = {
    "market": (),
    "limit": ("limit",),
    "stop": ("stop",),
    "stop_limit": ("limit", "stop"),
}


def _price_band(p: OrderIntentPayload, mark: Mark, band: SymbolBand) -> Verdict:
    # A price the order type does not take would go into the SubmitOrder
    # unchecked against the band (only the prices a type takes are): the
    # order is safe only while every broker adapter ignores it. The SDK
    # refuses such an intent; any other producer may still send one.
    for name, stray in (("limit", p.limit_price), ("stop", p.stop_price)):
        if stray is not None and name not in _TAKES[p.order_type]:
            return ReasonCode.PRICE_BAND, (
                f"a {p.order_type} order takes no {name} price ({name} price {stray}): "
                f"a {name} order is order_type {' or '.join(_with(name))}"
            )
    prices: list[tuple[str, Decimal]] = []
    if p.order_type in ("limit", "stop_limit"):
        if p.limit_price is None:
            return ReasonCode.PRICE_BAND, f"a {p.order_type} order needs a limit price"
        prices.append(("limit", p.limit_price))
    if p.order_type in ("stop", "stop_limit"):
        if p.stop_price is None:
            return ReasonCode.PRICE_BAND, f"a {p.order_type} order needs a stop price"
        prices.append(("stop", p.stop_price))
    for name, price in prices:
        # Exact (check runs in EXACT): the distance past max_deviation of the
        # last price, not its quotient rounded to 28 digits back onto the band.
        distance = abs(price - mark.price)
        if distance <= band.max_deviation * mark.price:
            continue
        ticks = band.max_deviation_ticks
        # The lower price's tick: one crossing a level is never given the
        # coarser tick for the whole distance.
        tick = price_tick(p.symbol, min(price, mark.price))
        if ticks and distance <= ticks * tick:
            continue
        allowance = f" or {ticks} ticks of {tick}" if ticks else ""
        deviation = _SHOWN.divide(distance, mark.price)
        return ReasonCode.PRICE_BAND, (
            f"{name} price {price} is {deviation:.2%} from the last price {mark.price} "
            f"(band {band.max_deviation:.2%}{allowance})"
        )
    return ACCEPT


def _with(name: str) -> list[str]:
    """The order types that take a ``name`` price."""
    return [t for t, takes in _TAKES.items() if name in takes]


def order_price(p: OrderIntentPayload, mark: Mark) -> Decimal:
    """What one unit of the order is valued at: the most it can fill at if it
    reached the market now, at the last price.

    A buy's limit bounds what it pays. Otherwise an order that would trade at
    once trades at the market, whatever its own price: a sell limit below the
    last price, a buy stop below it (triggered at once), a sell stop limit
    once triggered (at its stop, or at once at the market if that is lower)
    with its limit below that. Valued at its own price, such an order passed
    the notional cap as a fraction of what it fills for: for an option within
    the band's ticks of its mark, a sell limit at 0.01 of a contract marked
    0.10 as a tenth. A sell stop fills at its stop or below.
    """
    last = mark.price
    limit = p.limit_price if p.order_type in ("limit", "stop_limit") else None
    stop = p.stop_price if p.order_type in ("stop", "stop_limit") else None
    if p.side == "buy":
        if limit is not None:
            return limit
        return max(stop, last) if stop is not None else last
    if limit is not None:
        return max(limit, min(stop, last) if stop is not None else last)
    return stop if stop is not None else last


def _order_size(p: OrderIntentPayload, strategy: StrategyLimits, mark: Mark) -> Verdict:
    if p.quantity > strategy.max_order_quantity:
        return ReasonCode.MAX_ORDER_QUANTITY, (
            f"quantity {p.quantity} > max {strategy.max_order_quantity} per order"
        )
    notional = p.quantity * order_price(p, mark) * contract_multiplier(p.symbol)
    if notional > strategy.max_order_notional:
        return ReasonCode.MAX_ORDER_NOTIONAL, (
            f"notional {notional} > max {strategy.max_order_notional} per order"
        )
    return ACCEPT


def _worst_after(
    position: Decimal, buys: Decimal, sells: Decimal, side: Side, quantity: Decimal
) -> Decimal:
    """The signed position if every open order on ``side`` and this one fill."""
    return position + buys + quantity if side == "buy" else position - sells - quantity


def _past(after: Decimal, cap: Decimal, side: Side) -> bool:
    return after > cap if side == "buy" else after < -cap


def _positions(
    state: RiskState, p: OrderIntentPayload, strategy: StrategyLimits, account: AccountLimits
) -> Verdict:
    pos = state.strategy_position(p.strategy, p.account, p.symbol)
    buys, sells = state.open_by_side(p.account, p.symbol, p.strategy)
    after = _worst_after(pos, buys, sells, p.side, p.quantity)
    if _past(after, strategy.max_position, p.side):
        return ReasonCode.MAX_STRATEGY_POSITION, (
            f"{p.strategy} position in {p.symbol} would reach {after} "
            f"(position {pos}, open orders {buys if p.side == 'buy' else sells}), "
            f"max {strategy.max_position}"
        )
    if strategy.symbols is not None:
        sym = strategy.symbols.get(p.symbol)
        # A symbol taken off the list is capped at 0: what the strategy still
        # holds in it may be sold down (or bought back), never added to.
        if sym is None and _past(after, ZERO, p.side):
            return ReasonCode.MAX_SYMBOL_POSITION, (
                f"{p.symbol} is not among the symbols of {p.strategy}"
            )
        if sym is not None and _past(after, sym.max_position, p.side):
            return ReasonCode.MAX_SYMBOL_POSITION, (
                f"{p.strategy} position in {p.symbol} would reach {after}, "
                f"max {sym.max_position} for {p.symbol}"
            )
    acct_sym = account.symbols.get(p.symbol)
    if acct_sym is not None:
        net = state.account_position(p.account, p.symbol)
        abuys, asells = state.open_by_side(p.account, p.symbol)
        acct_after = _worst_after(net, abuys, asells, p.side, p.quantity)
        if _past(acct_after, acct_sym.max_position, p.side):
            return ReasonCode.MAX_SYMBOL_POSITION, (
                f"account {p.account} position in {p.symbol} would reach {acct_after}, "
                f"max {acct_sym.max_position}"
            )
    return ACCEPT


def gross_exposure(
    state: RiskState,
    strategy: str,
    account: str,
    extra: tuple[str, Side, Decimal, Decimal] | None = None,
) -> Decimal:
    """Gross notional of ``strategy`` on ``account``: per symbol, the larger of
    position + open buys and position - open sells (in absolute value), at
    the last price; ``extra`` is one more order (symbol, side, quantity, price).
    Exact (``EXACT``), as the cap it is compared with.
    """
    with exact():
        return _gross_exposure(state, strategy, account, extra)


def _gross_exposure(
    state: RiskState,
    strategy: str,
    account: str,
    extra: tuple[str, Side, Decimal, Decimal] | None,
) -> Decimal:
    symbols = {
        sym
        for (st, acct, sym), pos in state.strategy_positions.items()
        if st == strategy and acct == account and pos.quantity != 0
    }
    symbols.update(state.open_symbols(account, strategy))
    if extra is not None:
        symbols.add(extra[0])
    total = ZERO
    for symbol in sorted(symbols):
        pos = state.strategy_positions.get((strategy, account, symbol))
        qty = pos.quantity if pos is not None else ZERO
        buys, sells = state.open_by_side(account, symbol, strategy)
        price: Decimal | None = None
        if extra is not None and extra[0] == symbol:
            if extra[1] == "buy":
                buys += extra[2]
            else:
                sells += extra[2]
            price = extra[3]
        mark = state.mark(symbol)
        if mark is not None:
            price = mark.price
        if price is None:
            price = pos.avg_price if pos is not None else ZERO
        total += max(abs(qty + buys), abs(qty - sells)) * price * contract_multiplier(symbol)
    return total


def _gross_notional(
    state: RiskState, p: OrderIntentPayload, strategy: StrategyLimits, mark: Mark
) -> Verdict:
    before = gross_exposure(state, p.strategy, p.account)
    after = gross_exposure(state, p.strategy, p.account, (p.symbol, p.side, p.quantity, mark.price))
    if after > strategy.max_gross_notional and after > before:
        return ReasonCode.MAX_GROSS_NOTIONAL, (
            f"{p.strategy} gross notional would reach {after:.2f} "
            f"(now {before:.2f}), max {strategy.max_gross_notional}"
        )
    return ACCEPT


def _rates(
    state: RiskState,
    p: OrderIntentPayload,
    strategy: StrategyLimits,
    account: AccountLimits,
    now_ns: int,
) -> Verdict:
    for reason, key, limit in (
        (ReasonCode.STRATEGY_RATE_LIMIT, f"strategy:{p.strategy}", strategy.rate_limit),
        (ReasonCode.ACCOUNT_RATE_LIMIT, f"account:{p.account}", account.rate_limit),
    ):
        if limit is None:
            continue
        n = state.orders_in_window(key, now_ns, limit.window_ns)
        if n >= limit.max_orders:
            return reason, (
                f"{n} orders in the last {limit.per_seconds:g}s, max {limit.max_orders}"
            )
    return ACCEPT


def reduces_position(
    state: RiskState, account: str, symbol: str, side: Side, quantity: Decimal
) -> bool:
    """Whether the order (with the open orders on its side) only shrinks the
    account's net position in ``symbol`` toward zero, without crossing it."""
    pos = state.account_position(account, symbol)
    buys, sells = state.open_by_side(account, symbol)
    if side == "buy":
        return pos < 0 and buys + quantity <= -pos
    return pos > 0 and sells + quantity <= pos
