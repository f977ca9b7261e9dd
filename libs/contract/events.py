"""Every event tradebus carries, as one discriminated union.

Names are past tense for facts (``FillReceived``) and imperative for commands
(``SubmitOrder``). Each class fixes ``type`` to its own name and says which
subject it travels on; :data:`EVENT_ADAPTER` decodes any of them from JSON.
Adding an event: define its payload and class here, add it to ``AnyEvent``,
then run ``make proto`` (a test fails until ``proto/`` matches).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, Self, get_args

from pydantic import Field, TypeAdapter, model_validator

from libs.contract import options
from libs.contract.envelope import (
    Event,
    Frozen,
    Money,
    Nanos,
    NonNegativeQuantity,
    Price,
    Quantity,
    Symbol,
    Token,
)

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]
AssetClass = Literal["equity", "option"]
#: Options are named as Polygon names them: ``O:`` and the OCC symbol
#: (``O:SPY241220P00720000``, see ``libs.contract.options``); every other
#: symbol is an equity.
OPTION_PREFIX = options.OPTION_PREFIX


#: Shares per option contract: a price is per share, a contract's worth 100 of it.
OPTION_MULTIPLIER = Decimal(100)
_ONE = Decimal(1)


def asset_class_of(symbol: str) -> AssetClass:
    """The asset class ``symbol`` names (see :data:`OPTION_PREFIX`)."""
    return "option" if symbol.startswith(OPTION_PREFIX) else "equity"


def contract_multiplier(symbol: str) -> Decimal:
    """What one unit of ``symbol``'s quantity is worth in its price: 100 for an
    option contract (standard US equity options; adjusted and mini contracts
    are not told apart), 1 for a share. Notional and P&L are
    ``quantity x price x contract_multiplier``."""
    return OPTION_MULTIPLIER if symbol.startswith(OPTION_PREFIX) else _ONE


FeedName = Literal["polygon", "synthetic", "cache", "replay", "demo"]
TradingState = Literal["active", "reducing", "halted"]


# --------------------------------------------------------------- market data


class TradePayload(Frozen):
    symbol: Symbol
    price: Price
    size: Quantity
    exchange: int | None = None
    trade_id: str | None = None
    conditions: tuple[int, ...] = ()
    tape: int | None = None
    sequence: int | None = None
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
    bid_exchange: int | None = None
    ask_exchange: int | None = None
    condition: int | None = None
    indicators: tuple[int, ...] = ()
    tape: int | None = None
    sequence: int | None = None
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
    trades: int | None = None
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
    gap_filled_bars: int | None = None
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


class FeedStatusChanged(Event):
    """The market-data feed's connection or health changed."""

    subject_template = "md.status.{feed}"
    type: Literal["FeedStatusChanged"] = "FeedStatusChanged"
    payload: FeedStatusPayload


# ------------------------------------------------------------------ strategy


class SignalPayload(Frozen):
    strategy: Token
    symbol: Symbol
    name: str
    direction: Literal["long", "short", "flat"]
    strength: Money | None = None
    reason: str = ""


class SignalGenerated(Event):
    """A strategy saw something worth acting on; the root of an order chain."""

    subject_template = "strategy.signal.{strategy}"
    type: Literal["SignalGenerated"] = "SignalGenerated"
    payload: SignalPayload


class OrderIntentPayload(Frozen):
    strategy: Token
    account: Token
    symbol: Symbol
    side: Side
    quantity: Quantity
    order_type: OrderType = "market"
    limit_price: Price | None = None
    stop_price: Price | None = None
    time_in_force: TimeInForce = "day"
    asset_class: AssetClass = "equity"


class OrderIntentCreated(Event):
    """A strategy wants an order; only the risk-gate can turn it into one."""

    subject_template = "strategy.intent.{strategy}"
    type: Literal["OrderIntentCreated"] = "OrderIntentCreated"
    payload: OrderIntentPayload


class StrategyFaultPayload(Frozen):
    strategy: Token
    error: str
    action: Literal["stopped", "restarted"]


class StrategyFaulted(Event):
    """A strategy raised; it was stopped or restarted, the others untouched."""

    subject_template = "strategy.fault.{strategy}"
    type: Literal["StrategyFaulted"] = "StrategyFaulted"
    payload: StrategyFaultPayload


# ---------------------------------------------------------------------- risk


class ReasonCode(StrEnum):
    """Why the risk-gate accepted or denied an intent."""

    ACCEPTED = "accepted"
    KILL_SWITCH = "kill_switch"
    HALTED = "halted"
    REDUCE_ONLY = "reduce_only"
    MAX_GROSS_NOTIONAL = "max_gross_notional"
    MAX_STRATEGY_POSITION = "max_strategy_position"
    MAX_SYMBOL_POSITION = "max_symbol_position"
    MAX_ORDER_QUANTITY = "max_order_quantity"
    MAX_ORDER_NOTIONAL = "max_order_notional"
    PRICE_BAND = "price_band"
    NO_MARKET_PRICE = "no_market_price"
    STRATEGY_RATE_LIMIT = "strategy_rate_limit"
    ACCOUNT_RATE_LIMIT = "account_rate_limit"
    DAILY_LOSS = "daily_loss"
    UNKNOWN_STRATEGY = "unknown_strategy"
    UNKNOWN_ACCOUNT = "unknown_account"
    #: The intent is older than the risk-gate accepts (a backlog after an outage).
    STALE_INTENT = "stale_intent"
    #: The intent's asset class is not the one its symbol names (an option
    #: not named ``O:…``, or an ``O:`` symbol as an equity): its notional would
    #: be counted with the wrong contract multiplier.
    ASSET_CLASS = "asset_class"
    #: An option contract past the close of its expiry day: no broker takes
    #: an order in it, a close included (the broker settles the position).
    CONTRACT_EXPIRED = "contract_expired"
    #: An option contract tradebus cannot settle (a cash-settled index
    #: option, an adjusted contract: ``OptionContract.unsupported``), in an
    #: order that opens or adds to the strategy's position in it.
    CONTRACT_UNSUPPORTED = "contract_unsupported"


class RiskDecisionPayload(Frozen):
    intent_id: uuid.UUID
    strategy: Token
    account: Token
    symbol: Symbol
    decision: Literal["accepted", "denied"]
    reason: ReasonCode
    detail: str = ""
    order_id: uuid.UUID | None = None

    @classmethod
    def for_intent(
        cls,
        intent: OrderIntentCreated,
        reason: ReasonCode,
        detail: str = "",
        order_id: uuid.UUID | None = None,
    ) -> RiskDecisionPayload:
        """The decision on ``intent``: accepted (``reason`` ACCEPTED, with its
        ``order_id``) or denied for ``reason``."""
        p = intent.payload
        return cls(
            intent_id=intent.id,
            strategy=p.strategy,
            account=p.account,
            symbol=p.symbol,
            decision="accepted" if reason is ReasonCode.ACCEPTED else "denied",
            reason=reason,
            detail=detail,
            order_id=order_id,
        )


class RiskDecisionMade(Event):
    """The risk-gate's verdict on one intent."""

    #: The verdict is in the subject: a strategy-runner reads only the
    #: denials (an accepted intent's order id is known from the intent, see
    #: ``libs.contract.codec.order_id_for``), and the accepted decision, which
    #: leaves with its order command, wakes nobody on the order path.
    subject_template = "risk.decision.{strategy}.{decision}"
    type: Literal["RiskDecisionMade"] = "RiskDecisionMade"
    payload: RiskDecisionPayload


class TradingStatePayload(Frozen):
    scope: Token  # "global" or an account name
    state: TradingState
    previous: TradingState
    reason: str


class TradingStateChanged(Event):
    """An account (or everything) moved between active, reducing and halted."""

    subject_template = "risk.state.{scope}"
    type: Literal["TradingStateChanged"] = "TradingStateChanged"
    payload: TradingStatePayload


class BreakerPayload(Frozen):
    account: Token
    breaker: Literal["daily_loss", "connection_lost", "kill_switch"]
    limit: Money | None = None
    value: Money | None = None
    detail: str = ""


class BreakerTripped(Event):
    """A circuit breaker fired; the account is flattened and halted."""

    subject_template = "risk.breaker.{account}"
    type: Literal["BreakerTripped"] = "BreakerTripped"
    payload: BreakerPayload


# -------------------------------------------------------- order commands


class SubmitOrderPayload(Frozen):
    order_id: uuid.UUID  # also the broker's client order id: idempotency key
    intent_id: uuid.UUID | None = None
    strategy: Token
    account: Token
    symbol: Symbol
    side: Side
    quantity: Quantity
    order_type: OrderType = "market"
    limit_price: Price | None = None
    stop_price: Price | None = None
    time_in_force: TimeInForce = "day"
    asset_class: AssetClass = "equity"

    @classmethod
    def for_intent(cls, intent: OrderIntentCreated, order_id: uuid.UUID) -> SubmitOrderPayload:
        """The order command of an accepted ``intent``, as ``order_id``: the
        intent's order as it was asked (type, prices, time in force, asset
        class), nothing left out."""
        p = intent.payload
        return cls(
            order_id=order_id,
            intent_id=intent.id,
            strategy=p.strategy,
            account=p.account,
            symbol=p.symbol,
            side=p.side,
            quantity=p.quantity,
            order_type=p.order_type,
            limit_price=p.limit_price,
            stop_price=p.stop_price,
            time_in_force=p.time_in_force,
            asset_class=p.asset_class,
        )


class SubmitOrder(Event):
    """Send this order to the broker. Only the risk-gate may publish it."""

    subject_template = "orders.cmd.{account}"
    type: Literal["SubmitOrder"] = "SubmitOrder"
    payload: SubmitOrderPayload


class CancelOrderPayload(Frozen):
    order_id: uuid.UUID
    account: Token
    reason: str = ""


class CancelOrder(Event):
    """Cancel one working order."""

    subject_template = "orders.cmd.{account}"
    type: Literal["CancelOrder"] = "CancelOrder"
    payload: CancelOrderPayload


class FlattenAccountPayload(Frozen):
    account: Token
    reason: str


class FlattenAccount(Event):
    """Cancel every open order and close every position of the account."""

    subject_template = "orders.cmd.{account}"
    type: Literal["FlattenAccount"] = "FlattenAccount"
    payload: FlattenAccountPayload


# -------------------------------------------------------------------- broker


class OrderAcceptedPayload(Frozen):
    order_id: uuid.UUID
    account: Token
    broker_order_id: str
    symbol: Symbol


class OrderAccepted(Event):
    """The broker acknowledged the order."""

    subject_template = "broker.ack.{account}"
    type: Literal["OrderAccepted"] = "OrderAccepted"
    payload: OrderAcceptedPayload


class OrderRejectedPayload(Frozen):
    order_id: uuid.UUID
    account: Token
    reason: str
    code: str | None = None


class OrderRejected(Event):
    """The broker (or the gateway on its behalf) refused the order."""

    subject_template = "broker.reject.{account}"
    type: Literal["OrderRejected"] = "OrderRejected"
    payload: OrderRejectedPayload


#: How an option position was settled at its contract's expiry (see
#: :attr:`FillPayload.settlement`).
Settlement = Literal["expired", "exercised", "assigned"]


class FillPayload(Frozen):
    order_id: uuid.UUID
    account: Token
    broker_order_id: str
    fill_id: str
    symbol: Symbol
    side: Side
    quantity: Quantity
    #: Per share; 0 only for a settlement's contract leg (see ``settlement``).
    price: NonNegativeQuantity
    cumulative_quantity: Quantity
    leaves_quantity: NonNegativeQuantity
    status: Literal["partial", "complete"]
    commission: Money = Decimal("0")
    #: The strategy the fill is booked to (the SubmitOrder's; for a flatten's
    #: closing order, the strategy whose position it closed; for a
    #: settlement, the strategy whose position it settled; None if nobody's).
    strategy: Token | None = None
    #: Not a trade: the broker settled an option position at its contract's
    #: expiry (its non-trade activities, e.g. Alpaca's OPEXP, OPEXC, OPASN
    #: and OPTRD). The contract's position is closed at price 0 (expired
    #: worthless, or exercised / assigned: the contract is gone), and an
    #: exercise or assignment also buys or sells the underlying at the
    #: strike. Booked like any fill, but it is no market price: the
    #: risk-gate, the strategies' ledgers and ``positions_marked`` never mark
    #: a symbol at it (a strike is not where the underlying trades).
    settlement: Settlement | None = None

    @model_validator(mode="after")
    def _priced(self) -> Self:
        if self.price == 0 and self.settlement is None:
            raise ValueError("a fill's price must be greater than 0 (0 only for a settlement)")
        return self


class FillReceived(Event):
    """Some or all of an order was executed."""

    subject_template = "broker.fill.{account}"
    type: Literal["FillReceived"] = "FillReceived"
    payload: FillPayload


class OrderCanceledPayload(Frozen):
    order_id: uuid.UUID
    account: Token
    broker_order_id: str | None = None
    reason: str = ""


class OrderCanceled(Event):
    """The broker confirmed a cancel (or the order expired)."""

    subject_template = "broker.cancel.{account}"
    type: Literal["OrderCanceled"] = "OrderCanceled"
    payload: OrderCanceledPayload


class ClosingOrder(Frozen):
    """One order a flatten's close-all placed at the broker."""

    order_id: uuid.UUID
    symbol: Symbol
    side: Side
    quantity: Quantity
    #: What of it still works as the event is published: its quantity less
    #: the fills published before it, 0 once it has ended.
    leaves_quantity: NonNegativeQuantity
    #: The strategy its fills are booked to, when one strategy's position
    #: takes all of what works (as the gateway's positions stand when it is
    #: published); None: several strategies' positions, or nobody's.
    strategy: Token | None = None


class ClosingOrdersPayload(Frozen):
    account: Token
    orders: tuple[ClosingOrder, ...]


class ClosingOrdersPlaced(Event):
    """A flatten's close-all placed these orders at the broker (caused by the
    ``FlattenAccount``): what the risk-gate counts as the account's open
    orders until they fill, are canceled or rejected."""

    subject_template = "broker.close.{account}"
    type: Literal["ClosingOrdersPlaced"] = "ClosingOrdersPlaced"
    payload: ClosingOrdersPayload


class BrokerConnectionPayload(Frozen):
    account: Token
    broker: str
    state: Literal["connected", "disconnected", "reconnecting"]
    detail: str = ""


class BrokerConnectionChanged(Event):
    """The gateway's connection to a broker account went up or down."""

    subject_template = "broker.conn.{account}"
    type: Literal["BrokerConnectionChanged"] = "BrokerConnectionChanged"
    payload: BrokerConnectionPayload


class PositionDifference(Frozen):
    """One symbol whose net position the broker and tradebus's fills disagree on."""

    symbol: Symbol
    #: Net quantity at the broker (negative: short; 0: the broker holds none).
    broker_quantity: Money
    #: Net quantity of the fills tradebus published for the account, over
    #: every strategy (and none).
    recorded_quantity: Money


class PositionsCheckedPayload(Frozen):
    account: Token
    broker: str
    #: Open positions the broker reported.
    broker_positions: int = Field(ge=0)
    #: Empty when every position agrees.
    differences: tuple[PositionDifference, ...] = ()


class BrokerPositionsChecked(Event):
    """The gateway compared the broker's positions with the account's
    recorded fills: the first check after it starts, and every change since
    (a difference appearing, changing or gone)."""

    subject_template = "broker.positions.{account}"
    type: Literal["BrokerPositionsChecked"] = "BrokerPositionsChecked"
    payload: PositionsCheckedPayload


# ------------------------------------------------------------------- control


class OperatorActionPayload(Frozen):
    operator: str
    reason: str


class KillSwitchEngaged(Event):
    """The global kill switch is on: no new order passes the risk-gate."""

    subject_template = "control.killswitch"
    type: Literal["KillSwitchEngaged"] = "KillSwitchEngaged"
    payload: OperatorActionPayload


class KillSwitchReleased(Event):
    """The global kill switch is off again."""

    subject_template = "control.killswitch"
    type: Literal["KillSwitchReleased"] = "KillSwitchReleased"
    payload: OperatorActionPayload


class ResumePayload(Frozen):
    operator: str
    reason: str
    scope: Token  # "global" or an account name


class TradingResumeRequested(Event):
    """An operator asks to return a halted account (or everything) to active."""

    subject_template = "control.resume"
    type: Literal["TradingResumeRequested"] = "TradingResumeRequested"
    payload: ResumePayload


# --------------------------------------------------------------- dead letter


class DeadLetterPayload(Frozen):
    service: Token
    original_subject: str
    error: str
    raw_b64: str  # the message exactly as received, base64
    raw_size: int
    truncated: bool = False  # raw_b64 holds only the first part of a huge message
    headers: dict[str, str] = Field(default_factory=dict)
    stream_seq: int | None = None


class MessageDeadLettered(Event):
    """A message could not be decoded; here it is, whole, with the reason."""

    subject_template = "deadletter.{service}"
    type: Literal["MessageDeadLettered"] = "MessageDeadLettered"
    payload: DeadLetterPayload


AnyEvent = Annotated[
    TradePrinted
    | QuoteUpdated
    | BarClosed
    | MarkUpdated
    | FeedStatusChanged
    | SignalGenerated
    | OrderIntentCreated
    | StrategyFaulted
    | RiskDecisionMade
    | TradingStateChanged
    | BreakerTripped
    | SubmitOrder
    | CancelOrder
    | FlattenAccount
    | OrderAccepted
    | OrderRejected
    | FillReceived
    | OrderCanceled
    | ClosingOrdersPlaced
    | BrokerConnectionChanged
    | BrokerPositionsChecked
    | KillSwitchEngaged
    | KillSwitchReleased
    | TradingResumeRequested
    | MessageDeadLettered,
    Field(discriminator="type"),
]

#: Decodes any event from JSON bytes (strictly: unknown fields are errors).
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

#: Every event class, by its ``type`` name (derived from the union above).
EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls for cls in get_args(get_args(AnyEvent)[0])
}

__all__ = [name for name in dir() if not name.startswith("_")]
