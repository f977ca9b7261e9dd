"""What the risk-gate's ``evolve`` and ``react`` tests build on: limits with a
reduce-only level and a breaker, events at T0, and the gate's steps
(``submitted``, ``settle``)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, TypeVar

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    FillPayload,
    FillReceived,
    OperatorActionPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    ResumePayload,
    TradePayload,
    TradePrinted,
)
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import RiskState

D = Decimal
S = 1_000_000_000
#: 2026-03-10 15:00 UTC = 11:00 New York (EDT).
T0 = 1_773_154_800 * S

LIMITS = RiskLimits.model_validate(
    {
        "accounts": {
            "acct": {"daily_loss_limit": 1000, "reduce_only_at_loss": 600},
            "b": {"daily_loss_limit": 500, "flatten_on_disconnect": False},
        },
        "strategies": {
            "sma": {
                "account": "acct",
                "max_gross_notional": 1_000_000,
                "max_position": 1000,
                "max_order_quantity": 1000,
                "max_order_notional": 1_000_000,
                "rate_limit": {"max_orders": 100, "per_seconds": 1},
            },
            "mr": {
                "account": "b",
                "max_gross_notional": 1_000_000,
                "max_position": 1000,
                "max_order_quantity": 1000,
                "max_order_notional": 1_000_000,
            },
        },
    }
)


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


E = TypeVar("E", bound=Event)


def ev(cls: type[E], payload: Any, t: int = T0, cause: Event | None = None) -> E:
    return cls.create(payload, source="test", clock=At(t), cause=cause)


def trade(symbol: str, price: str | int, t: int = T0) -> TradePrinted:
    return ev(TradePrinted, TradePayload(symbol=symbol, price=D(price), size=D(1), feed="demo"), t)


def bar(symbol: str, close: str | int, t: int = T0, *, published: int | None = None) -> BarClosed:
    """A 1-minute bar ending at ``t``, published then (or at ``published``)."""
    c = D(close)
    payload = BarPayload(
        symbol=symbol,
        interval="1m",
        open=c,
        high=c,
        low=c,
        close=c,
        volume=D(1),
        start_ns=t - 60 * S,
        end_ns=t,
        feed="demo",
    )
    if published is None:
        return ev(BarClosed, payload, t)
    return BarClosed.create(payload, source="test", clock=At(published), ts_event=t)


#: 04:00 New York on 2026-03-11: trading day 2026-03-11 starts.
DAY_START = T0 + 17 * 3600 * S
#: The trading day DAY_START starts.
NEXT_DAY = dt.date(2026, 3, 11)
#: The bar intervals ``last_bar`` makes, and their windows' lengths.
BAR_LENGTH = {"1s": S, "1m": 60 * S}


def last_bar(interval: str, close: int, published: int, symbol: str = "AAPL") -> BarClosed:
    """The last ``interval`` bar of day D (its window ends at the day start),
    stamped at its end as marketdata stamps it, published at ``published``."""
    c = D(close)
    payload = BarPayload(
        symbol=symbol,
        interval="1s" if interval == "1s" else "1m",
        open=c,
        high=c,
        low=c,
        close=c,
        volume=D(1),
        start_ns=DAY_START - BAR_LENGTH[interval],
        end_ns=DAY_START,
        feed="demo",
    )
    return BarClosed.create(payload, source="test", clock=At(published), ts_event=DAY_START)


def intent(quantity: int = 10, side: str = "buy", t: int = T0, **kw: Any) -> OrderIntentCreated:
    fields: dict[str, Any] = {"strategy": "sma", "account": "acct", "symbol": "AAPL"} | kw
    return ev(
        OrderIntentCreated,
        OrderIntentPayload(side=side, quantity=D(quantity), **fields),
        t,
    )


def submitted(state: RiskState, i: OrderIntentCreated, now: int = T0) -> RiskState:
    state = evolve(state, i)
    d = decide(state, i, now)
    assert d.accepted, d.detail
    for e in d.events:
        state = evolve(state, e)
    return state


def fill(
    order_id: uuid.UUID,
    quantity: str | int,
    price: str | int,
    *,
    side: str = "buy",
    leaves: str | int = 0,
    account: str = "acct",
    symbol: str = "AAPL",
    fill_id: str | None = None,
    commission: str | int = 0,
    strategy: str | None = None,
    t: int = T0,
) -> FillReceived:
    return ev(
        FillReceived,
        FillPayload(
            order_id=order_id,
            account=account,
            broker_order_id="b",
            fill_id=fill_id or uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            price=D(price),
            cumulative_quantity=D(quantity),
            leaves_quantity=D(leaves),
            status="partial" if D(leaves) else "complete",
            commission=D(commission),
            strategy=strategy,
        ),
        t,
    )


def assigned(symbol: str, quantity: int, price: int, t: int, side: str = "buy") -> FillReceived:
    """``acct`` (strategy ``sma``) assigned ``quantity`` ``symbol`` at the
    strike ``price`` (``side`` sell: called away), published at ``t``: a
    settlement's fill, booked at no market price."""
    q = D(quantity)
    return FillReceived.create(
        FillPayload(
            order_id=uuid.uuid4(),
            account="acct",
            broker_order_id="activity",
            fill_id=uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=q,
            price=D(price),
            cumulative_quantity=q,
            leaves_quantity=D(0),
            status="complete",
            strategy="sma",
            settlement="assigned",
        ),
        source="test/broker-gateway",
        clock=At(t),
    )


def op(cls: type[Any], scope: str | None = None, t: int = T0) -> Any:
    if scope is None:
        return ev(cls, OperatorActionPayload(operator="ann", reason="why"), t)
    return ev(cls, ResumePayload(operator="ann", reason="ok", scope=scope), t)


def conn(state: str, account: str = "acct", t: int = T0) -> BrokerConnectionChanged:
    payload = BrokerConnectionPayload(account=account, broker="paper", state=state)
    return ev(BrokerConnectionChanged, payload, t)


def apply(state: RiskState, *events: Event) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state


def settle(state: RiskState, now: int = T0) -> tuple[RiskState, list[Event]]:
    """React and apply the reaction, as the service does."""
    out = react(state, now)
    return apply(state, *out), out


def start() -> RiskState:
    return apply(RiskState.initial(LIMITS), trade("AAPL", 100), trade("MSFT", 50))
