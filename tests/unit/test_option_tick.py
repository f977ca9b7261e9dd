"""The tick of an option contract (``libs.contract.options.option_tick``):
the one rule of marketdata's marks and the risk-gate's price band."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.contract.options import option_tick

D = Decimal
AAPL = "O:AAPL260320C00100000"
SPY = "O:SPY260320P00500000"


@pytest.mark.parametrize(
    ("symbol", "price", "quoted", "tick"),
    [
        # No quote (the gate): the coarsest tick of the price level.
        (AAPL, "0.01", (), "0.05"),
        (AAPL, "2.999999999999", (), "0.05"),
        (AAPL, "3", (), "0.10"),
        (AAPL, "25000000000000000000000000.5", (), "0.10"),
        # A quote (marketdata): the coarsest tick of the level whose grid it is on.
        (AAPL, "0.05", ("0.05", "0.10"), "0.05"),
        (AAPL, "0.10", ("0.10", "0.20"), "0.05"),  # under $3 no tick is a dime
        (AAPL, "0.02", ("0.02", "0.10"), "0.01"),  # quoted in pennies
        (AAPL, "3.00", ("3.00", "3.20"), "0.10"),
        (AAPL, "3.05", ("3.05", "3.15"), "0.05"),
        (AAPL, "3.01", ("3.01", "3.20"), "0.01"),
        (AAPL, "0.000000000001", ("0.000000000001", "9" * 26 + ".999999999999"), "0.01"),
        # SPY's, QQQ's and IWM's contracts: 0.01 at every price, quoted on any grid.
        (SPY, "0.05", (), "0.01"),
        (SPY, "12.34", (), "0.01"),
        (SPY, "0.05", ("0.05", "0.15"), "0.01"),
        (SPY, "3.00", ("3.00", "3.20"), "0.01"),
        ("O:QQQ260320C00400000", "0.05", ("0.05", "0.10"), "0.01"),
        ("O:IWM260320C00200000", "7", (), "0.01"),
        # Not an adjusted contract of theirs (its own root), nor SPX's.
        ("O:SPY1260320P00500000", "0.05", ("0.05", "0.15"), "0.05"),
        ("O:SPX260320C05000000", "3", (), "0.10"),
    ],
)
def test_option_tick(symbol: str, price: str, quoted: tuple[str, ...], tick: str) -> None:
    assert option_tick(symbol, D(price), [D(p) for p in quoted]) == D(tick)


def test_an_equity_has_no_option_tick() -> None:
    with pytest.raises(ValueError, match="not an option symbol"):
        option_tick("SPY", D(1))
