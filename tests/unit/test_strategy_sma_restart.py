"""Moving-average crossover across a runner restart: a cross it missed while down.

The side the fast average is on is rebuilt by the warm-up, but a crossing
seen there trades nothing. A death cross that came while the runner was down
(in the catch-up) left a long position held with the fast average below the
slow one, and only a *change* of side traded: the fresh instance held it
until the next golden cross, which trades nothing either (already long).
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.events import OrderIntentCreated
from libs.strategy.testing import bars, fill_chain
from tests.unit.sma_inputs import next_id, orders, runtime

# 12, 11, 10: the side (below); 13: golden cross, buy 100; 9: still above.
BEFORE = [12, 11, 10, 13, 9]


def restarted_long(
    closes_while_down: list[int], live: int, **params: object
) -> list[tuple[str, str, Decimal]]:
    """Long 100 from the golden cross; the runner down for
    ``closes_while_down``; what a fresh instance, its books rebuilt and warmed
    up on every bar so far (the store's and the catch-up's), orders at the
    first live bar, ``live``."""
    series = bars("AAPL", [*BEFORE, *closes_while_down, live])
    before, down, first_live = series[: len(BEFORE)], series[len(BEFORE) : -1], series[-1]
    first = runtime(**params)
    out = first.run(before)
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt = runtime(**params)
    for event in [*before, *out, *fill_chain(intent, "13", ids=next_id), *down]:
        rt.restore(event)
    assert rt.hosts["sma"].ledger.position("AAPL").quantity == 100
    rt.start()
    for past in before + down:
        assert rt.hosts["sma"].warm_up(past) == []
    return orders(rt.feed(first_live))


def test_a_long_held_across_a_death_cross_missed_while_down_is_closed_at_the_first_bar() -> None:
    # 8 (while down): fast 8.5 < slow 10, the death cross. Live, 7: still below.
    assert restarted_long([8], 7) == [("flat", "sell", Decimal(100))]


def test_shorting_allowed_it_is_closed_but_not_reversed_late() -> None:
    # The short a death cross would have opened is a late entry: not made.
    assert restarted_long([8], 7, allow_short=True) == [("flat", "sell", Decimal(100))]


def test_a_long_on_the_side_it_was_entered_on_is_kept() -> None:
    # 14 while down: still above; live 15: above. Nothing to do.
    assert restarted_long([14], 15) == []


def test_flat_with_the_side_changed_while_down_enters_nothing_late() -> None:
    rt = runtime()
    series = bars("AAPL", [*BEFORE[:3], 13, 14])
    rt.start()
    for past in series[:-1]:
        assert rt.hosts["sma"].warm_up(past) == []
    assert orders(rt.feed(series[-1])) == []


def test_an_exit_working_at_the_restart_is_not_sent_again() -> None:
    # The death cross came before the restart: its sell is working still.
    series = bars("AAPL", [*BEFORE, 8, 7])
    first = runtime()
    out = first.run(series[: len(BEFORE)])
    (entry,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    history = [*series[: len(BEFORE)], *out, *fill_chain(entry, "13", ids=next_id)]
    for event in history[len(BEFORE) :]:
        first.feed(event)
    exit_out = first.feed(series[len(BEFORE)])
    assert orders(exit_out) == [("flat", "sell", Decimal(100))]
    rt = runtime()
    for event in [*history, series[len(BEFORE)], *exit_out]:
        rt.restore(event)
    assert rt.hosts["sma"].ledger.position("AAPL").quantity == 100
    rt.start()
    for past in series[:-1]:
        assert rt.hosts["sma"].warm_up(past) == []
    assert orders(rt.feed(series[-1])) == []
