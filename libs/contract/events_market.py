"""Market-data events: trades, quotes, bars, marks, the feed's status.

Part of the event contract; :mod:`libs.contract.events` holds the union of
every event and re-exports these.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import model_validator

from libs.contract.envelope import (
    Event,
    Frozen,
    Int64,
    Money,
    Nanos,
    NonNegativeQuantity,
    Price,
    Quantity,
    Symbol,
)

FeedName = Literal["polygon", "synthetic", "cache", "replay", "demo"]


class TradePayload(Frozen):
    symbol: Symbol
    price: Price
    size: Quantity
    exchange: Int64 | None = None
    trade_id: str | None = None
    conditions: tuple[Int64, ...] = ()
    tape: Int64 | None = None
    sequence: Int64 | None = None
    feed: FeedName
    backfilled: bool = False


class TradePrinted(Event):
    """A trade printed on the tape (Polygon ``T``)."""

    subject_template = "md.trade.{symbol}"
    type: Literal["TradePrinted"] = "TradePrinted"
    payload: TradePayload


class QuotePayload(Frozen):
    symbol: Symbol
    bid_price: Money
    bid_size: NonNegativeQuantity
    ask_price: Money
    ask_size: NonNegativeQuantity
    bid_exchange: Int64 | None = None
    ask_exchange: Int64 | None = None
    condition: Int64 | None = None
    indicators: tuple[Int64, ...] = ()
    tape: Int64 | None = None
    sequence: Int64 | None = None
    feed: FeedName

    def unpriceable(self) -> Literal["one_sided", "crossed"] | None:
        """Why this quote's midpoint is no market price, or None when it is one.

        ``one_sided``: a side at zero price or size (the market does not
        quote it); ``crossed``: the bid above the ask. A locked quote (bid
        equal to ask) is a price. The rule of marketdata's option marks
        (``MarkUpdated``), the only marks made from quotes: the risk-gate,
        ``positions_marked`` and a strategy's books read those marks, not
        quotes.
        """
        if self.bid_price <= 0 or self.ask_price <= 0 or self.bid_size <= 0 or self.ask_size <= 0:
            return "one_sided"
        if self.bid_price > self.ask_price:
            return "crossed"
        return None


class QuoteUpdated(Event):
    """The national best bid and offer changed (Polygon ``Q``)."""

    subject_template = "md.quote.{symbol}"
    type: Literal["QuoteUpdated"] = "QuoteUpdated"
    payload: QuotePayload


class BarPayload(Frozen):
    symbol: Symbol
    interval: Literal["1s", "1m"]
    open: Price
    high: Price
    low: Price
    close: Price
    volume: NonNegativeQuantity
    vwap: Money | None = None
    trades: Int64 | None = None
    start_ns: Nanos
    end_ns: Nanos
    feed: FeedName
    backfilled: bool = False


class BarClosed(Event):
    """An aggregate bar closed (Polygon ``A`` / ``AM``, or REST gap-fill)."""

    subject_template = "md.bar.{interval}.{symbol}"
    type: Literal["BarClosed"] = "BarClosed"
    payload: BarPayload


#: What a mark was made from: ``quote_mid`` is the midpoint of a two-sided,
#: uncrossed quote (bid and ask both above zero, with size, bid <= ask).
MarkBasis = Literal["quote_mid"]


class MarkPayload(Frozen):
    """A market price made from a quote rather than printed by a trade.

    ``price`` lies within ``[bid_price, ask_price]``; a crossed or one-sided
    quote makes no mark (the contract refuses one). The quote a mark came
    from is its event's ``causation_id``; its ``ts_event`` is a time that
    quote stood at: the quote's own, or a later one when marketdata re-marks
    a quote the market has left unchanged.
    """

    symbol: Symbol
    price: Price
    bid_price: Price
    ask_price: Price
    basis: MarkBasis = "quote_mid"
    feed: FeedName

    @model_validator(mode="after")
    def _inside_the_quote(self) -> Self:
        if not self.bid_price <= self.price <= self.ask_price:
            raise ValueError(
                f"price {self.price} is not within bid {self.bid_price} and ask {self.ask_price}"
            )
        return self


class MarkUpdated(Event):
    """A new mark (market price) from a quote, for symbols that trade too seldom
    to be priced by their trades: option contracts (marketdata publishes it for
    ``O:`` symbols only, throttled per symbol)."""

    subject_template = "md.mark.{symbol}"
    type: Literal["MarkUpdated"] = "MarkUpdated"
    payload: MarkPayload


class FeedStatusPayload(Frozen):
    feed: FeedName
    status: Literal[
        "connected",
        "authenticated",
        "auth_failed",
        "subscribed",
        "disconnected",
        "reconnecting",
        "stale",
        "recovered",
        "gap_filled",
        "max_connections",
        "force_disconnect",
        "slow_consumer",
    ]
    message: str = ""
    gap_filled_bars: Int64 | None = None
    #: The feed's connection the status is about, where it has several
    #: (Polygon's ``stocks`` and ``options``, each its own WebSocket); None:
    #: the feed as a whole.
    market: Literal["stocks", "options"] | None = None
    #: The connection's bar gaps not filled yet, per bar interval: symbol ->
    #: window start (ns) of the first bar missing. Set on the statuses after
    #: which they may have changed (Polygon's ``disconnected``,
    #: ``reconnecting``, ``gap_filled``), ``{}`` for an interval with none
    #: open; a restart reads the newest back and fills them. None: the status
    #: says nothing about gaps (other statuses, and events from before it).
    open_gaps: dict[Literal["1s", "1m"], dict[Symbol, Nanos]] | None = None
    #: Why they are open: of ``open_gaps``, those kept open for bars REST had
    #: not built yet when last asked, per bar interval: symbol -> window
    #: start (ns) of the first such bar (one still missing once it closed
    #: the lag ago is given up on, and said so). Stated with ``open_gaps``
    #: (``{}``: none of them). A gap open but not here is open for another
    #: reason (an outage not filled yet, REST failing): bars REST lacks once
    #: it answers are windows without trades. None: not stated (events from
    #: before it); a restart then takes every gap as waited for.
    gaps_awaiting_rest: dict[Literal["1s", "1m"], dict[Symbol, Nanos]] | None = None


class FeedStatusChanged(Event):
    """The market-data feed's connection or health changed."""

    subject_template = "md.status.{feed}"
    type: Literal["FeedStatusChanged"] = "FeedStatusChanged"
    payload: FeedStatusPayload
