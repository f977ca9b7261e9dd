"""Every event tradebus carries, as one discriminated union.

Names are past tense for facts (``FillReceived``) and imperative for commands
(``SubmitOrder``). Each class fixes ``type`` to its own name and says which
subject it travels on; :data:`EVENT_ADAPTER` decodes any of them from JSON.

The classes live by family in the modules beside this one, and this module
re-exports them all: import them from here. ``events_market`` (trades,
quotes, bars, marks, the feed's status), ``events_orders`` (the order
vocabulary, a strategy's signals and intents, the order commands, the
broker's reports), ``events_risk`` (the risk-gate's decisions, trading
states, breakers, the kill switch, resumes); the dead letter is here, beside
the decoder whose failures it keeps. Adding an event: define its payload and
class in its family's module, add it to ``AnyEvent`` and ``__all__`` here,
then run ``make proto`` (a test fails until ``proto/`` matches).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, TypeAdapter

from libs.contract.envelope import Event, Frozen, Int64, Token
from libs.contract.events_market import (
    BarClosed,
    BarPayload,
    FeedName,
    FeedStatusChanged,
    FeedStatusPayload,
    MarkBasis,
    MarkPayload,
    MarkUpdated,
    QuotePayload,
    QuoteUpdated,
    TradePayload,
    TradePrinted,
)
from libs.contract.events_orders import (
    OPTION_MULTIPLIER,
    OPTION_PREFIX,
    AssetClass,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    BrokerPositionsChecked,
    CancelOrder,
    CancelOrderPayload,
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    FillPayload,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderRejectedPayload,
    OrderType,
    PositionDifference,
    PositionsCheckedPayload,
    Settlement,
    Side,
    SignalGenerated,
    SignalPayload,
    StrategyFaulted,
    StrategyFaultPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TimeInForce,
    asset_class_of,
    contract_multiplier,
)
from libs.contract.events_risk import (
    BreakerPayload,
    BreakerTripped,
    KillSwitchEngaged,
    KillSwitchReleased,
    OperatorActionPayload,
    ReasonCode,
    ResumePayload,
    RiskDecisionMade,
    RiskDecisionPayload,
    TradingResumeRequested,
    TradingState,
    TradingStateChanged,
    TradingStatePayload,
)

# --------------------------------------------------------------- dead letter


class DeadLetterPayload(Frozen):
    service: Token
    original_subject: str
    error: str
    raw_b64: str  # the message exactly as received, base64
    raw_size: Int64
    truncated: bool = False  # raw_b64 holds only the first part of a huge message
    headers: dict[str, str] = Field(default_factory=dict)
    stream_seq: Int64 | None = None


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

__all__ = [
    "EVENT_ADAPTER",
    "EVENT_TYPES",
    "OPTION_MULTIPLIER",
    "OPTION_PREFIX",
    "AnyEvent",
    "AssetClass",
    "BarClosed",
    "BarPayload",
    "BreakerPayload",
    "BreakerTripped",
    "BrokerConnectionChanged",
    "BrokerConnectionPayload",
    "BrokerPositionsChecked",
    "CancelOrder",
    "CancelOrderPayload",
    "ClosingOrder",
    "ClosingOrdersPayload",
    "ClosingOrdersPlaced",
    "DeadLetterPayload",
    "FeedName",
    "FeedStatusChanged",
    "FeedStatusPayload",
    "FillPayload",
    "FillReceived",
    "FlattenAccount",
    "FlattenAccountPayload",
    "KillSwitchEngaged",
    "KillSwitchReleased",
    "MarkBasis",
    "MarkPayload",
    "MarkUpdated",
    "MessageDeadLettered",
    "OperatorActionPayload",
    "OrderAccepted",
    "OrderAcceptedPayload",
    "OrderCanceled",
    "OrderCanceledPayload",
    "OrderIntentCreated",
    "OrderIntentPayload",
    "OrderRejected",
    "OrderRejectedPayload",
    "OrderType",
    "PositionDifference",
    "PositionsCheckedPayload",
    "QuotePayload",
    "QuoteUpdated",
    "ReasonCode",
    "ResumePayload",
    "RiskDecisionMade",
    "RiskDecisionPayload",
    "Settlement",
    "Side",
    "SignalGenerated",
    "SignalPayload",
    "StrategyFaultPayload",
    "StrategyFaulted",
    "SubmitOrder",
    "SubmitOrderPayload",
    "TimeInForce",
    "TradePayload",
    "TradePrinted",
    "TradingResumeRequested",
    "TradingState",
    "TradingStateChanged",
    "TradingStatePayload",
    "asset_class_of",
    "contract_multiplier",
]
