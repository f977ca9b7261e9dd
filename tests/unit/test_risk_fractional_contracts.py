"""An option order for part of a contract is denied at the gate.

Every venue trades options in whole contracts (the paper broker refuses
part of one, as brokers do; the strategy SDK refuses it at the emit). An
intent sent without the SDK passed the gate: it took a place in the
strategy's and the account's rate windows and went to the broker only to be
refused. Equities keep their fractional quantities (Alpaca takes fractional
shares).
"""

from __future__ import annotations

import json

import pytest

from libs.contract.codec import decode, encode
from libs.contract.events import OrderIntentCreated, ReasonCode
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import (
    LIMITS,
    OPTION,
    T0,
    apply,
    fill,
    intent,
    mark,
    trade,
)

FRACTIONAL = "fractional_quantity"


def _state() -> RiskState:
    return apply(RiskState.initial(LIMITS), trade("AAPL", 100), mark(OPTION, "1.00"))


def _option(quantity: str, side: str = "buy") -> OrderIntentCreated:
    """An option intent as the gate decodes it off the bus, its quantity as sent."""
    raw = json.loads(encode(intent(1, symbol=OPTION, asset_class="option", side=side)))
    raw["payload"]["quantity"] = quantity
    event = decode(json.dumps(raw).encode())
    assert isinstance(event, OrderIntentCreated)
    return event


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0.5", FRACTIONAL),
        ("1.5", FRACTIONAL),
        ("10.000000000001", FRACTIONAL),
        ("0.000000000001", FRACTIONAL),
        ("1", ReasonCode.ACCEPTED),
        ("2.000", ReasonCode.ACCEPTED),
        ("1E+1", ReasonCode.ACCEPTED),
    ],
)
def test_an_option_order_for_part_of_a_contract_is_denied(quantity: str, expected: str) -> None:
    state = _state()
    i = _option(quantity)
    d = decide(evolve(state, i), i, T0)
    assert d.reason == expected, d.detail
    if expected == FRACTIONAL:
        assert d.order is None
        assert "whole number of contracts" in d.detail
        assert quantity in d.detail


def test_a_close_for_part_of_a_contract_is_denied_too() -> None:
    # No venue takes it, a close no more than an opening order.
    state = apply(_state(), fill(intent(1).id, 2, "1.00", symbol=OPTION))
    i = _option("0.5", side="sell")
    d = decide(evolve(state, i), i, T0)
    assert d.reason == FRACTIONAL, d.detail


def test_a_fractional_option_order_takes_no_place_in_the_rate_windows() -> None:
    state = _state()
    for n in range(10):  # the strategy's limit is 5 a second
        i = _option("0.5")
        state = evolve(state, i)
        d = decide(state, i, T0 + n)
        state = apply(state, *d.events)
        assert d.reason == FRACTIONAL, d.detail
    i = _option("1")
    state = evolve(state, i)
    assert decide(state, i, T0 + 10).reason is ReasonCode.ACCEPTED


def test_an_equity_order_for_part_of_a_share_still_passes() -> None:
    state = _state()
    i = intent("0.5")
    assert decide(evolve(state, i), i, T0).reason is ReasonCode.ACCEPTED
