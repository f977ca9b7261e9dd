"""Helpers for testing strategies (and for backtests): synthetic events, a probe.

- :func:`bar` / :func:`bars` build ``BarClosed`` events with deterministic ids.
- :func:`fill_chain` plays risk-gate and broker for one intent: an accepted
  decision, the order command, the broker's ack and a fill, chained exactly as
  the real services chain them (correlation id = the signal).
- :func:`deny` is the risk-gate saying no; :func:`broker_reject` is the
  risk-gate saying yes and the broker refusing the order.
- :class:`EchoStrategy` signals and orders on every bar and raises on the
  closes it is told to: a probe for fault handling (the runner's integration
  test runs it as ``libs.strategy.testing:EchoStrategy``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Literal

from pydantic import Field

from libs.contract.codec import derived_id, order_id_for
from libs.contract.envelope import Event, IdFactory
from libs.contract.events import (
    BarClosed,
    BarPayload,
    FillPayload,
    FillReceived,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderRejectedPayload,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    Settlement,
    Side,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
    asset_class_of,
)
from libs.strategy.base import Bar, Strategy, StrategyParams

MINUTE_NS = 60 * 1_000_000_000
NEW_YORK = "America/New_York"


class At:
    """A clock stopped at one instant."""

    def __init__(self, now_ns: int) -> None:
        self._now = now_ns

    def now_ns(self) -> int:
        return self._now


def ny_ns(day: dt.date, hour: int, minute: int) -> int:
    """Nanoseconds of a New York wall-clock time (daylight saving applied)."""
    from zoneinfo import ZoneInfo

    local = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ZoneInfo(NEW_YORK))
    return int(local.timestamp()) * 1_000_000_000


def bar(
    symbol: str,
    close: Decimal | int | str,
    start_ns: int,
    *,
    high: Decimal | int | str | None = None,
    low: Decimal | int | str | None = None,
    open_: Decimal | int | str | None = None,
    volume: int = 1000,
    source: str = "test/marketdata",
    interval: Literal["1s", "1m"] = "1m",
) -> BarClosed:
    """A closed bar (1-minute unless told) starting at ``start_ns``; ``ts_event``
    is its end."""
    c = Decimal(close)
    o = Decimal(open_) if open_ is not None else c
    h = Decimal(high) if high is not None else max(o, c)
    lo = Decimal(low) if low is not None else min(o, c)
    end = start_ns + (MINUTE_NS if interval == "1m" else MINUTE_NS // 60)
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval=interval,
            open=o,
            high=h,
            low=lo,
            close=c,
            volume=Decimal(volume),
            start_ns=start_ns,
            end_ns=end,
            feed="synthetic",
        ),
        source=source,
        clock=At(end),
        # 1-minute bars keep the ids they always had.
        event_id=derived_id(
            "test-bar", symbol, start_ns, c, *([] if interval == "1m" else [interval])
        ),
    )


def bars(
    symbol: str,
    closes: Iterable[Decimal | int | str],
    *,
    start_ns: int = 1_700_000_000 * 1_000_000_000,
    step_ns: int = MINUTE_NS,
) -> list[BarClosed]:
    """Consecutive 1-minute bars with these closes."""
    return [bar(symbol, c, start_ns + i * step_ns) for i, c in enumerate(closes)]


def signal(
    strategy: str, symbol: str, *, at_ns: int, ids: IdFactory = uuid.uuid4
) -> SignalGenerated:
    """A strategy's signal at ``at_ns``: the root of a chain."""
    return SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol=symbol, name="test", direction="long"),
        source="test/strategy-runner",
        clock=At(at_ns),
        ids=ids,
    )


def market_intent(
    cause: SignalGenerated,
    account: str,
    side: Side,
    quantity: Decimal | int,
    *,
    ids: IdFactory = uuid.uuid4,
) -> OrderIntentCreated:
    """A market intent of ``cause``'s strategy in its symbol, at its time."""
    p = cause.payload
    return OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=p.strategy,
            account=account,
            symbol=p.symbol,
            side=side,
            quantity=Decimal(quantity),
            asset_class=asset_class_of(p.symbol),
        ),
        source="test/strategy-runner",
        clock=At(cause.ts_event),
        cause=cause,
        ids=ids,
    )


def accept(
    intent: OrderIntentCreated, *, ids: IdFactory = uuid.uuid4, at_ns: int | None = None
) -> tuple[RiskDecisionMade, SubmitOrder]:
    """The risk-gate's acceptance of ``intent`` and its order command, under
    the order id the risk-gate gives it."""
    clock = At(at_ns if at_ns is not None else intent.ts_event)
    order_id = order_id_for(intent.id)
    decision = _decision(intent, ReasonCode.ACCEPTED, order_id, clock=clock, ids=ids)
    command = SubmitOrder.create(
        SubmitOrderPayload.for_intent(intent, order_id),
        source="test/risk-gate",
        clock=clock,
        cause=decision,
        ids=ids,
    )
    return decision, command


def fill_chain(
    intent: OrderIntentCreated,
    price: Decimal | int | str,
    *,
    ids: IdFactory,
    quantity: Decimal | None = None,
    commission: Decimal = Decimal(0),
    at_ns: int | None = None,
) -> list[Event]:
    """Decision, command, ack and one fill for ``intent`` (complete unless
    ``quantity``), under the order id the risk-gate gives it."""
    p = intent.payload
    clock = At(at_ns if at_ns is not None else intent.ts_event)
    qty = quantity if quantity is not None else p.quantity
    decision, command = accept(intent, ids=ids, at_ns=at_ns)
    order_id = command.payload.order_id
    ack = OrderAccepted.create(
        OrderAcceptedPayload(
            order_id=order_id, account=p.account, broker_order_id=f"b-{order_id}", symbol=p.symbol
        ),
        source="test/broker",
        clock=clock,
        cause=command,
        ids=ids,
    )
    fill = FillReceived.create(
        FillPayload(
            order_id=order_id,
            account=p.account,
            broker_order_id=f"b-{order_id}",
            fill_id=f"f-{order_id}-1",
            symbol=p.symbol,
            side=p.side,
            quantity=qty,
            price=Decimal(price),
            cumulative_quantity=qty,
            leaves_quantity=p.quantity - qty,
            status="complete" if qty == p.quantity else "partial",
            commission=commission,
        ),
        source="test/broker",
        clock=clock,
        cause=ack,
        ids=ids,
    )
    return [decision, command, ack, fill]


def booked_fill(
    symbol: str,
    side: Side,
    quantity: Decimal | int,
    price: Decimal | int | str,
    *,
    strategy: str | None,
    flatten: uuid.UUID,
    account: str = "paper",
    fill_id: str = "f-close-1",
    at_ns: int = 0,
) -> FillReceived:
    """A complete fill of an order no strategy placed: a ``FlattenAccount``'s
    closing order (its chain ``flatten``), which the broker-gateway booked to
    ``strategy`` (None: to nobody)."""
    closing_order = uuid.uuid4()
    fill = _complete_fill(
        symbol,
        side,
        quantity,
        price,
        strategy,
        account,
        at_ns,
        order_id=closing_order,
        broker_order_id=f"b-{closing_order}",
        fill_id=fill_id,
    )
    return fill.model_copy(update={"correlation_id": flatten, "causation_id": flatten})


def settlement_fill(
    symbol: str,
    side: Side,
    quantity: Decimal | int,
    price: Decimal | int | str,
    *,
    strategy: str,
    at_ns: int,
    account: str = "paper",
) -> FillReceived:
    """A fill the broker-gateway publishes for an option settled at expiry,
    booked to ``strategy`` (an exercise: the contract at 0, the underlying's
    shares at the strike)."""
    order_id = uuid.uuid4()
    activity = f"activity-{order_id}"
    return _complete_fill(
        symbol,
        side,
        quantity,
        price,
        strategy,
        account,
        at_ns,
        order_id=order_id,
        broker_order_id=activity,
        fill_id=activity,
        settlement="exercised",
    )


def _complete_fill(
    symbol: str,
    side: Side,
    quantity: Decimal | int,
    price: Decimal | int | str,
    strategy: str | None,
    account: str,
    at_ns: int,
    *,
    order_id: uuid.UUID,
    broker_order_id: str,
    fill_id: str,
    settlement: Settlement | None = None,
) -> FillReceived:
    """The broker-gateway's one complete fill of an order no strategy placed."""
    qty = Decimal(quantity)
    return FillReceived.create(
        FillPayload(
            order_id=order_id,
            account=account,
            broker_order_id=broker_order_id,
            fill_id=fill_id,
            symbol=symbol,
            side=side,
            quantity=qty,
            price=Decimal(price),
            cumulative_quantity=qty,
            leaves_quantity=Decimal(0),
            status="complete",
            strategy=strategy,
            settlement=settlement,
        ),
        source="test/broker-gateway",
        clock=At(at_ns),
    )


def deny(
    intent: OrderIntentCreated,
    *,
    ids: IdFactory = uuid.uuid4,
    reason: ReasonCode = ReasonCode.MAX_ORDER_QUANTITY,
) -> RiskDecisionMade:
    """The risk-gate's denial of ``intent``."""
    return _decision(intent, reason, None, clock=At(intent.ts_event), ids=ids)


def broker_reject(
    intent: OrderIntentCreated,
    reason: str,
    *,
    ids: IdFactory,
    code: str | None = "42210000",
    at_ns: int | None = None,
) -> list[Event]:
    """Decision, command and the broker's refusal of ``intent`` (an
    ``OrderRejected`` of the command, as the gateway publishes a refused
    submit), under the order id the risk-gate gives it."""
    decision, command = accept(intent, ids=ids, at_ns=at_ns)
    rejected = OrderRejected.create(
        OrderRejectedPayload(
            order_id=command.payload.order_id,
            account=intent.payload.account,
            reason=reason,
            code=code,
        ),
        source="test/broker",
        clock=At(at_ns if at_ns is not None else intent.ts_event),
        cause=command,
        ids=ids,
    )
    return [decision, command, rejected]


def _decision(
    intent: OrderIntentCreated,
    reason: ReasonCode,
    order_id: uuid.UUID | None,
    *,
    clock: At,
    ids: IdFactory,
) -> RiskDecisionMade:
    """The risk-gate's verdict on ``intent``: accepted (with ``order_id``) or denied."""
    return RiskDecisionMade.create(
        RiskDecisionPayload.for_intent(intent, reason, order_id=order_id),
        source="test/risk-gate",
        clock=clock,
        cause=intent,
        ids=ids,
    )


class EchoParams(StrategyParams):
    quantity: Decimal = Field(default=Decimal(1), gt=0)
    #: Closes on which ``on_bar`` raises (the probe's fault injection).
    fail_on_close: tuple[Decimal, ...] = ()
    #: Raise in ``on_start`` (a strategy that cannot even start).
    fail_on_start: bool = False
    #: Closes on which ``on_bar`` loops for ever (after emitting).
    hang_on_close: tuple[Decimal, ...] = ()


class EchoStrategy(Strategy[EchoParams]):
    """Signals ``long`` and buys ``quantity`` on every bar; raises, or hangs,
    where told to."""

    def on_start(self) -> None:
        if self.params.fail_on_start:
            raise RuntimeError("echo: told to fail on start")

    def on_bar(self, bar: Bar) -> None:
        signal = self.ctx.signal(bar.symbol, "echo", "long", reason=f"bar close {bar.close}")
        self.ctx.order(bar.symbol, "buy", self.params.quantity, cause=signal)
        if bar.close in self.params.fail_on_close:
            raise RuntimeError(f"echo: told to fail on close {bar.close}")
        spins = 0
        while bar.close in self.params.hang_on_close:  # an endless loop, by request
            spins += 1
