"""The risk-gate's prices: a quote's mark, the newest of trade, bar and mark,
and prices stamped ahead of when they were seen or of now."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import FillReceived, OrderIntentCreated, ReasonCode
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import (
    LIMITS,
    OPTION,
    T0,
    D,
    S,
    apply,
    bar,
    fill,
    intent,
    mark,
    trade,
)


def option_intent(quantity: int, **extra: Any) -> OrderIntentCreated:
    return intent(quantity, symbol=OPTION, asset_class="option", **extra)


def test_an_option_priced_only_by_a_quote_mark_is_accepted() -> None:
    """No trade and no bar of the contract: no price, so no order, until the
    mark of its quote prices it, for the band, the notional and the age."""
    state = RiskState.initial(LIMITS)
    limit = option_intent(2, order_type="limit", limit_price=D("2.05"))
    d = decide(evolve(state, limit), limit, T0)
    assert (d.reason, d.detail) == (ReasonCode.NO_MARKET_PRICE, f"no market price for {OPTION}")

    state = evolve(state, mark(OPTION, "2.00", T0 - 10 * S))
    d = decide(evolve(state, limit), limit, T0)
    assert d.accepted, d.detail
    # The band is around the mark: 2.20 is 10 % away (5 % allowed).
    far = option_intent(2, order_type="limit", limit_price=D("2.20"))
    d = decide(evolve(state, far), far, T0)
    assert d.reason is ReasonCode.PRICE_BAND
    assert "from the last price 2.00" in d.detail
    # A market order is valued at the mark: 60 x 2.00 x 100 = 12,000 > 10,000.
    big = option_intent(60)
    d = decide(evolve(state, big), big, T0)
    assert (d.reason, d.detail) == (
        ReasonCode.MAX_ORDER_NOTIONAL,
        "notional 12000.00 > max 10000 per order",
    )
    # Its age counts as a trade's: past max_mark_age_s (60 s) it is no price.
    later = option_intent(2, order_type="limit", limit_price=D("2.05"), t=T0 + 51 * S)
    d = decide(evolve(state, later), later, T0 + 51 * S)
    assert d.reason is ReasonCode.NO_MARKET_PRICE
    assert "61.0s old (max 60s)" in d.detail


@pytest.mark.parametrize(
    ("events", "price"),
    [
        pytest.param(
            [trade(OPTION, "2.00", T0 - 10 * S), mark(OPTION, "2.50", T0 - 5 * S)],
            "2.50",
            id="a mark newer than the last trade replaces it",
        ),
        pytest.param(
            [mark(OPTION, "2.50", T0 - 10 * S), trade(OPTION, "2.00", T0 - 5 * S)],
            "2.00",
            id="a trade newer than the mark replaces it",
        ),
        pytest.param(
            [mark(OPTION, "2.50", T0 - 5 * S), trade(OPTION, "2.00", T0 - 10 * S)],
            "2.50",
            id="an older trade arriving late does not move the mark back",
        ),
        pytest.param(
            [trade(OPTION, "2.00", T0 - 10 * S), mark(OPTION, "2.50", T0 - 20 * S)],
            "2.00",
            id="nor does an older mark",
        ),
        pytest.param(
            [trade(OPTION, "2.00", T0 - 5 * S), mark(OPTION, "2.50", T0 - 5 * S)],
            "2.50",
            id="at the same time the later in the stream wins",
        ),
        pytest.param(
            [mark(OPTION, "2.50", T0 - 10 * S), bar(OPTION, "2.20", T0 - 5 * S)],
            "2.20",
            id="a newer bar replaces a mark",
        ),
    ],
)
def test_the_newest_price_wins_whether_trade_bar_or_quote_mark(
    events: list[Event], price: str
) -> None:
    state = apply(RiskState.initial(LIMITS), *events)
    m = state.mark(OPTION)
    assert m is not None
    assert m.price == D(price)
    assert m.ts_ns == max(e.ts_event for e in events)


def _fill_of_10(symbol: str, price: str, t: int) -> FillReceived:
    return fill(uuid.uuid4(), 10, price, symbol=symbol, strategy="sma", t=t)


@pytest.mark.parametrize(
    ("price", "ahead", "marked"),
    [
        pytest.param(trade, 24 * 3600 * S, False, id="a trade stamped a day ahead"),
        pytest.param(bar, 61 * S, False, id="a bar stamped 61 s ahead"),
        pytest.param(mark, 3600 * S, False, id="a quote's mark stamped an hour ahead"),
        pytest.param(_fill_of_10, 3600 * S, False, id="a fill stamped an hour ahead"),
        pytest.param(trade, 60 * S, True, id="a trade 60 s ahead, within max_mark_age_s"),
    ],
)
def test_a_price_stamped_ahead_of_when_it_was_seen_does_not_hold_the_mark(
    price: Callable[[str, str, int], Event], ahead: int, marked: bool
) -> None:
    """A print stamped further ahead of its own ts_init (when marketdata saw
    it) than max_mark_age_s (60 s) is a bad stamp, not a price: newest by
    market time, it held the mark at its price against every later print
    until the clock caught up, its age passing the check all along (and a
    day ahead, it rolled the trading day). Clock skew within the limit marks.
    A fill so stamped still counts, but does not mark."""
    state = apply(RiskState.initial(LIMITS), trade("AAPL", "100", T0 - 2 * S))
    seen = price("AAPL", "150", T0 - S)
    bad = seen.model_copy(update={"ts_event": seen.ts_init + ahead})
    state = apply(state, bad, trade("AAPL", "101", T0))
    m = state.mark("AAPL")
    assert m is not None
    # Within the limit it marks at its market time (no later than 5 s after
    # it was made), as the ledgers and tradebus positions take it.
    assert (m.price, m.ts_ns) == ((D(150), bad.market_ns) if marked else (D(101), T0))
    held = 10 if isinstance(bad, FillReceived) else 0
    assert state.account_position("acct", "AAPL") == held
    assert state.day is not None
    assert state.day.isoformat() == "2026-03-10"
    if not marked:
        i = intent(10, order_type="limit", limit_price=D("101"), t=T0)
        assert decide(evolve(state, i), i, T0).accepted


@pytest.mark.parametrize(
    ("ahead", "reason"),
    [
        pytest.param(120 * S, ReasonCode.NO_MARKET_PRICE, id="120 s ahead of the gate's clock"),
        pytest.param(60 * S, ReasonCode.ACCEPTED, id="60 s ahead, within max_mark_age_s"),
    ],
)
def test_a_last_price_stamped_ahead_of_now_is_no_price(ahead: int, reason: ReasonCode) -> None:
    """A price its publisher stamped (and saw) ahead of the gate's clock by
    more than max_mark_age_s: one of the clocks is wrong, and the price's age
    cannot be told. It passed the age check (a negative age) until the gate's
    clock caught up."""
    state = apply(RiskState.initial(LIMITS), trade("AAPL", "100", T0 + ahead))
    i = intent(10, t=T0)
    d = decide(evolve(state, i), i, T0)
    assert d.reason is reason
    if reason is ReasonCode.NO_MARKET_PRICE:
        assert "stamped 120.0s ahead of now (max 60s)" in d.detail


def test_quote_marks_value_an_option_position_and_can_trip_the_breaker() -> None:
    """Long 10 contracts at 3.00: the quote marks alone move the day P&L
    (10 x 100 per dollar) until the daily-loss breaker trips at -1000."""
    state = apply(
        RiskState.initial(LIMITS),
        mark(OPTION, "3.00", T0),
        fill(uuid.uuid4(), 10, "3.00", symbol=OPTION, strategy="sma"),
    )
    state = evolve(state, mark(OPTION, "2.50", T0 + S))
    assert state.day_pnl("acct") == D(-500)
    assert react(state, T0 + S) == []
    state = evolve(state, mark(OPTION, "2.00", T0 + 2 * S))
    assert state.day_pnl("acct") == D(-1000)
    breaker = react(state, T0 + 2 * S)[0]
    assert (breaker.type, breaker.payload.value) == ("BreakerTripped", D(-1000))
