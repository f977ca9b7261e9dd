"""The tick the risk-gate's price band counts in (``price_tick``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.risk_gate.domain.limits import price_tick

D = Decimal


@pytest.mark.parametrize(
    ("symbol", "price", "tick"),
    [
        # US listed options: nickels under $3, dimes from $3.
        ("O:AAPL260320C00100000", "0.01", "0.05"),
        ("O:AAPL260320C00100000", "0.075", "0.05"),
        ("O:AAPL260320C00100000", "2.99", "0.05"),
        ("O:AAPL260320C00100000", "2.999999999999", "0.05"),
        ("O:AAPL260320C00100000", "3", "0.10"),
        ("O:AAPL260320C00100000", "3.00", "0.10"),
        ("O:AAPL260320C00100000", "25000000000000000000000000.5", "0.10"),
        # SPY's, QQQ's and IWM's contracts trade in pennies at every price...
        ("O:SPY260320P00500000", "0.05", "0.01"),
        ("O:SPY260320P00500000", "12.34", "0.01"),
        ("O:QQQ260320C00400000", "0.05", "0.01"),
        ("O:IWM260320C00200000", "7", "0.01"),
        # ...not an adjusted contract of theirs (its own root), nor SPX's.
        ("O:SPY1260320P00500000", "0.05", "0.05"),
        ("O:SPX260320C05000000", "0.05", "0.05"),
        ("O:SPX260320C05000000", "3", "0.10"),
        # Equities: cents from $1, hundredths of a cent below.
        ("AAPL", "100", "0.01"),
        ("AAPL", "1", "0.01"),
        ("AAPL", "0.9999", "0.0001"),
        ("BRK.B", "0.0001", "0.0001"),
    ],
)
def test_price_tick(symbol: str, price: str, tick: str) -> None:
    assert price_tick(symbol, D(price)) == D(tick)
