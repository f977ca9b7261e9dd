"""The paper broker's fill model: when an order fills, how much, at what price.

Pure and synchronous, with no clock and no state of its own: the paper broker
calls it for every working order on every market update, and the backtest
calls the very same functions, so both fill an order identically.

The rules
---------

*Reference price.* A market update is a trade print (``md.trade.*``: its
price) or a closed bar (``md.bar.*``: open, high, low, close). The *last
price* of a symbol is its newest trade price or bar close by the market's
time (the book's ``last_price``): a trade reported late, stamped before one
that came earlier, is not it.

*Market orders* fill at the last price plus slippage: a buy at
``last * (1 + slippage_bps / 10000)``, a sell at ``last * (1 - ...)``, rounded
to ``price_decimals`` against the trader (a buy rounds up, a sell down; with no
slippage the price is the reference price as printed). An
order submitted before the symbol has any price waits for the first update.

*Limit orders* fill when the market reaches the limit:

- at submission, a marketable limit (buy: last ≤ limit; sell: last ≥ limit)
  fills like a market order, but never worse than its limit;
- resting (and so the rest of one that was marketable at submission but
  larger than one fill), a buy fills when a trade prints at or below the limit
  (a bar's low reaches it), a sell when a trade prints at or above it (a bar's
  high): at the better of the limit and the trade's price (buy: the lower,
  sell: the higher), or for a bar the better of the limit and its open (a bar
  that opened through the limit fills at the open).
  With ``limit_fill_on_touch: false`` the market must trade *through* the
  limit (strictly below a buy limit, above a sell limit), a more conservative
  stand-in for queue position. Only prices the order had count (the book
  decides which, by the market's time): a bar that began before the order
  was placed is only its close to it, and a print stamped before it or at
  its market time (a trade reported late, a bar that ended before it) is
  nothing to it.

*Stop orders* trigger when the market reaches the stop (buy: price or bar
high ≥ stop; sell: price or bar low ≤ stop), then fill as a market order from
the trigger price (a trade's price; for a bar, the stop or the open if the bar
gapped through it), unless the update is older by the market's time than the
newest print (reported late): then, as a market order, at the last price,
the newest print (``on_market``'s ``last``). *Stop-limit orders* trigger the same way, then work as
a limit order from that same update on: marketable or not against the
trigger price, or, when the update is older than the newest print, against
the last price (the market now, as a stop it triggers fills at). As for limits, only prices the
order had trigger it: not a print stamped before it was placed.

*Partial fills.* One update fills at most ``max_fill_quantity`` of an order
(unlimited when unset): an order larger than that fills in several partial
fills, one per market update, the first at submission when the order is
marketable. An option order fills in whole contracts: of a fractional cap,
its whole part (at least one contract).

*Time in force.* ``gtc`` rests until filled or canceled; ``day`` too, until
the close of its session, when the book expires it
(``BookConfig.day_orders_expire_at``, see ``ledger.py``); ``ioc`` fills what one update allows at
submission and cancels the rest; ``fok`` fills entirely at submission in one
fill or not at all; ``opg`` and ``cls`` fill only at their auction (below).

*Auctions.* An ``opg`` order (market or limit on open) takes part in the
opening auction only, a ``cls`` order (market or limit on close) in the
closing auction only; neither fills at submission or on any other print.
The feed has no auction prints, so one stands for each (``auction.py`` has
the rule, in the feed's time, New York): for the open the session's first
print at or after 09:30 (a trade's price, or the open of the 09:30 minute
bar if a bar comes first), for the close its last print at or before the
close, 16:00 or 13:00 on a half day (the last trade, or the 15:59 minute
bar's close). At that price a market order fills whole, in one fill: an
auction is one cross at one price for every order in it, so there is no
slippage and no ``max_fill_quantity`` (the paper broker does not model an
auction's imbalance); a limit order fills whole there if the price is at
or better than its limit (buy: at or below, sell: at or above), at the
auction's price, not its limit. An order its auction does not fill (its
limit not reached, or no print of the session stands for the auction
within two minutes of it, by the broker's clock) is ``expired``. The paper
broker takes ``opg`` and ``cls`` when Alpaca does: market and limit orders
in shares (not options, which Alpaca trades ``day`` only); ``opg`` refused
from 09:28 to 19:00 New York, ``cls`` from 15:50 (12:50 on a half day) to
19:00; placed from 19:00 on, or on a weekend or a holiday, for the next
session's auction.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, localcontext
from typing import Literal

#: The decimal context of the paper broker's price arithmetic: room for any
#: amount the contract carries (38 digits) at any of its places, and their
#: products. In the default 28 digits a price of 1e16 raised InvalidOperation
#: in the middle of a fill: the book changed, the update never journaled.
WIDE = Context(prec=90)

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]

BPS = Decimal(10_000)


@dataclass(frozen=True, slots=True)
class FillModelConfig:
    """The fill model's knobs (``fill_model:`` in ``paper.yaml``)."""

    #: Adverse slippage on market (and triggered stop) fills, in basis points.
    slippage_bps: Decimal = Decimal(0)
    #: Largest quantity one market update fills; None fills any size at once.
    max_fill_quantity: Decimal | None = None
    #: Decimal places of a slipped fill price (rounded against the trader).
    price_decimals: int = 4
    #: A resting limit fills when the market touches it (True) or trades through it.
    limit_fill_on_touch: bool = True

    def __post_init__(self) -> None:
        if self.slippage_bps < 0:
            raise ValueError("slippage_bps must be >= 0")
        if self.max_fill_quantity is not None and self.max_fill_quantity <= 0:
            raise ValueError("max_fill_quantity must be > 0")
        if not 0 <= self.price_decimals <= 12:
            raise ValueError("price_decimals must be between 0 and 12")


@dataclass(frozen=True, slots=True)
class MarketUpdate:
    """A trade print or a closed bar for one symbol."""

    symbol: str
    kind: Literal["trade", "bar"]
    #: The trade's price, or the bar's close: the symbol's new last price.
    last: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    #: The trade's time, or the bar's end (the feed's clock).
    ts_ns: int
    #: The trade's time, or the bar's start: its prices are from then on.
    start_ns: int

    @classmethod
    def trade(cls, symbol: str, price: Decimal, ts_ns: int = 0) -> MarketUpdate:
        return cls(symbol, "trade", price, price, price, price, ts_ns, ts_ns)

    @classmethod
    def bar(
        cls,
        symbol: str,
        open_: Decimal,
        high: Decimal,
        low: Decimal,
        close: Decimal,
        ts_ns: int = 0,
        start_ns: int | None = None,
    ) -> MarketUpdate:
        """A bar ending at ``ts_ns`` that began at ``start_ns`` (unknown: ``ts_ns``)."""
        start = ts_ns if start_ns is None else start_ns
        return cls(symbol, "bar", close, open_, high, low, ts_ns, start)


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """What the fill model needs to know about an order that can still fill."""

    side: Side
    order_type: OrderType
    remaining: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    #: A stop or stop-limit order whose stop has been reached.
    triggered: bool = False
    #: It fills in whole units only (an option order: whole contracts).
    whole: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    """The outcome for one order and one update: maybe a trigger, maybe a fill."""

    quantity: Decimal
    price: Decimal | None
    triggered: bool

    @property
    def fills(self) -> bool:
        return self.quantity > 0


NO_MATCH = Match(Decimal(0), None, False)


def _slipped(config: FillModelConfig, side: Side, reference: Decimal) -> Decimal:
    if config.slippage_bps == 0:
        return reference  # no slippage: the trade's price, exactly as printed
    factor = config.slippage_bps / BPS
    quantum = Decimal(1).scaleb(-config.price_decimals)
    rounding = ROUND_CEILING if side == "buy" else ROUND_FLOOR
    with localcontext(WIDE):
        raw = reference * (1 + factor) if side == "buy" else reference * (1 - factor)
        price = raw.quantize(quantum, rounding=rounding)
    # Rounding a tiny price down must not make it zero.
    return price if price > 0 else quantum


def _chunk(config: FillModelConfig, order: WorkingOrder) -> Decimal:
    cap = config.max_fill_quantity
    if cap is None:
        return order.remaining
    if order.whole:
        # A fractional cap never splits a contract: its whole part, at least one.
        cap = max(cap.to_integral_value(rounding=ROUND_FLOOR), Decimal(1))
    return min(order.remaining, cap)


def _stop_reached(order: WorkingOrder, update: MarketUpdate) -> Decimal | None:
    """The trigger price if ``update`` reaches the order's stop, else None."""
    stop = order.stop_price
    assert stop is not None
    if order.side == "buy":
        if update.high >= stop:
            return update.last if update.kind == "trade" else max(stop, update.open)
    elif update.low <= stop:
        return update.last if update.kind == "trade" else min(stop, update.open)
    return None


def _limit_price_when_resting(
    config: FillModelConfig, order: WorkingOrder, update: MarketUpdate
) -> Decimal | None:
    """The fill price of a resting limit order on ``update``, or None."""
    limit = order.limit_price
    assert limit is not None
    # A trade's open is its price: either way the better of it and the limit.
    if order.side == "buy":
        reached = update.low <= limit if config.limit_fill_on_touch else update.low < limit
        return min(limit, update.open) if reached else None
    reached = update.high >= limit if config.limit_fill_on_touch else update.high > limit
    return max(limit, update.open) if reached else None


def _marketable_limit_price(
    config: FillModelConfig, order: WorkingOrder, reference: Decimal
) -> Decimal | None:
    """A limit order checked against ``reference`` as if it were a market order."""
    limit = order.limit_price
    assert limit is not None
    if order.side == "buy":
        return min(limit, _slipped(config, "buy", reference)) if reference <= limit else None
    return max(limit, _slipped(config, "sell", reference)) if reference >= limit else None


def on_auction(order: WorkingOrder, price: Decimal) -> Match:
    """What an ``opg`` or ``cls`` order does at its auction, whose price is
    ``price``: a market order fills whole at it, a limit order too if it is
    at or better than its limit; else nothing (the book expires the order).
    No slippage and no ``max_fill_quantity``: an auction is one cross, at one
    price for every order in it."""
    if order.remaining <= 0:
        return NO_MATCH
    limit = order.limit_price
    if order.order_type == "limit":
        assert limit is not None
        if (price > limit) if order.side == "buy" else (price < limit):
            return NO_MATCH
    return Match(order.remaining, price, False)


def on_submit(config: FillModelConfig, order: WorkingOrder, last: Decimal | None) -> Match:
    """What a newly accepted order does against the symbol's last price.

    The order meets the market as it is now: a market order fills, a
    marketable limit fills, a stop whose level is already passed triggers
    (and fills if it is a plain stop or its limit is marketable).
    """
    if last is None or order.remaining <= 0:
        return NO_MATCH
    return on_market(config, order, MarketUpdate.trade("", last), resting=False)


def on_market(
    config: FillModelConfig,
    order: WorkingOrder,
    update: MarketUpdate,
    *,
    resting: bool = True,
    last: Decimal | None = None,
) -> Match:
    """What a working order does on one market update of its symbol.

    ``last`` is the symbol's last price when ``update`` is not it (a print
    reported late, older by the market's time than the newest): the update
    may still trigger a stop, but what fills at the market (a market order,
    a plain stop) fills at ``last``, not at the late print, and a stop-limit
    it triggers is marketable or not against ``last``.
    """
    if order.remaining <= 0:
        return NO_MATCH
    triggered = order.triggered
    reference = update.last
    newly_triggered = False
    if order.order_type in ("stop", "stop_limit") and not triggered:
        trigger = _stop_reached(order, update)
        if trigger is None:
            return NO_MATCH
        triggered = newly_triggered = True
        reference = trigger

    if order.order_type in ("market", "stop"):
        # A triggered stop is a market order: at the last price if the
        # update is not it, as the stop's rest fills on the next update.
        at = reference if last is None else last
        price: Decimal | None = _slipped(config, order.side, at)
    elif newly_triggered or not resting:
        # A stop-limit that just triggered, or a limit order arriving:
        # marketable? Against the market now: the last price if the update
        # (a late print that triggered it) is not it.
        at = reference if last is None else last
        price = _marketable_limit_price(config, order, at)
    else:
        price = _limit_price_when_resting(config, order, update)
    if price is None:
        return Match(Decimal(0), None, newly_triggered)
    return Match(_chunk(config, order), price, newly_triggered)
