"""The order path's events: a strategy's signals and intents, the order
commands only the risk-gate sends, and what the broker reports back; with the
order vocabulary (side, order type, time in force, asset class) they share.

Part of the event contract; :mod:`libs.contract.events` holds the union of
every event and re-exports these.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal, Self

from pydantic import Field, model_validator

from libs.contract import options
from libs.contract.envelope import (
    Event,
    Frozen,
    Id,
    Int64,
    Money,
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


# -------------------------------------------------------- order commands


class SubmitOrderPayload(Frozen):
    order_id: Id  # also the broker's client order id: idempotency key
    intent_id: Id | None = None
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
    order_id: Id
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
    order_id: Id
    account: Token
    broker_order_id: str
    symbol: Symbol


class OrderAccepted(Event):
    """The broker acknowledged the order."""

    subject_template = "broker.ack.{account}"
    type: Literal["OrderAccepted"] = "OrderAccepted"
    payload: OrderAcceptedPayload


class OrderRejectedPayload(Frozen):
    order_id: Id
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
    order_id: Id
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
    order_id: Id
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

    order_id: Id
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
    broker_positions: Int64 = Field(ge=0)
    #: Empty when every position agrees.
    differences: tuple[PositionDifference, ...] = ()


class BrokerPositionsChecked(Event):
    """The gateway compared the broker's positions with the account's
    recorded fills: the first check after it starts, and every change since
    (a difference appearing, changing or gone)."""

    subject_template = "broker.positions.{account}"
    type: Literal["BrokerPositionsChecked"] = "BrokerPositionsChecked"
    payload: PositionsCheckedPayload
