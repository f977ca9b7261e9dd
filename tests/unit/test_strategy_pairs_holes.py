"""Pairs trade: the holes the last review left in telling a whole pair from one to close.

- An entry filled away from the closes it was sized at (slippage) was taken
  for a lopsided pair: ``_lopsided`` compared the legs' costs at their
  average fill prices, so 95 MSFT sold at 98 (sized at 105) against 100 AAPL
  bought at 100 was "other than the entry's ratio" and the whole pair was
  closed at the next bar, by the very instance that entered it. A fresh
  instance, after a restart, closed it so at its first bar.
- An entry one of whose legs filled in part while the runner was down (the
  rest canceled) was taken for a whole pair by the fresh instance when the
  part missing was within one unit of the dearer leg and 5 % of the larger
  cost: 95 MSFT against 96 AAPL (of 100) was held until ``exit_z``.
- An exit both of whose closes were refused left a pair that looked whole to
  a fresh instance: held until ``exit_z`` again, though the strategy had
  decided to be flat. Both refused while the runner was down, the fresh
  instance saw only the positions; one refused then and the other after the
  restart, it judged that refusal by the books, which showed a whole pair.

A fresh instance now reads the entry's quantities and the exit from its
order history (``test_strategy_pairs_history.py``).
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.events import SignalGenerated
from libs.strategy.testing import deny
from tests.unit.pairs_inputs import (
    Run,
    exit_signaled,
    legs,
    minute,
    next_id,
    part_filled_then_canceled,
    position,
)


def test_an_entry_filled_7_percent_off_its_sizing_price_is_a_whole_pair_and_held() -> None:
    # MSFT sized at 105 sells at 98, AAPL buys at 100: costs 9,310 and 10,000,
    # 690 apart, past the unit and 5 % the cost check allowed (600).
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"], price=Decimal(98))
    run.fill(entry["AAPL"])
    assert (position(run.rt, "MSFT"), position(run.rt, "AAPL")) == (Decimal(-95), Decimal(100))
    assert run.run(minute(6, "106")) == []  # the spread wider still: the pair is held


def test_an_entry_filled_7_percent_off_its_sizing_price_is_held_after_a_restart() -> None:
    # The fresh instance reads the quantities the entry asked for from its
    # order history.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"], price=Decimal(98))
    run.fill(entry["AAPL"])
    rt = run.restarted(warm=True)
    assert rt.run(minute(6, "106")) == []


def test_an_entry_leg_filled_96_of_100_while_down_closes_the_pair_after_a_restart() -> None:
    # Costs 9,975 and 9,600: 375 apart, within the 604 the cost check allowed.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    run.while_down(part_filled_then_canceled(entry["AAPL"], Decimal(96)))
    rt = run.restarted(warm=True)
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(96))
    out = rt.run(minute(6, "106"))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(96))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert signal.payload.name == "pair_exit"
    assert "entry leg AAPL canceled" in signal.payload.reason  # its order history says so


def test_an_exit_both_of_whose_closes_were_refused_while_down_is_closed_after_a_restart() -> None:
    # The exit is signaled at minute 6 (z inside exit_z); both closes are
    # denied while the runner is down. The fresh instance finds that exit,
    # after the entry, in its order history: the strategy had decided to be
    # flat. Its first minute is wide again, where a whole pair is held: this
    # one is closed.
    run = Run()
    closes = exit_signaled(run)
    run.while_down([deny(close, ids=next_id) for close in closes.values()])
    rt = run.restarted(warm=True)
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(100))
    out = rt.run(minute(7, "112"))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(100))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert signal.payload.name == "pair_exit"
    assert "pair_exit signaled" in signal.payload.reason


def test_an_exit_whose_closes_are_refused_one_while_down_one_after_a_restart_is_closed() -> None:
    # MSFT's close is denied while the runner is down; AAPL's is still
    # working at the restart and is denied after it, before any bar. The
    # fresh instance knows the pair is closing (the exit is in its order
    # history): as the instance that sent them, it sends both closes again
    # at the next bar, not at the refusal.
    run = Run()
    closes = exit_signaled(run)
    run.while_down([deny(closes["MSFT"], ids=next_id)])
    rt = run.restarted()
    rt.start()
    assert rt.feed(deny(closes["AAPL"], ids=next_id)) == []
    out = rt.run(minute(7, "112"))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(100))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert "pair_exit signaled" in signal.payload.reason


def test_a_whole_pair_whose_exit_was_never_due_is_held_after_a_warm_restart() -> None:
    run = Run()
    for intent in run.enter_short().values():
        run.fill(intent)
    assert run.run(minute(6, "106")) == []  # wider: no exit
    rt = run.restarted(warm=True)
    assert rt.run(minute(7, "107")) == []
