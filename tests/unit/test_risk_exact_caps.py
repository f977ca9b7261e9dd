"""Every cap is compared with the exact amount, never one rounded to
Decimal's default 28 digits.

Quantities and prices carry up to 12 decimal places and 38 digits, caps up to
38 digits: a notional, a position or a P&L past its cap by less than what 28
digits hold rounded to the cap and passed (100.000000000001 x 100.000000000001
is 10000.000000000200000000000001, 29 digits, and rounded it is a cap of
10000.0000000002 exactly).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from libs.contract.events import ReasonCode
from services.risk_gate.domain.decide import decide, gross_exposure
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import T0, D, apply, fill, intent, trade

#: 100.000000000001 squared, exactly: 29 digits.
SQUARE = D("10000.000000000200000000000001")
#: ...and as 28 digits round it.
SQUARE_28 = D("10000.0000000002")
#: 10^16 and 10^-12: 29 digits.
JUST_PAST = D("10000000000000000.000000000001")
HUGE = 10**25


def limits(daily_loss_limit: str | int = HUGE, **strategy: Any) -> RiskLimits:
    """One strategy ``s`` on ``acct``, every cap out of the way but those given."""
    caps: dict[str, Any] = {
        "max_gross_notional": HUGE,
        "max_position": HUGE,
        "max_order_quantity": HUGE,
        "max_order_notional": HUGE,
    }
    caps.update(strategy)
    return RiskLimits.model_validate(
        {
            "price_band": {"max_deviation": "0.05"},
            "max_intent_age_s": None,
            "accounts": {"acct": {"daily_loss_limit": daily_loss_limit}},
            "strategies": {"s": {"account": "acct", **caps}},
        }
    )


def reason(
    lim: RiskLimits, last: str, quantity: str, *events: Any, **extra: Any
) -> tuple[ReasonCode, str]:
    state = apply(RiskState.initial(lim), *events, trade("AAPL", last))
    i = intent(quantity, strategy="s", **extra)
    d = decide(evolve(state, i), i, T0)
    return d.reason, d.detail


# (id, limits, last price, quantity, intent kwargs, reason)
CASES: list[tuple[str, RiskLimits, str, str, dict[str, Any], ReasonCode]] = [
    (
        "an order's notional past its cap by 1e-24",
        limits(max_order_notional=SQUARE_28),
        "100",
        "100.000000000001",
        {"order_type": "limit", "limit_price": D("100.000000000001")},
        ReasonCode.MAX_ORDER_NOTIONAL,
    ),
    (
        "an order's notional at its cap, exactly",
        limits(max_order_notional=SQUARE),
        "100",
        "100.000000000001",
        {"order_type": "limit", "limit_price": D("100.000000000001")},
        ReasonCode.ACCEPTED,
    ),
    (
        "gross notional past its cap by 1e-24",
        limits(max_gross_notional=SQUARE_28),
        "100.000000000001",
        "100.000000000001",
        {},
        ReasonCode.MAX_GROSS_NOTIONAL,
    ),
    (
        "gross notional at its cap, exactly",
        limits(max_gross_notional=SQUARE),
        "100.000000000001",
        "100.000000000001",
        {},
        ReasonCode.ACCEPTED,
    ),
    (
        "a position past its cap by 1e-12",
        limits(max_position=10**16),
        "1",
        str(JUST_PAST),
        {},
        ReasonCode.MAX_STRATEGY_POSITION,
    ),
    (
        "a limit price past the relative band by 1e-12 of 1e18",
        limits(),
        "1000000000000000000",
        "1",
        {"order_type": "limit", "limit_price": D("1050000000000000000.000000000001")},
        ReasonCode.PRICE_BAND,
    ),
    (
        "a limit price at the edge of the relative band of 1e18",
        limits(),
        "1000000000000000000",
        "1",
        {"order_type": "limit", "limit_price": D("1050000000000000000")},
        ReasonCode.ACCEPTED,
    ),
]


@pytest.mark.parametrize(
    ("lim", "last", "quantity", "extra", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_a_cap_is_compared_with_the_exact_amount(
    lim: RiskLimits, last: str, quantity: str, extra: dict[str, Any], expected: ReasonCode
) -> None:
    got, detail = reason(lim, last, quantity, **extra)
    assert got is expected, detail


def test_gross_exposure_is_exact() -> None:
    state = apply(RiskState.initial(limits()), trade("AAPL", "100.000000000001"))
    got = gross_exposure(state, "s", "acct", ("AAPL", "buy", D("100.000000000001"), D(1)))
    assert got == SQUARE


def test_a_position_is_the_exact_sum_of_its_fills() -> None:
    state = apply(
        RiskState.initial(limits()),
        fill(intent(1).id, 10**16, 1, symbol="MSFT"),
        fill(intent(1).id, "0.000000000001", 1, symbol="MSFT"),
    )
    assert state.account_position("acct", "MSFT") == JUST_PAST


#: A loss limit of 10^16 + 6e-12 (its negation, rounded to 28 digits, is
#: -10^16 - 1e-11).
LOSS_LIMIT = "10000000000000000.000000000006"
SEVEN = ("MSFT", "IBM", "NVDA", "TSLA", "AMZN", "META", "GOOG")


def test_a_day_loss_past_its_limit_by_1e_12_denies_and_trips() -> None:
    # 10^16 shares of AAPL and 1e-12 of seven others, each bought at 2 and
    # marked at 1: a day P&L of -10^16 - 7e-12, past -10^16 - 6e-12. Summed in
    # 28 digits each tiny loss rounded away: -10^16, not past the limit.
    events = [fill(intent(1).id, 10**16, 2), trade("AAPL", 1)]
    for symbol in SEVEN:
        events += [fill(intent(1).id, "0.000000000001", 2, symbol=symbol), trade(symbol, 1)]
    state = apply(RiskState.initial(limits(LOSS_LIMIT)), *events)
    assert state.day_pnl("acct") == D("-10000000000000000.000000000007")
    assert [o.kind for o in state.obligations] == ["daily_loss"]
    i = intent(1, strategy="s")
    assert decide(evolve(state, i), i, T0).reason is ReasonCode.DAILY_LOSS


def test_the_exact_context_does_not_leak() -> None:
    # The checks compute exactly inside; what calls them keeps its context.
    state = apply(RiskState.initial(limits()), trade("AAPL", "100"))
    i = intent(1, strategy="s")
    decide(evolve(state, i), i, T0)
    assert Decimal(1) / Decimal(3) == D("0.3333333333333333333333333333")
