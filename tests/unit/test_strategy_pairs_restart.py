"""Pairs trade across a runner restart: a pair left at the wrong ratio.

That the pair is closing lived only in the instance. A fresh instance found
one leg held alone and closed it, but not both legs held at a ratio other
than the entry's: an exit one of whose legs filled in part (the rest
canceled) while the other's close was refused, or an entry one of whose
legs filled in part, all while the runner was down (or just before it went
down). The fresh instance took the pair for a whole one and held it,
mis-hedged, until the spread came back inside ``exit_z``. And an entry's
leg refused after the restart, its signal unknown to the fresh instance,
left the other leg naked until the next bar.
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import BarClosed, SignalGenerated
from libs.contract.options import parse_option
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.pairs import PairsTrade
from libs.strategy.testing import MINUTE_NS, bar, broker_reject, deny, fill_chain
from tests.unit.pairs_inputs import (
    PRICES,
    T0,
    Run,
    exit_signaled,
    intents,
    legs,
    minute,
    next_id,
    part_filled_then_canceled,
    position,
)


def test_an_exit_part_filled_in_one_leg_and_refused_in_the_other_closes_both_after_a_restart() -> (
    None
):
    # MSFT's close fills 40 of 95 (the rest canceled), AAPL's is denied: the
    # instance would send both again at the next bar. The runner restarts.
    run = Run()
    closes = exit_signaled(run)
    run.part_fill_then_cancel(closes["MSFT"], Decimal(40))
    run.feed([deny(closes["AAPL"], ids=next_id)])
    rt = run.restarted()
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-55), Decimal(100))
    # The spread is wide again: a whole pair would be held. This one closes.
    out = rt.run(minute(7, "112"))
    assert legs(out) == [("MSFT", "buy", Decimal(55)), ("AAPL", "sell", Decimal(100))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert signal.payload.name == "pair_exit"
    assert "pair_exit signaled" in signal.payload.reason  # the exit, from the history


def test_a_restart_between_the_two_legs_outcomes_closes_the_pair_at_the_next_bar() -> None:
    # The restart comes after MSFT's close part filled and before AAPL's
    # was refused: the fresh instance sees that refusal live. Its order
    # history says it was a close of the exit, so it does what the instance
    # that sent it would: both legs are closed at the next bar, whatever the
    # spread.
    run = Run()
    closes = exit_signaled(run)
    run.part_fill_then_cancel(closes["MSFT"], Decimal(40))
    rt = run.restarted()
    rt.start()
    assert rt.feed(deny(closes["AAPL"], ids=next_id)) == []
    out = rt.run(minute(7, "112"))
    assert legs(out) == [("MSFT", "buy", Decimal(55)), ("AAPL", "sell", Decimal(100))]


def test_an_entry_leg_part_filled_while_down_closes_the_pair_at_the_first_bar() -> None:
    # MSFT's sell fills; the runner goes down; AAPL's buy fills 40 of 100,
    # the rest canceled: the books hold -95 MSFT against +40 AAPL. (The
    # instance that saw it would have closed the pair at once.)
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    run.while_down(part_filled_then_canceled(entry["AAPL"], Decimal(40)))
    rt = run.restarted()
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(40))
    out = rt.run([bar("MSFT", "104", T0 + 7 * MINUTE_NS)])
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(40))]
    reason = next(e for e in out if isinstance(e, SignalGenerated)).payload.reason
    assert "entry leg AAPL canceled" in reason  # its order history says so


def test_a_whole_pair_held_across_a_restart_is_kept() -> None:
    run = Run()
    for intent in run.enter_short().values():
        run.fill(intent)
    rt = run.restarted()
    assert (position(rt, "MSFT"), position(rt, "AAPL")) == (Decimal(-95), Decimal(100))
    assert rt.run(minute(7, "106")) == []


def test_an_exit_working_at_a_restart_keeps_the_pair_closing() -> None:
    # Both closes are working when the runner restarts: each leg's exposure
    # is 0, and the fresh instance took the pair for flat. Warmed up, its
    # first minute is wide: it entered a second pair on top of the one
    # still held, and when both closes were refused it held that one (and
    # the new one) as a double-size pair.
    run = Run()
    closes = exit_signaled(run)
    rt = run.restarted()
    rt.start()
    host = rt.hosts["pair"]
    for event in run.history:
        if isinstance(event, BarClosed):
            assert host.warm_up(event) == []
    assert rt.run(minute(7, "112")) == []  # no entry while the closes work
    assert rt.feed(deny(closes["MSFT"], ids=next_id)) == []
    assert rt.feed(deny(closes["AAPL"], ids=next_id)) == []
    out = rt.run(minute(8, "113"))  # wider still: the closes are sent again
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(100))]


def test_an_entry_leg_refused_after_a_restart_closes_the_other_leg_at_once() -> None:
    # MSFT's sell filled; the runner restarts with AAPL's buy still working,
    # and it is denied. The fresh instance did not send that entry (it closed
    # MSFT, held alone, only at the next bar of either leg); its order
    # history says the order was a leg of the entry.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    rt = run.restarted()
    rt.start()
    out = rt.feed(deny(entry["AAPL"], ids=next_id))
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert signal.payload.name == "pair_exit"
    assert "entry leg AAPL denied" in signal.payload.reason
    # The close is working: the next bar does not send it again.
    assert rt.run(minute(6, "104")) == []


def test_an_entry_leg_part_filled_and_canceled_after_a_restart_closes_the_pair_at_once() -> None:
    # AAPL's buy fills 40 of 100 live, after the restart, the rest canceled:
    # -95 MSFT against +40 AAPL, closed at the cancel.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    rt = run.restarted()
    rt.start()
    out: list[Event] = []
    for event in part_filled_then_canceled(entry["AAPL"], Decimal(40)):
        out += rt.feed(event)
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(40))]
    reason = next(e for e in out if isinstance(e, SignalGenerated)).payload.reason
    assert "entry leg AAPL canceled" in reason


def test_an_entry_leg_rejected_after_a_restart_with_the_other_still_working_closes_it_once() -> (
    None
):
    # Both entry legs were working at the restart; the broker rejects AAPL's.
    # MSFT's order is still working: no close is sent against it; when it
    # fills, it is closed.
    run = Run()
    entry = run.enter_short()
    rt = run.restarted()
    rt.start()
    assert rt.run(broker_reject(entry["AAPL"], "insufficient buying power", ids=next_id)) == []
    out = rt.run(fill_chain(entry["MSFT"], PRICES["MSFT"], ids=next_id))
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
    assert rt.run(minute(6, "104")) == []  # the close is working


def test_a_refused_close_this_instance_sent_waits_for_the_next_bar() -> None:
    # After the restart, the fresh instance closes a leg held alone; that
    # close of its own denied is sent again at the next bar, not at once.
    run = Run()
    entry = run.enter_short()
    run.fill(entry["MSFT"])
    rt = run.restarted()
    rt.start()
    (close,) = intents(rt.feed(deny(entry["AAPL"], ids=next_id))).values()
    assert rt.feed(deny(close, ids=next_id)) == []
    assert legs(rt.run(minute(6, "104"))) == [("MSFT", "buy", Decimal(95))]


def test_a_refused_close_of_a_leg_whose_partner_expired_waits_for_the_next_bar() -> None:
    # The close this instance sent of MSFT, trading alone once the option
    # leg expired, is denied: it is sent again at MSFT's next bar, not at
    # once (a refusal that stands would be answered for ever).
    option = "O:AAPL231115C00100000"
    expiry_ns = parse_option(option).expires_at_ns
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=("MSFT", option),
    )
    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        rt.run([bar("MSFT", msft, T0 + i * MINUTE_NS), bar(option, "5", T0 + i * MINUTE_NS)])
    entry = rt.run([bar("MSFT", "105", T0 + 5 * MINUTE_NS), bar(option, "5", T0 + 5 * MINUTE_NS)])
    for intent in intents(entry).values():
        price = 105 if intent.payload.symbol == "MSFT" else 5
        for event in fill_chain(intent, price, ids=next_id, at_ns=T0 + 6 * MINUTE_NS):
            rt.feed(event)
    (close,) = intents(rt.run([bar("MSFT", "121", expiry_ns)])).values()
    assert rt.feed(deny(close, ids=next_id)) == []
    again = rt.run([bar("MSFT", "121", expiry_ns + MINUTE_NS)])
    assert legs(again) == [("MSFT", "buy", Decimal(95))]
