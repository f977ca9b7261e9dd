"""The risk-gate's price band: the options' own band and its ticks."""

from __future__ import annotations

from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import MarkUpdated, QuotePayload, QuoteUpdated, ReasonCode
from services.marketdata.domain.marks import OptionMarks
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import LIMITS, OPTION, T0, At, D, S, apply, intent, mark, trade


@pytest.mark.parametrize(
    ("symbol", "options", "limit", "age_s", "reason"),
    [
        # 10 % from the last price: outside the equities' 5 %, inside the options' 25 %.
        ("AAPL", {"max_deviation": "0.25"}, "110", 0, ReasonCode.PRICE_BAND),
        (OPTION, {"max_deviation": "0.25"}, "2.2", 0, ReasonCode.ACCEPTED),
        (OPTION, None, "2.2", 0, ReasonCode.PRICE_BAND),  # no band of their own: 5 %
        # A last price 5 minutes old: past the equities' 60 s, within the options' 10 min.
        ("AAPL", {"max_mark_age_s": 600}, "100", 300, ReasonCode.NO_MARKET_PRICE),
        (OPTION, {"max_mark_age_s": 600}, "2", 300, ReasonCode.ACCEPTED),
        # A key left out takes the equities' value.
        (OPTION, {"max_deviation": "0.25"}, "2", 300, ReasonCode.NO_MARKET_PRICE),
        (OPTION, {"max_mark_age_s": 600}, "2.2", 0, ReasonCode.PRICE_BAND),
    ],
)
def test_options_may_have_a_price_band_of_their_own(
    symbol: str, options: dict[str, Any] | None, limit: str, age_s: int, reason: ReasonCode
) -> None:
    band = {"max_deviation": "0.05", "max_mark_age_s": 60, "options": options}
    limits = RiskLimits.model_validate({**LIMITS.model_dump(), "price_band": band})
    last = "100" if symbol == "AAPL" else "2"
    state = apply(RiskState.initial(limits), trade(symbol, last, T0 - age_s * S))
    kwargs: dict[str, Any] = {"asset_class": "option"} if symbol == OPTION else {}
    i = intent(1, symbol=symbol, order_type="limit", limit_price=D(limit), **kwargs)
    d = decide(evolve(state, i), i, T0)
    assert d.reason is reason, d.detail


#: A contract of a class that is quoted in pennies at every price (SPY's).
SPY_OPTION = "O:SPY260320P00500000"


def _banded(band: dict[str, Any], *prices: Event) -> RiskState:
    limits = RiskLimits.model_validate({**LIMITS.model_dump(), "price_band": band})
    return apply(RiskState.initial(limits), *prices)


def _band_verdict(
    state: RiskState, symbol: str, side: str, price: str, order_type: str = "limit"
) -> tuple[ReasonCode, str]:
    """The gate's verdict on a ``side`` ``order_type`` order for 1 ``symbol`` at ``price``."""
    kwargs: dict[str, Any] = {"asset_class": "option"} if symbol.startswith("O:") else {}
    key = "stop_price" if order_type == "stop" else "limit_price"
    kwargs[key] = D(price)
    i = intent(1, side=side, symbol=symbol, order_type=order_type, **kwargs)
    d = decide(evolve(state, i), i, T0)
    return d.reason, d.detail


OK, BAND = ReasonCode.ACCEPTED, ReasonCode.PRICE_BAND
#: The options' band risk.yaml suggests, with no tick allowance given.
OPTION_BAND: dict[str, Any] = {"max_deviation": "0.05", "options": {"max_deviation": "0.25"}}


@pytest.mark.parametrize(
    ("last", "side", "limit"),
    [
        # Marketdata marks a cheap contract quoted 0.05 x 0.10 at 0.075: its bid
        # and its ask are each 33 % from the mark, outside the 25 % band, and
        # half a tick from it.
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "buy", "0.05", id="buy at the bid"),
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "buy", "0.10", id="buy at the ask"),
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "sell", "0.10", id="sell at the ask"),
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "sell", "0.05", id="sell at the bid"),
        # One tick above (100 %) and below (50 %) a trade at a nickel, a dime.
        pytest.param(trade(OPTION, "0.05"), "buy", "0.10", id="a tick above a trade"),
        pytest.param(trade(OPTION, "0.10"), "sell", "0.05", id="a tick below a trade"),
    ],
)
def test_a_cheap_options_orders_at_its_bid_or_ask_pass_the_band(
    last: Event, side: str, limit: str
) -> None:
    """The band was relative only, and narrower than a tick for a contract
    this cheap (25 % of 0.075 is 0.019, the tick 0.05): no order of it at its
    own bid or ask, or a tick from its last trade, could be placed. Options
    now pass within 2 ticks of the mark, unless risk.yaml says otherwise."""
    state = _banded(OPTION_BAND, last)
    assert _band_verdict(state, OPTION, side, limit) == (
        ReasonCode.ACCEPTED,
        "",
    )


@pytest.mark.parametrize(
    ("symbol", "bid", "ask", "marked"),
    [
        # A nickel class: a quote one or two nickels wide is marked, three are not.
        (OPTION, "0.05", "0.10", True),
        (OPTION, "0.05", "0.15", True),
        (OPTION, "0.05", "0.20", False),
        (OPTION, "0.02", "0.04", True),
        (OPTION, "3.00", "3.20", True),
        # SPY's contracts trade in pennies at every price: the same quotes are
        # that many more of its ticks wide, and the gate counts in pennies.
        (SPY_OPTION, "0.05", "0.10", False),
        (SPY_OPTION, "0.05", "0.15", False),
        (SPY_OPTION, "0.10", "0.20", False),
        (SPY_OPTION, "0.05", "0.07", True),
        (SPY_OPTION, "0.01", "0.03", True),
        (SPY_OPTION, "3.00", "3.20", True),
        ("O:QQQ260320C00400000", "0.05", "0.15", False),
        ("O:IWM260320C00200000", "0.05", "0.15", False),
    ],
)
def test_the_band_passes_the_bid_and_the_ask_of_every_quote_marketdata_marks(
    symbol: str, bid: str, ask: str, marked: bool
) -> None:
    """Marketdata and the gate count a contract's ticks by one rule
    (``libs.contract.options.option_tick``). Marketdata gave a SPY contract
    quoted on the nickel grid the nickel, and marked 0.05 x 0.15 at 0.10,
    while the gate counted SPY's ticks in pennies: its bid, 0.05 from the
    mark, was 2 nickels but 5 pennies away, and denied."""
    quoted = QuoteUpdated.create(
        QuotePayload(
            symbol=symbol,
            bid_price=D(bid),
            bid_size=D(1),
            ask_price=D(ask),
            ask_size=D(1),
            sequence=1,
            feed="polygon",
        ),
        source="test",
        clock=At(T0),
    )
    made = OptionMarks().on_quote(quoted)  # marketdata's defaults
    assert isinstance(made, MarkUpdated) is marked, made
    if isinstance(made, MarkUpdated):
        state = _banded(OPTION_BAND, made)  # the band risk.yaml suggests
        for side, price in (("buy", bid), ("sell", bid), ("buy", ask), ("sell", ask)):
            assert _band_verdict(state, symbol, side, price) == (OK, "")


@pytest.mark.parametrize(
    ("ticks", "symbol", "last", "side", "price", "reason"),
    [
        # Nickels under 3: exactly 2 ticks from the last price pass, 3 do not.
        (2, OPTION, "0.05", "buy", "0.15", OK),
        (2, OPTION, "0.05", "buy", "0.20", BAND),
        (2, OPTION, "0.30", "sell", "0.20", OK),
        (2, OPTION, "0.30", "sell", "0.15", BAND),
        (3, OPTION, "0.05", "buy", "0.20", OK),
        (3, OPTION, "0.05", "buy", "0.25", BAND),
        (1, OPTION, "0.05", "buy", "0.10", OK),
        (1, OPTION, "0.05", "buy", "0.15", BAND),
        # 0: the fraction alone, as before.
        (0, OPTION, "0.05", "buy", "0.10", BAND),
        (0, OPTION, "0.05", "buy", "0.06", OK),
        # Dimes from 3 (with a 0.1 % band, so that the ticks are what counts).
        (2, OPTION, "3.00", "buy", "3.20", OK),
        (2, OPTION, "3.00", "buy", "3.30", BAND),
        # Across 3, the lower price's tick: 2.90 -> 3.00 is two nickels...
        (2, OPTION, "2.90", "buy", "3.00", OK),
        (2, OPTION, "3.00", "sell", "2.90", OK),
        # ...and 3.10 -> 2.90 three ticks (a dime and two nickels), never two dimes.
        (2, OPTION, "3.10", "sell", "2.90", BAND),
        # SPY's contracts trade in pennies at every price.
        (2, SPY_OPTION, "0.05", "buy", "0.07", OK),
        (2, SPY_OPTION, "0.05", "buy", "0.08", BAND),
        (2, SPY_OPTION, "5.00", "sell", "4.98", OK),
        (2, SPY_OPTION, "5.00", "sell", "4.97", BAND),
    ],
)
@pytest.mark.parametrize("order_type", ["limit", "stop"])
def test_an_option_price_passes_within_max_deviation_ticks_of_the_last_price(
    ticks: int,
    symbol: str,
    last: str,
    side: str,
    price: str,
    reason: ReasonCode,
    order_type: str,
) -> None:
    relative = "0.25" if D(last) < 1 else "0.001"
    options = {"max_deviation": relative, "max_deviation_ticks": ticks}
    state = _banded({"max_deviation": "0.05", "options": options}, trade(symbol, last))
    got, detail = _band_verdict(state, symbol, side, price, order_type)
    assert got is reason, detail
    if reason is ReasonCode.PRICE_BAND:
        assert f"{order_type} price {price} is " in detail
        assert f"from the last price {last} (band {D(relative):.2%}" in detail
        if ticks:
            assert f" or {ticks} ticks of " in detail


def test_the_band_names_its_ticks_when_it_denies() -> None:
    state = _banded(OPTION_BAND, trade(OPTION, "0.05"))
    assert _band_verdict(state, OPTION, "buy", "0.20") == (
        ReasonCode.PRICE_BAND,
        "limit price 0.20 is 300.00% from the last price 0.05 (band 25.00% or 2 ticks of 0.05)",
    )


@pytest.mark.parametrize(
    ("band", "symbol", "last", "limit", "reason"),
    [
        # Equities: no ticks unless risk.yaml gives some. 0.11 is a cent (one
        # tick) from 0.10, and 10 %: outside the 5 % band, as before.
        (OPTION_BAND, "AAPL", "0.10", "0.11", BAND),
        ({"max_deviation": "0.05"}, "AAPL", "0.10", "0.11", BAND),
        ({"max_deviation": "0.05"}, "AAPL", "100", "105", OK),
        ({"max_deviation": "0.05"}, "AAPL", "100", "105.01", BAND),
        # Given, equities count cents from $1, and 0.0001 below.
        ({"max_deviation": "0.0001", "max_deviation_ticks": 1}, "AAPL", "0.10", "0.1001", OK),
        ({"max_deviation": "0.001", "max_deviation_ticks": 2}, "AAPL", "1.00", "1.02", OK),
        ({"max_deviation": "0.001", "max_deviation_ticks": 2}, "AAPL", "1.00", "1.03", BAND),
        ({"max_deviation": "0.0001", "max_deviation_ticks": 1}, "AAPL", "0.10", "0.1002", BAND),
        # The equities' ticks are theirs alone: options keep their own 2...
        ({"max_deviation": "0.05", "max_deviation_ticks": 5}, OPTION, "0.05", "0.15", OK),
        ({"max_deviation": "0.05", "max_deviation_ticks": 5}, OPTION, "0.05", "0.20", BAND),
        # ...and with no options band at all, options get 2 ticks and 5 %.
        ({"max_deviation": "0.05"}, OPTION, "0.05", "0.15", OK),
        ({"max_deviation": "0.05"}, OPTION, "2.00", "2.10", OK),
        ({"max_deviation": "0.05"}, OPTION, "2.00", "2.15", BAND),
        # 0 under options turns them off.
        ({"options": {"max_deviation_ticks": 0}}, OPTION, "0.05", "0.10", BAND),
    ],
)
def test_equities_keep_their_band_and_options_have_ticks_of_their_own(
    band: dict[str, Any], symbol: str, last: str, limit: str, reason: ReasonCode
) -> None:
    state = _banded(band, trade(symbol, last))
    got, detail = _band_verdict(state, symbol, "buy", limit)
    assert got is reason, detail
