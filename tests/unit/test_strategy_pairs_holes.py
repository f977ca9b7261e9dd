"""Pairs trade: the holes the last review left in telling a whole pair from one to close.

- An entry filled away from the closes it was sized at (slippage) was taken
  for a lopsided pair: ``_lopsided`` compared the legs' costs at their
  average fill prices, so 95 MSFT sold at 98 (sized at 105) against 100 AAPL
  bought at 100 was "other than the entry's ratio" and the whole pair was
  closed at the next bar, by the very instance that entered it.
"""

from __future__ import annotations

from decimal import Decimal

from tests.unit.pairs_inputs import Run, minute, position


def test_an_entry_filled_7_percent_off_its_sizing_price_is_a_whole_pair_and_held() -> None:
    # MSFT sized at 105 sells at 98, AAPL buys at 100: costs 9,310 and 10,000,
    # 690 apart, past the unit and 5 % the cost check allowed (600).
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"], price=Decimal(98))
    run.fill(entry["AAPL"])
    assert (position(run.rt, "MSFT"), position(run.rt, "AAPL")) == (Decimal(-95), Decimal(100))
    assert run.run(minute(6, "106")) == []  # the spread wider still: the pair is held
