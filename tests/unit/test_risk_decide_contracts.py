"""The risk-gate and option contracts: expired ones (a close included, a half
day's 13:00 close) and ones tradebus cannot settle."""

from __future__ import annotations

import uuid

import pytest

from libs.contract.events import OrderRejected, OrderRejectedPayload, ReasonCode
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import (
    EXPIRED,
    LIMITS,
    SPX,
    T0,
    At,
    S,
    apply,
    base,
    fill,
    intent,
    run_intent,
    trade,
)

#: 2026-03-10 16:00 New York (EDT) = 20:00 UTC: the close of TODAY's expiry day.
CLOSE = T0 + 5 * 3600 * S
TODAY = "O:AAPL260310C00100000"


@pytest.mark.parametrize(
    ("symbol", "held", "side", "quantity", "now", "max_mark_age_s", "reason"),
    [
        # Opening or adding, with a fresh price, and with no age checked at all.
        (EXPIRED, 0, "buy", 1, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 0, "buy", 1, T0, None, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 0, "sell", 1, T0, None, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 5, "buy", 1, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, -5, "sell", 1, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        # Reducing too: no venue takes it (it passed, and the broker refused it).
        (EXPIRED, 5, "sell", 5, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, -5, "buy", 2, T0, None, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 5, "sell", 6, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        # On its expiry day it trades until the close, 16:00 New York.
        (TODAY, 0, "buy", 1, T0, 60, ReasonCode.ACCEPTED),
        (TODAY, 0, "buy", 1, CLOSE - S, 60, ReasonCode.ACCEPTED),
        (TODAY, 0, "buy", 1, CLOSE, 60, ReasonCode.CONTRACT_EXPIRED),
        (TODAY, 0, "buy", 1, CLOSE + 3600 * S, None, ReasonCode.CONTRACT_EXPIRED),
        (TODAY, 3, "sell", 3, CLOSE - S, None, ReasonCode.ACCEPTED),
        (TODAY, 3, "sell", 3, CLOSE, None, ReasonCode.CONTRACT_EXPIRED),
        (TODAY, 3, "sell", 3, CLOSE + 3600 * S, None, ReasonCode.CONTRACT_EXPIRED),
    ],
)
def test_every_order_in_an_expired_contract_is_denied_a_close_included(
    symbol: str,
    held: int,
    side: str,
    quantity: int,
    now: int,
    max_mark_age_s: int | None,
    reason: ReasonCode,
) -> None:
    """Last month's contract in a strategy's config (a typo) was traded as
    long as its last price was fresh, or at any age with no max_mark_age_s:
    the broker refuses it, the paper broker filled it. A close passed as a
    reduce, for the broker to refuse it as well: no venue lists the contract
    after its expiry day, and the broker settles the position."""
    band = {"max_deviation": "0.05", "max_mark_age_s": max_mark_age_s}
    limits = RiskLimits.model_validate({**LIMITS.model_dump(), "price_band": band})
    state = apply(RiskState.initial(limits), trade(symbol, 2, now))
    if held:
        bought = "buy" if held > 0 else "sell"
        held_fill = fill(uuid.uuid4(), abs(held), 2, side=bought, symbol=symbol, strategy="sma")
        state = evolve(state, held_fill)
    i = intent(quantity, side=side, symbol=symbol, asset_class="option", t=now)
    d = decide(evolve(state, i), i, now)
    assert d.reason is reason, d.detail
    if reason is ReasonCode.CONTRACT_EXPIRED:
        assert f"{symbol} expired at the close of" in d.detail
        assert "no venue takes an order in it, a close included" in d.detail
        assert f"the account's position of {held} is the broker's to settle" in d.detail


def test_closes_of_an_expired_contract_use_no_rate_limit_of_the_account() -> None:
    """A strategy answering the broker's refusal of its close by closing
    again (pairs_trade did, every minute): each close the gate accepted took
    a place in the account's rate window before the broker refused it, and
    8 of them in a second denied another strategy's order
    (account_rate_limit). Denied at the gate, they take none."""
    held = fill(uuid.uuid4(), 5, 2, symbol=EXPIRED, strategy="pairs", t=T0 - 3600 * S)
    state = apply(base(), trade(EXPIRED, 2), held)
    reasons = []
    for k in range(8):
        t = T0 + k * S // 10
        close = intent(5, side="sell", symbol=EXPIRED, strategy="pairs", asset_class="option", t=t)
        state, d = run_intent(state, close, t)
        reasons.append(d.reason)
        if d.order is not None:  # the broker refuses it
            refused = OrderRejectedPayload(
                order_id=d.order.payload.order_id, account="acct", reason="not tradable"
            )
            state = evolve(state, OrderRejected.create(refused, source="test", clock=At(t)))
    other = intent(10, t=T0 + 9 * S // 10)
    state, d = run_intent(state, other, T0 + 9 * S // 10)
    assert d.accepted, d.detail
    assert reasons == [ReasonCode.CONTRACT_EXPIRED] * 8
    assert state.account_position("acct", EXPIRED) == 5


@pytest.mark.parametrize(
    ("symbol", "held", "side", "quantity", "reason"),
    [
        # Cash-settled index options: opening or adding is denied...
        (SPX, 0, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        (SPX, 0, "sell", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        ("O:SPXW260320P05000000", 0, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        ("O:VIX260318C00020000", 0, "sell", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        (SPX, 5, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        (SPX, -5, "sell", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        # ...and so is a close past flat, which opens the other side.
        (SPX, 5, "sell", 6, ReasonCode.CONTRACT_UNSUPPORTED),
        # A position held already may be closed before its expiry.
        (SPX, 5, "sell", 5, ReasonCode.ACCEPTED),
        (SPX, -5, "buy", 2, ReasonCode.ACCEPTED),
        # Adjusted contracts (an OCC root ending in a digit).
        ("O:SPY1260320P00500000", 0, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        ("O:AAPL1260320C00100000", 3, "sell", 3, ReasonCode.ACCEPTED),
        # SPY's own options deliver 100 shares of SPY: supported.
        ("O:SPY260320P00500000", 0, "buy", 1, ReasonCode.ACCEPTED),
    ],
)
def test_an_order_that_opens_a_contract_tradebus_cannot_settle_is_denied(
    symbol: str, held: int, side: str, quantity: int, reason: ReasonCode
) -> None:
    """Every settlement (the paper broker's, the gateway's, its cross) books
    an exercise or assignment as 100 shares of the root at the strike: an
    SPX call exercised became 100 "SPX" shares bought at 5000, which no
    broker delivers (SPX settles in cash), and an adjusted SPY1 contract's
    deliverable is not 100 SPY1 shares. The gate denies what would open
    such a position, whatever the strategies.yaml check and the SDK did."""
    state = apply(RiskState.initial(LIMITS), trade(symbol, 2))
    if held:
        bought = "buy" if held > 0 else "sell"
        held_fill = fill(uuid.uuid4(), abs(held), 2, side=bought, symbol=symbol, strategy="sma")
        state = evolve(state, held_fill)
    i = intent(quantity, side=side, symbol=symbol, asset_class="option")
    d = decide(evolve(state, i), i, T0)
    assert d.reason is reason, d.detail
    if reason is ReasonCode.CONTRACT_UNSUPPORTED:
        assert d.detail.startswith(f"{symbol} is not supported: "), d.detail
        assert f"An order in it may only reduce the position sma holds ({held}" in d.detail
        assert f"not {side} {quantity}" in d.detail


#: 2025-11-28, the day after Thanksgiving: the NYSE closes at 13:00 New York
#: (18:00 UTC), and weekly contracts expire at that close.
HALF_DAY_CLOSE = 1_764_352_800 * S
HALF_DAY = "O:AAPL251128C00100000"


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (HALF_DAY_CLOSE - S, ReasonCode.ACCEPTED),
        (HALF_DAY_CLOSE, ReasonCode.CONTRACT_EXPIRED),
        (HALF_DAY_CLOSE + 2 * 3600 * S, ReasonCode.CONTRACT_EXPIRED),
    ],
)
def test_a_contract_expiring_on_a_half_day_is_denied_from_its_13_00_close(
    now: int, reason: ReasonCode
) -> None:
    """It was taken until 16:00: three hours of orders no venue accepts."""
    state = apply(RiskState.initial(LIMITS), trade(HALF_DAY, 2, now))
    i = intent(1, symbol=HALF_DAY, asset_class="option", t=now)
    d = decide(evolve(state, i), i, now)
    assert d.reason is reason, d.detail
    if reason is ReasonCode.CONTRACT_EXPIRED:
        assert d.detail.startswith(f"{HALF_DAY} expired at the close of 2025-11-28 (13:00 New")
