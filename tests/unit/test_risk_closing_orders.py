"""A flatten's closing orders are open orders of the account for the gate.

The broker-gateway places them (the close-all of a ``FlattenAccount``) and
says so with ``ClosingOrdersPlaced``; the gate sent no command for them, and
before it read that event it counted none of them: an account flattened and
resumed into reducing while its closing sell worked accepted a strategy's
sell of the same shares, and both filling left it short under reduce-only.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
    ReasonCode,
    TradingResumeRequested,
)
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import (
    LIMITS,
    T0,
    S,
    apply,
    conn,
    ev,
    fill,
    intent,
    op,
    settle,
    start,
    trade,
)

D = Decimal
CLOSING = uuid.UUID(int=0xC105E)


def closing(
    leaves: int = 100,
    *,
    quantity: int = 100,
    strategy: str | None = "sma",
    cause: Event | None = None,
    t: int = T0,
) -> ClosingOrdersPlaced:
    payload = ClosingOrdersPayload(
        account="acct",
        orders=(
            ClosingOrder(
                order_id=CLOSING,
                symbol="AAPL",
                side="sell",
                quantity=D(quantity),
                leaves_quantity=D(leaves),
                strategy=strategy,
            ),
        ),
    )
    return ev(ClosingOrdersPlaced, payload, t, cause)


def flattened_and_resumed_into_reducing() -> tuple[RiskState, ClosingOrdersPlaced]:
    """sma long 100 AAPL at 100; the connection drops: the gate halts the
    account and flattens it; the gateway places the closing sell of 100; the
    price falls to 93 (day P&L -700, past the reduce-only level of 600); the
    operator resumes: the account goes to reducing, the closing sell still
    working."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"))
    state, out = settle(evolve(state, conn("disconnected", t=T0 + S)), T0 + S)
    flatten = next(e for e in out if e.type == "FlattenAccount")
    placed = closing(cause=flatten, t=T0 + 2 * S)
    state = apply(state, placed, trade("AAPL", 93, T0 + 3 * S))
    state, out = settle(evolve(state, op(TradingResumeRequested, "acct", T0 + 4 * S)), T0 + 4 * S)
    assert [e.payload.state for e in out] == ["active", "reducing"]
    assert state.account_position("acct", "AAPL") == 100
    return state, placed


def verdict(state: RiskState, quantity: int, t: int = T0 + 5 * S) -> ReasonCode:
    sell = intent(quantity, "sell", t=t)
    return decide(evolve(state, sell), sell, t).reason


def ended(how: str, t: int = T0 + 5 * S) -> Event:
    if how == "canceled":
        return ev(OrderCanceled, OrderCanceledPayload(order_id=CLOSING, account="acct"), t)
    payload = OrderRejectedPayload(order_id=CLOSING, account="acct", reason="no")
    return ev(OrderRejected, payload, t)


def test_a_strategy_s_sell_is_denied_in_reducing_while_the_flatten_s_closing_sell_works() -> None:
    state, _ = flattened_and_resumed_into_reducing()
    assert state.open_by_side("acct", "AAPL") == (D(0), D(100))
    assert verdict(state, 100) is ReasonCode.REDUCE_ONLY
    assert verdict(state, 1) is ReasonCode.REDUCE_ONLY


@pytest.mark.parametrize("how", ["canceled", "rejected"])
def test_the_strategy_s_sell_passes_once_the_closing_sell_has_ended_unfilled(how: str) -> None:
    state, _ = flattened_and_resumed_into_reducing()
    state = evolve(state, ended(how))
    assert state.open_by_side("acct", "AAPL") == (D(0), D(0))
    assert verdict(state, 100, T0 + 6 * S) is ReasonCode.ACCEPTED


def test_a_partial_fill_of_the_closing_sell_leaves_what_still_works_counted() -> None:
    """40 of the closing sell fill (booked to sma): 60 held, 60 still being
    sold. Nothing more may be sold until the rest is canceled."""
    state, _ = flattened_and_resumed_into_reducing()
    part = fill(CLOSING, 40, 93, side="sell", leaves=60, strategy="sma", t=T0 + 5 * S)
    state = evolve(state, part)
    assert state.account_position("acct", "AAPL") == 60
    assert state.open_by_side("acct", "AAPL") == (D(0), D(60))
    assert verdict(state, 1, T0 + 6 * S) is ReasonCode.REDUCE_ONLY
    state = evolve(state, ended("canceled", T0 + 7 * S))
    assert verdict(state, 60, T0 + 8 * S) is ReasonCode.ACCEPTED
    assert verdict(state, 61, T0 + 8 * S) is ReasonCode.REDUCE_ONLY


def test_the_closing_sell_filled_closes_it_and_the_position() -> None:
    state, _ = flattened_and_resumed_into_reducing()
    state = evolve(state, fill(CLOSING, 100, 93, side="sell", strategy="sma", t=T0 + 5 * S))
    assert state.account_position("acct", "AAPL") == 0
    assert state.open_by_side("acct", "AAPL") == (D(0), D(0))
    assert not state.orders


def test_the_closing_orders_seen_again_are_counted_once() -> None:
    state, placed = flattened_and_resumed_into_reducing()
    assert evolve(state, placed) == state
    # A copy under another id (published again past JetStream's window):
    # the order is known, open or closed, by its id.
    again = closing(t=T0 + 5 * S)
    assert evolve(state, again).open_by_side("acct", "AAPL") == (D(0), D(100))
    done = evolve(state, fill(CLOSING, 100, 93, side="sell", strategy="sma", t=T0 + 5 * S))
    assert evolve(done, again).open_by_side("acct", "AAPL") == (D(0), D(0))


def test_what_filled_before_the_event_is_not_counted_open() -> None:
    """Fills the gateway published before the event are in the position
    already; only what still works (``leaves_quantity``) opens."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"))
    state = evolve(state, fill(CLOSING, 30, 100, side="sell", leaves=70, strategy="sma"))
    assert state.open_by_side("acct", "AAPL") == (D(0), D(0))
    state = evolve(state, closing(leaves=70))
    assert state.account_position("acct", "AAPL") == 70
    assert state.open_by_side("acct", "AAPL") == (D(0), D(70))
    assert evolve(state, closing(leaves=0)).open_by_side("acct", "AAPL") == (D(0), D(70))
    assert closing(leaves=0).payload.orders[0].leaves_quantity == 0
    nothing_left = evolve(start(), closing(leaves=0))
    assert not nothing_left.orders


@pytest.mark.parametrize(
    ("booked", "expected"),
    [
        pytest.param("sma", ReasonCode.MAX_STRATEGY_POSITION, id="booked to the strategy"),
        pytest.param(None, ReasonCode.ACCEPTED, id="booked to no one strategy"),
    ],
)
def test_the_strategy_s_position_cap_counts_a_closing_order_booked_to_it(
    booked: str | None, expected: ReasonCode
) -> None:
    """sma (max_position 150) holds 100; the flatten's closing sell of 100 is
    booked to it. Selling 200 more would take sma to -200 if both fill."""
    sma = LIMITS.strategies["sma"].model_copy(update={"max_position": D(150)})
    limits = LIMITS.model_copy(update={"strategies": {**LIMITS.strategies, "sma": sma}})
    assert isinstance(limits, RiskLimits)
    state = apply(
        RiskState.initial(limits),
        trade("AAPL", 100),
        fill(uuid.uuid4(), 100, 100, strategy="sma"),
        closing(strategy=booked),
    )
    assert verdict(state, 200, T0 + S) is expected


def test_a_closing_fill_the_gateway_books_to_no_strategy_is_booked_to_none() -> None:
    """The closing sell of 100 is booked to sma (its position took all of it
    when the event was published). sma, active, sells its 100 itself, and
    that fills first: the gateway then books the closing fill to no strategy
    (none is long), and says so in the fill. The gate booked it to the
    closing order's strategy instead (a fill naming none took its order's),
    so its sma was short 100 where the gateway and sma's own ledger are
    flat, and its caps judged sma's next orders from there; the same fill
    arriving before the event was booked to nobody. The fill's own booking
    holds for a closing order; its strategy is only what its open quantity
    counts against."""
    state = apply(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"), closing())
    state = evolve(state, fill(uuid.uuid4(), 100, 99, side="sell", strategy="sma", t=T0 + S))
    assert state.strategy_position("sma", "acct", "AAPL") == 0
    state = evolve(state, fill(CLOSING, 100, 98, side="sell", strategy=None, t=T0 + 2 * S))
    assert state.strategy_position("sma", "acct", "AAPL") == 0
    assert state.account_position("acct", "AAPL") == -100
    assert state.open_by_side("acct", "AAPL") == (D(0), D(0))


def test_a_closing_order_is_one_still_after_a_checkpoint() -> None:
    from services.risk_gate.adapters.checkpoint import decode, encode

    state = apply(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"), closing())
    assert state.orders[CLOSING].closing
    restored = decode(encode(state), LIMITS)
    assert restored == state
