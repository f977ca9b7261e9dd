"""A strategy's typos and bugs the caps already stop (a review's cases that
no other test covers): sizes as the contract decodes them, a short past the
cap, an option priced only through its underlying, a price past the band by
its last decimal, a burst at one instant, a fill larger than its order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from libs.contract.codec import decode, encode
from libs.contract.events import OrderIntentCreated, ReasonCode, SubmitOrder
from services.risk_gate.domain.commands import order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from tests.unit.risk_decide_inputs import (
    OPTION,
    T0,
    D,
    apply,
    base,
    fill,
    filled_position,
    intent,
    run_intent,
)


def _decoded(quantity: str) -> OrderIntentCreated:
    """An intent as the gate decodes it off the bus, its quantity as sent."""
    raw = json.loads(encode(intent(1)))
    raw["payload"]["quantity"] = quantity
    event = decode(json.dumps(raw).encode())
    assert isinstance(event, OrderIntentCreated)
    return event


# (id, setup, intent kwargs, expected reason, text in the detail)
CASES: list[tuple[str, Any, dict[str, Any], ReasonCode, str]] = [
    (
        "a short past the per-symbol cap: long 100, sell 221 (cap 120)",
        lambda s: filled_position(s, 100, 100, strategy="pairs"),
        {"strategy": "pairs", "side": "sell", "quantity": 221},
        ReasonCode.MAX_SYMBOL_POSITION,
        "would reach -121, max 120",
    ),
    (
        "a short to the per-symbol cap: long 100, sell 220",
        lambda s: filled_position(s, 100, 100, strategy="pairs"),
        {"strategy": "pairs", "side": "sell", "quantity": 220},
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "a quantity past the cap in its 12th decimal place",
        lambda s: s,
        {"quantity": "100.000000000001"},
        ReasonCode.MAX_ORDER_QUANTITY,
        "100.000000000001 > max 100",
    ),
    (
        "an option whose underlying has a price, the contract none",
        lambda s: s,
        {"symbol": OPTION, "asset_class": "option", "quantity": 1},
        ReasonCode.NO_MARKET_PRICE,
        f"no market price for {OPTION}",
    ),
    (
        "a limit price past the band in its 12th decimal place",
        lambda s: s,
        {"order_type": "limit", "limit_price": D("105.000000000001")},
        ReasonCode.PRICE_BAND,
        "limit price 105.000000000001",
    ),
    (
        "a limit price at the edge of the band",
        lambda s: s,
        {"order_type": "limit", "limit_price": D("105")},
        ReasonCode.ACCEPTED,
        "",
    ),
]


@pytest.mark.parametrize(
    ("setup", "kwargs", "reason", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_a_typo_is_denied_for_the_cap_it_breaks(
    setup: Any, kwargs: dict[str, Any], reason: ReasonCode, detail: str
) -> None:
    state = setup(base())
    quantity = kwargs.pop("quantity", 10)
    i = intent(quantity, **kwargs)
    d = decide(evolve(state, i), i, T0)
    assert (d.reason, detail in d.detail) == (reason, True), d.detail


@pytest.mark.parametrize(
    ("quantity", "reason", "sent"),
    [
        ("1E+3", ReasonCode.MAX_ORDER_QUANTITY, None),
        ("1e2", ReasonCode.ACCEPTED, "100"),  # at the cap: the broker is sent 100
        ("0.1E+3", ReasonCode.ACCEPTED, "100"),
        ("1_000", ReasonCode.MAX_ORDER_QUANTITY, None),
    ],
)
def test_a_quantity_in_any_decimal_form_is_checked_as_the_number_it_is(
    quantity: str, reason: ReasonCode, sent: str | None
) -> None:
    i = _decoded(quantity)
    d = decide(evolve(base(), i), i, T0)
    assert d.reason is reason, d.detail
    if sent is None:
        assert d.order is None
        return
    order = decode(encode(d.order)) if d.order is not None else None
    assert isinstance(order, SubmitOrder)
    assert format(order.payload.quantity, "f") == sent


def test_a_burst_at_one_instant_passes_only_as_many_as_the_rate_limit() -> None:
    """Ten intents decided in the same nanosecond: the strategy's 5 a second."""
    state = base()
    reasons = []
    for _ in range(10):
        state, d = run_intent(state, intent(1), T0)
        reasons.append(d.reason)
    assert reasons == [ReasonCode.ACCEPTED] * 5 + [ReasonCode.STRATEGY_RATE_LIMIT] * 5


def test_a_fill_larger_than_its_order_counts_whole_against_the_cap() -> None:
    """An order for 100 the broker fills for 290 (its bug): the position is
    290, so a buy of 20 (310) is denied, though 100 + 20 is within 300."""
    state = base()
    i = intent(100)
    state, d = run_intent(state, i, T0)
    assert d.accepted, d.detail
    state = apply(state, fill(order_id_for(i.id), 290, 100))
    assert state.open_orders() == []
    more = intent(20)
    d = decide(evolve(state, more), more, T0)
    assert d.reason is ReasonCode.MAX_STRATEGY_POSITION
    assert "would reach 310" in d.detail
