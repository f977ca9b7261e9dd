"""One full order chain, as the order path will produce it once it exists.

    SignalGenerated          demo/strategy-runner   (root: correlation id = its id)
    └─ OrderIntentCreated    demo/strategy-runner
       └─ RiskDecisionMade   demo/risk-gate         (accepted)
          └─ SubmitOrder     demo/risk-gate         orders.cmd.<account>
             └─ OrderAccepted   demo/broker-gateway
                └─ FillReceived demo/broker-gateway (complete, at the given price)

Each event names its direct parent as causation id and the signal as
correlation id, so ``tradebus audit <fill id>`` walks the fill back to the
signal. The sources name the services that will own these events, under
``demo/`` so that nobody mistakes them for the real thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from libs.contract.codec import order_id_for
from libs.contract.envelope import IdFactory
from libs.contract.events import (
    FillPayload,
    FillReceived,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    Side,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
    asset_class_of,
)

STRATEGY_SOURCE = "demo/strategy-runner"
RISK_SOURCE = "demo/risk-gate"
BROKER_SOURCE = "demo/broker-gateway"


class At:
    """A clock stopped at one instant (the builder is handed the time)."""

    def __init__(self, now_ns: int) -> None:
        self._now_ns = now_ns

    def now_ns(self) -> int:
        return self._now_ns


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """What the chain trades; ``ref`` is the broker's order id (unique per order)."""

    ref: str
    strategy: str
    account: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderChain:
    signal: SignalGenerated
    intent: OrderIntentCreated
    decision: RiskDecisionMade
    command: SubmitOrder
    accepted: OrderAccepted
    fill: FillReceived

    @property
    def events(
        self,
    ) -> tuple[
        SignalGenerated,
        OrderIntentCreated,
        RiskDecisionMade,
        SubmitOrder,
        OrderAccepted,
        FillReceived,
    ]:
        """Root first, each event after its parent (the order to publish in)."""
        return (self.signal, self.intent, self.decision, self.command, self.accepted, self.fill)


def build_chain(spec: ChainSpec, *, now_ns: int, ids: IdFactory) -> OrderChain:
    """The six events of one accepted, completely filled order, all at ``now_ns``."""
    clock = At(now_ns)
    signal = SignalGenerated.create(
        SignalPayload(
            strategy=spec.strategy,
            symbol=spec.symbol,
            name="demo-momentum",
            direction="long" if spec.side == "buy" else "short",
            reason=spec.reason,
        ),
        source=STRATEGY_SOURCE,
        clock=clock,
        ids=ids,
    )
    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=spec.strategy,
            account=spec.account,
            symbol=spec.symbol,
            side=spec.side,
            quantity=spec.quantity,
            asset_class=asset_class_of(spec.symbol),
        ),
        source=STRATEGY_SOURCE,
        clock=clock,
        cause=signal,
        ids=ids,
    )
    order_id = order_id_for(intent.id)  # as the risk-gate derives it
    decision = RiskDecisionMade.create(
        RiskDecisionPayload.for_intent(intent, ReasonCode.ACCEPTED, order_id=order_id),
        source=RISK_SOURCE,
        clock=clock,
        cause=intent,
        ids=ids,
    )
    command = SubmitOrder.create(
        SubmitOrderPayload.for_intent(intent, order_id),
        source=RISK_SOURCE,
        clock=clock,
        cause=decision,
        ids=ids,
    )
    broker_order_id = spec.ref
    accepted = OrderAccepted.create(
        OrderAcceptedPayload(
            order_id=order_id,
            account=spec.account,
            broker_order_id=broker_order_id,
            symbol=spec.symbol,
        ),
        source=BROKER_SOURCE,
        clock=clock,
        cause=command,
        ids=ids,
    )
    fill = FillReceived.create(
        FillPayload(
            order_id=order_id,
            account=spec.account,
            broker_order_id=broker_order_id,
            fill_id=f"{spec.ref}-1",
            symbol=spec.symbol,
            side=spec.side,
            quantity=spec.quantity,
            price=spec.price,
            cumulative_quantity=spec.quantity,
            leaves_quantity=Decimal(0),
            status="complete",
        ),
        source=BROKER_SOURCE,
        clock=clock,
        cause=accepted,
        ids=ids,
    )
    return OrderChain(signal, intent, decision, command, accepted, fill)
