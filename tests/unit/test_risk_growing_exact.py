"""Which resting orders a reduce-only account cancels is worked out exactly,
as every cap is (``react.growing_orders``): a sell of exactly the position
reduces it, however many digits the position has."""

from __future__ import annotations

from decimal import Decimal

from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.react import growing_orders
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import T0, apply, fill, intent, run_intent, trade

#: 10^16 + 10^-12: 29 digits, which Decimal's default 28 round to 10^16.
JUST_PAST = Decimal("10000000000000000.000000000001")
HUGE = 10**25


def limits() -> RiskLimits:
    return RiskLimits.model_validate(
        {
            "max_intent_age_s": None,
            "accounts": {"acct": {"daily_loss_limit": HUGE}},
            "strategies": {
                "s": {
                    "account": "acct",
                    "max_gross_notional": HUGE,
                    "max_position": HUGE,
                    "max_order_quantity": HUGE,
                    "max_order_notional": HUGE,
                }
            },
        }
    )


def holding_with_a_sell_resting(sell: Decimal) -> RiskState:
    """``acct`` long JUST_PAST MSFT, a sell of ``sell`` accepted and resting."""
    state = apply(
        RiskState.initial(limits()),
        trade("MSFT", 1),
        fill(intent(1).id, 10**16, 1, symbol="MSFT", strategy="s"),
        fill(intent(1).id, "0.000000000001", 1, symbol="MSFT", strategy="s"),
    )
    assert state.account_position("acct", "MSFT") == JUST_PAST
    i = intent(str(sell), side="sell", symbol="MSFT", strategy="s")
    state, decision = run_intent(evolve(state, i), i, T0)
    assert decision.accepted, decision.detail
    return state


def test_a_sell_of_exactly_the_position_is_not_growing() -> None:
    state = holding_with_a_sell_resting(JUST_PAST)
    assert growing_orders(state, "acct") == []


def test_a_sell_past_the_position_by_1e_12_is_growing() -> None:
    state = holding_with_a_sell_resting(Decimal("10000000000000000.000000000002"))
    assert [o.remaining for o in growing_orders(state, "acct")] == [
        Decimal("10000000000000000.000000000002")
    ]
