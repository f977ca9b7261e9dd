"""An intent's prices must be the ones its order type takes.

The strategy SDK refuses a market order with a limit or stop price (and a
limit order with a stop price, a stop order with a limit price), but any
producer on ``strategy.intent.>`` can send one. The gate passed such a price
into its ``SubmitOrder`` without a band check: safe only while every broker
adapter ignored it. It now denies the intent, ``price_band``, naming the
price its order type does not take.
"""

from __future__ import annotations

from typing import Any

import pytest

from libs.contract.events import ReasonCode, RiskDecisionMade, RiskDecisionPayload
from services.risk_gate.domain.commands import decision_id_for, make, order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from tests.unit.risk_decide_inputs import T0, D, apply, base, intent

BAND = ReasonCode.PRICE_BAND

#: The last price of AAPL in ``base()`` is 100: 100 is in any band, 1000 far outside.
CASES: list[tuple[str, dict[str, Any], ReasonCode, str]] = [
    (
        "market with a limit price in the band",
        {"order_type": "market", "limit_price": D(100)},
        BAND,
        "a market order takes no limit price (limit price 100)",
    ),
    (
        "market with a limit price far outside the band",
        {"order_type": "market", "limit_price": D(1000)},
        BAND,
        "a market order takes no limit price (limit price 1000)",
    ),
    (
        "market with a stop price",
        {"order_type": "market", "stop_price": D(1000)},
        BAND,
        "a market order takes no stop price (stop price 1000)",
    ),
    (
        "limit with a stop price",
        {"order_type": "limit", "limit_price": D(100), "stop_price": D(1000)},
        BAND,
        "a limit order takes no stop price (stop price 1000)",
    ),
    (
        "stop with a limit price",
        {"order_type": "stop", "stop_price": D(100), "limit_price": D(1000)},
        BAND,
        "a stop order takes no limit price (limit price 1000)",
    ),
    (
        "stop with its stop price outside the band",
        {"order_type": "stop", "stop_price": D(90)},
        BAND,
        "stop price 90 is 10.00% from the last price 100",
    ),
    (
        "stop_limit with its stop price outside the band",
        {"order_type": "stop_limit", "stop_price": D(110), "limit_price": D(101)},
        BAND,
        "stop price 110 is 10.00% from the last price 100",
    ),
    (
        "stop_limit with both prices in the band",
        {"order_type": "stop_limit", "stop_price": D(101), "limit_price": D(102)},
        ReasonCode.ACCEPTED,
        "",
    ),
    ("market with no price", {"order_type": "market"}, ReasonCode.ACCEPTED, ""),
    (
        "stop with its stop price in the band",
        {"order_type": "stop", "stop_price": D(99)},
        ReasonCode.ACCEPTED,
        "",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "reason", "detail"),
    [pytest.param(k, r, d, id=name) for name, k, r, d in CASES],
)
def test_an_intent_with_a_price_its_order_type_does_not_take_is_denied(
    kwargs: dict[str, Any], reason: ReasonCode, detail: str
) -> None:
    i = intent(10, **kwargs)
    d = decide(evolve(base(), i), i, T0)
    assert (d.reason, d.detail[: len(detail)]) == (reason, detail)
    if reason is ReasonCode.ACCEPTED:
        assert d.order is not None
        p = d.order.payload
        assert (p.order_type, p.limit_price, p.stop_price) == (
            kwargs["order_type"],
            kwargs.get("limit_price"),
            kwargs.get("stop_price"),
        )
    else:
        assert d.order is None


def test_an_owed_order_with_a_stray_price_is_withdrawn_not_sent() -> None:
    """An acceptance recorded before this check (by an older gate) whose order
    never went out: the restarted gate withdraws it rather than send a market
    order carrying a limit price far from the market."""
    i = intent(10, order_type="market", limit_price=D(1000))
    accepted = make(
        RiskDecisionMade,
        RiskDecisionPayload.for_intent(i, ReasonCode.ACCEPTED, "", order_id_for(i.id)),
        event_id=decision_id_for(i.id),
        now_ns=T0,
        source="risk-gate",
        correlation_id=i.correlation_id,
        causation_id=i.id,
    )
    state = apply(base(), i, accepted)
    assert i.id in state.awaiting_order
    out = react(state, T0)
    assert len(out) == 1
    withdrawn = out[0]
    assert isinstance(withdrawn, RiskDecisionMade)
    assert (withdrawn.payload.decision, withdrawn.payload.reason) == ("denied", BAND)
    assert "a market order takes no limit price (limit price 1000)" in withdrawn.payload.detail
