"""One realistic sample of every event type of the contract, with the subject it
travels on, and the deterministic clocks and ids the contract tests build them with;
sma's buy of 10 AAPL on acct-a, its intent and its fill, as several tests build it."""

from __future__ import annotations

import base64
import json
import uuid
from decimal import Decimal
from itertools import count
from typing import Any, NamedTuple

from libs.contract.codec import encode
from libs.contract.envelope import Clock, Event, Frozen
from libs.contract.events import (
    BarClosed,
    BarPayload,
    BreakerPayload,
    BreakerTripped,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    BrokerPositionsChecked,
    CancelOrder,
    CancelOrderPayload,
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    DeadLetterPayload,
    FeedStatusChanged,
    FeedStatusPayload,
    FillPayload,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    KillSwitchEngaged,
    KillSwitchReleased,
    MarkPayload,
    MarkUpdated,
    MessageDeadLettered,
    OperatorActionPayload,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderRejectedPayload,
    PositionDifference,
    PositionsCheckedPayload,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    ResumePayload,
    RiskDecisionMade,
    RiskDecisionPayload,
    SignalGenerated,
    SignalPayload,
    StrategyFaulted,
    StrategyFaultPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
    TradingResumeRequested,
    TradingStateChanged,
    TradingStatePayload,
)

T0 = 1_700_000_000_000_000_000
ORDER_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
INTENT_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")


class StepClock:
    """A clock that ticks one microsecond per reading: deterministic, monotonic."""

    def __init__(self, start: int = T0) -> None:
        self._ticks = count(start, 1_000)

    def now_ns(self) -> int:
        return next(self._ticks)


class FixedClock:
    """A clock that always reads T0."""

    def now_ns(self) -> int:
        return T0


def sequential_ids() -> Any:
    """An id factory yielding 1, 2, 3... as UUIDs, for deterministic events."""
    numbers = count(1_000)
    return lambda: uuid.UUID(int=next(numbers))


class Sample(NamedTuple):
    cls: type[Event]
    payload: Frozen
    subject: str


#: One realistic payload per event type, with the subject it must travel on.
SAMPLES: tuple[Sample, ...] = (
    Sample(
        TradePrinted,
        TradePayload(
            symbol="AAPL",
            price=Decimal("187.2300"),
            size=Decimal("100"),
            exchange=4,
            trade_id="52983525029461",
            conditions=(12, 37),
            tape=3,
            sequence=1063,
            feed="polygon",
        ),
        "md.trade.AAPL",
    ),
    Sample(
        QuoteUpdated,
        QuotePayload(
            symbol="MSFT",
            bid_price=Decimal("411.10"),
            bid_size=Decimal("2"),
            ask_price=Decimal("411.12"),
            ask_size=Decimal("0"),
            bid_exchange=11,
            ask_exchange=12,
            indicators=(604,),
            feed="synthetic",
        ),
        "md.quote.MSFT",
    ),
    Sample(
        BarClosed,
        BarPayload(
            symbol="SPY",
            interval="1m",
            open=Decimal("501.01"),
            high=Decimal("501.50"),
            low=Decimal("500.90"),
            close=Decimal("501.20"),
            volume=Decimal("123456"),
            vwap=Decimal("501.2237"),
            trades=812,
            start_ns=T0,
            end_ns=T0 + 60_000_000_000,
            feed="replay",
            backfilled=True,
        ),
        "md.bar.1m.SPY",
    ),
    Sample(
        MarkUpdated,
        MarkPayload(
            symbol="O:SPY241220P00720000",
            price=Decimal("9.76"),
            bid_price=Decimal("9.71"),
            ask_price=Decimal("9.81"),
            feed="polygon",
        ),
        "md.mark.O:SPY241220P00720000",
    ),
    Sample(
        FeedStatusChanged,
        FeedStatusPayload(feed="polygon", status="gap_filled", gap_filled_bars=3),
        "md.status.polygon",
    ),
    Sample(
        SignalGenerated,
        SignalPayload(
            strategy="mean_rev",
            symbol="AAPL",
            name="zscore",
            direction="long",
            strength=Decimal("-2.31"),
            reason="z < -2",
        ),
        "strategy.signal.mean_rev",
    ),
    Sample(
        OrderIntentCreated,
        OrderIntentPayload(
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            side="buy",
            quantity=Decimal("10"),
            order_type="limit",
            limit_price=Decimal("187.20"),
            time_in_force="ioc",
        ),
        "strategy.intent.mean_rev",
    ),
    Sample(
        StrategyFaulted,
        StrategyFaultPayload(strategy="breakout", error="ZeroDivisionError", action="restarted"),
        "strategy.fault.breakout",
    ),
    Sample(
        RiskDecisionMade,
        RiskDecisionPayload(
            intent_id=INTENT_ID,
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            decision="denied",
            reason=ReasonCode.MAX_ORDER_NOTIONAL,
            detail="1872.00 > 1000",
        ),
        "risk.decision.mean_rev.denied",
    ),
    Sample(
        TradingStateChanged,
        TradingStatePayload(scope="global", state="halted", previous="active", reason="kill"),
        "risk.state.global",
    ),
    Sample(
        BreakerTripped,
        BreakerPayload(
            account="acct-b",
            breaker="daily_loss",
            limit=Decimal("-500"),
            value=Decimal("-512.35"),
        ),
        "risk.breaker.acct-b",
    ),
    Sample(
        SubmitOrder,
        SubmitOrderPayload(
            order_id=ORDER_ID,
            intent_id=INTENT_ID,
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            side="sell",
            quantity=Decimal("0.5"),
            order_type="stop_limit",
            limit_price=Decimal("180"),
            stop_price=Decimal("181.5"),
            time_in_force="gtc",
        ),
        "orders.cmd.acct-a",
    ),
    Sample(
        CancelOrder,
        CancelOrderPayload(order_id=ORDER_ID, account="acct-a", reason="stale"),
        "orders.cmd.acct-a",
    ),
    Sample(
        FlattenAccount,
        FlattenAccountPayload(account="acct-b", reason="daily_loss"),
        "orders.cmd.acct-b",
    ),
    Sample(
        OrderAccepted,
        OrderAcceptedPayload(
            order_id=ORDER_ID, account="acct-a", broker_order_id="b-77", symbol="AAPL"
        ),
        "broker.ack.acct-a",
    ),
    Sample(
        OrderRejected,
        OrderRejectedPayload(
            order_id=ORDER_ID, account="acct-a", reason="insufficient buying power", code="40310000"
        ),
        "broker.reject.acct-a",
    ),
    Sample(
        FillReceived,
        FillPayload(
            order_id=ORDER_ID,
            account="acct-a",
            broker_order_id="b-77",
            fill_id="f-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal("4"),
            price=Decimal("187.19"),
            cumulative_quantity=Decimal("4"),
            leaves_quantity=Decimal("6"),
            status="partial",
            commission=Decimal("-0.0040"),
        ),
        "broker.fill.acct-a",
    ),
    Sample(
        OrderCanceled,
        OrderCanceledPayload(order_id=ORDER_ID, account="acct-a", reason="expired"),
        "broker.cancel.acct-a",
    ),
    Sample(
        ClosingOrdersPlaced,
        ClosingOrdersPayload(
            account="acct-a",
            orders=(
                ClosingOrder(
                    order_id=ORDER_ID,
                    symbol="AAPL",
                    side="sell",
                    quantity=Decimal("100"),
                    leaves_quantity=Decimal("60"),
                    strategy="sma-aapl",
                ),
            ),
        ),
        "broker.close.acct-a",
    ),
    Sample(
        BrokerConnectionChanged,
        BrokerConnectionPayload(account="acct-a", broker="alpaca", state="reconnecting"),
        "broker.conn.acct-a",
    ),
    Sample(
        BrokerPositionsChecked,
        PositionsCheckedPayload(
            account="acct-a",
            broker="alpaca",
            broker_positions=2,
            differences=(
                PositionDifference(
                    symbol="O:SPY241220P00720000",
                    broker_quantity=Decimal("-2"),
                    recorded_quantity=Decimal("0"),
                ),
            ),
        ),
        "broker.positions.acct-a",
    ),
    Sample(
        KillSwitchEngaged,
        OperatorActionPayload(operator="jo", reason="flash crash"),
        "control.killswitch",
    ),
    Sample(
        KillSwitchReleased,
        OperatorActionPayload(operator="jo", reason="calm again"),
        "control.killswitch",
    ),
    Sample(
        TradingResumeRequested,
        ResumePayload(operator="jo", reason="reviewed", scope="acct-b"),
        "control.resume",
    ),
    Sample(
        MessageDeadLettered,
        DeadLetterPayload(
            service="risk-gate",
            original_subject="strategy.intent.mean_rev",
            error="invalid_event: payload.quantity: Input should be greater than 0",
            raw_b64=base64.b64encode(b'{"type": "OrderIntentCreated"}').decode(),
            raw_size=30,
            headers={"Nats-Msg-Id": "x"},
            stream_seq=17,
        ),
        "deadletter.risk-gate",
    ),
)


def sample_id(sample: Sample) -> str:
    return sample.cls.__name__


def build(sample: Sample, *, cause: Event | None = None) -> Event:
    return sample.cls.create(
        sample.payload, source="test", clock=StepClock(), cause=cause, ids=sequential_ids()
    )


def fill_event(**changes: Any) -> dict[str, Any]:
    """A valid FillReceived as a JSON object, with payload fields changed."""
    sample = next(s for s in SAMPLES if s.cls is FillReceived)
    raw: dict[str, Any] = json.loads(encode(build(sample)))
    raw["payload"].update(changes)
    return raw


def as_bytes(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw).encode()


def intent_to_buy_10_aapl(clock: Clock, *, cause: Event | None = None) -> OrderIntentCreated:
    """sma's intent to buy 10 AAPL on acct-a, a market order (the defaults)."""
    return OrderIntentCreated.create(
        OrderIntentPayload(
            strategy="sma", account="acct-a", symbol="AAPL", side="buy", quantity=Decimal(10)
        ),
        source="strategy-runner",
        clock=clock,
        cause=cause,
    )


def all_10_aapl_filled(
    order_id: uuid.UUID, price: str, clock: Clock, *, cause: Event
) -> FillReceived:
    """The broker's one fill of a buy of 10 AAPL on acct-a (order b-1, fill f-1)
    at ``price``: the whole order, complete."""
    return FillReceived.create(
        FillPayload(
            order_id=order_id,
            account="acct-a",
            broker_order_id="b-1",
            fill_id="f-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(10),
            price=Decimal(price),
            cumulative_quantity=Decimal(10),
            leaves_quantity=Decimal(0),
            status="complete",
        ),
        source="broker-gateway",
        clock=clock,
        cause=cause,
    )
