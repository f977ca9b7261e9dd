"""Pairs trade after a restart: what its own order history tells a fresh instance.

A fresh instance (after a runner restart) once guessed the pair it found
held: it sized the entry again from the closes of the warm-up minute it took
for the entry's, else judged the legs by their costs (``RATIO_SLACK``, 5 %),
and worked out the z-scores of its warm-up minutes to see that an exit had
been due. Beyond the warm-up, or with fills slipped more than 5 %, it
guessed wrong. It now reads its last ``pair_entry`` and the quantities its
orders asked for, and whether a ``pair_exit`` came after it, from
``ctx.orders()`` and ``ctx.last_signal()``, which the restore rebuilds.
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy.testing import deny, fill_chain
from tests.unit.pairs_inputs import (
    PRICES,
    Run,
    exit_signaled,
    legs,
    minute,
    next_id,
    part_filled_then_canceled,
    position,
    runtime,
)


def climbing(run: Run, first: int, count: int) -> int:
    """``count`` minutes from ``first`` recorded while the runner was down,
    MSFT one dollar up each (the spread climbs: never inside ``exit_z``);
    the next minute's index."""
    for i in range(first, first + count):
        run.while_down(minute(i, str(100 + i)))
    return first + count


def the_signal(out: list[Event]) -> SignalGenerated:
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    return signal


def test_an_entry_beyond_the_warm_up_whose_leg_filled_96_of_100_is_closed() -> None:
    # AAPL's buy fills 96 of 100 while the runner is down, the rest canceled,
    # and the runner stays down for 15 minutes: the entry's minute is not
    # among the warm-up's bars. Costs 9,975 and 9,600 are within the 604 the
    # cost check allowed: it held the pair until exit_z.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    run.while_down(part_filled_then_canceled(entry["AAPL"], Decimal(96)))
    live = climbing(run, 6, 15)
    rt = run.restarted(warm=True)
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(96))
    out = rt.run(minute(live, str(100 + live)))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(96))]
    signal = the_signal(out)
    assert signal.payload.name == "pair_exit"
    assert "entry leg AAPL canceled: ioc (before a restart)" in signal.payload.reason


def test_an_exit_both_of_whose_closes_were_refused_before_the_warm_up_is_closed() -> None:
    # The exit is signaled at minute 6 and the runner goes down; both closes
    # are denied, and the spread climbs away for 15 minutes. The z-scores of
    # the warm-up's minutes show no exit: the pair, which looks whole, was
    # held though the strategy had decided to be flat.
    run = Run()
    closes = exit_signaled(run)
    run.while_down([deny(close, ids=next_id) for close in closes.values()])
    live = climbing(run, 7, 15)
    rt = run.restarted(warm=True)
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(100))
    out = rt.run(minute(live, str(100 + live)))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(100))]
    signal = the_signal(out)
    assert signal.payload.name == "pair_exit"
    assert "pair_exit" in signal.payload.reason
    assert "before a restart" in signal.payload.reason


def test_an_entry_filled_7_percent_off_its_sizing_price_is_held_after_a_cold_restart() -> None:
    # 95 MSFT sold at 98 (sized at 105) against 100 AAPL bought at 100:
    # costs 9,310 and 10,000. No warm-up bars, so no minute to size the
    # entry again from: the cost check closed the whole pair at the first bar.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"], price=Decimal(98))
    run.fill(entry["AAPL"])
    rt = run.restarted()
    assert rt.run(minute(6, "106")) == []
    assert rt.run(minute(7, "107")) == []
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(100))


def test_a_pair_entered_beyond_the_history_is_judged_by_its_costs() -> None:
    # The entry's signal and intents are not read back (its chain finished
    # longer than rebuild_finished_s ago; the positions come from the fills):
    # the fresh instance falls back on the legs' costs, and 7 % of slippage
    # is more than they allow.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"], price=Decimal(98))
    run.fill(entry["AAPL"])
    rt = runtime()
    for event in run.history:
        if not isinstance(event, SignalGenerated | OrderIntentCreated):
            rt.restore(event)
    assert rt.hosts["pair"].history.last_signal() is None
    out = rt.run(minute(6, "106"))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(100))]
    assert "(costs 9310" in the_signal(out).payload.reason


def test_an_entry_leg_canceled_while_down_with_the_other_working_closes_at_the_first_bar() -> None:
    # AAPL's buy fills 40 of 100 while the runner is down, the rest canceled;
    # MSFT's sell still works. The instance that sent them closed AAPL at the
    # cancel and MSFT at its fill; the fresh instance, judging the books,
    # saw no pair to close (MSFT's order pending) until a bar after MSFT's fill.
    run = Run()
    entry = run.enter_short()
    run.while_down(part_filled_then_canceled(entry["AAPL"], Decimal(40)))
    rt = run.restarted()
    out = rt.run(minute(6, "106"))
    assert legs(out) == [("AAPL", "sell", Decimal(40))]
    assert "entry leg AAPL canceled: ioc" in the_signal(out).payload.reason
    out = rt.run(fill_chain(entry["MSFT"], PRICES["MSFT"], ids=next_id))
    assert legs(out) == [("MSFT", "buy", Decimal(95))]


def test_a_refused_order_whose_signal_the_history_lacks_is_judged_by_the_books_at_once() -> None:
    # The entry's signal is not read back (the history keeps the newest
    # signals only), its intents are: AAPL's buy denied after the restart is
    # an order of a signal the fresh instance cannot place, and MSFT, held
    # alone, is closed at once.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    rt = runtime()
    for event in run.history:
        if not isinstance(event, SignalGenerated):
            rt.restore(event)
    rt.start()
    out = rt.feed(deny(entry["AAPL"], ids=next_id))
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
    assert "held alone" in the_signal(out).payload.reason
