"""The fat-finger notional cap values an order at what it can fill at now.

A sell limit below the market, or a buy stop below it, trades at once at the
market: valued at its own price it passed ``max_order_notional`` as a
fraction of what it fills for. The band bounds the gap for an equity (5 %),
but an option's allowance in ticks does not: a cheap contract's sell limit
at 0.01 (a typo for 0.10) passes the band of a contract marked at 0.10, and
fills at its bid, ten times the notional the cap was asked about.
"""

from __future__ import annotations

from typing import Any

import pytest

from libs.contract.events import ReasonCode
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import OPTION, T0, D, apply, intent, mark, trade

#: One strategy whose only binding cap is the order's notional: 10,000.
LIMITS = RiskLimits.model_validate(
    {
        "price_band": {"max_deviation": 0.05, "max_mark_age_s": 60},
        "accounts": {"acct": {"daily_loss_limit": 1_000_000}},
        "strategies": {
            "sma": {
                "account": "acct",
                "max_gross_notional": 10_000_000,
                "max_position": 100_000,
                "max_order_quantity": 100_000,
                "max_order_notional": 10_000,
            }
        },
    }
)

ACCEPTED, NOTIONAL = ReasonCode.ACCEPTED, ReasonCode.MAX_ORDER_NOTIONAL

# (id, symbol, side, quantity, order type, limit, stop, reason, text in the detail)
CASES: list[tuple[str, str, str, int, str, str | None, str | None, ReasonCode, str]] = [
    # AAPL last at 100: 104 shares are 10,400 at the market.
    ("sell limit below the market", "AAPL", "sell", 104, "limit", "96", None, NOTIONAL, "10400"),
    ("buy stop below the market", "AAPL", "buy", 104, "stop", None, "96", NOTIONAL, "10400"),
    # A sell stop limit triggered at once (stop 101), or at its stop (97), limit below.
    ("sell stop limit, above", "AAPL", "sell", 104, "stop_limit", "96", "101", NOTIONAL, "10400"),
    ("sell stop limit, below", "AAPL", "sell", 104, "stop_limit", "96", "97", NOTIONAL, "10088"),
    # Unchanged: the order's own price bounds what it fills at.
    ("buy limit below the market", "AAPL", "buy", 104, "limit", "96", None, ACCEPTED, ""),
    ("buy limit above the market", "AAPL", "buy", 96, "limit", "104", None, ACCEPTED, ""),
    ("sell limit above the market", "AAPL", "sell", 96, "limit", "104", None, ACCEPTED, ""),
    ("buy stop above the market", "AAPL", "buy", 96, "stop", None, "104", ACCEPTED, ""),
    ("sell stop below the market", "AAPL", "sell", 104, "stop", None, "96", ACCEPTED, ""),
    ("buy stop limit", "AAPL", "buy", 104, "stop_limit", "96", "95", ACCEPTED, ""),
    ("sell at the market", "AAPL", "sell", 100, "market", None, None, ACCEPTED, ""),
    # The option marked at 0.10 (x100): 1,000 contracts are 10,000 at the market.
    ("option sell limit 0.01", OPTION, "sell", 2000, "limit", "0.01", None, NOTIONAL, "20000"),
    ("option buy stop 0.01", OPTION, "buy", 2000, "stop", None, "0.01", NOTIONAL, "20000"),
    ("option sell limit, at the cap", OPTION, "sell", 1000, "limit", "0.01", None, ACCEPTED, ""),
]


@pytest.mark.parametrize(
    ("symbol", "side", "quantity", "order_type", "limit", "stop", "reason", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_an_order_is_valued_at_what_it_fills_at_now(
    symbol: str,
    side: str,
    quantity: int,
    order_type: str,
    limit: str | None,
    stop: str | None,
    reason: ReasonCode,
    detail: str,
) -> None:
    state = apply(RiskState.initial(LIMITS), trade("AAPL", 100), mark(OPTION, "0.10"))
    kwargs: dict[str, Any] = {"asset_class": "option"} if symbol == OPTION else {}
    if limit is not None:
        kwargs["limit_price"] = D(limit)
    if stop is not None:
        kwargs["stop_price"] = D(stop)
    i = intent(quantity, side=side, symbol=symbol, order_type=order_type, **kwargs)
    d = decide(evolve(state, i), i, T0)
    assert (d.reason, detail in d.detail) == (reason, True), d.detail
