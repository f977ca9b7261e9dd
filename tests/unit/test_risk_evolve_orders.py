"""``evolve`` for marks, intents, decisions, orders and fills: positions,
average-cost P&L, and the orders owed or kept."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    SubmitOrder,
)
from services.risk_gate.domain.commands import order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import CLOSED_KEPT
from tests.unit.risk_evolve_inputs import (
    T0,
    D,
    S,
    apply,
    bar,
    ev,
    fill,
    intent,
    start,
    submitted,
    trade,
)

# ------------------------------------------------------------------ marks


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([trade("AAPL", 101, T0 + S)], D(101), id="trade"),
        pytest.param([bar("AAPL", "99.5", T0 + S)], D("99.5"), id="bar close"),
        pytest.param([trade("AAPL", 90, T0 - S)], D(100), id="older print ignored"),
        pytest.param(
            [trade("AAPL", 101, T0 + 2 * S), trade("AAPL", 102, T0 + S)],
            D(101),
            id="out of order",
        ),
    ],
)
def test_marks(events: list[Event], expected: Decimal) -> None:
    state = apply(start(), *events)
    mark = state.mark("AAPL")
    assert mark is not None
    assert mark.price == expected


def test_irrelevant_events_leave_the_state_as_it_is() -> None:
    state = start()
    quote = ev(
        QuoteUpdated,
        QuotePayload(
            symbol="AAPL",
            bid_price=D(1),
            bid_size=D(1),
            ask_price=D(2),
            ask_size=D(1),
            feed="demo",
        ),
    )
    assert evolve(state, quote) is state


def test_evolve_does_not_change_its_input() -> None:
    state = start()
    before = (dict(state.marks), dict(state.orders), state.pending_intents)
    i = intent()
    after = submitted(state, i)
    assert (dict(state.marks), dict(state.orders), state.pending_intents) == before
    assert len(after.orders) == 1
    assert not state.orders


# ----------------------------------------------------------- orders, fills


def test_intent_decision_and_order_command() -> None:
    state = start()
    i = intent(10)
    state = evolve(state, i)
    assert list(state.pending_intents) == [i.id]
    d = decide(state, i, T0)
    state = evolve(state, d.event)
    assert not state.pending_intents
    assert list(state.awaiting_order) == [i.id], "accepted, its order not out yet"
    assert i.id in state.decided
    assert d.order is not None
    state = evolve(state, d.order)
    assert not state.awaiting_order
    (order,) = state.open_orders()
    assert (order.order_id, order.remaining, order.is_open) == (order_id_for(i.id), D(10), True)
    assert state.orders_in_window("strategy:sma", T0, S) == 1
    # Applying the same command again reserves nothing more.
    assert evolve(state, d.order).orders == state.orders


def test_denied_decision_owes_no_order() -> None:
    state = start()
    i = intent(10, symbol="NVDA")
    state = evolve(state, i)
    d = decide(state, i, T0)
    assert d.reason is ReasonCode.NO_MARKET_PRICE
    state = evolve(state, d.event)
    assert not state.awaiting_order
    assert not state.pending_intents
    assert react(state, T0) == []


@pytest.mark.parametrize(
    ("make", "status", "remaining"),
    [
        pytest.param(
            lambda oid: ev(
                OrderAccepted,
                OrderAcceptedPayload(
                    order_id=oid, account="acct", broker_order_id="b", symbol="AAPL"
                ),
            ),
            "open",  # the gate does not read broker acks: the order stays as it was
            D(10),
            id="accepted",
        ),
        pytest.param(
            lambda oid: ev(
                OrderRejected, OrderRejectedPayload(order_id=oid, account="acct", reason="no")
            ),
            "closed",
            D(0),
            id="rejected",
        ),
        pytest.param(
            lambda oid: ev(OrderCanceled, OrderCanceledPayload(order_id=oid, account="acct")),
            "closed",
            D(0),
            id="canceled",
        ),
        pytest.param(lambda oid: fill(oid, 4, 100, leaves=6), "open", D(6), id="partial"),
        pytest.param(lambda oid: fill(oid, 10, 100), "closed", D(0), id="complete"),
    ],
)
def test_broker_events_update_the_order(make: Any, status: str, remaining: Decimal) -> None:
    i = intent(10)
    state = submitted(start(), i)
    state = evolve(state, make(order_id_for(i.id)))
    oid = order_id_for(i.id)
    order = state.orders.get(oid) or state.closed_orders[oid]
    assert (order.is_open, order.remaining) == (status == "open", remaining)
    assert (oid in state.closed_orders) == (status == "closed")
    assert len(state.open_orders()) == (1 if remaining else 0)


def test_fills_book_account_and_strategy_positions_once() -> None:
    i = intent(10)
    state = submitted(start(), i)
    f = fill(order_id_for(i.id), 10, 100, fill_id="x1")
    state = evolve(state, f)
    again = evolve(state, fill(order_id_for(i.id), 10, 100, fill_id="x1"))
    assert state.account_position("acct", "AAPL") == D(10)
    assert state.strategy_position("sma", "acct", "AAPL") == D(10)
    assert again.positions == state.positions, "the same execution is booked once"
    # A flatten's closing fill names the strategy it closes; no order of ours.
    close = fill(uuid.uuid4(), 10, 100, side="sell", strategy="sma")
    state = evolve(state, close)
    assert state.account_position("acct", "AAPL") == 0
    assert state.strategy_position("sma", "acct", "AAPL") == 0


# (fills as (side, qty, price, commission), mark) -> (qty, avg, realized today, day P&L)
PNL_CASES = [
    ([("buy", 10, 100, 0)], 105, (10, 100, 0, 50)),
    ([("buy", 10, 100, 0), ("buy", 10, 110, 0)], 100, (20, 105, 0, -100)),
    ([("buy", 10, 100, 0), ("sell", 4, 110, 0)], 110, (6, 100, 40, 100)),
    ([("buy", 10, 100, 1), ("sell", 10, 90, 1)], 90, (0, 0, -102, -102)),
    ([("buy", 10, 100, 0), ("sell", 15, 90, 0)], 80, (-5, 90, -100, -50)),
    ([("sell", 10, 100, 0), ("buy", 10, 105, 0)], 100, (0, 0, -50, -50)),
    ([("sell", 10, 100, 0)], 103, (-10, 100, 0, -30)),
]


@pytest.mark.parametrize(("fills", "mark", "expected"), PNL_CASES)
def test_average_cost_pnl(
    fills: list[tuple[str, int, int, int]], mark: int, expected: tuple[int, int, int, int]
) -> None:
    state = start()
    for k, (side, qty, price, commission) in enumerate(fills):
        state = evolve(
            state,
            fill(uuid.uuid4(), qty, price, side=side, commission=commission, t=T0 + k + 1),
        )
    state = evolve(state, trade("AAPL", mark, T0 + S))
    pos = state.positions[("acct", "AAPL")]
    assert (pos.quantity, pos.avg_price, pos.realized_day, state.day_pnl("acct")) == tuple(
        D(x) for x in expected
    )


def test_option_pnl_uses_the_contract_multiplier() -> None:
    sym = "O:AAPL260320C00100000"
    state = evolve(start(), fill(uuid.uuid4(), 2, "1.50", symbol=sym))
    state = evolve(state, trade(sym, "1.20", T0 + S))
    assert state.day_pnl("acct") == D("-60")


def test_accepted_decision_without_its_order_is_owed_after_a_crash() -> None:
    """The decision was published, the process died before the order: the
    rebuilt state owes the SubmitOrder, with the id it would have had."""
    state = start()
    i = intent(10)
    state = evolve(state, i)
    d = decide(state, i, T0)
    state = evolve(state, d.event)
    (owed,) = react(state, T0 + 3 * S)
    assert isinstance(owed, SubmitOrder)
    assert d.order is not None
    assert owed.id == d.order.id
    assert owed.payload == d.order.payload
    state = evolve(state, owed)
    assert react(state, T0 + 3 * S) == []


def test_late_fill_after_a_cancel_is_booked_to_the_orders_strategy() -> None:
    i = intent(10)
    state = submitted(start(), i)
    oid = order_id_for(i.id)
    state = evolve(state, ev(OrderCanceled, OrderCanceledPayload(order_id=oid, account="acct")))
    assert not state.open_orders()
    state = evolve(state, fill(oid, 3, 100, leaves=7))
    assert state.strategy_position("sma", "acct", "AAPL") == D(3)
    assert not state.open_orders(), "a closed order stays closed"


def test_closed_orders_are_bounded() -> None:
    state = start()
    for k in range(CLOSED_KEPT + 5):
        t = T0 + k * S // 50  # 50 a second: under the rate limit
        i = intent(1, side="buy" if k % 2 else "sell", t=t)
        state = submitted(state, i, t)
        state = evolve(state, fill(order_id_for(i.id), 1, 100, side=i.payload.side, t=t))
    assert len(state.closed_orders) == CLOSED_KEPT
    assert not state.orders
    assert len(state.decided) == CLOSED_KEPT + 5
