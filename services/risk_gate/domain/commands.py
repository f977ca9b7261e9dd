"""The events the risk-gate emits, with ids derived from what caused them.

Every id the gate mints is :func:`~libs.contract.codec.derived_id` of its
cause: the decision, the order id (the broker's client order id) and the
``SubmitOrder`` of an intent derive from the intent's id; a reaction's
events derive from the event that triggered it. Deciding or reacting twice
to the same thing therefore produces the same events, which JetStream's
duplicate window drops and :func:`~services.risk_gate.domain.evolve.evolve`
recognises, so a redelivered intent never becomes a second order.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, TypeVar

from libs.contract.codec import derived_id, order_id_for
from libs.contract.envelope import Event
from libs.contract.events import (
    OrderIntentCreated,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    SubmitOrder,
    SubmitOrderPayload,
)

#: The ``source`` of what the gate publishes (the instance is appended live).
SOURCE = "risk-gate"

E = TypeVar("E", bound=Event)

__all__ = [
    "SOURCE",
    "decision_id_for",
    "make",
    "order_id_for",
    "submit_id_for",
    "submit_order",
    "withdraw_id_for",
    "withdrawal",
]


#: The ids derived from an intent are asked for several times while it is
#: decided, applied and ordered (a uuid5 is a SHA-1): the recent ones are kept.
_RECENT_IDS = 4096


@functools.lru_cache(maxsize=_RECENT_IDS)
def decision_id_for(intent_id: uuid.UUID) -> uuid.UUID:
    return derived_id(SOURCE, "decision", intent_id)


@functools.lru_cache(maxsize=_RECENT_IDS)
def submit_id_for(intent_id: uuid.UUID) -> uuid.UUID:
    return derived_id(SOURCE, "submit", intent_id)


def withdraw_id_for(intent_id: uuid.UUID) -> uuid.UUID:
    return derived_id(SOURCE, "withdraw", intent_id)


def make(
    cls: type[E],
    payload: Any,
    *,
    event_id: uuid.UUID,
    now_ns: int,
    source: str,
    correlation_id: uuid.UUID,
    causation_id: uuid.UUID,
) -> E:
    """An event of ``cls`` with explicit ids (no clock, no random id)."""
    return cls(
        id=event_id,
        type=cls.model_fields["type"].default,
        ts_event=now_ns,
        ts_init=now_ns,
        source=source,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload,
    )


def submit_order(intent: OrderIntentCreated, now_ns: int, *, source: str = SOURCE) -> SubmitOrder:
    """The order command for an accepted intent, caused by its decision."""
    return make(
        SubmitOrder,
        SubmitOrderPayload.for_intent(intent, order_id_for(intent.id)),
        event_id=submit_id_for(intent.id),
        now_ns=now_ns,
        source=source,
        correlation_id=intent.correlation_id,
        causation_id=decision_id_for(intent.id),
    )


def withdrawal(
    intent: OrderIntentCreated,
    reason: ReasonCode,
    detail: str,
    now_ns: int,
    *,
    source: str = SOURCE,
) -> RiskDecisionMade:
    """The denial that withdraws an accepted intent whose order never went out.

    A second decision on the intent, caused by the accepted one: what closes
    an intent that has no order (the strategy-runner's intent book and its
    rebuild finish an intent on a denial); its id derives from the intent, so
    withdrawing twice repeats the same event.
    """
    return make(
        RiskDecisionMade,
        RiskDecisionPayload.for_intent(
            intent, reason, f"accepted, but its order had not gone out and is withdrawn: {detail}"
        ),
        event_id=withdraw_id_for(intent.id),
        now_ns=now_ns,
        source=source,
        correlation_id=intent.correlation_id,
        causation_id=decision_id_for(intent.id),
    )
