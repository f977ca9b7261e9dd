"""What the risk-gate's ``decide`` tests build on: limits with caps to hit, events at
T0 (mid-session), and the steps of an intent through the gate."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderIntentCreated,
    OrderIntentPayload,
    TradePayload,
    TradePrinted,
    TradingStateChanged,
    TradingStatePayload,
)
from services.risk_gate.domain.commands import order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState

D = Decimal
S = 1_000_000_000
#: 2026-03-10 15:00 UTC = 11:00 New York (EDT): mid-session.
T0 = 1_773_154_800 * S

LIMITS = RiskLimits.model_validate(
    {
        "price_band": {"max_deviation": 0.05, "max_mark_age_s": 60},
        "max_intent_age_s": 5,
        "accounts": {
            "acct": {
                "daily_loss_limit": 1000,
                "rate_limit": {"max_orders": 8, "per_seconds": 1},
                "symbols": {"MSFT": {"max_position": 150}},
            },
            "paper": {"daily_loss_limit": 1000},
            "other": {"daily_loss_limit": 1000},
        },
        "strategies": {
            "sma": {
                "account": "acct",
                "shadow_account": "paper",
                "max_gross_notional": 50_000,
                "max_position": 300,
                "max_order_quantity": 100,
                "max_order_notional": 10_000,
                "rate_limit": {"max_orders": 5, "per_seconds": 1},
            },
            "pairs": {
                "account": "acct",
                "max_gross_notional": 100_000,
                "max_position": 1000,
                "max_order_quantity": 1000,
                "max_order_notional": 100_000,
                "symbols": {"AAPL": {"max_position": 120}, "MSFT": {"max_position": 1000}},
            },
        },
    }
)


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def trade(symbol: str, price: str | int, t: int = T0) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="synthetic"),
        source="test",
        clock=At(t),
    )


def bar(symbol: str, close: str | int, t: int = T0) -> BarClosed:
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=D(close),
            high=D(close),
            low=D(close),
            close=D(close),
            volume=D(100),
            start_ns=t - 60 * S,
            end_ns=t,
            feed="synthetic",
        ),
        source="test",
        clock=At(t),
    )


def intent(
    quantity: str | int = 10,
    *,
    side: str = "buy",
    symbol: str = "AAPL",
    strategy: str = "sma",
    account: str = "acct",
    t: int = T0,
    cause: Event | None = None,
    **extra: Any,
) -> OrderIntentCreated:
    return OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=strategy,
            account=account,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            **extra,
        ),
        source="test",
        clock=At(t),
        cause=cause,
    )


def fill(
    order_id: uuid.UUID,
    quantity: str | int,
    price: str | int,
    *,
    side: str = "buy",
    symbol: str = "AAPL",
    account: str = "acct",
    leaves: str | int = 0,
    t: int = T0,
    fill_id: str | None = None,
    strategy: str | None = None,
) -> FillReceived:
    return FillReceived.create(
        FillPayload(
            order_id=order_id,
            account=account,
            broker_order_id="b-1",
            fill_id=fill_id or uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            price=D(price),
            cumulative_quantity=D(quantity),
            leaves_quantity=D(leaves),
            status="complete" if D(leaves) == 0 else "partial",
            strategy=strategy,
        ),
        source="test",
        clock=At(t),
    )


def state_change(scope: str, state: str, t: int = T0) -> TradingStateChanged:
    return TradingStateChanged.create(
        TradingStatePayload(scope=scope, state=state, previous="active", reason="test"),
        source="test",
        clock=At(t),
    )


def apply(state: RiskState, *events: Event) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state


def run_intent(state: RiskState, i: OrderIntentCreated, now: int) -> tuple[RiskState, Any]:
    """What the gate does with one intent: evolve, decide, apply the decision."""
    state = evolve(state, i)
    d = decide(state, i, now)
    return apply(state, *d.events), d


def filled_position(
    state: RiskState, quantity: int, price: int, *, symbol: str = "AAPL", strategy: str = "sma"
) -> RiskState:
    """An accepted order for ``quantity`` filled completely at ``price``."""
    side = "buy" if quantity > 0 else "sell"
    i = intent(abs(quantity), side=side, symbol=symbol, strategy=strategy)
    state = evolve(state, i)
    d = decide(state, i, T0)
    assert d.accepted, d.detail
    state = apply(state, *d.events)
    return evolve(state, fill(order_id_for(i.id), abs(quantity), price, side=side, symbol=symbol))


def base() -> RiskState:
    return apply(RiskState.initial(LIMITS), trade("AAPL", 100), trade("MSFT", 50))


#: Expired at 16:00 New York on Friday 2026-03-06, before T0.
EXPIRED = "O:AAPL260306C00100000"
#: A cash-settled index option (no shares delivered), trading at T0.
SPX = "O:SPX260320C05000000"


OPTION = "O:AAPL260320C00100000"


def mark(symbol: str, price: str, t: int = T0, spread: str = "0.10") -> MarkUpdated:
    """An option's mark from a quote ``spread`` wide around ``price``."""
    half = D(spread) / 2
    return MarkUpdated.create(
        MarkPayload(
            symbol=symbol,
            price=D(price),
            bid_price=D(price) - half,
            ask_price=D(price) + half,
            feed="polygon",
        ),
        source="test",
        clock=At(t),
    )


def stale_state() -> tuple[RiskState, int]:
    """``acct`` holds AAPL marked 600 s ago and MSFT 10 s ago, ``paper`` NVDA
    at a price stamped 120 s ahead of now; the price band allows 60 s."""
    now = T0 + 600 * 10**9
    state = RiskState.initial(LIMITS)
    for e in (
        fill(uuid.uuid4(), 10, 100),
        fill(uuid.uuid4(), 5, 50, symbol="MSFT"),
        trade("MSFT", 51, now - 10 * 10**9),
        trade("NVDA", 20, now + 120 * 10**9),
        fill(uuid.uuid4(), 3, 20, symbol="NVDA", account="paper", t=now - 10**9),
    ):
        state = evolve(state, e)
    return state, now
