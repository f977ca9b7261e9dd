"""The risk-gate's and the operators' events: the gate's decisions and why,
trading states and breakers, the kill switch and resumes.

Part of the event contract; :mod:`libs.contract.events` holds the union of
every event and re-exports these.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from libs.contract.envelope import Event, Frozen, Id, Money, Symbol, Token
from libs.contract.events_orders import OrderIntentCreated

TradingState = Literal["active", "reducing", "halted"]


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
    #: A quantity no venue takes: an option order for part of a contract
    #: (options trade in whole contracts).
    FRACTIONAL_QUANTITY = "fractional_quantity"


class RiskDecisionPayload(Frozen):
    intent_id: Id
    strategy: Token
    account: Token
    symbol: Symbol
    decision: Literal["accepted", "denied"]
    reason: ReasonCode
    detail: str = ""
    order_id: Id | None = None

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
